"""What the report says, in order, as one list of blocks (``("h2", text)``,
``("table", head, body)``, ``("img", file, alt)``...): the verdict per data set, then per
data set its table, flags, plots, sample gallery, losses and notes, then the stages.
Markdown and HTML are both rendered from this list (:mod:`slimstep.report.render`), so
they cannot disagree. Every number comes from the result rows; nothing here computes a
metric."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

import torch

from slimstep.flags import stage_flag
from slimstep.numbers import fmt
from slimstep.report.notes import collapse_notes, flag_notes, spike_notes
from slimstep.report.plots import plot_losses, plot_nfe, plot_speed, plot_strip
from slimstep.report.tables import Failed, group_rows, summary_table
from slimstep.spec.results import Row
from slimstep.verdict import verdict_lines


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")


def failed_stages(results: dict, spec: str) -> list[Failed]:
    """(name, kind, flag) of every model stage of ``spec`` with no row: failed, diverged, skipped."""
    out = []
    for name, s in results["stages"].items():
        fl = stage_flag(s)
        if fl is not None and s["spec"] == spec and s["kind"] != "pairs":
            out.append((name, s["kind"], fl))
    return out


def rows_by_spec(results: dict) -> dict[str, list[Row]]:
    """The run's rows as records, per data set in order of appearance."""
    rows = [Row.of(r) for r in results["rows"]]
    return {spec: [r for r in rows if r.data == spec] for spec in dict.fromkeys(r.data for r in rows)}


def _training_time(results: dict) -> str:
    """The trained stages' training loops, summed over every invocation that resumed them
    (reused stages and stages whose evaluation failed included): the recipe's training
    compute in stage-hours (two stages side by side count twice)."""
    secs = [st.get("train_seconds") for st in results["stages"].values() if st.get("kind") in ("teacher", "distill")]
    known = [s for s in secs if isinstance(s, (int, float)) and s > 0]
    if not known:
        return ""
    total = sum(known)
    took = f"{total / 3600:.1f} h" if total >= 3600 else f"{total / 60:.1f} min"
    which = ("The trained stage's training loop took" if len(known) == 1
             else f"The {len(known)} trained stages' training loops took together")
    return f". {which} {took}, over every resume and in earlier invocations too"


