"""A whole run: train what is missing, evaluate every stage, add each row's ratios to
its teacher and write ``results.json`` and the report (``slimstep run``, ``slimstep demo``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from slimstep.config import CONFIGS
from slimstep.eval import EvalError
from slimstep.files import write_json
from slimstep.flags import row_flags
from slimstep.outdir import output_dir
from slimstep.report import write_reports
from slimstep.run.evaluate import evaluate_stage
from slimstep.run.execute import check_contained, model_dir, root_teacher
from slimstep.run.recipe import EVAL_DEFAULTS, RecipeError, load_recipe
from slimstep.run.schedule import run_stages
from slimstep.verdict import HEADLINES


def run(recipe: str | Path, out: str | Path, jobs: int | None = None, log=print, data: str | None = None) -> dict:
    """Train what is missing, evaluate everything with one protocol, write the
    report. Returns the results (also in ``DIR/results.json``). One run at a time
    per ``out`` (its lock); a recipe that fails to load leaves no folder. ``data``: the
    data spec of every teacher stage (:func:`~slimstep.run.recipe.load_recipe`)."""
    with output_dir(out, expect="run"):
        return _run(recipe, out, jobs, log, data)


def _run(recipe: str | Path, out: str | Path, jobs: int | None, log, data: str | None = None) -> dict:
    tic = time.perf_counter()
    out = Path(out)
    ev, stages = load_recipe(recipe, data)
    check_contained(out, stages)
    by_name = {s.name: s for s in stages}
    if jobs is None:
        jobs = 1 if torch.cuda.is_available() else max(1, min(2, os.cpu_count() or 1))
    if jobs < 1:
        raise RecipeError(f"--jobs must be at least 1, not {jobs}")
    log(f"{len(stages)} stages from {recipe}, {jobs} at a time -> {out}")
    status = run_stages(out, stages, jobs, log, ev)
    rows = []
    for st in stages:
        if status[st.name]["status"] in ("failed", "skipped") or st.kind == "pairs":
            continue
        try:
            got = evaluate_stage(out, st, by_name, ev, log)
        except EvalError as e:  # no seed scored (a NaN model): the stage has no row, the rest goes on
            status[st.name].update(status="failed", error=f"evaluation: {e}")
            log(f"[failed] evaluation of {st.name}: {e}")
            continue
        for r in got:
            r["train_s"] = status[st.name]["seconds"] if st.trains and not r.get("curve") else None
            root = root_teacher(st, by_name)
            r["teacher"] = root.name if root is not None else None
            rows.append(r)
    _add_ratios(rows)
    by_row = {r["name"]: r for r in rows}
    for r in rows:
        r["flags"] = row_flags(r, len(ev["seeds"]), by_row)
        chk = r.get("init_check")
        if chk and chk["equal"] and not any(f["id"] == "equals-init" for f in r["flags"]):
            r["init_check"] = {**chk, "equal": False, "metric_moved": True}  # as the flags say
    results = {"title": ev["title"], "recipe": str(recipe), "eval": {k: ev[k] for k in EVAL_DEFAULTS},
               "stages": {s.name: {"kind": s.kind, "hash": s.hash, "spec": s.spec, "deps": s.deps,
                                   "dir": str(model_dir(out, s)), **status[s.name],
                                   "metrics_file": (str(model_dir(out, s) / "metrics.jsonl")
                                                    if s.trains else None),
                                   "params": s.params, "overrides": s.overrides,
                                   "config": s.cfg.to_dict() if s.cfg else None}
                          for s in stages},
               "rows": rows, "seconds": time.perf_counter() - tic}
    write_json(out / "results.json", results)
    paths = write_reports(out, results)
    failed = [s.name for s in stages if status[s.name]["status"] in ("failed", "skipped")]
    results.update(report=paths, failed=failed)
    return results


def _add_ratios(rows: list[dict]) -> None:
    """Each row over its root teacher's reference row: quality, size and speed."""
    refs = {r["stage"]: r for r in rows if r.get("reference")}
    for r in rows:
        ref = refs.get(r.get("teacher"))
        if ref is None:
            continue
        key = next(k for k in HEADLINES if k in r["metrics"])
        r["headline"] = key
        r["quality_ratio"] = r["metrics"][key] / ref["metrics"][key] if ref["metrics"][key] else None
        r["params_ratio"] = r["params"] / ref["params"] if ref.get("params") else None
        if r.get("samples_per_s") and ref.get("samples_per_s"):
            r["speedup"] = r["samples_per_s"] / ref["samples_per_s"]


def demo(out: str | Path = "runs/demo", jobs: int | None = None) -> dict:
    """``configs/demo.yaml``: every method at a small budget on digits and moons."""
    return run(CONFIGS / "demo.yaml", out, jobs=jobs)
