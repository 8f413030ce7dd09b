r"""The linear (rectified-flow) path and conversions between parametrisations.

Convention (everywhere in slimstep): :math:`t \in [0, 1]`, ``t = 0`` is pure
noise, ``t = 1`` is data,

.. math::  x_t = t\,x_1 + (1 - t)\,x_0,\qquad x_0 \sim \mathcal N(0, I),
           \qquad v = \frac{d x_t}{dt} = x_1 - x_0 .

Given a velocity prediction ``v`` at ``(x_t, t)`` the path can be read off in
either endpoint:  :math:`\hat x_1 = x_t + (1 - t)\,v` and
:math:`\hat x_0 = x_t - t\,v`.

EDM-style teachers are σ-parametrised denoisers :math:`D(x_\sigma; \sigma)` on
:math:`x_\sigma = y + \sigma n`. Dividing the linear path by ``t`` gives
:math:`x_t / t = x_1 + \frac{1-t}{t} x_0`, i.e. the same state at
:math:`\sigma = (1 - t) / t` with the input scaled by ``1 / t``;
:class:`EDMVelocity` uses that map to expose an EDM denoiser as a velocity.
"""

from __future__ import annotations

import torch
from torch import nn


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample ``t [B]`` so it broadcasts against ``x [B, ...]``."""
    return t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """:math:`x_t = t x_1 + (1 - t) x_0` for per-sample ``t [B]``."""
    tb = _bcast(t, x0)
    return tb * x1 + (1 - tb) * x0


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The conditional velocity of the linear path, :math:`x_1 - x_0`."""
    return x1 - x0


def x1_from_velocity(xt: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Data prediction :math:`x_t + (1 - t) v`."""
    return xt + (1 - _bcast(t, xt)) * v


def x0_from_velocity(xt: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Noise prediction :math:`x_t - t v`."""
    return xt - _bcast(t, xt) * v


def velocity_from_x1(xt: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Velocity implied by a data prediction: :math:`(x_1 - x_t) / (1 - t)`.
    Singular at ``t = 1``; callers clamp ``t`` below 1."""
    return (x1 - xt) / (1 - _bcast(t, xt))


def sigma_from_t(t: torch.Tensor) -> torch.Tensor:
    """EDM noise level of linear-path time ``t``: :math:`\\sigma = (1 - t) / t`."""
    return (1 - t) / t


def t_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`sigma_from_t`: :math:`t = 1 / (1 + \\sigma)`."""
    return 1 / (1 + sigma)


def velocity_from_denoiser(denoise, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                           *, t_min: float = 1 / 81, t_max: float = 1 - 1e-5, **kw) -> torch.Tensor:
    r"""The velocity of an EDM denoiser ``denoise(x_sigma, sigma, y, **kw)`` at ``(x_t, t)``:

    .. math:: t' = \mathrm{clamp}(t, t_{min}, t_{max}),\quad \sigma = \frac{1-t'}{t'},\quad
              v = \frac{D(x_t / t';\ \sigma) - x_t}{1 - t'}

    (:func:`velocity_from_x1` of the data prediction at the same state: ``x_t / t`` is
    ``x1 + σ·x0`` on the linear path). The clamp is the denoiser's trained σ range,
    ``t = 1 / (1 + σ)``: ``t_min = 1/81`` is EDM's σ_max = 80; ``t_max`` keeps ``1 − t``
    off zero. At ``t < t_min`` (the noise end, ``t = 0``) the input is still ``x_t / t_min``:
    ``z`` read as ``81·z`` at σ = 80."""
    t = t.expand(x.shape[0]) if t.ndim == 0 else t
    t = t.clamp(t_min, t_max)
    x1 = denoise(x / _bcast(t, x), sigma_from_t(t), y, **kw)
    return velocity_from_x1(x, x1, t)


class EDMVelocity(nn.Module):
    r"""Wrap an EDM denoiser ``D(x, sigma, y)`` as a velocity field ``v(x_t, t, y)``
    (:func:`velocity_from_denoiser`): with :math:`\sigma = (1-t)/t` and
    :math:`x_\sigma = x_t / t` the denoiser predicts :math:`\hat x_1 = D(x_\sigma; \sigma)`,
    and ``t`` is clamped to ``[t_min, t_max]`` (``t_min = 1/(1+80)``: EDM's σ_max = 80).
    """

    def __init__(self, denoiser: nn.Module, t_min: float = 1 / 81, t_max: float = 1 - 1e-5):
        super().__init__()
        self.denoiser, self.t_min, self.t_max = denoiser, t_min, t_max

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kw):
        return velocity_from_denoiser(self.denoiser, x, t, y, t_min=self.t_min, t_max=self.t_max, **kw)
