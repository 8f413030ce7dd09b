r"""DiT-shaped networks of other codebases, wrapped so they speak slimstep's conventions.

Both keep the DiT / SiT state-dict layout of :mod:`slimstep.nets.dit` (they subclass
:class:`~slimstep.nets.dit.DiT`), so an imported checkpoint's ``model.safetensors`` holds
the source file's tensors under their own names; the conversion is in ``forward`` only,
written out here and recorded in the checkpoint's ``config.json`` by
:mod:`slimstep.importers`.

**VPEpsDiT** — the original DiT (Peebles & Xie): an ε-prediction model on the
variance-preserving discrete path :math:`x_n = \sqrt{\bar\alpha_n}\,x_1 + \sqrt{1-\bar\alpha_n}\,\varepsilon`,
``n = 0..N-1`` (N = 1000, linear β from 1e-4 to 0.02, ADM's float64 table, ``n = N-1`` the
noisiest), time input the raw timestep ``n``. It is read as a slimstep velocity by
:class:`slimstep.nets.vp.VPAdapter` (the one VP -> velocity map, shared with the diffusers
import), here with ε-prediction:

.. math::
   \sigma = \frac{1-t}{t},\quad
   x_{vp} = \frac{\sqrt{\bar\alpha}}{t}\,x_t,\quad
   n(t) = \mathrm{interp}\big(\log\sigma;\ \log\sigma_n,\ n\big),\quad
   v = \frac{x_t - \hat\varepsilon(x_{vp}, n(t))}{t}

``t`` is clamped to the trained range (≈ [0.0063, 0.990] for the linear schedule); the
learn-σ channels are dropped (the ODE needs ε only).

**FreeFlowDiT** — a FreeFlow flow map (Tong et al. 2025, DiT code): a DiT whose
conditioning sums four embeddings, :math:`c = e_t(t') + e_y(y) + e_{dt}(\delta) + e_{gw}(w)`,
with δ the jump and ``w`` the guidance weight as *inputs*; its one-step sample is
``z + direction · δ · pred(z, t'_0, y, δ, w)``. Two time directions exist:

* ``reversed_time=False`` (checkpoints distilled from plain SiT, SiT time = slimstep time):
  :math:`t' = t`, direction +1;
* ``reversed_time=True`` (distilled from SiT+REPA, REPA's time: ``t' = 1`` noise):
  :math:`t' = 1 - t`, direction −1 (REPA's velocity is minus ours).

In slimstep's flow-map form :math:`f(z, \delta) = z + \delta\,F(z, \delta)` with
``F = net(z, t, y, s=δ)`` this network returns :math:`F = \pm\,\mathrm{pred}(x, t', y, \delta, w)`
(the ``dt_embedder`` is slimstep's ``s_embedder``); ``w`` is the constant ``guidance``.
"""

from __future__ import annotations

import torch

from slimstep.nets.dit import DiT, TimestepEmbedder
from slimstep.nets.vp import VPAdapter, linear_alphas_cumprod


class VPEpsDiT(DiT):
    """DiT's ε-prediction network on the VP discrete path, read as a slimstep velocity
    (module docstring). Same parameters and keys as :class:`DiT`; the schedule table
    lives in the adapter, rebuilt from the constructor's options (no tensor of its own)."""

    def __init__(
        self,
        in_shape: list[int] | tuple[int, ...] = (4, 32, 32),
        num_classes: int = 0,
        patch_size: int = 2,
        hidden_size: int = 128,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.0,
        learn_sigma: bool = True,
        time_scale: float = 1.0,
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        if num_timesteps < 2:
            raise ValueError("num_timesteps must be at least 2")
        super().__init__(in_shape, num_classes, patch_size, hidden_size, depth, num_heads,
                         mlp_ratio, class_dropout_prob, learn_sigma, 0, time_scale)
        self.vp = VPAdapter(linear_alphas_cumprod(num_timesteps, beta_start, beta_end), "epsilon")

    @property
    def t_min(self) -> float:
        return self.vp.t_min

    @property
    def t_max(self) -> float:
        return self.vp.t_max

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                return_features: bool = False, **cond: torch.Tensor):
        def eps(x_vp, n):  # DiT's own forward at the VP state and its raw timestep
            return super(VPEpsDiT, self).forward(x_vp, n, y, return_features, **cond)

        return self.vp.velocity(x, t, eps, return_features)


class FreeFlowDiT(DiT):
    """A FreeFlow flow map (DiT code with ``dt`` and ``gw`` embedders) in slimstep's
    flow-map form ``F = net(x, t, y, s=δ)`` (module docstring). ``s_embedder`` holds
    FreeFlow's ``dt_embedder``; ``gw_embedder`` embeds the constant ``guidance``."""

    def __init__(
        self,
        in_shape: list[int] | tuple[int, ...] = (4, 32, 32),
        num_classes: int = 0,
        patch_size: int = 2,
        hidden_size: int = 128,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.0,
        learn_sigma: bool = False,
        time_scale: float = 1.0,
        guidance: float = 1.0,
        reversed_time: bool = False,
    ) -> None:
        super().__init__(in_shape, num_classes, patch_size, hidden_size, depth, num_heads,
                         mlp_ratio, class_dropout_prob, learn_sigma, 1, time_scale)
        self.gw_embedder = TimestepEmbedder(hidden_size, self.t_embedder.frequency_embedding_size)
        self.guidance, self.reversed_time = float(guidance), bool(reversed_time)

    def embed(self, x, t, y=None, s=None):
        tokens, c = super().embed(x, t, y, s)
        # the guidance weight enters like a time, unscaled (FreeFlow feeds it raw)
        gw = torch.full((x.shape[0],), self.guidance, dtype=torch.float64, device=x.device)
        return tokens, c + self.gw_embedder(gw).to(c.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                return_features: bool = False, **cond: torch.Tensor):
        if "s" not in cond:
            raise TypeError("FreeFlowDiT needs the jump s= (FreeFlow's dt)")
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        out = super().forward(x, 1 - t if self.reversed_time else t, y, return_features, **cond)
        pred, feats = out if return_features else (out, None)
        F = -pred if self.reversed_time else pred
        return (F, feats) if return_features else F
