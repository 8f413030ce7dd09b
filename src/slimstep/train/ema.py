r"""Exponential moving average of a network's weights.

Either a fixed ``decay`` per optimizer step, or EDM's half-life in images:
after ``half_life_images`` training images the old average weighs one half,
so :math:`\beta = 0.5^{B / h}` for a global batch of ``B`` images. That keeps
the averaging horizon fixed when the batch size changes (GDD uses a half-life
of ~5% of the images seen). Before ``start`` steps the average just copies
the weights.

With ``warmup`` (default) the decay ramps up as
:math:`\beta_k = \min(\beta, (1 + k) / (10 + k))`, and a half-life is capped
at ``rampup`` times the images seen so far (EDM's ramp-up): otherwise a short
run's average would still be mostly the random initialisation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, net: nn.Module, decay: float = 0.999, half_life_images: float | None = None,
                 start: int = 0, warmup: bool = True, rampup: float = 0.05):
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay, self.half_life_images, self.start = decay, half_life_images, start
        self.warmup, self.rampup = warmup, rampup

    def beta(self, step: int, images_per_step: int) -> float:
        if step < self.start:
            return 0.0
        k = step - self.start
        if self.half_life_images:
            h = self.half_life_images
            if self.warmup:
                h = min(h, self.rampup * (k + 1) * images_per_step)
            return 0.5 ** (images_per_step / max(h, 1e-8))
        return min(self.decay, (1 + k) / (10 + k)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, net: nn.Module, step: int, images_per_step: int) -> None:
        b = self.beta(step, images_per_step)
        for pe, p in zip(self.net.parameters(), net.parameters(), strict=True):
            pe.lerp_(p.detach().to(pe.dtype), 1.0 - b)
        for be, bn in zip(self.net.buffers(), net.buffers(), strict=True):
            be.copy_(bn)

    def state_dict(self) -> dict:
        return self.net.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.net.load_state_dict(sd)
