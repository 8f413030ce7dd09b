"""How a number is written where a person reads it — the report's tables, a flag's
detail, the verdict, the benchmark tables — so it reads the same everywhere:
:func:`fmt`, and :func:`fmt_macs` for a cost in multiply-accumulates. Imports nothing
of slimstep's (the report, the flags and the verdict all stand on it)."""

from __future__ import annotations


def fmt(v, digits: int = 3) -> str:
    """``v`` for a table: "" for None and NaN, thousands separators for integers and for
    floats of ``digits`` or more integer digits, else ``digits`` significant digits."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:  # nan
            return ""
        return f"{v:,.0f}" if abs(v) >= 10 ** digits else f"{v:.{digits}g}"
    return str(v)


def fmt_macs(v) -> str:
    """Multiply-accumulates in engineering units (1.2M, 3.4G); "" when not measured."""
    if v is None:
        return ""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g}{unit}"
    return str(int(v))
