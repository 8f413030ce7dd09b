"""2-D toy distributions (the torchcfm / FFJORD benchmark shapes), infinite and seeded.

Every sample is an exact function of the ``torch.Generator`` it is drawn from.
Each shape is centred and scaled so that, *including* its Gaussian noise of
std ``noise``, it has mean 0 and ``tr Cov = 2`` (per-coordinate variance 1 on
average): with raw shape variance ``V = E|x_raw - mean|²`` the scale is
``s = sqrt((2 - 2·noise²) / V)``.

Raw shapes (before centring and scaling):

- ``moons``: two interleaved half circles, upper ``(cos θ, sin θ)`` and lower
  ``(1 - cos θ, 1/2 - sin θ)``, ``θ ~ U(0, π)``; mean ``(1/2, 1/4)``,
  ``V = 21/16 - 1/π``. Default noise 0.1.
- ``8gaussians``: an equal mixture of 8 Gaussians of std ``noise`` centred on
  the unit circle at angles ``kπ/4``; ``V = 1`` (the noise is the mode width,
  so it must be > 0). Default noise 0.2 → centres at radius ``≈ 1.386``.
- ``checkerboard``: uniform on the 8 squares ``[i, i+1) × [j, j+1)`` of
  ``[-2, 2]²`` with ``i + j`` even; ``V = 8/3``. Default noise 0 (the edges are sharp).
- ``spirals``: two arms ``±θ·(-cos θ, sin θ)``, ``θ = 3π·sqrt(u)``, ``u ~ U(0,1)``
  (1.5 turns; density in θ ∝ θ, about uniform along the arc); ``V = 9π²/2``. Default noise 0.05.
- ``rings``: 4 concentric circles of radii ``1/4, 2/4, 3/4, 1`` chosen with equal
  probability, uniform angle; ``V = 15/32``. Default noise 0.05.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from slimstep.data.base import DataError, DataInfo

N_REFERENCE = 10_000  # reference() size when n is None (W2 / MMD want >= 2,000)
_SPLITS = {"train": 0, "test": 1}


def _moons(n: int, g: torch.Generator) -> torch.Tensor:
    theta = torch.rand(n, generator=g) * math.pi
    lower = torch.rand(n, generator=g) < 0.5
    c, s = torch.cos(theta), torch.sin(theta)
    x = torch.where(lower, 1 - c, c)
    y = torch.where(lower, 0.5 - s, s)
    return torch.stack([x - 0.5, y - 0.25], 1)


def _8gaussians(n: int, g: torch.Generator) -> torch.Tensor:
    angle = torch.randint(8, (n,), generator=g) * (math.pi / 4)
    return torch.stack([torch.cos(angle), torch.sin(angle)], 1)


def _checkerboard(n: int, g: torch.Generator) -> torch.Tensor:
    col = torch.randint(4, (n,), generator=g)
    row = 2 * torch.randint(2, (n,), generator=g) + col % 2  # keeps col + row even
    u = torch.rand(n, 2, generator=g)
    return torch.stack([col, row], 1) + u - 2


def _spirals(n: int, g: torch.Generator) -> torch.Tensor:
    theta = 3 * math.pi * torch.sqrt(torch.rand(n, generator=g))
    arm = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    return (arm * theta)[:, None] * torch.stack([-torch.cos(theta), torch.sin(theta)], 1)


def _rings(n: int, g: torch.Generator) -> torch.Tensor:
    radius = (torch.randint(4, (n,), generator=g) + 1) / 4
    angle = torch.rand(n, generator=g) * (2 * math.pi)
    return radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], 1)


# name -> (centred raw sampler, raw variance V, default noise std)
SHAPES: dict[str, tuple[Callable[[int, torch.Generator], torch.Tensor], float, float]] = {
    "moons": (_moons, 21 / 16 - 1 / math.pi, 0.1),
    "8gaussians": (_8gaussians, 1.0, 0.2),
    "checkerboard": (_checkerboard, 8 / 3, 0.0),
    "spirals": (_spirals, 9 * math.pi**2 / 2, 0.05),
    "rings": (_rings, 15 / 32, 0.05),
}
NAMES = tuple(SHAPES)


def _check(name: str, noise: float | None) -> float:
    if name not in SHAPES:
        raise DataError(f"unknown toy2d distribution '{name}' (expected one of {', '.join(NAMES)})")
    sigma = SHAPES[name][2] if noise is None else float(noise)
    low = 0.0 if name != "8gaussians" else 1e-6  # 8gaussians' noise is its mode width
    if not low <= sigma < 1:
        raise DataError(f"toy2d:{name} noise must be in [{low:g}, 1), got {noise}")
    return sigma


def sample(
    name: str, n: int, generator: torch.Generator, *, noise: float | None = None
) -> torch.Tensor:
    """``n`` samples of distribution ``name``: float32 ``[n, 2]``, mean 0, tr Cov 2."""
    sigma = _check(name, noise)
    fn, var, _ = SHAPES[name]
    x = fn(n, generator).double() * math.sqrt((2 - 2 * sigma**2) / var)
    if sigma > 0:
        x = x + sigma * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return x.float()


def split_seed(seed: int, split: str) -> int:
    """The generator seed of ``reference(split=..., seed=...)``: train and test get
    independent streams for the same ``seed`` (mixed by NumPy's SeedSequence)."""
    if split not in _SPLITS:
        raise DataError(f"unknown toy2d split '{split}' (expected train or test)")
    if seed < 0:
        raise DataError(f"toy2d reference seed must be >= 0, got {seed}")
    state = np.random.SeedSequence([seed, _SPLITS[split]]).generate_state(1, np.uint64)[0]
    return int(state) & (2**63 - 1)


class Toy2D:
    """An infinite 2-D data set; ``reference`` draws fresh samples from a seed."""

    def __init__(self, name: str, noise: float | None = None, **unused):
        # Image options at their defaults (a generic caller passes them to every loader) are fine.
        bad = sorted(k for k, v in unused.items() if v not in (None, False))
        if bad:
            raise DataError(f"toy2d takes only the option 'noise', not {bad}")
        self.name, self.noise = name, _check(name, noise)
        self.info = DataInfo(
            spec=f"toy2d:{name}", kind="points", shape=(2,), num_classes=0,
            scaling="mean 0, per-coordinate variance 1 on average (tr Cov = 2)",
            options={"noise": self.noise},
        )

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
        return sample(self.name, n, generator, noise=self.noise), None

    def reference(
        self, n: int | None = None, *, split: str = "test", seed: int = 0
    ) -> tuple[torch.Tensor, None]:
        g = torch.Generator().manual_seed(split_seed(seed, split))
        return sample(self.name, N_REFERENCE if n is None else n, g, noise=self.noise), None
