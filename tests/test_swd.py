"""Sliced Wasserstein distance on Laplacian-pyramid patches, against known answers."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch

from slimstep.eval import EvalError
from slimstep.eval.swd import (
    _expand,
    _reduce,
    laplacian_pyramid,
    patch_swd,
    pyramid_sizes,
    sliced_wasserstein,
    w1_sorted,
)


def smooth_images(n: int, seed: int, c: int = 3, size: int = 32) -> torch.Tensor:
    """Random images with structure at several scales (white noise has none to compare)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, c, size, size)
    for s in (4, 8, size):
        x += torch.nn.functional.interpolate(torch.randn(n, c, s, s, generator=g), size=size,
                                             mode="bilinear", align_corners=False) / 3
    return x.clamp(-1, 1)


def test_pyramid_levels_and_exact_reconstruction():
    assert pyramid_sizes(32, 32) == [(32, 32), (16, 16)]
    assert pyramid_sizes(64, 64) == [(64, 64), (32, 32), (16, 16)]
    assert pyramid_sizes(16, 16) == [(16, 16)]
    assert pyramid_sizes(8, 8) == [(8, 8)]  # under 16 px: the image is its only level
    assert pyramid_sizes(33, 48) == [(33, 48), (17, 24)]  # ceil halves, shorter side >= 16
    with pytest.raises(EvalError, match="smaller than the 7x7"):
        pyramid_sizes(6, 32)
    x = smooth_images(4, 0, size=33)
    levels = laplacian_pyramid(x, 3)
    assert [tuple(v.shape[-2:]) for v in levels] == [(33, 33), (17, 17), (9, 9)]
    rec = levels[-1]
    for band in levels[-2::-1]:
        rec = _expand(rec, band.shape[-2:]) + band
    assert torch.allclose(rec, x, atol=1e-6)
    # The binomial expand reproduces a constant exactly, borders included: band levels
    # do not see a brightness offset, only the low-pass residual does.
    const = torch.full((1, 1, 8, 8), 0.3)
    assert torch.allclose(_expand(const, (16, 16)), torch.full((1, 1, 16, 16), 0.3), atol=1e-6)
    assert _reduce(torch.ones(1, 1, 16, 16)).shape[-2:] == (8, 8)


def test_w1_exact_for_equal_and_unequal_sizes():
    # Two points against three: the quantile functions differ by 0.5 on (1/3, 2/3].
    a, b = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.5, 1.0]])
    assert w1_sorted(a, b).item() == pytest.approx(1 / 6, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    for m, n in ((50, 50), (37, 101), (200, 3)):
        u, v = torch.randn(m, generator=g), 2 * torch.rand(n, generator=g) + 0.3
        got = w1_sorted(u.sort().values[None], v.sort().values[None]).item()
        assert got == pytest.approx(scipy.stats.wasserstein_distance(u.numpy(), v.numpy()), rel=1e-6)


def test_sliced_distance_of_a_shift_is_its_projection():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 5, generator=g)
    c = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.25])
    dirs = torch.randn(5, 64, generator=g)
    dirs = dirs / dirs.norm(dim=0)
    # A shift keeps the order along every direction: W1 = |<u, c>| exactly.
    got = sliced_wasserstein(a, a + c, dirs)
    assert torch.allclose(got, (c @ dirs).abs().double(), atol=1e-5)
    # 1-D: the only directions are ±1, so the distance is |c| itself.
    x = torch.randn(1000, 1, generator=g)
    assert sliced_wasserstein(x, x + 0.7, torch.tensor([[1.0, -1.0]])).tolist() == pytest.approx([0.7, 0.7])


def test_patch_swd_of_a_brightness_shift_matches_the_analytic_value():
    """Adding c to every pixel moves only the low-pass level's patches, by c in each of
    their D = 49 grey dimensions, i.e. by c / std in standardised units. Along a random
    unit direction u that shift is |c / std · Σ u_d|, whose mean over directions is
    |c| / std · sqrt(D) · Γ(D/2) / (sqrt(π) Γ((D+1)/2)) (≈ 0.80 |c| / std)."""
    x = smooth_images(400, 1, c=1)
    c = 0.05
    r = patch_swd(x, x + c)[0]
    assert r["swd_32"] == pytest.approx(0, abs=1e-6)  # the band-pass level is unchanged
    low = laplacian_pyramid(x, 2)[-1]
    d = 49
    std = low[..., 3:-3, 3:-3].std().item()  # patch centres stay 3 px inside the level
    want = c / std * math.sqrt(d) * math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)
    # 256 random directions: the mean of |u . 1| scatters by about 5 % around its expectation
    assert r["swd_16"] == pytest.approx(want, rel=0.15)
    assert r["swd"] == pytest.approx((r["swd_32"] + r["swd_16"]) / 2)


def test_patch_swd_zero_for_itself_and_order_invariant():
    x = smooth_images(200, 2)
    y = smooth_images(150, 3)
    same, other = patch_swd(x, x, y)
    assert same == {"swd": 0.0, "swd_32": 0.0, "swd_16": 0.0}
    assert other["swd"] > 0
    g = torch.Generator().manual_seed(9)
    shuffled = patch_swd(x[torch.randperm(len(x), generator=g)], y[torch.randperm(len(y), generator=g)])[0]
    for k, v in other.items():
        assert shuffled[k] == pytest.approx(v, rel=1e-6)


def test_patch_swd_grows_with_noise_and_blur():
    real, held = smooth_images(120, 4), smooth_images(120, 5)
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(held.shape, generator=g)
    noisy = [r["swd"] for r in patch_swd(real, *(held + s * eps for s in (0.0, 0.05, 0.1, 0.2, 0.4)))]
    assert noisy == sorted(noisy) and len(set(noisy)) == len(noisy), noisy
    assert noisy[-1] > 5 * noisy[0]
    blurred, b = [held], held
    for _ in range(3):
        b = _expand(_reduce(b), b.shape[-2:])  # one more octave of detail removed each time
        blurred.append(b)
    blur = [r["swd_32"] for r in patch_swd(real, *blurred)]
    assert blur == sorted(blur) and blur[-1] > 5 * blur[0], blur


def test_patch_swd_deterministic_per_seed_and_checks_input():
    x, y = smooth_images(100, 6), smooth_images(100, 7)
    assert patch_swd(x, y, seed=3) == patch_swd(x, y, seed=3)
    assert patch_swd(x, y, seed=3) != patch_swd(x, y, seed=4)
    with pytest.raises(EvalError, match="reference's"):
        patch_swd(x, y[:, :1])
    with pytest.raises(EvalError, match="NaN"):
        patch_swd(x, torch.full_like(y, float("nan")))
    with pytest.raises(EvalError, match=r"\[N, C, H, W\]"):
        patch_swd(x[0], y)
