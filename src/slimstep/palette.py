"""One colour and marker per method, the same in every plot slimstep draws
(the report's NFE and speed plots, the comparison strip, the benchmark plots),
so a method is recognised by its mark without reading a legend.

Students are keyed by method name: ``gdd`` is the same green plus in a digits
plot and a moons plot. Teachers all train ``flow_matching``, so a report keys
them by their stage instead, in order of appearance (``teacher_style``).
"""

from __future__ import annotations

import hashlib

from slimstep.spec.results import Row

METHOD_STYLE: dict[str, tuple[str, str]] = {
    "reflow": ("#17becf", "v"),
    "annealing-reflow": ("#1f77b4", "^"),
    "slimflow": ("#ff7f0e", "s"),
    "distill": ("#8c564b", "D"),
    "gdd": ("#2ca02c", "P"),
    "gdd-i": ("#bcbd22", "X"),
    "flowmap": ("#9467bd", "h"),
    "meanflow": ("#e377c2", "p"),
    "slt": ("#d62728", "*"),
    "dmd2": ("#008080", "d"),  # the baselines users pick instead: teal, goldenrod, olive
    "scd": ("#b8860b", "<"),
    "ect": ("#6b8e23", ">"),
    "screen": ("#7f0000", "8"),  # screened sampling: SLT's red family, darker
}
#: Teachers in greys and a brown that no student uses, first teacher darkest.
TEACHER_COLOURS = ("#000000", "#7f7f7f", "#a0522d", "#4b0082")
#: A method this table does not know gets a stable colour from its name's hash.
_SPARE = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354")


def method_style(method: str) -> tuple[str, str]:
    """(colour, marker) of a student method."""
    if method in METHOD_STYLE:
        return METHOD_STYLE[method]
    h = int(hashlib.sha256(method.encode()).hexdigest(), 16)
    return _SPARE[h % len(_SPARE)], "oDs^v<>ph"[h // len(_SPARE) % 9]


def teacher_style(index: int, reference: bool) -> tuple[str, str]:
    """(colour, marker) of the ``index``-th teacher: dots on its Euler curve, a star at
    its reference sampler."""
    return TEACHER_COLOURS[index % len(TEACHER_COLOURS)], "*" if reference else "o"


def row_style(row: Row, teachers: list[str]) -> tuple[str, str]:
    """(colour, marker) of a result row of :func:`slimstep.run.run`; ``teachers`` is
    the list of teacher stage names of the whole run, so every plot agrees."""
    if row.kind == "teacher":
        return teacher_style(teachers.index(row.stage), bool(row.reference))
    return method_style(row.method or row.kind or row.name)
