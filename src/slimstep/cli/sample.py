"""The commands that draw from a checkpoint: ``slimstep sample`` (samples, screened or
not, to ``.npz`` and a picture), ``eval`` (the evaluation protocol) and ``bench`` (speed)."""

from __future__ import annotations

from pathlib import Path

import torch

from slimstep.cli.checkpoint import _generator
from slimstep.data import loader_options
from slimstep.errors import ConfigError
from slimstep.eval import default_n, evaluate, format_table
from slimstep.eval import fid as fid_
from slimstep.eval.speed import bench_generator, sample_macs
from slimstep.files import read_samples, samples_data_options, write_json
from slimstep.generator import load
from slimstep.outdir import check_path, output_path
from slimstep.run import samples
from slimstep.screen import make_scorer, screen_macs, screen_nfe
from slimstep.spec import resolve_device


def _labels(gen, spec: str | None, n: int):
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
    png = Path(a.out).with_suffix(".png")
    check_path(a.out, a.overwrite)  # a directory is named as such, before its suffix
    if Path(a.out).suffix != ".npz":
        raise ConfigError(f"--out {a.out}: samples are written as .npz (name it e.g. samples.npz)")
    with output_path(a.out, a.overwrite, also=(png,)):  # both files refused before either is written
        _sample(a, png)


def _sample(a, png: Path) -> None:
    gen = _generator(a)
    y, mode = _labels(gen, a.labels, a.n)
    if a.screen is None and (a.scorer or a.final != "student" or a.teacher or a.discriminator
                             or a.select != "argmax" or a.temperature is not None):
        raise ConfigError("--scorer, --final, --teacher, --discriminator, --select and "
                          "--temperature go with --screen N")
    screening = None
    if a.screen is not None:
        teacher = load(a.teacher, resolve_device(a.device)) if a.teacher else None
        scorer = a.scorer or "classifier"
        screening = samples.Screening(a.screen, make_scorer(scorer, gen, teacher, a.discriminator, a.ckpt),
                                      scorer, a.final, teacher, a.select, a.temperature)
    drawn = samples.draw(gen, a.n, a.seed, screening=screening, y=y, labels=mode, batch_size=a.batch_size,
                         with_macs=True)
    arrays = samples.npz_fields(drawn, gen.info.spec, loader_options(gen.info.options), decode=True)
    samples.save(a.out, arrays, png, title=f"{Path(a.ckpt).name}, NFE {drawn.nfe}")
    print(f"{a.n} samples, NFE {drawn.nfe}, {drawn.macs:,} MACs per sample, {drawn.seconds:.2f} s "
          f"-> {a.out} and {png}")


def cmd_eval(a) -> None:
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
        name, nfe, macs = Path(a.ckpt).name, gen.nfe, sample_macs(gen)
    if not spec:
        raise ConfigError("the samples file names no data set: pass --data")
    fid = fid_.choose(spec, a.fid, a.inception_weights)
    if a.ref_stats:
        if a.fid is False:
            raise ConfigError("--ref-stats with --no-fid: the FID / KID statistics would not be used")
        fid_.check_ref_stats(a.ref_stats, fid)
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


def cmd_bench(a) -> None:
    gen = _generator(a)
    r = bench_generator(gen, batch_size=a.batch_size, iters=a.iters)
    if a.screen is not None:  # the cost of one screened output, scorer and final call included
        teacher = load(a.teacher, resolve_device(a.device)) if a.teacher else None
        scorer = make_scorer(a.scorer or "classifier", gen, teacher, a.discriminator, a.ckpt)
        r.update(screen=a.screen, scorer=a.scorer or "classifier", final=a.final,
                 screen_nfe=screen_nfe(a.screen, gen, scorer, a.final, teacher),
                 screen_macs=screen_macs(gen, a.screen, scorer, a.final, teacher))
    elif a.scorer or a.final != "student" or a.teacher or a.discriminator:
        raise ConfigError("--scorer, --final, --teacher and --discriminator go with --screen N")
    for k, v in r.items():
        print(f"{k:>18}: {v}")
