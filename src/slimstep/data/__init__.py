"""Data sets, all behind one small protocol.

A *spec* string names a data set: ``digits`` (the embedded default),
``fashion-mnist[:DIR]`` (the idx files: :mod:`slimstep.data.fashion`), ``toy2d:NAME``,
``folder:PATH``, ``npz:PATH``, ``cifar10:PATH``,
``latents:PATH`` (float NCHW in any range, as stored: :mod:`slimstep.data.latents`),
``vae:VAE_DIR:DATA`` (an image set encoded by a local VAE: :mod:`slimstep.data.vae`)
and ``pairs:DIR`` (teacher pairs, see :mod:`slimstep.pairs`).

Every data set returns samples in slimstep's data space: images NCHW float32
in [-1, 1], latents NCHW float32 as stored, 2-D toys ``(N, 2)`` float32; labels
int64 or ``None``.

Training batches are drawn by :meth:`Dataset.draw` from a ``torch.Generator``
the training loop seeds from (run seed, rank, step). Drawing is therefore a
pure function of that generator: a resumed run sees exactly the batches of an
uninterrupted one, with no sampler state to save. Finite data sets draw
indices uniformly with replacement (a stateless stand-in for epoch shuffling).
"""

from __future__ import annotations

import json
from pathlib import Path

from slimstep.data import images
from slimstep.data.base import (
    IMAGE_KINDS,
    IMAGE_OPTIONS,
    SPEC_KINDS,
    DataError,
    DataInfo,
    Dataset,
    LabelledSplits,
    ShapeOnly,
    loader_options,
    student_data,
)
from slimstep.data.digits import Digits
from slimstep.data.fashion import FashionMNIST, folder_of
from slimstep.data.latents import open_latents
from slimstep.data.pairs import PairsData
from slimstep.data.toy2d import Toy2D
from slimstep.data.vae import open_vae_data


def missing_path(spec: str) -> str | None:
    """The file or folder a spec names that does not exist (None: all there, or no files):
    what a recipe checks before anything trains."""
    kind, _, arg = spec.partition(":")
    if kind == "vae":
        vae, _, inner = arg.partition(":")
        return vae if not Path(vae).expanduser().is_dir() else missing_path(inner)
    if kind in (*IMAGE_KINDS, "latents") and not Path(arg).expanduser().exists():
        return arg
    if kind == "fashion-mnist":
        return None if Path(folder_of(spec)).expanduser().is_dir() else folder_of(spec)
    return None


def load_data(spec: str, **options) -> Dataset:
    """Open the data set named by ``spec``. ``options`` are loader options
    (``resolution``, ``center_crop``, ``flip``) passed to image loaders."""
    if spec == "none":  # what `slimstep import` records without --data
        raise DataError("data 'none': the teacher was imported without its data set, and this "
                        "method trains on real data: import it with --data SPEC (the data-free "
                        "methods flowmap and slt need none)")
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        return Digits(**options)
    if kind == "fashion-mnist":
        return FashionMNIST(arg or None, **options)
    if kind == "toy2d":
        return Toy2D(arg, **options)
    if kind == "pairs":
        if not arg:
            raise DataError("data spec 'pairs' needs a directory: pairs:DIR")
        return PairsData(arg, **options)
    if kind in ("folder", "npz", "cifar10"):
        if not arg:
            raise DataError(f"data spec '{spec}' needs a path: {kind}:PATH")
        return images.open_image_data(kind, arg, **options)
    if kind == "latents":
        if not arg:
            raise DataError("data spec 'latents' needs a path: latents:PATH")
        return open_latents(arg, **options)
    if kind == "vae":
        return open_vae_data(arg, **options)
    raise DataError(
        f"unknown data spec '{spec}' (expected digits, fashion-mnist[:DIR], toy2d:NAME, folder:PATH, npz:PATH, "
        "cifar10:PATH, latents:PATH, vae:VAE_DIR:DATA)"
    )


def data_fields(info) -> dict[str, str]:
    """The ``data`` and ``data_options`` entries of a samples file, from a model's
    :class:`~slimstep.data.DataInfo`: what ``slimstep eval --samples`` re-opens."""
    return {"data": info.spec, "data_options": json.dumps(loader_options(info.options), sort_keys=True)}


__all__ = ["IMAGE_KINDS", "IMAGE_OPTIONS", "SPEC_KINDS", "DataError", "DataInfo", "Dataset", "LabelledSplits",
           "ShapeOnly", "data_fields", "load_data", "loader_options", "missing_path", "student_data"]
