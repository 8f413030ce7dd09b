"""``latents:PATH``: a float data set that is not an image in [-1, 1], as stored.

An ``.npz`` with a float array ``x`` (or ``latents``, or ``arr_0``) shaped NCHW with
any number of channels and any finite values — SD-VAE latents (4 × 32 × 32 at 256 px,
scaled by the VAE's ``scaling_factor``, 0.18215, as the DiT / SiT code stores them) go
past ±4 — and optional labels ``y`` (or ``labels``), ints >= 0. Nothing is rescaled or
clamped: the model learns the values as they are (``info.scaling`` says so), and its
samples come back in the same units.

Why a kind of its own, not an option of ``npz:``: a data spec travels alone (a
checkpoint's ``data.spec``, ``slimstep import --data``, a samples file's ``data``), and
whatever re-opens it must get the same loader; an ``npz:`` file whose values leave
[-1, 1] is refused with a line that points here.

Latents are not images: ``resolution`` and ``center_crop`` are refused (resampling a
latent grid is not resizing the picture behind it) and the image protocol (SWD, FID)
does not score them (:func:`slimstep.eval.evaluate` refuses in one line). ``flip``
(horizontal) is allowed: it is how DiT-style latent sets are augmented, by flipping the
image before encoding; flipping the latent grid only approximates that.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from slimstep.data.base import DataError, DataInfo
from slimstep.data.images import ImageData, npz_labels, read_npz

SCALING = "float, as stored (not rescaled)"


def open_latents(path: str, *, flip: bool = False, **unused) -> ImageData:
    """Open ``latents:PATH`` (see the module docstring)."""
    if unused:
        raise DataError(f"latents take the option flip only, not {sorted(unused)} (latents are not resized)")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"latents file does not exist: {path}")
    arrays, key = read_npz(p, ("x", "latents", "arr_0"), "latent")
    x = arrays[key]
    if not np.issubdtype(x.dtype, np.floating) or x.ndim != 4 or len(x) == 0:
        raise DataError(f"{p}: latents '{key}' must be a non-empty float array NCHW, got {x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{p}: latents '{key}' hold {int((~np.isfinite(x)).sum())} NaN or inf values")
    y = npz_labels(arrays, len(x), p)
    info = DataInfo(
        spec=f"latents:{path}", kind="latent", shape=tuple(x.shape[1:]),
        num_classes=0 if y is None else int(y.max()) + 1, scaling=SCALING, options={"flip": flip},
    )
    return ImageData(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), y, info)


__all__ = ["open_latents"]
