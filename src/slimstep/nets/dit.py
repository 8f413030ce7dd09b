"""adaLN-Zero Diffusion Transformer (DiT, Peebles & Xie 2023) with the DiT / SiT key layout.

State-dict names follow the official DiT and SiT repositories, so their checkpoints load
by name (``load_state_dict(strict=True)``)::

    x_embedder.proj.{weight,bias}              patchify conv, C -> hidden, kernel = stride = p
    t_embedder.mlp.{0,2}.{weight,bias}         256-d frequency embedding -> hidden -> hidden
    s_embedder.mlp.{0,2}.{weight,bias}         (only with extra_time_embeds=1) same layout
    y_embedder.embedding_table.weight          num_classes + 1 rows, row num_classes = null class
    pos_embed                                  fixed 2-D sin-cos [1, T, hidden] (a buffer)
    blocks.{i}.attn.qkv / attn.proj            multi-head self-attention (timm layout)
    blocks.{i}.mlp.fc1 / mlp.fc2               GELU(tanh) MLP
    blocks.{i}.adaLN_modulation.1              c -> 6*hidden (shift/scale/gate for attn and mlp)
    final_layer.{linear, adaLN_modulation.1}   c -> 2*hidden (shift/scale), hidden -> p*p*C_out
    (norm1, norm2, final_layer.norm_final are LayerNorms without affine: no parameters)

Block update, with ``c = t_emb + y_emb (+ s_emb)`` and ``mod(h, a, b) = h*(1+b) + a``::

    x = x + g_msa * Attn(mod(LN(x), a_msa, b_msa))
    x = x + g_mlp * MLP (mod(LN(x), a_mlp, b_mlp))

adaLN-Zero: every modulation linear and the final linear start at zero, so each block starts
as the identity and a fresh network outputs exactly zero.

Time: ``t`` in [0, 1] is multiplied by ``time_scale`` (default 1000, DiT's timestep range,
so the 256-d frequency embedding with max period 10^4 resolves it) before the embedding.
SiT feeds its ``t`` in [0, 1] unscaled: build with ``time_scale=1.0`` to use SiT weights;
the SiT <-> slimstep time/velocity conversion lives in the teacher adapter, not here.

Attention uses ``F.scaled_dot_product_attention``; ``net.set_attention("math")`` or the
``math_attention()`` context forces the explicit softmax(QK^T/sqrt(d))V path, which
``torch.func.jvp`` can differentiate through (fused kernels have no forward-mode rule).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- attention

_FORCE_MATH = False


@contextmanager
def math_attention() -> Iterator[None]:
    """Within this context every slimstep attention layer uses the plain math path."""
    global _FORCE_MATH
    prev, _FORCE_MATH = _FORCE_MATH, True
    try:
        yield
    finally:
        _FORCE_MATH = prev


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = "sdpa") -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over the last two dims; ``mode`` "sdpa" or "math"."""
    if mode not in ("sdpa", "math"):
        raise ValueError(f"attention mode must be 'sdpa' or 'math', got {mode!r}")
    if mode == "math" or _FORCE_MATH:
        w = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)
        return w @ v
    return F.scaled_dot_product_attention(q, k, v)


def set_attention(net: nn.Module, mode: str) -> nn.Module:
    """Set the attention path ("sdpa" | "math") of every attention module inside ``net``."""
    if mode not in ("sdpa", "math"):
        raise ValueError(f"attention mode must be 'sdpa' or 'math', got {mode!r}")
    for m in net.modules():
        if hasattr(m, "attn_mode"):
            m.attn_mode = mode
    return net


