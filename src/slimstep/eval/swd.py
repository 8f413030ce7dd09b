"""Sliced Wasserstein distance on Laplacian-pyramid patches: an image metric that
needs no downloaded weights (Karras et al. 2018, "Progressive Growing of GANs").

An image set is described, per level of its Laplacian pyramid, by the empirical
distribution of its 7×7 patches; two sets are compared level by level with the
sliced Wasserstein distance of those distributions:

``SWD_l(A, B) = (1/P) Σ_p W1(⟨a, u_p⟩, ⟨b, u_p⟩)``

over P random unit directions ``u_p`` in the patch space (C·7·7 dimensions), where
``W1`` is the exact 1-D Wasserstein-1 distance between the projected patch sets,
``∫₀¹ |F_A⁻¹(q) − F_B⁻¹(q)| dq`` with the empirical quantile functions (any two set
sizes; equal sizes reduce it to the mean absolute difference of the sorted values).
``swd`` is the mean of the per-level values ``swd_<H>`` (H the level's height).

The protocol (:func:`patch_swd`'s defaults; docs/evaluation.md):

* **pyramid**: the image itself, then every 2× reduction whose shorter side is still
  ≥ 16 px (32 px → levels 32, 16; 64 → 64, 32, 16; 16 → 16; an image under 16 px
  is its only level). Reduction: the 5×5 binomial filter ``[1 4 6 4 1]/16`` (both
  axes, mirrored borders), every second pixel. Level ``l`` is ``G_l − up(G_{l+1})``,
  the last level the reduced image itself (the band-pass levels plus the low-pass
  residual reconstruct the image).
* **patches**: 7×7 (every channel), centred at ``PATCHES`` positions per level drawn
  without replacement with the seed (all positions when a level has fewer), the same
  positions in every image of every set: the distance is then a function of the sets,
  not of their order, and compares each position like for like.
* **normalisation**: each channel of a level's patches is standardised by the mean and
  standard deviation of the *reference* set's patches (the first set), applied to every
  set. Karras et al. standardise each set by its own statistics, which hides a colour or
  contrast shift; standardising by the reference keeps that shift, and keeps the scale
  of the distance the same for every set compared with one reference.
* **directions**: ``PROJECTIONS`` Gaussian directions per level, normalised to unit
  length, drawn with the seed after the positions.

With a fixed seed (the protocol uses 0) the distance is a deterministic function of the
two sets. Like FID it is biased upwards at small set sizes: compare at equal N, beside
the same distance between two disjoint real sets (the floor). Values here are plain
distances; the paper's tables show them × 10³ (and with per-set standardisation, so
they do not compare with ours).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from slimstep.eval.base import EvalError

PATCH = 7  # patch side
PATCHES = 64  # patch positions per pyramid level (shared by every image)
PROJECTIONS = 256  # random directions per level
MIN_RESOLUTION = 16  # the coarsest level's shorter side is at least this
SEED = 0  # the protocol's seed: positions and directions
_CHUNK = 32  # directions projected and sorted at a time (bounds memory)


def pyramid_sizes(h: int, w: int, min_resolution: int = MIN_RESOLUTION) -> list[tuple[int, int]]:
    """``(H, W)`` of every pyramid level: the image, then 2× reductions (ceil) whose
    shorter side stays ≥ ``min_resolution``."""
    if min(h, w) < PATCH:
        raise EvalError(f"images of {h}x{w} are smaller than the {PATCH}x{PATCH} patches of SWD")
    sizes = [(h, w)]
    while min(math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)) >= min_resolution:
        sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    return sizes


_BINOMIAL = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """The separable 5×5 binomial filter, mirrored borders, each channel on its own.
    Written as five shifted sums per axis: a depthwise ``conv2d`` is several times
    slower on CPU."""
    h, w = x.shape[-2:]
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = sum(k * x[..., i : i + h, :] for i, k in enumerate(_BINOMIAL))
    return sum(k * gain * x[..., i : i + w] for i, k in enumerate(_BINOMIAL))


def _reduce(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[..., ::2, ::2]


def _expand(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zeros between the pixels, then the filter at gain 4 (it keeps the mean), cropped
    to ``size`` (an odd side reduced to ceil(side / 2) comes back one pixel longer)."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[..., ::2, ::2] = x
    return _blur(up, gain=4.0)[..., : size[0], : size[1]]


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels ``G_l − expand(G_{l+1})`` and, last, the low-pass residual, for
    images ``x`` [N, C, H, W]; ``sum`` of the expanded levels gives back ``x``."""
    gauss = [x]
    for _ in range(levels - 1):
        gauss.append(_reduce(gauss[-1]))
    bands = [g - _expand(nxt, g.shape[-2:]) for g, nxt in zip(gauss[:-1], gauss[1:], strict=True)]
    return [*bands, gauss[-1]]


