"""The verdict: which one-step model to take, per data set, in two lines.

* **Best one-step model**: the student (a trained stage, NFE 1) with the lowest
  headline metric (FD / FID / SWD / W2 / MMD, all lower-is-better), with its ratios
  to its teacher at the teacher's reference sampler: quality, parameters,
  samples/s.
* **Within noise**: the other one-step students whose mean ± sd over the
  protocol's seeds overlaps the best's (``mean - best_mean <= sd + best_sd``).
  With one seed there is no spread, and the verdict says so rather than
  calling a 1 % difference a win.
* **Best small model**: the same among students with at most 1/4 of their
  teacher's parameters (SlimFlow's question), or a line saying none is that small.

Pure functions of the result rows of :func:`slimstep.run.run` (row dicts or
:class:`slimstep.spec.results.Row` records); the report and ``slimstep run``'s
summary print the same lines. ``HEADLINES`` lives with the rows
(:mod:`slimstep.spec.results`) and is named here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slimstep.numbers import fmt
from slimstep.spec.results import HEADLINES, Row

__all__ = ["HEADLINES", "SMALL", "Verdict", "candidates", "verdict", "verdict_lines"]

SMALL = 0.25  # a "small" student has at most this fraction of its teacher's parameters


@dataclass(frozen=True)
class Verdict:
    """The verdict on one data set's rows: the headline ``key``, the most ``seeds`` a
    candidate was scored on, the ``best`` one-step student and those ``within`` its seed
    spread, the same for the ``small`` students (None / empty when there is none)."""

    key: str | None
    seeds: int
    best: Row | None = None
    within: tuple[Row, ...] = ()
    small: Row | None = None
    small_within: tuple[Row, ...] = ()


def _key(rows: list[Row]) -> str | None:
    return next((k for r in rows for k in HEADLINES if k in r.metrics), None)


def candidates(rows: list[Row | Mapping[str, Any]]) -> list[Row]:
    """One-step students with a headline metric, best first."""
    rows = [Row.of(r) for r in rows]
    key = _key(rows)
    if key is None:
        return []
    pool = [r for r in rows if r.kind == "distill" and r.nfe == 1 and key in r.metrics]
    return sorted(pool, key=lambda r: r.metrics[key])


def _within(rows: list[Row], best: Row, key: str) -> tuple[Row, ...]:
    sd = best.metrics_sd.get(key, 0.0)
    return tuple(r for r in rows if r is not best and
                 r.metrics[key] - best.metrics[key] <= sd + r.metrics_sd.get(key, 0.0))


def verdict(rows: list[Row | Mapping[str, Any]]) -> Verdict:
    """The :class:`Verdict` for one data set's rows (row dicts or records)."""
    rows = [Row.of(r) for r in rows]
    key = _key(rows)
    pool = candidates(rows)
    seeds = max((len(r.per_seed or [None]) for r in pool), default=0)
    if not pool:
        return Verdict(key, seeds)
    small = [r for r in pool if r.params_ratio is not None and r.params_ratio <= SMALL]
    return Verdict(key, seeds, best=pool[0], within=_within(pool, pool[0], key) if seeds > 1 else (),
                   small=small[0] if small else None,
                   small_within=_within(small, small[0], key) if small and seeds > 1 else ())


def _describe(r: Row, key: str, refs: dict[str, Row]) -> str:
    ref = refs.get(r.teacher)
    parts = [f"{key.upper()} {fmt(r.metrics[key])}"]
    if r.quality_ratio is not None and ref is not None:
        parts.append(f"{r.quality_ratio:.3g}x its teacher's ({ref.name}: {fmt(ref.metrics[key])})")
    if r.params_ratio is not None:
        parts.append(f"{r.params_ratio:.3g}x the teacher's parameters")
    if r.speedup is not None:
        parts.append(f"{r.speedup:.3g}x the teacher's samples/s")
    badges = "".join(f" [{f.badge}]" for f in r.flags or ())
    return f"{r.name}{badges}: " + ", ".join(parts)


def verdict_lines(rows: list[Row | Mapping[str, Any]]) -> list[str]:
    """The verdict as sentences (plain text with `code` for names)."""
    rows = [Row.of(r) for r in rows]
    v = verdict(rows)
    key = v.key
    if v.best is None:
        return ["No one-step student was scored on this data set."]
    refs = {r.stage: r for r in rows if r.reference}
    ties = ("one seed: no spread to tell near-ties apart (give eval.seeds several seeds)" if v.seeds < 2
            else "within the seed spread of it: " + (", ".join(r.name for r in v.within) or "none"))
    lines = [f"Best one-step model: {_describe(v.best, key, refs)}; {ties}."]
    if v.small is None:
        lines.append(f"No one-step student has at most 1/{round(1 / SMALL)} of its teacher's parameters.")
    elif v.small is v.best:
        lines.append(f"It is also the best small model (at most 1/{round(1 / SMALL)} of its teacher's "
                     "parameters).")
    else:
        small_ties = ("" if v.seeds < 2 else "; within the seed spread of it: "
                      + (", ".join(r.name for r in v.small_within) or "none"))
        lines.append(f"Best small model (at most 1/{round(1 / SMALL)} of its teacher's parameters): "
                     f"{_describe(v.small, key, refs)}{small_ties}.")
    return lines
