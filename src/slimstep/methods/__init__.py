"""Methods: each owns only its math. See :class:`slimstep.methods.base.Method`."""

from __future__ import annotations

import importlib

from slimstep.methods.base import Method, MethodError
from slimstep.spec import RunConfig

_REGISTRY = {
    "flow_matching": "slimstep.methods.flow_matching:FlowMatching",
    "reflow": "slimstep.methods.reflow:Reflow",
    "annealing-reflow": "slimstep.methods.reflow:AnnealingReflow",
    "slimflow": "slimstep.methods.slimflow:SlimFlow",
    "distill": "slimstep.methods.distill:Distill",
    "gdd": "slimstep.methods.gdd:GDD",
    "gdd-i": "slimstep.methods.gdd:GDDI",
    "flowmap": "slimstep.methods.flowmap:FlowMap",
    "meanflow": "slimstep.methods.meanflow:MeanFlow",
    "slt": "slimstep.methods.slt:SLT",
    "dmd2": "slimstep.methods.dmd2:DMD2",
    "scd": "slimstep.methods.consistency:SCD",
    "ect": "slimstep.methods.consistency:ECT",
}


def method_names(students_only: bool = False) -> list[str]:
    """Every registered method (``students_only``: without the teacher's flow_matching)."""
    return sorted(n for n in _REGISTRY if not (students_only and n == "flow_matching"))


def method_class(name: str) -> type[Method]:
    if name not in _REGISTRY:
        raise MethodError(f"unknown method '{name}' (expected one of {', '.join(sorted(_REGISTRY))})")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_method(cfg: RunConfig, info, device, teacher=None) -> Method:
    """Instantiate the method named by ``cfg.method.name``."""
    return method_class(cfg.method.name)(cfg, info, device=device, teacher=teacher)


__all__ = ["Method", "MethodError", "build_method", "method_class"]