def _positions(h: int, w: int, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres ``(rows, cols)`` of ``min(k, all)`` distinct patches lying wholly inside."""
    r = PATCH // 2
    hh, ww = h - 2 * r, w - 2 * r
    pick = torch.randperm(hh * ww, generator=g)[:k]
    return pick // ww + r, pick % ww + r


def _patches(level: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``[N · K, 7·7, C]`` patches of ``level`` [N, C, H, W] at the K given centres (rows
    in no particular order: a patch set is a set)."""
    off = torch.arange(PATCH) - PATCH // 2
    ri = (rows[:, None] + off)[:, :, None]  # [K, 7, 1]
    ci = (cols[:, None] + off)[:, None, :]  # [K, 1, 7]
    p = level.permute(0, 2, 3, 1)[:, ri, ci]  # [N, K, 7, 7, C]: one gather, no later permute
    return p.reshape(-1, PATCH * PATCH, level.shape[1])


def quantile_coupling(m: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(i, j, w)`` such that ``W1(a, b) = Σ_k w_k |a_(i_k) − b_(j_k)|`` for sorted ``a``
    (m values) and ``b`` (n values): the quantile functions are piecewise constant on
    the merged grid ``{i/m} ∪ {j/n}``; each interval contributes its length times the
    gap between the two values there. Exact, in integers on the common scale m·n."""
    ka = torch.arange(1, m + 1, dtype=torch.int64) * n
    kb = torch.arange(1, n + 1, dtype=torch.int64) * m
    k = torch.unique(torch.cat([ka, kb]))  # sorted, ends at m·n
    prev = torch.cat([k.new_zeros(1), k[:-1]])
    mid2 = prev + k  # twice the interval's midpoint, so the floors below are exact
    return mid2 // (2 * n), mid2 // (2 * m), (k - prev).double() / (m * n)


def w1_sorted(a: torch.Tensor, b: torch.Tensor, coupling=None) -> torch.Tensor:
    """Exact 1-D W1 between the rows of ``a`` [P, m] and ``b`` [P, n], each row sorted;
    ``[P]``, summed in float64. ``coupling``: :func:`quantile_coupling` (m, n), when reused."""
    if a.shape[1] == b.shape[1]:
        return (a - b).abs().sum(1, dtype=torch.float64) / a.shape[1]
    i, j, w = coupling if coupling is not None else quantile_coupling(a.shape[1], b.shape[1])
    return ((a[:, i] - b[:, j]).abs().double() * w).sum(1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """W1 between point sets ``a`` [m, D] and ``b`` [n, D] projected on each column of
    ``directions`` [D, P]: ``[P]`` float64 (their mean is the sliced distance)."""
    return w1_sorted(_sorted_projections(a, directions), _sorted_projections(b, directions))


def _sorted_projections(x: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """``[P, M]``: the projections of ``x`` [M, D] on each direction, each row sorted.
    Sorted by NumPy: its vectorised quicksort is about 10× faster than ``torch.sort`` on
    CPU, and sorting is most of this metric's time."""
    p = (x @ directions).T.contiguous().numpy()
    p.sort(axis=1)
    return torch.from_numpy(p)


def _check(x: torch.Tensor, shape: tuple | None, what: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach().float().cpu()
    if x.ndim != 4:
        raise EvalError(f"SWD compares image sets [N, C, H, W]; the {what} set is {tuple(x.shape)}")
    if shape is not None and tuple(x.shape[1:]) != shape:
        raise EvalError(f"SWD: the {what} images are {tuple(x.shape[1:])}, the reference's {shape}")
    if len(x) == 0 or not torch.isfinite(x).all():
        raise EvalError(f"SWD: the {what} set is empty or holds NaN / inf")
    return x


def level_name(h: int, w: int) -> str:
    return f"swd_{h}" if h == w else f"swd_{h}x{w}"


def patch_swd(
    reference: torch.Tensor, *others: torch.Tensor, patches: int = PATCHES,
    projections: int = PROJECTIONS, seed: int = SEED, min_resolution: int = MIN_RESOLUTION,
) -> list[dict[str, float]]:
    """SWD from ``reference`` [N, C, H, W] to each of ``others`` (the protocol of the
    module docstring), one pass over the reference for all of them.

    Returns one dict per other set: ``swd_<H>`` per pyramid level (finest first) and
    ``swd``, their mean. ``reference`` fixes the standardisation, so the distance is
    symmetric only up to it; every set compared with one reference shares its scale.
    """
    ref = _check(reference, None, "reference")
    sets = [_check(x, tuple(ref.shape[1:]), f"#{i + 1}") for i, x in enumerate(others)]
    sizes = pyramid_sizes(*ref.shape[2:], min_resolution)
    g = torch.Generator().manual_seed(seed)
    pyramids = [laplacian_pyramid(x, len(sizes)) for x in (ref, *sets)]
    out: list[dict[str, float]] = [{} for _ in sets]
    couplings: dict[tuple[int, int], tuple] = {}
    for lvl, (h, w) in enumerate(sizes):
        rows, cols = _positions(h, w, patches, g)
        desc = [_patches(p[lvl], rows, cols) for p in pyramids]  # [M, 49, C] each
        std = desc[0].std(dim=(0, 1))
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel: no scaling
        desc = [d.flatten(1) for d in desc]
        dirs = torch.randn(desc[0].shape[1], projections, generator=g)
        # A unit direction u on standardised patches (d - mean) / std is the direction
        # u / std on raw patches, less a constant that shifts every set's projections
        # alike, and W1 does not see a common shift: so no standardised copy is made.
        dirs = (dirs / dirs.norm(dim=0, keepdim=True)) / std.repeat(PATCH * PATCH)[:, None]
        total = torch.zeros(len(sets), dtype=torch.float64)
        for s in range(0, projections, _CHUNK):
            chunk = dirs[:, s : s + _CHUNK]
            pref = _sorted_projections(desc[0], chunk)
            for i, d in enumerate(desc[1:]):
                pd = _sorted_projections(d, chunk)
                key = (pref.shape[1], pd.shape[1])
                if key[0] != key[1] and key not in couplings:
                    couplings[key] = quantile_coupling(*key)
                total[i] += w1_sorted(pref, pd, couplings.get(key)).sum()
        for i in range(len(sets)):
            out[i][level_name(h, w)] = float(total[i] / projections)
    return [{"swd": sum(o.values()) / len(o), **o} for o in out]


__all__ = ["laplacian_pyramid", "patch_swd", "pyramid_sizes", "quantile_coupling", "sliced_wasserstein",
           "w1_sorted"]
