"""The lines under a data set's table: each flag present explained once with the
models that carry it, and the evaluation's notes with each repeated note said once
(the clamping note as one line of percentages; the below-floor note left to its badge)."""

from __future__ import annotations

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
