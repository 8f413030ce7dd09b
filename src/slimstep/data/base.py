"""The data protocol's own types, below every data set: what a data set returns
(:class:`DataInfo`), the protocol itself (:class:`Dataset`), the shared in-memory
labelled base, and the image loader options a model records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Protocol

import torch

from slimstep.errors import SlimstepError


class DataError(SlimstepError, ValueError):
    """A data spec or file a user handed in is unusable (one clear line)."""


@dataclass(frozen=True)
class DataInfo:
    """What a checkpoint records about the data its model was trained on."""

    spec: str  # e.g. "digits", "toy2d:moons", "folder:/data/afhq"
    kind: str  # "image", "latent" (NCHW, not in [-1, 1]) or "points"
    shape: tuple[int, ...]  # one sample: (C, H, W) or (2,)
    num_classes: int = 0  # 0 = unconditional
    scaling: str = ""  # how raw values map to data space, e.g. "uint8/127.5-1"
    options: dict = field(default_factory=dict)  # resolution, center_crop, flip...

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DataInfo:
        known = {f.name for f in fields(cls)}  # a file's extra keys are not ours to pass on
        d = {k: v for k, v in d.items() if k in known}
        d["shape"] = tuple(d["shape"])
        return cls(**d)


class Dataset(Protocol):
    info: DataInfo

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A random training batch of ``n`` samples (and labels, or None)."""

    def reference(
        self, n: int | None = None, *, split: str = "test", seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A fixed evaluation set: the ``split`` of a finite data set (first ``n``
        of it, all if ``n`` is None), or ``n`` fresh samples drawn with ``seed``
        for an infinite one."""


class LabelledSplits:
    """A labelled image set held in memory with fixed ``train`` / ``test`` splits (digits,
    Fashion-MNIST): subclasses set ``x``, ``y`` (the train split), ``flip`` and ``info``,
    and define ``split(name) -> (x, y)``."""

    x: torch.Tensor
    y: torch.Tensor
    flip: bool
    info: DataInfo

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def draw(self, n, generator):
        idx = torch.randint(len(self.x), (n,), generator=generator)
        x = self.x[idx]
        if self.flip:  # one coin per image
            m = torch.rand(n, generator=generator) < 0.5
            x = torch.where(m[:, None, None, None], x.flip(-1), x)
        return x, self.y[idx]

    def reference(self, n=None, *, split="test", seed=0):
        x, y = self.split(split)
        return (x, y) if n is None else (x[:n], y[:n])


class ShapeOnly:
    """The data of a data-free method (flowmap, SLT): the teacher fixes the sample shape
    and the classes, nothing is read. ``draw`` gives placeholders of the right shape (the
    methods take only the batch size, shape and device from a batch and draw their own
    noise and labels), so a teacher imported without its data set trains them."""

    def __init__(self, info: DataInfo) -> None:
        self.info = info

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
        return torch.zeros(n, *self.info.shape), None

    def reference(self, n=None, *, split="test", seed=0):
        raise DataError("a data-free run reads no data set: name one (--data) to evaluate against")


#: Image loader options that change the images themselves (``flip`` only augments training).
IMAGE_OPTIONS = ("resolution", "center_crop")
#: The data specs whose samples are images in [-1, 1] scored by the image protocol.
IMAGE_KINDS = ("folder", "npz", "cifar10")


def loader_options(options: dict) -> dict:
    """The options (``DataInfo.options`` or a config's ``data.options``) that re-open
    the images a model trained on, at its resolution and crop: what evaluation passes
    to :func:`load_data` so its real images match the samples."""
    return {k: options[k] for k in IMAGE_OPTIONS if options.get(k)}


def student_data(data: dict, spec: str, options: dict) -> dict:
    """A config's ``data`` section made its teacher's: the teacher's ``spec`` and its
    resolution / crop (a student must see the images its teacher saw), the config's other
    options (``flip``) kept. A config that sets another resolution or crop is refused."""
    own = dict(data.get("options") or {})
    for key, value in loader_options(options).items():
        if own.get(key) and own[key] != value:
            raise DataError(f"the config sets data.options.{key}={own[key]!r}, its teacher trained with {value!r}")
        own[key] = value
    return {**data, "spec": spec, "options": own}


#: The kinds a spec may name (``KIND`` or ``KIND:ARG``).
SPEC_KINDS = ("digits", "fashion-mnist", "toy2d", "pairs", "folder", "npz", "cifar10", "latents", "vae")
