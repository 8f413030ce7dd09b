"""Typed contracts between the parts, at the ground floor: the package imports nothing
of slimstep's but :mod:`slimstep.errors`, and everything above passes these values
instead of dicts read by string keys.

* :mod:`slimstep.spec.rules` — the one checker (a value against its annotation and range);
* :mod:`slimstep.spec.config` — a run's settings: :class:`RunConfig` and its sections;
* :mod:`slimstep.spec.sampling` — the sampling rule a checkpoint prescribes (and the solvers);
* :mod:`slimstep.spec.results` — evaluation rows, flags and notes.
"""

from __future__ import annotations

from slimstep.spec.config import (
    DEVICE,
    PRECISIONS,
    DataSection,
    EMAConfig,
    Named,
    PairsConfig,
    RunConfig,
    SampleConfig,
    TrainConfig,
    resolve_device,
)
from slimstep.spec.rules import Section, check_kwargs, check_type, is_int, is_number, rule, shown
from slimstep.spec.sampling import SOLVERS

__all__ = ["DEVICE", "PRECISIONS", "SOLVERS", "DataSection", "EMAConfig", "Named", "PairsConfig", "RunConfig",
           "SampleConfig", "Section", "TrainConfig", "check_kwargs", "check_type", "is_int", "is_number",
           "resolve_device", "rule", "shown"]
