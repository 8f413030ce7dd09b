"""The settings of one training run, typed: the ``train``, ``sample`` and ``pairs``
sections, and :class:`RunConfig`, the whole config that :func:`slimstep.config.load_config`
returns and the loop, the methods and the runner are handed.

Each field's type, default, range and meaning is written once, here. A
:class:`RunConfig` keeps every value as the user wrote it (``lr: 1`` stays the int
1): :meth:`RunConfig.to_dict` is exactly the merged YAML + ``key=value`` dict, which
``config.json`` records and :func:`slimstep.run.recipe.config_hash` hashes, so typing
the config changed no stage's hash.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from slimstep.errors import ConfigError
from slimstep.spec.rules import Section, non_negative, positive, rule, shown, unit
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
    import torch  # why: the ground floor stays importable without torch's start-up cost

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



@dataclass(frozen=True)
class DataSection:
    """The ``data`` section: a data set's spec string and its loader options."""

    spec: str
    options: dict = field(default_factory=dict)  # resolution, center_crop, flip, ...

    @classmethod
    def from_dict(cls, d: dict) -> DataSection:
        unknown = sorted(set(d) - {"spec", "options"})
        if unknown:
            raise ConfigError(f"unknown config key 'data.{unknown[0]}' (valid: spec, options)")
        if not isinstance(d.get("spec"), str) or not d["spec"]:
            raise ConfigError(f"data.spec must name a data set (e.g. digits, toy2d:moons), not {d.get('spec')!r}")
        options = d.get("options", {})
        if not isinstance(options, dict):
            raise ConfigError(f"data.options must be a mapping (e.g. data.options.resolution=32), "
                              f"not {options!r}")
        return cls(d["spec"], dict(options))

    def to_dict(self) -> dict:
        return {"spec": self.spec, "options": dict(self.options)}


@dataclass(frozen=True)
class Named:
    """An open section, ``net`` or ``method``: a registered name and the keyword options of
    what it names (the network's constructor, the method's :class:`Options`), checked by
    their owner."""

    name: str
    options: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict, section: str) -> Named:
        if not isinstance(d.get("name"), str):
            raise ConfigError(f"{section}.name must be a name, not {d.get('name')!r}")
        return cls(d["name"], {k: v for k, v in d.items() if k != "name"})

    def to_dict(self) -> dict:
        return {"name": self.name, **self.options}


#: the input paths a run reads (checkpoint / pairs folders), resolved by slimstep.inputs
INPUTS = ("teacher", "pairs", "init")


@dataclass(frozen=True)
class RunConfig:
    """One training run's whole config: what the loop trains, on what, how, and from which
    inputs. Built by :func:`slimstep.config.load_config`; never mutated (``replace``)."""

    data: DataSection
    net: Named
    method: Named
    train: TrainConfig
    sample: SampleConfig
    teacher: str | None = None  # a teacher checkpoint folder
    pairs: str | None = None  # a teacher-pairs folder
    init: str | None = None  # a checkpoint the student starts from

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """Check a complete config dict (defaults merged in) section by section."""
        for section in ("data", "net", "method", "train", "sample"):
            if not isinstance(d.get(section), dict):
                raise ConfigError(f"'{section}' is a section (a mapping of keys), not {shown(d.get(section))}")
        for key in INPUTS:
            if d.get(key) is not None and not isinstance(d[key], str):
                raise ConfigError(f"{key} must be a path, not {shown(d[key])}")
        return cls(data=DataSection.from_dict(d["data"]), net=Named.from_dict(d["net"], "net"),
                   method=Named.from_dict(d["method"], "method"),
                   train=TrainConfig.from_dict(d["train"], "train"),
                   sample=SampleConfig.from_dict(d["sample"], "sample"),
                   **{k: d.get(k) for k in INPUTS})

    def to_dict(self) -> dict:
        """The plain config: what ``config.json`` records and the stage hash covers."""
        return {**{k: getattr(self, k) for k in INPUTS}, "data": self.data.to_dict(), "net": self.net.to_dict(),
                "method": self.method.to_dict(), "train": self.train.to_dict(), "sample": self.sample.to_dict()}

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)
