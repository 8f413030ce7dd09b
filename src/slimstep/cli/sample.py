"""The commands that draw from a checkpoint: ``slimstep sample`` (samples, screened or
not, to ``.npz`` and a picture), ``eval`` (the evaluation protocol) and ``bench`` (speed)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from slimstep.cli.checkpoint import _generator
from slimstep.data import data_fields, loader_options
from slimstep.data.vae import decode, parse
from slimstep.errors import ConfigError
from slimstep.eval import evaluate, format_table
from slimstep.eval import fid as fid_
from slimstep.eval.speed import bench_generator, sample_macs
from slimstep.files import read_samples, samples_data_options, write_json, write_npz
from slimstep.generator import load
from slimstep.outdir import check_path, output_path
from slimstep.screen import make_scorer, screen, screen_macs, screen_nfe
from slimstep.spec import resolve_device
from slimstep.viz import save_picture


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
    tic = time.perf_counter()
    extra, nfe, macs = {}, None, None
    if a.screen is not None:
        teacher = load(a.teacher, resolve_device(a.device)) if a.teacher else None
        scorer = make_scorer(a.scorer or "classifier", gen, teacher, a.discriminator, a.ckpt)
        if mode == "null" and gen.num_classes:
            y = torch.full((a.n,), gen.num_classes, dtype=torch.long)
        x, ys, info = screen(gen, a.n, a.screen, scorer, seed=a.seed, final=a.final,
                             teacher=teacher, y=y, batch_size=a.batch_size, select=a.select,
                             temperature=a.temperature)
        nfe = info["nfe"]

        macs = screen_macs(gen, a.screen, scorer, a.final, teacher)
        extra = {"candidate": info["candidate"].numpy(), "score": info["score"].numpy(),
                 "screen": a.screen, "scorer": a.scorer or "classifier", "final": a.final,
                 "select": a.select}
        if a.select == "resample":
            extra["temperature"] = 1.0 if a.temperature is None else a.temperature
    else:
        x, ys = gen.generate(a.n, seed=a.seed, y=y, batch_size=a.batch_size, labels=mode)
    secs = time.perf_counter() - tic
    nfe = gen.nfe if nfe is None else nfe
    macs = sample_macs(gen) if macs is None else macs
    fields = data_fields(gen.info)
    kind, _, arg = gen.info.spec.partition(":")
    if kind == "vae":  # a latent model's samples are the images its VAE decodes them to
        extra.update(latents=x.numpy(), latent_data=gen.info.spec)
        x, fields["data"] = decode(x, arg), parse(arg)[1]
    arrays = {"samples": x.numpy(), "seeds": list(range(a.seed, a.seed + a.n)),
              "nfe": nfe, "macs": macs, **fields, **extra}
    if ys is not None:
        arrays["labels"] = ys.numpy()
    write_npz(a.out, **arrays)
    save_picture(x, png, title=f"{Path(a.ckpt).name}, NFE {nfe}")
    print(f"{a.n} samples, NFE {nfe}, {macs:,} MACs per sample, {secs:.2f} s -> {a.out} and {png}")


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
        # why lazy: the runner's module (yaml, multiprocessing; ~70 ms) only for eval's default
        # --n, not for every sample / bench / eval start
        from slimstep.recipes import default_n

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
        print(f"note: {note}")
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
