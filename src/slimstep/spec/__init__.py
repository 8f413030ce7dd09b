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
run records (and hashes, see :func:`slimstep.recipes.config_hash`) is exactly
what the user wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from slimstep.errors import ConfigError
from slimstep.spec.rules import (
    Section,
    check_kwargs,
    check_type,
    is_int,
    is_number,
    non_negative,
    positive,
    rule,
    shown,
    unit,
)
from slimstep.spec.sampling import SOLVERS

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
PRECISIONS = ("fp32", "bf16")  # fp16 would need a gradient scaler the loop does not have


@dataclass(frozen=True)
class EMAConfig(Section):
    """The exponential moving average of the weights (:class:`slimstep.train.ema.EMA`)."""

    decay: float = rule(0.999, unit, "between 0 and 1")  # per optimizer step
    half_life_images: float | None = rule(None, positive, "positive (or null)")  # EDM's, replaces decay
    start: int = rule(0, non_negative, "0 or more")  # steps that only copy the weights
    warmup: bool = True  # ramp the decay up: a short run's average is not the random init
    rampup: float = rule(0.05, non_negative, "0 or more")  # half-life cap, x images seen


@dataclass(frozen=True)
class TrainConfig(Section):
    """The ``train`` section: how the one loop (:func:`slimstep.train.loop.train`) trains."""

    steps: int = rule(1000, positive, "at least 1")
    batch_size: int = rule(128, positive, "at least 1")
    optimizer: str = rule("adam", lambda v: v in ("adam", "adamw"), "adam or adamw")
    lr: float = rule(2e-4, positive, "positive")
    betas: list[float] = rule((0.9, 0.999), lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
                               "two numbers in [0, 1)")
    weight_decay: float = rule(0.0, non_negative, "0 or more")
    warmup: int = rule(0, non_negative, "0 or more")  # linear warm-up steps
    # constant | cosine (decay to min_lr x lr at the last step)
    schedule: str = rule("constant", lambda v: v in ("constant", "cosine"), "constant or cosine")
    min_lr: float = rule(0.0, unit, "between 0 and 1")  # the cosine's floor, a fraction of lr
    grad_clip: float = rule(1.0, non_negative, "0 (off) or more")  # max global grad norm
    accum: int = rule(1, positive, "at least 1")  # micro-batches per optimizer step
    ema: EMAConfig = field(default_factory=EMAConfig)
    precision: str = rule("fp32", lambda v: v in PRECISIONS, " or ".join(PRECISIONS))  # bf16: autocast
    compile: bool = False  # torch.compile the trained modules
    seed: int = rule(0, non_negative, "0 or more")
    log_every: int = rule(50, positive, "at least 1")
    ckpt_every: int = rule(500, positive, "at least 1")
    keep: int = rule(2, positive, "at least 1")  # snapshots kept on disk
    device: str = rule("auto", lambda v: DEVICE.fullmatch(v) is not None, "auto, cpu, cuda, cuda:N or mps")


@dataclass(frozen=True)
class SampleConfig(Section):
    """The ``sample`` section: a velocity model's default ODE sampler."""

    solver: str = rule("heun", lambda v: v in SOLVERS, " or ".join(SOLVERS))
    steps: int = rule(16, positive, "at least 1")  # euler / heun steps
    cfg_scale: float = 1.0  # classifier-free guidance; 1 = the conditional model alone
    rtol: float = rule(1e-5, positive, "positive")  # dopri5 tolerances
    atol: float = rule(1e-5, positive, "positive")


@dataclass(frozen=True)
class PairsConfig(Section):
    """How teacher pairs are made (:func:`slimstep.pairs.generate_pairs`, a recipe's
    ``pairs`` stage). Defaults are the recipe's: fixed-step Heun, seeds from 10⁶ so
    pairs never share a seed with the evaluation's."""

    n: int = rule(4096, positive, "at least 1")
    solver: str = rule("heun", lambda v: v in SOLVERS, " or ".join(SOLVERS))
    steps: int = rule(16, positive, "at least 1")  # euler / heun
    seed: int = rule(10**6, non_negative, "0 or more")  # pair i uses seed + i
    rtol: float = rule(1e-5, positive, "positive")  # dopri5
    atol: float = rule(1e-5, positive, "positive")
    cfg_scale: float | None = None  # None = the teacher's own
    shard_size: int = rule(1024, positive, "at least 1")
    batch_size: int = rule(256, positive, "at least 1")


def resolve_device(name: str):
    """``auto`` -> cuda when available, else cpu; a device that is not there is one error line."""
    import torch

    if not isinstance(name, str) or not DEVICE.fullmatch(name):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, not {shown(name)}")
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


__all__ = ["DEVICE", "PRECISIONS", "SOLVERS", "EMAConfig", "PairsConfig", "SampleConfig", "Section", "TrainConfig",
           "check_kwargs", "check_type", "is_int", "is_number", "resolve_device", "rule", "shown"]
