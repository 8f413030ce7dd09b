"""Fréchet distance between Gaussians fitted to features, and reference stats on disk.

``FD = |mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^{1/2})`` — the Fréchet (Wasserstein-2)
distance between ``N(mu1, S1)`` and ``N(mu2, S2)``. With Inception pool features it
is FID (Heusel et al. 2017); with slimstep's digits classifier it is "FD".

Reference statistics are stored as ``.npz`` with keys ``mu`` [D] and ``sigma`` [D, D]
(the format of EDM and pytorch-fid), read with ``allow_pickle=False``. Files slimstep
writes also hold ``features`` [N, D] float32, the reference features themselves, which
KID needs (:mod:`slimstep.eval.kid`); files without them (EDM's, pytorch-fid's, older
slimstep's) still give FID.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from slimstep.errors import load_refusal
from slimstep.eval.base import EvalError


def feature_stats(feats: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of features ``[N, D]`` in float64; ``sigma`` is the unbiased
    (``N - 1``) covariance, as in pytorch-fid and EDM."""
    f = feats.detach().cpu().double().numpy() if isinstance(feats, torch.Tensor) else feats
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise EvalError(f"feature_stats needs features [N >= 2, D], got shape {f.shape}")
    if not np.isfinite(f).all():
        raise EvalError("feature_stats: features contain NaN or inf")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_eigh(s: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric PSD matrix; round-off negatives clipped to 0,
    a clearly negative eigenvalue (not a covariance) raised."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    if not np.isfinite(w).all() or w.min() < -1e-6 * max(1.0, np.abs(w).max()):
        raise EvalError(f"frechet_distance: {what} is not a symmetric PSD covariance (eigenvalue {w.min():.3g})")
    return np.clip(w, 0.0, None), v


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """``tr sqrtm(S1 S2)`` for covariances S1, S2: the eigenvalues of ``S1 S2`` are those of
    the symmetric PSD ``R S2 R`` with ``R = S1^(1/2)``, so the trace is the sum of their
    square roots. Two symmetric eigen-decompositions: exact for singular covariances
    (fewer samples than dimensions) with no eps offset, and ~10x faster than ``sqrtm``
    at Inception's 2048 dimensions."""
    w, v = _psd_eigh(s1, "S1")
    root = (v * np.sqrt(w)) @ v.T
    lam, _ = _psd_eigh(root @ s2 @ root, "S1^(1/2) S2 S1^(1/2)")
    return float(np.sqrt(lam).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|² + tr(S1 + S2 - 2 sqrtm(S1 S2))`` in float64 (the trace term by
    :func:`trace_sqrt_product`)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise EvalError(
            f"frechet_distance: shapes disagree (mu {mu1.shape} / {mu2.shape}, "
            f"sigma {s1.shape} / {s2.shape})"
        )
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2)
    return max(float(fd), 0.0)  # round-off can push FD(x, x) a hair below 0


def save_stats(
    path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, features: torch.Tensor | np.ndarray | None = None,
) -> None:
    """Write ``mu``, ``sigma`` (and ``features`` [N, D] as float32, when given) to an
    ``.npz`` at ``path`` atomically (temp file, fsync, ``os.replace``), so a killed run
    never leaves a half-written reference."""
    arrays = {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64)}
    if features is not None:
        f = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features
        arrays["features"] = np.asarray(f, np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(mu, sigma)`` from an ``.npz`` written by :func:`save_stats`, EDM or
    pytorch-fid. Never un-pickles; a missing file or key is an :class:`EvalError`."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"reference stats file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("mu", "sigma") if k not in z.files]
            if missing:
                raise EvalError(
                    f"reference stats {path} lacks key(s) {missing} (has {z.files}); "
                    "expected an .npz with 'mu' [D] and 'sigma' [D, D]"
                )
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
    except EvalError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # not npz, pickled, truncated
        raise EvalError(f"cannot read reference stats {path}: {load_refusal(e)}") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise EvalError(f"reference stats {path}: mu {mu.shape} and sigma {sigma.shape} disagree")
    return mu, sigma


def load_ref_features(path: str | os.PathLike) -> np.ndarray | None:
    """The reference ``features`` [N, D] of a stats file written by :func:`save_stats`,
    or None when it holds only ``mu`` and ``sigma`` (EDM, pytorch-fid, slimstep before
    KID). Call after :func:`load_stats`, which checks the file itself."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "features" not in z.files:
                return None
            feats, dim = z["features"], z["mu"].shape[0]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise EvalError(f"cannot read reference features in {path}: {load_refusal(e)}") from None
    if feats.ndim != 2 or feats.shape[1] != dim or len(feats) < 2:
        raise EvalError(f"reference stats {path}: features {feats.shape} do not match mu [{dim}]")
    if not np.isfinite(feats).all():
        raise EvalError(f"reference stats {path}: features contain NaN or inf")
    return feats.astype(np.float32)


__all__ = ["feature_stats", "frechet_distance", "load_ref_features", "load_stats", "save_stats"]
