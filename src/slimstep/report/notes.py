"""The lines under a data set's table: each flag present explained once with the
models that carry it, and the evaluation's notes with each repeated note said once
(the clamping note as one line of percentages; the below-floor note left to its badge)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from slimstep.flags import FLAGS
from slimstep.report.tables import Failed
from slimstep.spec.results import Flag, Note, Row


def flag_notes(rows: list, failed: list[Failed] = ()) -> list[str]:
    """One line per flag present: its badge, what it means, and every model that has it.
    ``rows``: row dicts or records."""
    rows = [Row.of(r) for r in rows]
    by_flag: dict[str, list[str]] = {}
    for name, fl in ([(r.name, f) for r in rows for f in r.flags or ()]
                     + [(n, Flag.of(f)) for n, _, f in failed]):
        by_flag.setdefault(fl.id, []).append(name + (f" ({fl.detail})" if fl.detail else ""))
    return [f"[{FLAGS[fid][0]}] {FLAGS[fid][1]}: {'; '.join(who)}" for fid, who in by_flag.items()]


def collapse_notes(rows: list) -> list[str]:
    """The evaluation's notes with each repeated note said once with the list of its
    models. The clamping note becomes one line of percentages; the below-floor note is
    dropped (the badge says it, with the copy rate). ``rows``: row dicts or records."""
    groups: dict[str, list[tuple[str, float | None]]] = {}
    for r in (Row.of(r) for r in rows):
        for n in r.notes or ():
            if n.kind == Note.BELOW_FLOOR:
                continue
            clamped = n.kind == Note.CLAMPED
            groups.setdefault("clamp" if clamped else n.text, []).append(
                (r.name, n.values["percent"] if clamped else None))
    out = []
    for note, who in groups.items():
        if note == "clamp":
            out.append("sample values outside [-1, 1] were clamped before scoring, as when saved as images: "
                       + ", ".join(f"{n} {p:.2f} %" for n, p in who))
        elif len(who) == 1:
            out.append(f"{who[0][0]}: {note}")
        else:
            out.append(f"{note} ({', '.join(n for n, _ in who)})")
    return out


def metrics_rows(path: Path) -> list[dict]:
    """A training run's ``metrics.jsonl`` as rows; blank or torn lines (a run being written, or
    killed mid-write) are skipped."""
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


#: A logged gradient norm this many times its run's median, and above SPIKE_MIN, is a spike.
SPIKE_RATIO, SPIKE_MIN = 50.0, 10.0


def spike_notes(runs: list[tuple[str, Path, float]]) -> list[str]:
    """One line per training run whose logged gradient norm (the loop logs it before clipping)
    spiked: ``SPIKE_RATIO`` times its median and above ``SPIKE_MIN``. ``runs``: (stage,
    metrics file, train.grad_clip). An unclipped spike is how GDD's Fashion-MNIST runs blew up
    (docs/fashion.md): the final checkpoint can then be worse than an earlier snapshot."""
    out = []
    for name, path, clip in runs:
        rows = metrics_rows(path) if path.is_file() else []
        for key in sorted({k for r in rows for k in r if k == "grad_norm" or k.endswith("/grad_norm")}):
            vals = [(float(r[key]), r["step"]) for r in rows if isinstance(r.get(key), (int, float))]
            if len(vals) < 3:
                continue
            med = statistics.median(v for v, _ in vals)
            top, step = max(vals)
            if top > SPIKE_MIN and top > SPIKE_RATIO * med:
                what = (f"clipped to {clip:g} before each step" if clip and clip > 0 else
                        "not clipped: the samples after it can be worse than an earlier snapshot's "
                        "(slimstep eval --ckpt DIR/checkpoints/step-N); train.grad_clip caps such spikes")
                out.append(f"{name}: {key} reached {top:.3g} at step {step + 1}, {top / med:.0f}x its median "
                           f"{med:.2g}, {what}")
    return out
