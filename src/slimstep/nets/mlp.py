"""Time-conditioned MLP for low-dimensional data (the 2-D toys, shape [N, 2]).

    emb = time_embed(sincos(1000 t, time_dim)) (+ class_embed[y])     [B, hidden]
          time_embed = Linear -> SiLU -> Linear (``time_embed: mlp``) or one Linear (``linear``)
    h_0 = x
    h_k = SiLU(layer_k(h_{k-1}) + emb)      k = 1..depth              (every layer sees t, y)
    out = out(h_depth)

``t`` in [0, 1] is scaled by ``time_scale`` before the sinusoid (fastest frequency:
``time_scale`` rad per unit t). The default 1000 resolves t finely, but a method that
differentiates along t (MeanFlow's JVP) needs a smooth embedding: build with
``time_scale=1`` (t unscaled, as SiT and the official MeanFlow code feed it).
``extra_time_embeds=1`` adds a second scalar condition ``s`` (keyword, float [B]) with its
own embedding ``s_embed`` summed into ``emb`` (flowmap's δ, MeanFlow's gap).
``time_embed: linear`` drops the embedders' inner layer: with a smooth embedding
(time_scale 1) the sinusoid features are already smooth in t, and a JVP method pays for
every layer twice (primal and tangent); on the 3x256 toy MeanFlow step it cuts the
time per step from 15.7 to 9.9 ms (one thread, issue 10).
The class table has num_classes + 1 rows, the last being the null class used for
``y=None`` and classifier-free guidance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slimstep.nets.unet import sinusoidal


class MLP(nn.Module):
    """``forward(x [B, *in_shape], t [B], y=None) -> [B, *in_shape]``."""

    def __init__(
        self,
        in_shape: list[int] | tuple[int, ...] = (2,),
        num_classes: int = 0,
        hidden: int = 256,
        depth: int = 3,
        time_dim: int = 64,
        time_scale: float = 1000.0,
        extra_time_embeds: int = 0,
        time_embed: str = "mlp",
    ) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.in_dim = math.prod(in_shape)
        self.num_classes = num_classes
        self.time_dim = time_dim
        self.time_scale = time_scale
        if extra_time_embeds not in (0, 1):
            raise ValueError("extra_time_embeds must be 0 or 1")
        if time_embed not in ("mlp", "linear"):
            raise ValueError(f"time_embed must be 'mlp' or 'linear', got {time_embed!r}")

        def embedder() -> nn.Sequential:  # sinusoid features -> hidden, for t and for s
            if time_embed == "linear":
                return nn.Sequential(nn.Linear(time_dim, hidden))
            return nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

        self.time_embed = embedder()
        self.extra_time_embeds = extra_time_embeds
        self.s_embed = embedder() if extra_time_embeds else None
        self.class_embed = nn.Embedding(num_classes + 1, hidden) if num_classes > 0 else None
        self.layers = nn.ModuleList(
            nn.Linear(self.in_dim if i == 0 else hidden, hidden) for i in range(depth))
        self.out = nn.Linear(hidden, self.in_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                return_features: bool = False, **cond: torch.Tensor):
        """``y`` is ignored by an unconditional net. Features: h_1 .. h_depth."""
        unknown = set(cond) - ({"s"} if self.extra_time_embeds else set())
        if unknown:
            raise TypeError(f"MLP got unexpected conditioning {sorted(unknown)}")
        b = x.shape[0]
        t = t.expand(b) if t.ndim == 0 else t
        emb = self.time_embed(sinusoidal(t * self.time_scale, self.time_dim).to(x.dtype))
        if self.s_embed is not None:
            s = cond.get("s")
            if s is None:
                raise TypeError("this MLP was built with extra_time_embeds=1: pass s=")
            s = s.expand(b) if s.ndim == 0 else s
            emb = emb + self.s_embed(sinusoidal(s * self.time_scale, self.time_dim).to(x.dtype))
        if self.class_embed is not None:
            if y is None:
                y = torch.full((b,), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_embed(y)
        h, feats = x.reshape(b, self.in_dim), []
        for layer in self.layers:
            h = F.silu(layer(h) + emb)
            feats.append(h)
        out = self.out(h).reshape(x.shape)
        return (out, feats) if return_features else out
