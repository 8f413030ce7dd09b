"""Typed contracts between the parts, at the ground floor (imports nothing of slimstep's
but :mod:`slimstep.errors`).

Today this holds the **training settings** (the ``train`` section of a config) and
the **sampling settings** (``sample``) as frozen dataclasses: each field's type,
default, allowed range and meaning written once. :func:`TrainConfig.from_dict`
builds one from the merged YAML + ``key=value`` overrides and refuses, in one
line naming the key, anything of the wrong type or out of range — before a run
writes anything. It also checks **network options** against the network
constructor's own signature (:func:`check_kwargs`), so ``net.bogus=1`` names the
valid keys instead of ending in a ``TypeError``.

The config stays a plain dict on its way through the loop and into
``config.json``; these classes check it and never rewrite its values, so what a
run records (and hashes, see :func:`slimstep.run.config_hash`) is exactly
what the user wrote.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from slimstep.errors import ConfigError

# ---------------------------------------------------------------- value checks


def _kind(v: Any) -> str:
    """How an error line shows a bad value: the value itself when short, else its type."""
    text = f"'{v}'" if isinstance(v, str) else repr(v)
    return text if len(text) <= 40 else f"a {type(v).__name__}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


_BASE = {
    "int": (_is_int, "an integer"),
    "float": (_is_real, "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "None": (lambda v: v is None, "null"),
}


def check_type(where: str, value: Any, annotation: str) -> None:
    """Refuse ``value`` unless it fits ``annotation`` (a string such as ``"int"``,
    ``"float | None"``, ``"list[int] | tuple[int, ...]"``). An annotation this
    checker does not know passes: the constructor then has the last word."""
    alts = [a.strip() for a in str(annotation).replace("typing.", "").split("|")]
    need = []
    for a in alts:
        m = re.fullmatch(r"(list|tuple)\[(\w+)(?:, \.\.\.)?\]|(list|tuple)", a)
        if m:
            inner = _BASE.get(m.group(2) or "")
            if isinstance(value, (list, tuple)) and (inner is None or all(inner[0](x) for x in value)):
                return
            need.append(f"a list of {inner[1].split(' ', 1)[1]}s" if inner else "a list")
        elif a in _BASE:
            if _BASE[a][0](value):
                return
            need.append(_BASE[a][1])
        else:
            return  # not a type this checker reads
    raise ConfigError(f"{where} must be {' or '.join(dict.fromkeys(need))}, not {_kind(value)}")


def check_kwargs(where: str, options: dict, fn, skip: tuple[str, ...] = ()) -> None:
    """Check ``options`` against the keyword parameters of ``fn`` (a class or
    function): every key must be one of them and of its annotated type."""
    params = {n: p for n, p in inspect.signature(fn).parameters.items()
              if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for k, v in options.items():
        if k in skip:
            continue
        if k not in params:
            valid = ", ".join(n for n in params if n not in skip)
            raise ConfigError(f"unknown option '{where}.{k}' (valid: {valid})")
        if params[k].annotation is not inspect.Parameter.empty:
            check_type(f"{where}.{k}", v, params[k].annotation)


# ---------------------------------------------------------------- typed sections


def _rule(default, ok=None, need: str = "", **kw):
    """A dataclass field with a range check ``ok(value) -> bool`` described by ``need``."""
    return field(default=default, metadata={"ok": ok, "need": need}, **kw)


class _Section:
    """A typed config section: ``from_dict`` checks, ``to_dict`` is the plain-data view."""

    @classmethod
    def from_dict(cls, d: Any, where: str):
        if not isinstance(d, dict):
            raise ConfigError(f"'{where}' is a section (a mapping of keys), not {_kind(d)}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"unknown config key '{where}.{unknown[0]}' (valid: {', '.join(names)})")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            v, key = d[f.name], f"{where}.{f.name}"
            sub = hints[f.name]
            if isinstance(sub, type) and issubclass(sub, _Section):
                values[f.name] = sub.from_dict(v, key)
                continue
            check_type(key, v, f.type)
            ok = f.metadata.get("ok")
            if ok is not None and v is not None and not ok(v):
                raise ConfigError(f"{key} must be {f.metadata['need']}, not {_kind(v)}")
            values[f.name] = v
        return cls(**values)

    def to_dict(self) -> dict:
        def plain(v):
            if isinstance(v, _Section):
                return v.to_dict()
            return list(v) if isinstance(v, tuple) else v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _unit(v) -> bool:
    return 0 <= v <= 1


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
PRECISIONS = ("fp32", "bf16")  # fp16 would need a gradient scaler the loop does not have
SOLVERS = ("euler", "heun", "dopri5")


@dataclass(frozen=True)
class EMAConfig(_Section):
    """The exponential moving average of the weights (:class:`slimstep.train.ema.EMA`)."""

    decay: float = _rule(0.999, _unit, "between 0 and 1")  # per optimizer step
    half_life_images: float | None = _rule(None, _positive, "positive (or null)")  # EDM's, replaces decay
    start: int = _rule(0, _non_negative, "0 or more")  # steps that only copy the weights
    warmup: bool = True  # ramp the decay up: a short run's average is not the random init
    rampup: float = _rule(0.05, _non_negative, "0 or more")  # half-life cap, x images seen


@dataclass(frozen=True)
class TrainConfig(_Section):
    """The ``train`` section: how the one loop (:func:`slimstep.train.loop.train`) trains."""

    steps: int = _rule(1000, _positive, "at least 1")
    batch_size: int = _rule(128, _positive, "at least 1")
    optimizer: str = _rule("adam", lambda v: v in ("adam", "adamw"), "adam or adamw")
    lr: float = _rule(2e-4, _positive, "positive")
    betas: list[float] = _rule((0.9, 0.999), lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
                               "two numbers in [0, 1)")
    weight_decay: float = _rule(0.0, _non_negative, "0 or more")
    warmup: int = _rule(0, _non_negative, "0 or more")  # linear warm-up steps
    # constant | cosine (decay to min_lr x lr at the last step)
    schedule: str = _rule("constant", lambda v: v in ("constant", "cosine"), "constant or cosine")
    min_lr: float = _rule(0.0, _unit, "between 0 and 1")  # the cosine's floor, a fraction of lr
    grad_clip: float = _rule(1.0, _non_negative, "0 (off) or more")  # max global grad norm
    accum: int = _rule(1, _positive, "at least 1")  # micro-batches per optimizer step
    ema: EMAConfig = field(default_factory=EMAConfig)
    precision: str = _rule("fp32", lambda v: v in PRECISIONS, " or ".join(PRECISIONS))  # bf16: autocast
    compile: bool = False  # torch.compile the trained modules
    seed: int = _rule(0, _non_negative, "0 or more")
    log_every: int = _rule(50, _positive, "at least 1")
    ckpt_every: int = _rule(500, _positive, "at least 1")
    keep: int = _rule(2, _positive, "at least 1")  # snapshots kept on disk
    device: str = _rule("auto", lambda v: DEVICE.fullmatch(v) is not None, "auto, cpu, cuda, cuda:N or mps")


@dataclass(frozen=True)
class SampleConfig(_Section):
    """The ``sample`` section: a velocity model's default ODE sampler."""

    solver: str = _rule("heun", lambda v: v in SOLVERS, " or ".join(SOLVERS))
    steps: int = _rule(16, _positive, "at least 1")  # euler / heun steps
    cfg_scale: float = 1.0  # classifier-free guidance; 1 = the conditional model alone
    rtol: float = _rule(1e-5, _positive, "positive")  # dopri5 tolerances
    atol: float = _rule(1e-5, _positive, "positive")


