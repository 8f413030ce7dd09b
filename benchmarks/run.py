"""Regenerate BENCHMARKS.md end to end.

    python benchmarks/run.py              # every method (slimstep run, digits + moons), then BENCHMARKS.md
    python benchmarks/run.py --suites     # first also every per-method suite (core, slimflow*, gdd*, slt): hours
    python benchmarks/run.py --quick      # <= 15 min: the demo's budgets, written to runs/bench-quick/
                                          # (BENCHMARKS.md + results/, the same layout; the repo's stay as they are)

Each step is a subprocess on the scripts next to this one; each of them records
its own commands, machine, torch version and date in its results file, and
every training run is reused when it already finished.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def step(args: list[str], env: dict) -> None:
    print(f"[benchmarks] python {' '.join(args)}", flush=True)
    tic = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True)
    print(f"[benchmarks] {time.perf_counter() - tic:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="demo budgets into runs/bench-quick (<= 15 min)")
    ap.add_argument("--suites", action="store_true", help="also rerun the per-method suites (full budgets)")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    env = dict(os.environ)
    if a.quick:
        base = ROOT / "runs" / "bench-quick"
        env["SLIMSTEP_BENCH_RESULTS"] = str(base / "results")
        step(["benchmarks/methods.py", "--quick", "--out", str(base / "all"), "--jobs", str(a.jobs)], env)
        step(["benchmarks/collect.py", "--results", str(base / "results"), "--out", str(base / "BENCHMARKS.md")],
             env)
        return
    if a.suites:
        teacher = "runs/bench/digits-teacher"
        step(["benchmarks/core.py"], env)  # trains runs/bench/digits-teacher (configs/digits/teacher.yaml)
        step(["benchmarks/slimflow.py", "--digits-teacher", teacher], env)
        # the small-student ablation reuses slimflow.py's pairs (8,192, Heun-16)
        step(["benchmarks/slimflow_small.py", "--teacher", teacher,
              "--pairs", "runs/bench/slimflow/digits-pairs"], env)
        step(["benchmarks/gdd.py", "--teacher", teacher], env)
        step(["benchmarks/gdd_ablate.py", "--teacher", teacher], env)
        step(["benchmarks/slt.py", "--meanflow"], env)  # trains runs/bench/slt/dit-teacher
        step(["benchmarks/meanflow.py", "--dit-teacher", "runs/bench/slt/dit-teacher"], env)
    step(["benchmarks/methods.py", "--jobs", str(a.jobs)], env)
    step(["benchmarks/collect.py"], env)


if __name__ == "__main__":
    main()
