"""k-NN precision / recall (Kynkäänniemi et al. 2019) and density / coverage
(Naeem et al. 2020), in a feature space.

Let ``R = {r_i}`` (N real) and ``F = {f_j}`` (M fake) be feature vectors and
``rad_k(x; S)`` the distance from ``x ∈ S`` to its k-th nearest neighbour in ``S``
(``x`` itself excluded). The k-NN balls around a set estimate its support (manifold):

- precision = ``1/M Σ_j 1[∃ i: |f_j − r_i| ≤ rad_k(r_i; R)]`` — fakes inside the real manifold;
- recall    = ``1/N Σ_i 1[∃ j: |r_i − f_j| ≤ rad_k(f_j; F)]`` — reals inside the fake manifold;
- density   = ``1/(k M) Σ_j Σ_i 1[|f_j − r_i| ≤ rad_k(r_i; R)]`` — how many real balls hold
  each fake (≈ 1 when F ~ R; can exceed 1);
- coverage  = ``1/N Σ_i 1[min_j |r_i − f_j| ≤ rad_k(r_i; R)]`` — real balls that hold a fake.

All four depend on N, M and k: compare numbers only at equal sizes (the protocol
uses M = N) and the same k (default 3, as in the papers' small-sample settings).
"""

from __future__ import annotations

import torch

from slimstep.eval.base import EvalError

#: Up to this many pairs (digits' 597 x 597, the toy sets) distances are computed exactly by
#: differences; beyond it (Fashion-MNIST's 10,000 x 10,000) by a float64 matrix product:
#: 38 s instead of 124 s per call on one loaded CPU thread, the same four numbers there.
EXACT_PAIRS = 10**7


def _cdist(a: torch.Tensor, b: torch.Tensor, exact: bool = True) -> torch.Tensor:
    if exact:  # a point's distance to itself or its duplicate is exactly 0
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
    a64, b64 = a.double(), b.double()
    na, nb = (a64 * a64).sum(1)[:, None], (b64 * b64).sum(1)[None, :]
    d2 = na + nb - 2 * (a64 @ b64.T)
    # Cancellation leaves ~1e-16 of the norms where a point meets its duplicate: snap such
    # pairs to 0, so a duplicate still lies inside a zero-radius ball as in the exact path.
    d2 = torch.where(d2 <= 1e-10 * (na + nb), torch.zeros_like(d2), d2)
    return d2.sqrt().to(a.dtype)


def knn_radii(x: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest *other* row."""
    if len(x) <= k:
        raise EvalError(f"k-NN radii need more than k={k} points, got {len(x)}")
    out = []
    exact = len(x) ** 2 <= EXACT_PAIRS
    for i in range(0, len(x), chunk):
        d = _cdist(x[i : i + chunk], x, exact)
        # The k+1 smallest include the point itself (distance 0).
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def prdc(
    real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1024
) -> dict[str, float]:
    """``{"precision", "recall", "density", "coverage"}`` of ``fake`` [M, D] against
    ``real`` [N, D] (definitions in the module docstring), computed in float64 on row
    chunks so memory stays O(chunk · max(N, M)); exact distances up to
    :data:`EXACT_PAIRS` pairs, a matrix product beyond."""
    real = torch.as_tensor(real).detach().cpu().double().flatten(1)
    fake = torch.as_tensor(fake).detach().cpu().double().flatten(1)
    if real.shape[1] != fake.shape[1]:
        raise EvalError(f"prdc: feature sizes differ ({real.shape[1]} vs {fake.shape[1]})")
    r_rad, f_rad = knn_radii(real, k, chunk), knn_radii(fake, k, chunk)
    in_real = torch.zeros(len(fake), dtype=torch.bool)  # fake j in some real ball
    n_balls = torch.zeros(len(fake), dtype=torch.float64)  # real balls holding fake j
    covered = torch.zeros(len(real), dtype=torch.bool)  # real ball i holds some fake
    recalled = torch.zeros(len(real), dtype=torch.bool)  # real i in some fake ball
    exact = len(real) * len(fake) <= EXACT_PAIRS
    for i in range(0, len(real), chunk):
        d = _cdist(real[i : i + chunk], fake, exact)  # [c, M]
        inside_r = d <= r_rad[i : i + chunk, None]  # fake j inside real ball i
        in_real |= inside_r.any(0)
        n_balls += inside_r.sum(0)
        covered[i : i + chunk] = inside_r.any(1)
        recalled[i : i + chunk] = (d <= f_rad[None, :]).any(1)
    return {
        "precision": in_real.double().mean().item(),
        "recall": recalled.double().mean().item(),
        "density": (n_balls.sum() / (k * len(fake))).item(),
        "coverage": covered.double().mean().item(),
    }


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """k-NN ``(precision, recall)`` of ``fake`` against ``real`` (see :func:`prdc`)."""
    m = prdc(real, fake, k)
    return m["precision"], m["recall"]


__all__ = ["knn_radii", "prdc", "precision_recall"]