def blocks_for(out: Path, results: dict) -> list[tuple]:
    """The report of ``results`` (the dict of ``results.json``) whose pictures go in ``out``."""
    ev = results["eval"]
    by_spec = rows_by_spec(results)
    specs = list(by_spec)
    interim = bool(results.get("interim"))
    b: list[tuple] = [
        ("h1", results["title"] + (" (interim)" if interim else "")),
        ("p", f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')} · {machine()} · "
              f"{results['seconds'] / 60:.1f} min {'so far' if interim else 'in all'} in this invocation "
              f"(training reused from earlier runs is not counted){_training_time(results)}"),
        *([("p", _interim_line(results))] if interim else []),
        ("h2", "verdict"),
        *[("verdict", spec, verdict_lines(by_spec[spec])) for spec in specs],
        *([] if specs else [("p", "No model has been scored yet.")]),
        ("p", f"One protocol for every row: samples from seeds {', '.join(str(s) for s in ev['seeds'])} "
              "(N per seed stated with each data set), scored by `slimstep eval`'s metrics; "
              "the table shows the mean over seeds. The floor is the same metric for real data against "
              "real data at the same N: what a perfect generator would score. Ratios are over the "
              "row's teacher at its reference sampler. Speed: batch 256 on this machine, one model "
              "at a time. MACs / sample: multiply-accumulates of one sample, counted by torch's FLOP "
              "counter (matmuls, convolutions, attention) over every network call of it — an SLT "
              "student's K block passes, a screened row's N candidates, its scorer and its final "
              "call; NFE counts calls only. ↓: lower is better, ↑: higher is better; bold: the best "
              "student in that column."),
    ]
    stages = results["stages"]
    for spec in specs:
        rows = by_spec[spec]
        failed = failed_stages(results, spec)
        slug = spec.replace(":", "-").replace("/", "-")
        key = rows[0].headline_key
        floor = rows[0].floor
        n = rows[0].n
        how = rows[0].floor_note
        b += [("h2", spec), ("p", f"N = {n:,} samples per seed, {len(ev['seeds'])} seed(s). "
                                  f"Floor (real vs real at this N"
                                  + (f"; the {how}, one draw being noisy" if how else "")
                                  + f"): {key.upper()} {fmt(floor.get(key))}"
                                  + "".join(f", {k} {fmt(floor[k])}" for k in ("precision", "recall")
                                            if k in floor) + "."
                                  + (" Ratios to the floor are against that mean." if how else ""))]
        head, body = summary_table(rows, failed)
        b.append(("table", head, body))
        notes = flag_notes(rows, failed)
        if notes:
            b.append(("flags", notes))
        teachers, students = group_rows(rows, key)
        strip = [r for r in teachers if r.nfe == 1] + [r for r in teachers if r.reference] + students
        if plot_strip(strip, out / f"{slug}-strip.png", f"{spec}: the same {8} seeds through every model"):
            b += [("h3", "comparison: the same seeds through every model"),
                  ("img", f"{slug}-strip.png", "the same seeds through every model")]
        plot_nfe(rows, out / f"{slug}-nfe.png", f"{spec}: quality vs NFE")
        b.append(("img", f"{slug}-nfe.png", "quality vs NFE"))
        if plot_speed(rows, out / f"{slug}-speed.png", f"{spec}: quality vs speed"):
            b.append(("img", f"{slug}-speed.png", "quality vs speed"))
        pics = [(os.path.relpath(r.files["picture"], out), f"{r.name} (NFE {r.nfe})")
                for r in teachers + students if r.files.get("picture")]
        if pics:
            b += [("h3", "samples (first 100 of seed " + str(ev["seeds"][0]) + ")"), ("gallery", pics)]
        runs = [(n, Path(s["metrics_file"])) for n, s in stages.items()
                if s.get("metrics_file") and s["spec"] == spec]
        if plot_losses(runs, out / f"{slug}-loss.png", f"{spec}: training losses"):
            b += [("h3", "training losses"), ("img", f"{slug}-loss.png", "training losses")]
        notes = collapse_notes(rows) + spike_notes(
            [(n, Path(s["metrics_file"]), ((s.get("config") or {}).get("train") or {}).get("grad_clip") or 0.0)
             for n, s in stages.items() if s.get("metrics_file") and s["spec"] == spec])
        if notes:
            b += [("h3", "notes"), ("list", notes)]
    b.append(("h2", "stages"))
    b.append(("table", ["stage", "kind", "data", "status", "seconds", "directory", "overrides"],
              [[n, s["kind"], s["spec"], s["status"] + (f": {s['error']}" if s.get("error") else ""),
                fmt(s.get("seconds")), os.path.relpath(s["dir"], out), " ".join(s.get("overrides") or [])]
               for n, s in stages.items()]))
    return b


def _interim_line(results: dict) -> str:
    """What an interim report (written while the run goes on) does not show yet."""
    scored = {r["stage"] for r in results["rows"]}
    by_state: dict[str, list[str]] = {}
    for name, st in results["stages"].items():
        state = st["status"]
        if state in ("done", "reused", "evaluated only") and st["kind"] != "pairs" and name not in scored:
            state = "not yet scored"
        if state not in ("done", "reused", "evaluated only", "failed", "skipped"):
            by_state.setdefault(state, []).append(name)
    waits = "; ".join(f"{state}: {', '.join(names)}" for state, names in by_state.items())
    return ("Interim report: the run is still going (or was stopped), so the tables show only the "
            "stages scored so far and the verdict covers only them. "
            + (f"Still to come — {waits}. " if waits else "")
            + "The run rewrites this report as stages finish; its last write is the final report.")
