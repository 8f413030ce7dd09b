r"""VP discrete-time models read as slimstep velocities: the ᾱ tables and one adapter.

A variance-preserving (VP) diffusion model is trained on
:math:`x_n = \sqrt{\bar\alpha_n}\,x_1 + \sqrt{1-\bar\alpha_n}\,\varepsilon`, ``n = 0..N-1``
(``n = N-1`` the noisiest), its network fed ``(x_n, n)`` and predicting one of

* ``epsilon`` — the noise :math:`\hat\varepsilon`;
* ``sample`` — the data :math:`\hat x_1`;
* ``v_prediction`` — :math:`\hat v_{vp} = \sqrt{\bar\alpha}\,\varepsilon - \sqrt{1-\bar\alpha}\,x_1`
  (Salimans & Ho 2022; diffusers' ``get_velocity``).

On slimstep's path :math:`x_t = t\,x_1 + (1-t)\,x_0` (``x_0 = ε`` the noise) the same
signal-to-noise ratio is reached at :math:`\sigma = (1-t)/t`, since
:math:`x_t / t = x_1 + \sigma\,x_0`. :class:`VPAdapter` maps one onto the other:

.. math::
   r = \sqrt{t^2 + (1-t)^2},\qquad
   x_{vp} = \frac{\sqrt{\bar\alpha}}{t}\,x_t = \frac{x_t}{r},\qquad
   n(t) = \mathrm{interp}\big(\log\sigma;\ \log\sigma_n,\ n\big),\qquad
   v = c_{skip}(t)\,x_t + c_{out}(t)\,F(x_{vp}, n(t))

with :math:`\bar\alpha = 1/(1+\sigma^2)`, :math:`\sigma_n = \sqrt{(1-\bar\alpha_n)/\bar\alpha_n}`
and, from :math:`\hat x_1` and :math:`\hat\varepsilon` of each prediction, :math:`v = \hat x_1 - \hat\varepsilon`:

==============  =====================================  ==================  ===============
prediction      reading                                :math:`c_{skip}`    :math:`c_{out}`
==============  =====================================  ==================  ===============
epsilon         x̂1 = (x_t − (1−t) ε̂) / t               1 / t               −1 / t
sample          ε̂ = (x_t − t x̂1) / (1−t)               −1 / (1−t)          1 / (1−t)
v_prediction    x̂1 = √ᾱ x_vp − √(1−ᾱ) v̂,               (2t − 1) / r²       −1 / r
                ε̂ = √(1−ᾱ) x_vp + √ᾱ v̂
==============  =====================================  ==================  ===============

``t`` is clamped to the trained range :math:`[1/(1+\sigma_{N-1}),\ 1/(1+\sigma_0)]`: the
network never saw a noise level outside the table, and there ε-prediction's 1/t (at the
noise end) and x-prediction's 1/(1−t) (at the data end) stay finite. The scalars are
float64: 1/t reaches ~157 at the noise end of DiT's schedule (2·10⁴ for the cosine one).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from slimstep.paths import sigma_from_t

PREDICTIONS = ("epsilon", "sample", "v_prediction")
#: the ``beta_schedule`` values whose ᾱ :func:`diffusers_alphas_cumprod` computes
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def linear_alphas_cumprod(num_timesteps: int = 1000, beta_start: float = 1e-4,
                          beta_end: float = 0.02) -> torch.Tensor:
    """:math:`\\bar\\alpha_n = \\prod_{i \\le n}(1 - \\beta_i)` of DiT's (ADM's) linear schedule,
    float64; the β end points are given for N = 1000 and scaled by 1000 / N, as ADM does."""
    scale = 1000.0 / num_timesteps
    betas = torch.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def _glide_cosine_betas(n: int, max_beta: float = 0.999) -> torch.Tensor:
    """GLIDE's cosine schedule (Nichol & Dhariwal 2021): ᾱ(s) = cos²((s + 0.008)/1.008 · π/2),
    β_i = min(1 − ᾱ((i+1)/N) / ᾱ(i/N), 0.999), in Python floats, stored as float32 (as
    diffusers' ``betas_for_alpha_bar`` does)."""
    abar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)],
                        dtype=torch.float32)