@dataclass(frozen=True)
class PairsConfig(_Section):
    """How teacher pairs are made (:func:`slimstep.pairs.generate_pairs`, a recipe's
    ``pairs`` stage). Defaults are the recipe's: fixed-step Heun, seeds from 10⁶ so
    pairs never share a seed with the evaluation's."""

    n: int = _rule(4096, _positive, "at least 1")
    solver: str = _rule("heun", lambda v: v in SOLVERS, " or ".join(SOLVERS))
    steps: int = _rule(16, _positive, "at least 1")  # euler / heun
    seed: int = _rule(10**6, _non_negative, "0 or more")  # pair i uses seed + i
    rtol: float = _rule(1e-5, _positive, "positive")  # dopri5
    atol: float = _rule(1e-5, _positive, "positive")
    cfg_scale: float | None = None  # None = the teacher's own
    shard_size: int = _rule(1024, _positive, "at least 1")
    batch_size: int = _rule(256, _positive, "at least 1")


def resolve_device(name: str):
    """``auto`` -> cuda when available, else cpu; a device that is not there is one error line."""
    import torch

    if not isinstance(name, str) or not DEVICE.fullmatch(name):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, not {_kind(name)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"device {name} is not available here (CUDA devices: "
                          f"{torch.cuda.device_count() if torch.cuda.is_available() else 'none'})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device mps is not available here")
    return dev
