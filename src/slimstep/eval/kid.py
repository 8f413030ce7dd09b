"""Kernel Inception distance (Bińkowski et al. 2018), on torch-fidelity's protocol.

KID is the squared maximum mean discrepancy between two feature sets under the cubic
polynomial kernel ``k(x, y) = (xᵀy / d + 1)³`` (``d`` the feature dimension). For
``m`` features ``x_i`` of one set and ``m`` features ``y_j`` of the other, the unbiased
estimate is

    MMD²_u = Σ_{i≠j} k(x_i, x_j) / (m(m−1)) + Σ_{i≠j} k(y_i, y_j) / (m(m−1))
             − 2 Σ_{i,j} k(x_i, y_j) / m²

(the two sets are independent, so every cross pair counts). It is averaged over
``subsets`` draws of ``m`` features from each set, without replacement within a draw;
``kid`` is the mean, ``kid_std`` the population standard deviation over the draws.

The protocol is that of torch-fidelity's ``kid_features_to_metric``: 100 subsets of
1,000, degree 3, ``gamma = 1/d``, ``coef0 = 1``, the draws from
``numpy.random.RandomState(2020)``, each subset's indices drawn first for the first set
(the samples), then for the second (the reference), with ``RandomState.choice(n, m,
replace=False)``. So with the same features both give the same numbers (up to
round-off: slimstep's sums are in float64). Two departures:

* **Subset size.** torch-fidelity refuses a set smaller than the subset size;
  :func:`kid_subset_size` takes ``m = min(1000, sizes)`` instead, and the evaluation
  records ``m``. The estimate is unbiased at any ``m`` (a small ``m`` widens its spread,
  it does not shift its mean), unlike FID; but when ``m`` equals a set's size every
  draw holds all of that set, so ``kid_std`` then shows only the other set's sampling
  (``0`` when ``m`` equals both sizes).
* **Why not torch-fidelity's function itself.** ``torch_fidelity.metric_kid`` imports
  ``torch_fidelity.utils``, which imports torchvision, and torchvision has no CPU build
  here (for the same reason :mod:`slimstep.eval.features` imports only torch-fidelity's
  Inception module). The tests compare this module with torch-fidelity's function
  wherever that imports.

KID can be slightly negative (an unbiased estimate of a quantity that is ≥ 0); it is
not clamped.
"""

from __future__ import annotations

import numpy as np
import torch

from slimstep.eval.base import EvalError

KID_SUBSETS = 100  # torch-fidelity's kid_subsets
KID_SUBSET_SIZE = 1000  # torch-fidelity's kid_subset_size: the most slimstep uses
KID_SEED = 2020  # torch-fidelity's rng_seed
_GRAM_BYTES = 1 << 29  # one Gram matrix of both sets at once when it fits in 512 MiB


def kid_subset_size(*sizes: int, default: int = KID_SUBSET_SIZE) -> int:
    """``min(default, *sizes)``: the subset size for sets of these sizes (at least 2,
    which the unbiased estimate needs)."""
    m = min(default, *sizes)
    if m < 2:
        raise EvalError(f"KID needs at least 2 features in each set, got sets of {list(sizes)}")
    return int(m)


def polynomial_kernel(
    a: torch.Tensor, b: torch.Tensor, degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
) -> torch.Tensor:
    """``(a bᵀ · gamma + coef0) ** degree``, ``gamma = 1/d`` by default."""
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    return (a @ b.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx: torch.Tensor, k_yy: torch.Tensor, k_xy: torch.Tensor) -> float:
    """The unbiased MMD² of the module docstring from the three ``[m, m]`` kernel blocks."""
    m = k_xx.shape[0]
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def _as_float64(f, what: str) -> torch.Tensor:
    f = torch.as_tensor(f).detach().cpu().double()
    if f.ndim != 2:
        raise EvalError(f"KID: {what} features must be [N, D], got shape {tuple(f.shape)}")
    if not torch.isfinite(f).all():
        raise EvalError(f"KID: {what} features contain NaN or inf")
    return f


def kid(
    features_1, features_2, subset_size: int | None = None, subsets: int = KID_SUBSETS,
    seed: int = KID_SEED, degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
) -> dict[str, float]:
    """``{"kid": mean, "kid_std": std}`` of the unbiased polynomial MMD² over ``subsets``
    random pairs of subsets (module docstring). ``features_1`` are the samples',
    ``features_2`` the reference's (the order of torch-fidelity's ``input1`` / ``input2``,
    which fixes which set each draw picks first). ``subset_size`` defaults to
    :func:`kid_subset_size` of the two sets."""
    f1, f2 = _as_float64(features_1, "first"), _as_float64(features_2, "second")
    if f1.shape[1] != f2.shape[1]:
        raise EvalError(f"KID: features have {f1.shape[1]} and {f2.shape[1]} dims")
    n1, n2 = len(f1), len(f2)
    m = kid_subset_size(n1, n2) if subset_size is None else int(subset_size)
    if not 2 <= m <= min(n1, n2):
        raise EvalError(f"KID subset size {m} must be in [2, {min(n1, n2)}] for sets of {n1} and {n2}")
    kw = {"degree": degree, "gamma": gamma, "coef0": coef0}
    # One Gram matrix of both sets is cheaper than 3 blocks per subset when the sets are small.
    whole = (n1 + n2) ** 2 <= 3 * subsets * m * m and (n1 + n2) ** 2 * 8 <= _GRAM_BYTES
    if whole:
        both = torch.cat([f1, f2])
        gram = polynomial_kernel(both, both, **kw)
    rng = np.random.RandomState(seed)
    values = np.zeros(subsets)
    for s in range(subsets):
        i = torch.from_numpy(rng.choice(n1, m, replace=False))
        j = torch.from_numpy(rng.choice(n2, m, replace=False))
        if whole:
            j2 = j + n1
            blocks = gram[i][:, i], gram[j2][:, j2], gram[i][:, j2]
        else:
            x, y = f1[i], f2[j]
            blocks = polynomial_kernel(x, x, **kw), polynomial_kernel(y, y, **kw), polynomial_kernel(x, y, **kw)
        values[s] = mmd2_unbiased(*blocks)
    return {"kid": float(values.mean()), "kid_std": float(values.std())}


__all__ = ["KID_SEED", "KID_SUBSETS", "KID_SUBSET_SIZE", "kid", "kid_subset_size", "mmd2_unbiased",
           "polynomial_kernel"]
