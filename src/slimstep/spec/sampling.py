"""The sampling rule a checkpoint prescribes: how its network turns noise into a sample.

A method's ``export()`` returns one, the checkpoint's ``config.json`` records it
(its ``generator`` section, :meth:`SamplingRule.to_dict`), and the generator and
the exporter dispatch on its type. Two shapes, a closed set:

* :class:`VelocityRule` — a velocity field integrated from noise to data with an ODE
  solver (:data:`SOLVERS`, :mod:`slimstep.solvers`); ``solver=euler, steps=1`` is the
  one-step Euler map of the reflow / slimflow / GDD / DMD2 / consistency students.
* :class:`TwoTimeRule` — a network with a second time input taken in one jump
  (:func:`slimstep.onestep.two_time_step`): ``flowmap``, ``meanflow`` and ``slt``.

The solver names are written here once; everything that offers a choice of
solver (the ``sample`` and ``pairs`` sections, the command line, the importers)
reads :data:`SOLVERS`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from slimstep.errors import ConfigError
from slimstep.spec.rules import Section, count, is_number, rule, shown

SOLVERS = ("euler", "heun", "dopri5")
#: how an error line lists them
SOLVER_NAMES = "euler, heun or dopri5"
#: the kinds sampled by one two-time jump (the method that trained them)
TWO_TIME_KINDS = ("flowmap", "meanflow", "slt")


def is_solver(v: Any) -> bool:
    return v in SOLVERS


@dataclass(frozen=True)
class VelocityRule(Section):
    """Integrate the velocity field from t = 0 (noise) to 1 (data)."""

    kind: ClassVar[str] = "velocity"
    solver: str = rule("heun", is_solver, SOLVER_NAMES)
    steps: int = rule(16, count, "an integer >= 1")  # euler / heun steps
    cfg_scale: float = rule(1.0, None, "a finite number")  # classifier-free guidance; 1 = the conditional model alone
    rtol: float | None = rule(None, lambda v: is_number(v) and v > 0, "a positive number")  # dopri5
    atol: float | None = rule(None, lambda v: is_number(v) and v > 0, "a positive number")

    @property
    def one_step(self) -> bool:
        return self.solver == "euler" and self.steps == 1

    @property
    def nfe(self) -> int | None:
        """Evaluations per sample, when fixed (dopri5's depends on its error control)."""
        return None if self.solver == "dopri5" else self.steps * (2 if self.solver == "heun" else 1)


@dataclass(frozen=True)
class TwoTimeRule(Section):
    """One jump ``x = z + net(z, t, y, s)`` (a depth-gap SLT student: ``steps`` depth jumps)."""

    kind: str = rule("flowmap", lambda v: v in TWO_TIME_KINDS, " or ".join(TWO_TIME_KINDS))
    t: float = rule(0.0, None, "a finite number")  # the start time of the jump
    s: float = rule(1.0, None, "a finite number")  # its gap input (a flow map's δ times its gap scale)
    nfe: int = rule(1, count, "an integer >= 1")
    steps: int | None = rule(None, count, "an integer >= 1")  # depth-gap SLT only
    layer_map: str | list | None = None  # SLT's step -> teacher-layer record


SamplingRule = VelocityRule | TwoTimeRule
#: every kind a checkpoint may name
KINDS = ("velocity", *TWO_TIME_KINDS)


def sampling_rule(d: Any, where: str, error: type[Exception] = ConfigError) -> SamplingRule:
    """A ``generator`` section (``{"kind": ..., ...}``) as its rule; an unknown kind or key,
    or a value out of range, is one line raised as ``error``."""
    if not isinstance(d, dict):
        raise error(f"{where}: the generator section must be a mapping, not {shown(d)}")
    kind = d.get("kind")
    if kind not in KINDS:
        raise error(f"{where}: unknown generator kind {kind!r} (known: {', '.join(KINDS)})")
    cls = VelocityRule if kind == "velocity" else TwoTimeRule
    known = [f.name for f in fields(cls) if f.name != "kind"]
    for k in d:
        if k != "kind" and k not in known:
            raise error(f"{where}: generator kind {kind!r} has no key {k!r} (known: {', '.join(known)})")
    if kind == "velocity":
        if not {"solver", "steps"} <= set(d):
            raise error(f"{where}: a velocity generator needs solver and steps")
        return VelocityRule.from_dict({k: v for k, v in d.items() if k != "kind"}, f"{where}: generator",
                                      error)
    return TwoTimeRule.from_dict(d, f"{where}: generator", error)


def rule_dict(r: SamplingRule) -> dict:
    """The ``generator`` section as config.json records it: the kind first, unset keys left out."""
    return {"kind": r.kind, **{k: v for k, v in r.to_dict().items() if v is not None and k != "kind"}}
