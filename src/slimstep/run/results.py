"""A whole run: train what is missing, evaluate every stage, add each row's ratios to
its teacher and write ``results.json`` and the report (``slimstep run``, ``slimstep demo``);
while it goes on, an interim report of what is scored so far (:class:`_Interim`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from slimstep.config import CONFIGS
from slimstep.eval import EvalError
from slimstep.files import write_json
from slimstep.flags import row_flags
from slimstep.generator import compile_problem
from slimstep.outdir import output_dir
from slimstep.report import write_reports
from slimstep.run.evaluate import cached_evaluation, evaluate_stage, is_scored
from slimstep.run.execute import check_contained, model_dir, root_teacher
from slimstep.run.recipe import EVAL_DEFAULTS, RecipeError, Stage, load_recipe
from slimstep.run.schedule import run_stages
from slimstep.verdict import HEADLINES

#: The least time between two interim reports of a run (each takes a second or two).
INTERIM_GAP_S = 30.0


def run(recipe: str | Path, out: str | Path, jobs: int | None = None, log=print, data: str | None = None,
        compile: bool = False) -> dict:
    """Train what is missing, evaluate everything with one protocol, write the
    report. Returns the results (also in ``DIR/results.json``). One run at a time
    per ``out`` (its lock); a recipe that fails to load leaves no folder. ``data``: the
    data spec of every teacher stage (:func:`~slimstep.run.recipe.load_recipe`).
    ``compile``: draw the teachers' evaluation samples through ``torch.compile``
    (:func:`~slimstep.run.evaluate.evaluate_stage`); refused at once where it cannot build."""
    if compile and (why := compile_problem()) is not None:
        raise RecipeError(f"--compile: torch.compile cannot build kernels here ({why})")
    with output_dir(out, expect="run"):
        return _run(recipe, out, jobs, log, data, compile)


def _run(recipe: str | Path, out: str | Path, jobs: int | None, log, data: str | None = None,
         compile: bool = False) -> dict:
    tic = time.perf_counter()
    out = Path(out)
    ev, stages = load_recipe(recipe, data)
    check_contained(out, stages)
    if jobs is None:
        jobs = 1 if torch.cuda.is_available() else max(1, min(2, os.cpu_count() or 1))
    if jobs < 1:
        raise RecipeError(f"--jobs must be at least 1, not {jobs}")
    log(f"{len(stages)} stages from {recipe}, {jobs} at a time -> {out}")
    interim = _Interim(out, recipe, ev, stages, tic, log)
    status = run_stages(out, stages, jobs, log, ev, on_progress=interim.update, compile=compile)
    results = _results(out, recipe, ev, stages, status, tic, log, final=True, progress=interim.update,
                       compile=compile)
    failed = [s.name for s in stages if status[s.name]["status"] in ("failed", "skipped")]
    results.update(failed=failed)
    return results


def _results(out: Path, recipe: str | Path, ev: dict, stages: list[Stage], status: dict[str, dict],
             tic: float, log, final: bool, progress=None, compile: bool = False) -> dict:
    """Score the stages and write ``results.json`` and the report. ``final``: the run is
    over, so every stage not failed is evaluated (here, if no worker did it). Otherwise an
    interim report: only the rows already in the evaluation caches, and each stage's state
    (``training``, ``waiting``...) in the stage table. ``progress(status)`` is called after
    each evaluation of the final pass (``--jobs 1`` evaluates only there)."""
    by_name = {s.name: s for s in stages}
    rows = []
    for st in stages:
        if status[st.name]["status"] in ("failed", "skipped") or st.kind == "pairs":
            continue
        if not final:  # an interim report reads the caches only: no model runs beside training
            saved = cached_evaluation(out, st, ev) if _made(st, status) else None
            if saved is None:
                continue
            got = saved["rows"]
        else:
            try:
                got = evaluate_stage(out, st, by_name, ev, log, compile=compile)
            except EvalError as e:  # no seed scored (a NaN model): the stage has no row, the rest goes on
                status[st.name].update(status="failed", error=f"evaluation: {e}")
                log(f"[failed] evaluation of {st.name}: {e}")
                continue
        if progress is not None:
            progress(status)
        for r in got:
            r["train_s"] = (status[st.name].get("train_seconds", status[st.name]["seconds"])
                            if st.trains and not r.get("curve") else None)
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
    if not final:
        results["interim"] = True
    write_json(out / "results.json", results)
    results.update(report=write_reports(out, results))
    return results


def _made(st: Stage, status: dict[str, dict]) -> bool:
    """Are the models a stage's rows are scored from all made? (A screen stage has none of
    its own.)"""
    names = ([st.name] if st.kind != "screen" else []) + list(st.deps.values())
    return all(status.get(n, {}).get("status") in ("done", "reused") for n in names)


class _Interim:
    """The report while the run goes on: rewritten whenever a stage ends, an evaluation
    lands or the stages' states change, at most once every :data:`INTERIM_GAP_S` seconds
    (a later call writes what waited). A long run (Fashion-MNIST: a day of CPU) thus shows
    its finished rows at once, and an interrupted one leaves a report of what it had."""

    def __init__(self, out: Path, recipe: str | Path, ev: dict, stages: list[Stage], tic: float, log):
        self.out, self.recipe, self.ev, self.stages, self.tic, self.log = out, recipe, ev, stages, tic, log
        self.seen: str | None = None
        self.last = float("-inf")

    def update(self, status: dict[str, dict], training: set[str] = frozenset(),
               evaluating: set[str] = frozenset()) -> None:
        state = {s.name: dict(status.get(s.name) or {"status": "training" if s.name in training else "waiting",
                                                      "seconds": None}) for s in self.stages}
        for name in evaluating:
            state[name]["status"] = f"{state[name]['status']}, evaluating"
        try:
            key = json.dumps([state, [is_scored(self.out, s, self.ev) for s in self.stages if s.kind != "pairs"]],
                             sort_keys=True, default=str)
            if key == self.seen or time.monotonic() - self.last < INTERIM_GAP_S:
                return
            self.seen, self.last = key, time.monotonic()
            _results(self.out, self.recipe, self.ev, self.stages, state, self.tic, self.log, final=False)
        except Exception as e:  # noqa: BLE001 - training goes on; the final report runs the same code and raises
            self.log(f"[report] interim report not written: {type(e).__name__}: {e}")


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
