"""Shared by the benchmark scripts: run slimstep commands, time them, score checkpoints.

Every command is a real `slimstep ...` invocation (recorded verbatim in the
results), run in a subprocess with a fixed thread count, and skipped when its
output already holds a finished run, so a benchmark killed halfway resumes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
#: Where the suites write their results (benchmarks/run.py --quick points it elsewhere,
#: so a smoke run never overwrites the committed numbers).
RESULTS = Path(os.environ.get("SLIMSTEP_BENCH_RESULTS", ROOT / "benchmarks" / "results"))
SLIMSTEP = [sys.executable, "-m", "slimstep.cli"]


class Runner:
    def __init__(self, out: Path, threads: int = 1):
        self.out, self.threads = Path(out), threads
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = self.out / "commands.jsonl"
        self.times = {}
        if self.log.exists():
            for line in self.log.read_text().splitlines():
                r = json.loads(line)
                self.times[r["cmd"]] = r["seconds"]

    def run(self, args: list[str], done: Path | None = None) -> float:
        """Run ``slimstep ARGS`` unless ``done`` exists; returns its wall seconds
        (from the log when it was skipped)."""
        cmd = "slimstep " + " ".join(shlex.quote(a) for a in args)
        if done is not None and done.exists():
            print(f"[reuse] {cmd}", flush=True)
            return self.times.get(cmd, float("nan"))  # nan: made outside this benchmark
        print(f"[run] {cmd}", flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        tic = time.perf_counter()
        subprocess.run(SLIMSTEP + args, cwd=ROOT, env=env, check=True)
        secs = time.perf_counter() - tic
        self.times[cmd] = secs
        with open(self.log, "a") as f:
            f.write(json.dumps({"cmd": cmd, "seconds": secs}) + "\n")
        return secs

    def commands(self) -> list[str]:
        return list(self.times)


def finished(ckpt: Path) -> Path:
    """The marker of a finished training run: its final snapshot's config."""
    cfg = ckpt / "config.json"
    if cfg.exists():
        c = json.loads(cfg.read_text())
        if c.get("step") == c.get("train", {}).get("steps"):
            return cfg
    return ckpt / "config.json.unfinished"  # never exists


def pairs_done(directory: Path) -> Path:
    """The marker of finished pair generation: a manifest that says complete."""
    m = directory / "manifest.json"
    if m.exists() and json.loads(m.read_text()).get("complete"):
        return m
    return directory / "manifest.json.unfinished"


def score(ckpt: Path, name: str, spec: str, threads: int = 1, seed: int = 0, **sampling) -> dict:
    """Evaluate a checkpoint with the protocol (same seeds and N for every row)."""
    from slimstep.generator import load
    from slimstep.run import default_n
    from slimstep.run import score as _score

    torch.set_num_threads(threads)
    gen = load(ckpt).with_sampling(**sampling)
    res = _score(gen, spec, name, default_n(spec), seed=seed)
    res["ckpt"] = str(ckpt)
    return res


SPREAD_SEEDS = (0, 1000, 2000)


def score_seeds(ckpt: Path, name: str, spec: str, metrics: tuple[str, ...], **sampling) -> dict:
    """The protocol at the three sample seeds the suites use: ``metrics`` averaged over them
    (``metrics``), their spread (``metrics_sd``) and the values per seed (``per_seed``)."""
    import statistics

    per = [score(ckpt, name, spec, seed=s, **sampling) for s in SPREAD_SEEDS]
    out = {k: per[0][k] for k in ("name", "nfe", "params")}
    # the floor at each seed is one real/real draw; a toy floor varies between draws (moons W2
    # at N = 2,000: sd 0.021 around 0.094), so the floor is their mean over the same seeds
    out["floor"] = ({k: statistics.fmean(p["floor"][k] for p in per) for k in per[0]["floor"]}
                    if spec.startswith("toy2d") else per[0]["floor"])
    out["per_seed"] = {m: [p["metrics"][m] for p in per] for m in metrics}
    out["metrics"] = {m: statistics.fmean(v) for m, v in out["per_seed"].items()}
    out["metrics_sd"] = {m: statistics.stdev(v) for m, v in out["per_seed"].items()}
    out["ckpt"] = str(ckpt)
    return out


def seed_spread(runs: list[tuple[str, Path, dict]], spec: str, key: str = "fd") -> list[dict]:
    """The headline metric of each run at several sample seeds (the same seeds for
    every run, so rows are paired) and its mean: at N = 597 a single FD moves by
    about 1 between seeds, so only differences beyond that spread mean anything."""
    rows = []
    for name, ckpt, sampling in runs:
        vals = [score(ckpt, name, spec, seed=s, **sampling)["metrics"][key] for s in SPREAD_SEEDS]
        row = {"name": name, **{f"seed {s}": v for s, v in zip(SPREAD_SEEDS, vals, strict=True)}}
        row["mean"] = sum(vals) / len(vals)
        rows.append(row)
    return rows


def machine() -> dict:
    return {"date": dt.date.today().isoformat(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count()}


def md_table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    """rows of dicts; cols = (header, key) with dotted keys into the dict."""
    def get(r, key):
        for part in key.split("."):
            r = r.get(part) if isinstance(r, dict) else None
        if isinstance(r, float):
            return f"{r:.3g}"
        return "" if r is None else f"{r:,}" if isinstance(r, int) else str(r)

    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(get(r, k) for _, k in cols) + " |" for r in rows]
    return "\n".join(lines)