def diffusers_alphas_cumprod(num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                             beta_start: float = 1e-4, beta_end: float = 0.02,
                             trained_betas: list[float] | None = None) -> torch.Tensor:
    """ᾱ of a diffusers VP discrete scheduler (DDPM, DDIM, PNDM, DPM-Solver, Euler, ...), computed
    as diffusers computes it, in float32 (β and the cumulative product), returned as float64:
    the model was trained on exactly these float32 values.

    * ``trained_betas`` given: β as listed (their count is N);
    * ``linear``: β = linspace(β_start, β_end, N) (no 1000/N rescaling, unlike ADM);
    * ``scaled_linear``: β = linspace(√β_start, √β_end, N)² (latent diffusion's);
    * ``squaredcos_cap_v2``: GLIDE's cosine schedule, β capped at 0.999.
    """
    if trained_betas is not None:
        betas = torch.tensor([float(b) for b in trained_betas], dtype=torch.float32)
        if len(betas) != num_train_timesteps:
            raise ValueError(f"trained_betas has {len(betas)} values, num_train_timesteps is "
                             f"{num_train_timesteps}")
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps,
                               dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        betas = _glide_cosine_betas(num_train_timesteps)
    else:
        raise ValueError(f"beta_schedule {beta_schedule!r} is not one slimstep computes "
                         f"({', '.join(BETA_SCHEDULES)}, or trained_betas)")
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float64)


def _bc(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return c.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


class VPAdapter:
    r"""A VP discrete-time network as a slimstep velocity field (module docstring).

    ``velocity(x, t, predict)`` calls ``predict(x_vp, n)`` — the wrapped network at the
    VP state and its fractional timestep — and returns :math:`c_{skip} x + c_{out} F`.
    Not an ``nn.Module``: it holds no weights, and its table must stay float64 when the
    network is cast (``.float()``, ``.half()`` cast a module's buffers), so it is kept here
    and copied to the input's device on use (N numbers).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, prediction: str = "epsilon") -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, not {prediction!r}")
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if len(abar) < 2 or not bool(((abar > 0) & (abar < 1)).all()) or not bool((abar[1:] < abar[:-1]).all()):
            raise ValueError("the ᾱ table must have at least 2 entries, decrease strictly and lie in (0, 1)")
        self.prediction = prediction
        self.log_sigmas = 0.5 * torch.log((1 - abar) / abar)  # increasing in n
        self.num_timesteps = len(abar)
        # the trained range of slimstep time, t = 1 / (1 + σ)
        self.t_min = 1.0 / (1.0 + math.exp(float(self.log_sigmas[-1])))
        self.t_max = 1.0 / (1.0 + math.exp(float(self.log_sigmas[0])))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep of noise level σ: linear in log σ between the table's rows."""
        table = self.log_sigmas.to(sigma.device)
        ls = torch.log(sigma.to(torch.float64))
        hi = torch.searchsorted(table, ls.contiguous()).clamp(1, len(table) - 1)
        lo = hi - 1
        w = ((ls - table[lo]) / (table[hi] - table[lo])).clamp(0.0, 1.0)
        return lo.to(ls.dtype) + w

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c_in, c_skip, c_out)`` at (clamped, float64) ``t``: ``x_vp = c_in x_t``,
        ``v = c_skip x_t + c_out F``."""
        r = torch.sqrt(t * t + (1 - t) * (1 - t))
        if self.prediction == "epsilon":
            return 1 / r, 1 / t, -1 / t
        if self.prediction == "sample":
            return 1 / r, -1 / (1 - t), 1 / (1 - t)
        return 1 / r, (2 * t - 1) / (r * r), -1 / r

    def velocity(self, x: torch.Tensor, t: torch.Tensor, predict: Callable, return_features: bool = False):
        """``v(x, t)`` from ``predict(x_vp, n)`` (which returns ``(F, feats)`` when
        ``return_features``; the features pass through)."""
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        t = t.to(torch.float64).clamp(self.t_min, self.t_max)
        c_in, c_skip, c_out = self.coefficients(t)
        out = predict(x * _bc(c_in, x), self.timestep(sigma_from_t(t)))
        pred, feats = out if return_features else (out, None)
        v = _bc(c_skip, x) * x + _bc(c_out, x) * pred
        return (v, feats) if return_features else v

    def describe(self) -> dict:
        """The adapter for config.json's ``import`` section: name, parameters, formula."""
        v = {"epsilon": "(x_t - F(x_vp, n)) / t", "sample": "(F(x_vp, n) - x_t) / (1 - t)",
             "v_prediction": "(2t - 1) / r^2 x_t - F(x_vp, n) / r"}[self.prediction]
        return {"name": "vp_to_velocity", "prediction": self.prediction,
                "num_timesteps": self.num_timesteps, "t_min": self.t_min, "t_max": self.t_max,
                "formula": f"sigma = (1-t)/t; r = sqrt(t^2 + (1-t)^2); x_vp = x_t / r "
                           f"(= sqrt(abar) x_t / t); n = interp(log sigma, log sigma_n, n); "
                           f"v = {v} (F: the {self.prediction} prediction); "
                           "t clamped to [t_min, t_max], the trained sigma range"}
