"""The summary table of one data set: teachers then students, each sorted by the
headline metric, ↓/↑ on every metric, the best student value per column in bold,
flags as badges, then a row per stage with no model. Cells are text or :class:`Cell`;
:class:`Group` rows head the groups. The same table feeds the report and the console."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slimstep.numbers import fmt, fmt_macs
from slimstep.spec.results import Flag, Row

#: a stage with no model: (stage name, kind, its flag as a record or a dict)
Failed = tuple[str, str, Flag | Mapping[str, Any]]


@dataclass(frozen=True)
class Cell:
    """A table cell that is more than text: bold (the best in its column) or badges
    (``(flag id, badge text)`` pairs)."""

    text: str = ""
    bold: bool = False
    badges: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Group:
    """A row that names the group of rows below it (teachers, students)."""

    label: str


def cell_text(c) -> str:
    """A cell as plain text, badges as ``[badge]``."""
    if isinstance(c, Cell):
        return " ".join([c.text, *(f"[{b}]" for _, b in c.badges)]).strip()
    return c


def _ratio(v) -> str:
    return "" if v is None else f"{v:.3g}x"


def _badges(flags: list[Flag]) -> Cell:
    return Cell(badges=tuple((f.id, f.badge) for f in flags))


def group_rows(rows: list[Row], key: str) -> tuple[list[Row], list[Row]]:
    """(teacher rows, student rows) of a table, each sorted by the headline metric."""
    shown = [r for r in rows if not r.curve or r.nfe == 1]  # the curve is in the plot
    order = sorted(shown, key=lambda r: r.metrics[key])
    return [r for r in order if r.kind == "teacher"], [r for r in order if r.kind != "teacher"]


def _bold_best(body: list[list], student_rows: list[int], cols: dict[int, str]) -> None:
    """Bold the best student value of every column in ``cols`` (index -> "min"/"max")
    when the students do not all tie."""
    for j, way in cols.items():
        vals = {i: body[i][j][1] for i in student_rows if body[i][j][1] is not None}
        if len(set(vals.values())) < 2:
            continue
        best = (min if way == "min" else max)(vals.values())
        for i, v in vals.items():
            if v == best:
                body[i][j] = (Cell(body[i][j][0], bold=True), v)


def summary_table(rows: list, failed: list[Failed] = ()) -> tuple[list[str], list]:
    """The data set's table: teachers then students, each sorted by the headline metric,
    ↓/↑ on every metric, the best student value per column in bold, then a row per
    stage with no model (``failed``: (name, kind, flag)). ``rows``: row dicts or records.
    Rows are lists of cells (str or :class:`Cell`); :class:`Group` items head the groups."""
    rows = [Row.of(r) for r in rows]
    failed = [(name, kind, Flag.of(fl)) for name, kind, fl in failed]
    key = rows[0].headline_key
    extra = [k for k in ("precision", "recall") if k in rows[0].metrics]
    seeds = max(len(r.per_seed or [None]) for r in rows)
    spread = f"mean ± sd, {seeds} seeds" if seeds > 1 else "1 seed"
    K = key.upper()
    head = ["method", "flags", "teacher", "params ↓", "params / teacher ↓", "NFE ↓", "MACs / sample ↓",
            f"{K} ↓ ({spread})", f"{K} / teacher ↓", *[f"{k} ↑" for k in extra], "samples/s ↑",
            "speed-up ↑", "train s"]
    # NFE is left unbolded: every one-step student ties on it; MACs (every block pass and
    # scorer call of a sample, counted) is what separates them
    ways = {3: "min", 4: "min", 6: "min", 7: "min", 8: "min", **{9 + i: "max" for i in range(len(extra))},
            9 + len(extra): "max", 10 + len(extra): "max"}
    teachers, students = group_rows(rows, key)
    body: list = []
    student_idx: list[int] = []

    def cells(r: Row):  # (text, value) pairs, so the best can be found before formatting is final
        sd = r.metrics_sd.get(key)
        q = fmt(r.metrics[key]) + (f" ± {fmt(sd, 2)}" if seeds > 1 and sd is not None else "")
        return [(r.name, None), (_badges(r.flags or ()), None), (r.teacher or "", None),
                (fmt(r.params), r.params), (_ratio(r.params_ratio), r.params_ratio),
                (fmt(r.nfe), r.nfe), (fmt_macs(r.macs), r.macs),
                (q, r.metrics[key]),
                (_ratio(r.quality_ratio), r.quality_ratio),
                *[(fmt(r.metrics.get(k)), r.metrics.get(k)) for k in extra],
                (fmt(r.samples_per_s), r.samples_per_s), (_ratio(r.speedup), r.speedup),
                (fmt(r.train_s), None)]

    for label, group in (("teachers", teachers), ("students", students)):
        failed_here = [f for f in failed if (f[1] == "teacher") == (label == "teachers")]
        if not group and not failed_here:
            continue
        body.append(Group(label))
        for r in group:
            if label == "students":
                student_idx.append(len(body))
            body.append(cells(r))
        for name, _, fl in failed_here:
            body.append([(name, None), (_badges([fl]), None)] + [("", None)] * (len(head) - 2))
    _bold_best(body, student_idx, ways)
    return head, [b if isinstance(b, Group) else [c for c, _ in b] for b in body]
