"""One colour and marker per method, the same in every plot slimstep draws
(the report's NFE and speed plots, the comparison strip, the benchmark plots),
so a method is recognised by its mark without reading a legend.

Students are keyed by method name, each method declaring its own mark (``Method.style``):
``gdd`` is the same green plus in a digits
plot and a moons plot. Teachers all train ``flow_matching``, so a report keys
them by their stage instead, in order of appearance (``teacher_style``).
"""

from __future__ import annotations

import hashlib

from slimstep import methods
from slimstep.spec.results import Row

#: Rows that are not a method's student (a method declares its own: ``Method.style``).
ROW_STYLE: dict[str, tuple[str, str]] = {
    "screen": ("#7f0000", "8"),  # screened sampling: SLT's red family, darker
}
#: Teachers in greys and a brown that no student uses, first teacher darkest.
TEACHER_COLOURS = ("#000000", "#7f7f7f", "#a0522d", "#4b0082")
#: A method this table does not know gets a stable colour from its name's hash.
_SPARE = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354")


def method_style(method: str) -> tuple[str, str]:
    """(colour, marker) of a student method: the one it declares (``Method.style``)."""
    declared = ROW_STYLE.get(method) or methods.method_style(method)
    if declared is not None:
        return declared
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