# ----------------------------------------------------------------------------- embeddings


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0,
                       cos_first: bool = True, endpoint: bool = False) -> torch.Tensor:
    """[cos(t w_i), sin(t w_i)], w_i = max_period^(-i/half), i < half; odd ``dim`` pads a zero.

    DiT / SiT weights expect cos first; ``cos_first=False`` gives the transformer
    positional order (sin first) that slimstep's UNet and MLP were trained with.
    ``endpoint=True`` spaces the exponents over [0, 1] inclusive, w_i =
    max_period^(-i/(half-1)) (EDM's DDPM++ embedding, so the slowest is 1/max_period).
    """
    half = dim // 2
    t = t if t.dtype == torch.float64 else t.float()  # never embed in half precision
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device)
                      / (half - 1 if endpoint else half))
    args = t[:, None] * freqs[None]
    pair = (torch.cos(args), torch.sin(args)) if cos_first else (torch.sin(args), torch.cos(args))
    emb = torch.cat(pair, dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def init_linears(module: nn.Module) -> None:
    """DiT's init for every Linear inside ``module``: xavier-uniform weight, zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """MAE/DiT fixed 2-D sin-cos table [grid*grid, dim]: first half encodes the column
    (w) index, second half the row (h) index, each as [sin(p w_i), cos(p w_i)]."""
    assert dim % 4 == 0, "hidden_size must be divisible by 4 for the 2-D sin-cos embedding"
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid, dtype=torch.float64), indexing="ij")

    def one(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([one(cols), one(rows)], dim=1).float()


class TimestepEmbedder(nn.Module):
    """Scalar -> 256-d frequency embedding -> Linear -> SiLU -> Linear (``mlp.0`` / ``mlp.2``)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class table with a null row at index ``num_classes``; in training, labels are replaced
    by the null class with probability ``dropout_prob`` (classifier-free guidance)."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(y.shape[0], device=y.device) < self.dropout_prob
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return self.embedding_table(y)


class PatchEmbed(nn.Module):
    """[B, C, H, W] -> [B, (H/p)(W/p), hidden] by a stride-p conv (``proj``)."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------- blocks


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` linear and an output ``proj``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        assert dim % num_heads == 0, "hidden_size must be divisible by num_heads"
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_mode = "sdpa"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(
            2, 0, 3, 1, 4)
        out = attention(q, k, v, self.attn_mode)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """One adaLN-Zero transformer block: ``forward(x [B,T,D], c [B,D]) -> [B,T,D]``."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT init: xavier-uniform linears, zero biases, zeroed adaLN (block = identity)."""
        init_linears(self)
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), sh1, sc1))
        return x + g2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sh2, sc2))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + LayerNorm + linear to p*p*C_out per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """adaLN-Zero: modulation and output projection start at zero (output = 0)."""
        for layer in (self.linear, self.adaLN_modulation[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# ----------------------------------------------------------------------------- network


class DiTStem(nn.Module):
    """What every DiT-shaped network here shares, at the top level so the state-dict keys
    keep the DiT / SiT layout: the patch, time (+ optional ``s``) and class embedders, the
    fixed position embedding, :meth:`embed` (image -> tokens, conditioning) and
    :meth:`unpatchify`. Subclasses add their blocks and head."""

    def _build_stem(self, in_shape, num_classes: int, patch_size: int, hidden_size: int,
                    extra_time_embeds: int, time_scale: float, class_dropout_prob: float = 0.0,
                    frequency_embedding_size: int = 256) -> None:
        c, h, w = in_shape
        if h != w or h % patch_size:
            raise ValueError(f"DiT needs square images divisible by patch_size, got {in_shape}")
        if extra_time_embeds not in (0, 1):
            raise ValueError("extra_time_embeds must be 0 or 1")
        self.in_shape, self.in_channels = (c, h, w), c
        self.patch_size, self.grid = patch_size, h // patch_size
        self.num_classes, self.time_scale = num_classes, time_scale
        self.extra_time_embeds = extra_time_embeds
        self.x_embedder = PatchEmbed(c, hidden_size, patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size, frequency_embedding_size)
        self.s_embedder = (TimestepEmbedder(hidden_size, frequency_embedding_size)
                           if extra_time_embeds else None)
        self.y_embedder = (LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
                           if num_classes > 0 else None)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden_size, self.grid)[None])

    def _init_embedders(self) -> None:
        """N(0, 0.02) for the time, s and class embeddings (DiT's init)."""
        for emb in (self.t_embedder, self.s_embedder):
            if emb is not None:
                nn.init.normal_(emb.mlp[0].weight, std=0.02)
                nn.init.normal_(emb.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)

    def set_attention(self, mode: str) -> nn.Module:
        """"sdpa" (default, fused kernels) or "math" (explicit, safe under torch.func.jvp)."""
        return set_attention(self, mode)

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
              s: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Image -> (tokens [B, T, D] with position embedding, conditioning c [B, D])."""
        tokens = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        c = self.t_embedder(t * self.time_scale)
        if self.s_embedder is not None:
            if s is None:
                raise TypeError("this DiT was built with extra_time_embeds=1: pass s=")
            s = s.expand(x.shape[0]) if s.ndim == 0 else s
            c = c + self.s_embedder(s * self.time_scale)
        elif s is not None:
            raise TypeError("s= given but the DiT was built with extra_time_embeds=0")
        if self.y_embedder is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            c = c + self.y_embedder(y)
        return tokens, c.to(tokens.dtype)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, T, p*p*C] -> [B, C, H, W]; token features are ordered (p_row, p_col, channel)."""
        b, p, g = tokens.shape[0], self.patch_size, self.grid
        x = tokens.reshape(b, g, g, p, p, -1)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(b, -1, g * p, g * p)


class DiT(DiTStem):
    """adaLN-Zero DiT on [B, C, H, W] images; see the module docstring for the layout.

    ``learn_sigma=True`` gives 2C output channels (as SiT-XL/2 / DiT checkpoints have);
    ``forward`` and ``head`` return only the first C (the velocity / noise prediction).
    ``extra_time_embeds=1`` adds a second scalar condition ``s`` (keyword, float [B]),
    embedded by ``s_embedder`` (same scaling as ``t``) and summed into ``c``.
    """

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
        extra_time_embeds: int = 0,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        self._build_stem(in_shape, num_classes, patch_size, hidden_size, extra_time_embeds,
                         time_scale, class_dropout_prob)
        self.out_channels = 2 * self.in_channels if learn_sigma else self.in_channels
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT init: xavier linears, N(0, 0.02) embeddings, zeroed adaLN and output."""
        init_linears(self)
        for m in [*self.blocks, self.final_layer]:
            m.reset_parameters()
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        self._init_embedders()

    def head(self, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Final adaLN layer + unpatchify; returns the first C channels (learn_sigma dropped)."""
        return self.unpatchify(self.final_layer(tokens, c))[:, : self.in_channels]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                return_features: bool = False, **cond: torch.Tensor):
        unknown = set(cond) - ({"s"} if self.extra_time_embeds else set())
        if unknown:
            raise TypeError(f"DiT got unexpected conditioning {sorted(unknown)}")
        tokens, c = self.embed(x, t, y, cond.get("s"))
        feats = []
        for block in self.blocks:
            tokens = block(tokens, c)
            feats.append(tokens)
        out = self.head(tokens, c)
        return (out, feats) if return_features else out
