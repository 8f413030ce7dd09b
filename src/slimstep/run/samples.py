"""Drawing a model's samples, plain or screened, and the arrays of a samples file: the one
place where ``slimstep sample`` and ``slimstep run`` assemble them.

:func:`draw` gives a :class:`Drawn` (the samples, their labels, NFE, MACs, seconds and the
screening's record); :func:`npz_fields` turns it into the arrays of a ``.npz`` samples
file (``samples``, ``seeds``, ``nfe``, ``macs``, ``data``, ``data_options``, the
screening's ``candidate``/``score``/``screen``/``scorer``/``final``/``select``/
``temperature``, a latent model's ``latents``/``latent_data``, ``labels``), which
``slimstep eval --samples`` re-opens; :func:`save` writes it with its picture.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slimstep.data import vae
from slimstep.eval.speed import sample_macs
from slimstep.files import write_npz
from slimstep.generator import Generator
from slimstep.screen import Scorer, screen, screen_macs, screen_nfe
from slimstep.viz import save_picture


@dataclass
class Screening:
    """Noise screening (:mod:`slimstep.screen`): ``candidates`` noises per output, scored
    by ``scorer`` (:func:`slimstep.screen.make_scorer`, named ``scorer_name``), the kept
    noise mapped by the ``final`` model (``student`` or ``teacher``)."""

    candidates: int
    scorer: Scorer
    scorer_name: str
    final: str = "student"
    teacher: Generator | None = None
    select: str = "argmax"
    temperature: float | None = None

    def nfe(self, student: Generator) -> int:
        """Network calls per output, the scorer's included."""
        return screen_nfe(self.candidates, student, self.scorer, self.final, self.teacher)

    def macs(self, student: Generator) -> int:
        """Multiply-accumulates per output, the scorer's included."""
        return screen_macs(student, self.candidates, self.scorer, self.final, self.teacher)


@dataclass
class Drawn:
    """``n`` samples drawn from seeds ``seed .. seed + n - 1`` (in the model's data space:
    a latent model's latents)."""

    x: torch.Tensor
    labels: torch.Tensor | None
    seed: int
    nfe: int | None
    seconds: float
    macs: int | None = None
    #: the screening's record (``candidate``, ``score``, ``screen``, ``scorer``, ``final``,
    #: ``select``, ``temperature`` with ``select: resample``), or other arrays to keep
    extra: dict[str, Any] = field(default_factory=dict)


def draw(gen: Generator, n: int, seed: int = 0, *, screening: Screening | None = None,
         y: torch.Tensor | None = None, labels: str = "random", batch_size: int = 256,
         with_macs: bool = False) -> Drawn:
    """``n`` samples of ``gen`` from ``seed`` (:meth:`Generator.generate`), screened when
    ``screening`` is given (:func:`slimstep.screen.screen`; ``labels="null"`` then samples
    a conditional model unconditionally, as plain sampling does). ``with_macs`` counts the
    MACs per sample after the timed draw."""
    tic = time.perf_counter()
    if screening is None:
        x, ys = gen.generate(n, seed=seed, y=y, batch_size=batch_size, labels=labels)
        nfe, extra = gen.nfe, {}
    else:
        s = screening
        if labels == "null" and y is None and gen.num_classes:
            y = torch.full((n,), gen.num_classes, dtype=torch.long)
        x, ys, info = screen(gen, n, s.candidates, s.scorer, seed=seed, final=s.final, teacher=s.teacher,
                             y=y, batch_size=batch_size, select=s.select, temperature=s.temperature)
        nfe = info["nfe"]
        extra = {"candidate": info["candidate"].numpy(), "score": info["score"].numpy(),
                 "screen": s.candidates, "scorer": s.scorer_name, "final": s.final, "select": s.select}
        if s.select == "resample":
            extra["temperature"] = 1.0 if s.temperature is None else s.temperature
    secs = time.perf_counter() - tic
    m = None
    if with_macs:
        m = sample_macs(gen) if screening is None else screening.macs(gen)
    return Drawn(x, ys, seed, nfe, secs, m, extra)


def npz_fields(drawn: Drawn, data: str, data_options: dict, *, decode: bool = False,
               temperature: bool = True) -> dict[str, Any]:
    """The arrays of a samples file. ``data`` / ``data_options``: the model's data spec
    and loader options (:func:`slimstep.data.loader_options`). ``decode``: a ``vae:``
    model's latents are decoded to the images they stand for (``samples``, ``data`` the
    image data set), the latents kept as ``latents`` / ``latent_data``. ``temperature``:
    keep the resampling temperature (``slimstep run``'s kept samples never held it)."""
    x, latent = drawn.x, {}
    kind, _, arg = data.partition(":")
    if decode and kind == "vae":  # a latent model's samples are the images its VAE decodes them to
        latent = {"latents": x.numpy(), "latent_data": data}
        x, data = vae.decode(x, arg), vae.parse(arg)[1]
    arrays = {"samples": x.numpy(), "seeds": list(range(drawn.seed, drawn.seed + len(drawn.x)))}
    arrays.update({k: v for k, v in (("nfe", drawn.nfe), ("macs", drawn.macs)) if v is not None})
    arrays.update(data=data, data_options=json.dumps(data_options, sort_keys=True))
    arrays.update({k: v for k, v in drawn.extra.items() if temperature or k != "temperature"}, **latent)
    if drawn.labels is not None:
        arrays["labels"] = drawn.labels.numpy()
    return arrays


def save(path: str | Path, arrays: dict[str, Any], png: str | Path | None = None,
         picture: torch.Tensor | None = None, title: str = "") -> None:
    """Write a samples file and, with ``png``, its picture (``picture``, or the file's
    ``samples``)."""
    write_npz(path, **arrays)
    if png is not None:
        save_picture(torch.from_numpy(arrays["samples"]) if picture is None else picture, png, title=title)
