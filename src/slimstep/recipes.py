"""End-to-end runs: train (or reuse) a teacher, sample, evaluate, report.

A trained model lives in ``OUT/<dataset>/<role>-<hash>`` where the hash is
that of its resolved config: a rerun with the same config reuses a finished
checkpoint and resumes an interrupted one; a changed config trains anew.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from slimstep.config import load_config
from slimstep.eval import evaluate, format_table
from slimstep.files import write_json, write_npz
from slimstep.generator import Generator, load
from slimstep.train import checkpoint as ckpt
from slimstep.train.loop import train
from slimstep.viz import save_picture

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

#: The demo's budget: the shipped teacher recipes, trained briefly.
DEMO = {
    "digits": ["train.steps=1500", "train.batch_size=128", "train.ckpt_every=500",
               "net.num_res_blocks=1", "net.attn_resolutions=[]"],
    "toy2d:moons": ["train.steps=1500", "train.ckpt_every=500"],
}
QUICK = {"digits": ["train.steps=60", "train.batch_size=32", "net.nf=16"],
         "toy2d:moons": ["train.steps=60", "net.hidden=64"]}


def config_hash(cfg: dict) -> str:
    keep = {k: cfg[k] for k in ("data", "net", "method", "train")}
    keep["train"] = {k: v for k, v in keep["train"].items()
                     if k not in ("log_every", "ckpt_every", "keep", "device")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:8]


def train_or_reuse(cfg: dict, directory: Path, progress: bool = True) -> tuple[Path, float]:
    """Train ``cfg`` into ``directory`` unless a finished run is there; returns
    the checkpoint and the training seconds spent now (0 when reused)."""
    done = directory / "config.json"
    if done.is_file() and ckpt.read_config(directory).get("step") == cfg["train"]["steps"]:
        return directory, 0.0
    tic = time.perf_counter()
    train(cfg, directory, resume=bool(ckpt.list_snapshots(directory)), progress=progress)
    return directory, time.perf_counter() - tic


def default_n(spec: str) -> int:
    """The protocol's sample count: the digits floor's size, 2,000 for toys."""
    return 597 if spec == "digits" else 2000


def score(gen: Generator, spec: str, name: str, n: int, seed: int = 0,
          out: Path | None = None) -> dict:
    """Sample ``n`` per-seed samples, evaluate, time them; optionally keep them."""
    tic = time.perf_counter()
    x, y = gen.generate(n, seed=seed)
    secs = time.perf_counter() - tic
    res = evaluate(x, spec, labels=y, seed=seed)
    res.update(name=name, nfe=gen.nfe, params=gen.params, samples_per_s=round(n / secs, 1))
    if out is not None:
        arrays = {"samples": x.numpy(), "seeds": list(range(seed, seed + n)), "nfe": gen.nfe,
                  "data": spec}
        if y is not None:
            arrays["labels"] = y.numpy()
        write_npz(out / "samples.npz", **arrays)
        save_picture(x[:100], out / "samples.png", title=f"{name}, NFE {gen.nfe}")
        res["files"] = {"samples": str(out / "samples.npz"), "picture": str(out / "samples.png")}
    return res


def teacher_curve(gen: Generator, spec: str, out: Path, nfes=(1, 2, 4, 8, 16, 32),
                  n: int | None = None, seed: int = 0) -> list[dict]:
    """The teacher's quality at ``nfes`` Euler steps, plus its reference sampler."""
    n = n or default_n(spec)
    rows = []
    for k in nfes:
        g = gen.with_sampling(solver="euler", steps=k)
        rows.append(score(g, spec, f"teacher euler-{k}", n, seed, out / f"euler-{k}"))
    s = gen.sampling
    name = f"teacher {s['solver']}-{s['steps']} (reference)"
    rows.append(score(gen, spec, name, n, seed, out / "reference"))
    return rows


def demo(out: str | Path = "runs/demo", quick: bool = False) -> Path:
    """Train small teachers on digits and moons, trace quality vs NFE, write a report."""
    from slimstep.report import write_report

    out = Path(out)
    torch.manual_seed(0)
    sections = []
    tic = time.perf_counter()
    for spec, folder in (("digits", "digits"), ("toy2d:moons", "toy2d")):
        budget = (QUICK if quick else DEMO)[spec]
        cfg = load_config(CONFIGS / folder / "teacher.yaml", budget)
        tdir, secs = train_or_reuse(cfg, out / folder / f"teacher-{config_hash(cfg)}")
        gen = load(tdir)
        print(f"[{spec}] teacher ready ({gen.params:,} parameters, trained {secs:.0f} s); evaluating")
        rows = teacher_curve(gen, spec, out / folder, nfes=(1, 2, 4, 8) if quick else
                             (1, 2, 4, 8, 16, 32))
        sections.append({"title": spec, "rows": rows, "teacher": str(tdir),
                         "overrides": budget, "train_seconds": secs,
                         "metrics_file": str(tdir / "metrics.jsonl")})
        print(format_table(rows))
    write_json(out / "results.json", sections)
    report = write_report(out, sections, title="slimstep demo",
                          seconds=time.perf_counter() - tic)
    print(f"report: {report}")
    return report
