"""DDPM++ / NCSN++-style UNet (Song et al. 2021, the backbone of SlimFlow's students).

Architecture (``L = len(ch_mult)`` levels, level ``i`` has ``nf * ch_mult[i]`` channels at
resolution ``H / 2^i``)::

    emb      = time_embed(sincos(1000 t, nf))          MLP nf -> 4nf -> 4nf (SiLU)
             (+ class_embed[y])                        table of num_classes + 1 rows (null last)
    conv_in  3x3, C -> nf
    encoder  per level: num_res_blocks x [ResBlock (+ AttnBlock if res in attn_resolutions)],
             then (not on the last level) a down-sampling ResBlock (BigGAN style)
    middle   ResBlock, AttnBlock, ResBlock                (``mid_attn=False`` drops the attn)
    decoder  per level: (num_res_blocks + 1) x ResBlock on concat(h, encoder skip),
             one AttnBlock after them if res in attn_resolutions,
             then (not on level 0) an up-sampling ResBlock
    out      norm_out -> SiLU -> conv_out (3x3, zero-initialised, so a fresh net outputs 0)

``ResBlock`` (BigGAN-type, as NCSN++ with ``resblock_type="biggan"``)::

    h = conv1(resample(SiLU(norm1(x)))) + emb_proj(SiLU(emb))
    h = conv2(dropout(SiLU(norm2(h))))                   conv2 zero-initialised
    out = (skip(resample(x)) + h) / sqrt(2)              skip: 1x1 conv when channels change
                                                         or the block resamples, else Identity

``resample`` is 2x2 average pooling (down) or nearest 2x up-sampling (up). ``AttnBlock`` is
single-head self-attention over the H*W positions: ``norm`` -> ``qkv`` (1x1 conv, C -> 3C)
-> softmax(QK^T/sqrt(C))V -> ``proj_out`` (1x1, zero-init), also merged as (x + h)/sqrt(2).
GroupNorm uses ``min(32, C // 4)`` groups rounded down to a divisor of C (>= 1), NCSN++'s rule
that keeps working at the tiny widths of the 8x8 digits nets.

These choices (decoder with num_res_blocks + 1 blocks, attention once per decoder level and
in the middle, resampling by ResBlocks, time MLP of width 4nf) reproduce NCSN++'s parameter
counts: SlimFlow's CIFAR students (3x32x32, attn at 16) nf 128/2/(1,2,2) ≈ 27.9M,
nf 96 ≈ 15.7M, nf 64 ≈ 7.0M, nf 64/1/(1,1,2) ≈ 3.4M; tests/test_nets.py checks them.

Module names are chosen so that GDD-I's freeze rule reads directly off ``named_parameters``:
3x3 convs in blocks are ``*.conv1`` / ``*.conv2`` of a ``ResBlock``, attention outputs are
``*.proj_out`` of an ``AttnBlock``; ``norm*``, ``emb_proj``, ``skip``, ``qkv``,
``time_embed``, ``class_embed``, ``conv_in``, ``norm_out``, ``conv_out`` are the rest.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slimstep.nets.dit import attention, set_attention, timestep_embedding


def num_groups(channels: int, max_groups: int = 32) -> int:
    """Largest divisor of ``channels`` that is <= min(max_groups, channels // 4), at least 1."""
    g = max(1, min(max_groups, channels // 4))
    while channels % g:
        g -= 1
    return g


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels), channels, eps=1e-6)


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[sin(t w_i), cos(t w_i)] with w_i = max_period^(-i/half) (transformer positional code)."""
    return timestep_embedding(t, dim, max_period, cos_first=False)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 residual block with an additive time/class embedding."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0,
                 resample: str | None = None) -> None:
        super().__init__()
        assert resample in (None, "up", "down")
        self.resample = resample
        self.norm1 = norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = (nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch or resample
                     else nn.Identity())

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``emb`` is the already SiLU-activated embedding [B, emb_dim]."""
        h = self.conv1(self._resample(F.silu(self.norm1(x))))
        h = h + self.emb_proj(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.skip(self._resample(x)) + h) * (1 / math.sqrt(2))


class AttnBlock(nn.Module):
    """Single-head spatial self-attention, residual merged as (x + h) / sqrt(2)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        self.attn_mode = "sdpa"

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-2, -1).unbind(1)
        out = attention(q, k, v, self.attn_mode)  # [B, HW, C]
        out = self.proj_out(out.transpose(-2, -1).reshape(b, c, h, w))
        return (x + out) * (1 / math.sqrt(2))


class Level(nn.Module):
    """One resolution of the encoder or decoder: blocks, attention, optional resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attns = nn.ModuleList()
        self.resample: ResBlock | None = None


class UNet(nn.Module):
    """Time- (and class-) conditioned UNet; see the module docstring for the architecture."""

    def __init__(
        self,
        in_shape: list[int] | tuple[int, ...] = (3, 32, 32),
        num_classes: int = 0,
        nf: int = 64,
        ch_mult: list[int] | tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: list[int] | tuple[int, ...] = (16,),
        dropout: float = 0.0,
        mid_attn: bool = True,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        if h % 2 ** (len(ch_mult) - 1) or w % 2 ** (len(ch_mult) - 1):
            raise ValueError(f"{in_shape} not divisible by 2^{len(ch_mult) - 1} for ch_mult")
        self.in_shape = (c, h, w)
        self.num_classes = num_classes
        self.nf = nf
        self.time_scale = time_scale
        emb_dim = 4 * nf

        self.time_embed = nn.Sequential(nn.Linear(nf, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.conv_in = nn.Conv2d(c, nf, 3, padding=1)

        # encoder; skip_chs records the channels of every tensor pushed on the skip stack
        ch, res, skip_chs = nf, h, [nf]
        self.down = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            level = Level()
            for _ in range(num_res_blocks):
                level.blocks.append(ResBlock(ch, nf * mult, emb_dim, dropout))
                ch = nf * mult
                level.attns.append(AttnBlock(ch) if res in attn_resolutions else nn.Identity())
                skip_chs.append(ch)
            if i != len(ch_mult) - 1:
                level.resample = ResBlock(ch, ch, emb_dim, dropout, resample="down")
                res //= 2
                skip_chs.append(ch)
            self.down.append(level)

        self.mid = nn.ModuleDict({
            "block1": ResBlock(ch, ch, emb_dim, dropout),
            "attn": AttnBlock(ch) if mid_attn else nn.Identity(),
            "block2": ResBlock(ch, ch, emb_dim, dropout)})

        # decoder: the levels are stored in decoding order (deepest first)
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(ch_mult))):
            level = Level()
            for _ in range(num_res_blocks + 1):
                level.blocks.append(ResBlock(ch + skip_chs.pop(), nf * mult, emb_dim, dropout))
                ch = nf * mult
            level.attns.append(AttnBlock(ch) if res in attn_resolutions else nn.Identity())
            if i != 0:
                level.resample = ResBlock(ch, ch, emb_dim, dropout, resample="up")
                res *= 2
            self.up.append(level)
        assert not skip_chs

        self.norm_out = norm(ch)
        self.conv_out = nn.Conv2d(ch, c, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def set_attention(self, mode: str) -> UNet:
        """"sdpa" (default) or "math" (explicit softmax, safe under torch.func.jvp)."""
        return set_attention(self, mode)

    def embedding(self, t: torch.Tensor, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Time (+ class) embedding [B, 4nf], before the SiLU the blocks apply."""
        t = t.expand(batch) if t.ndim == 0 else t
        emb = self.time_embed(sinusoidal(t * self.time_scale, self.nf).to(
            self.time_embed[0].weight.dtype))
        if self.class_embed is not None:
            if y is None:
                y = torch.full((batch,), self.num_classes, dtype=torch.long, device=t.device)
            emb = emb + self.class_embed(y)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                return_features: bool = False, **cond: torch.Tensor):
        """``y`` is ignored by an unconditional net (num_classes=0). Features: the output of
        every encoder level (before down-sampling), the middle, every decoder level (before
        up-sampling)."""
        if cond:
            raise TypeError(f"UNet got unexpected conditioning {sorted(cond)}")
        emb = F.silu(self.embedding(t, y, x.shape[0]))
        h = self.conv_in(x)
        hs, feats = [h], []
        for level in self.down:
            for block, attn in zip(level.blocks, level.attns, strict=True):
                h = attn(block(h, emb))
                hs.append(h)
            feats.append(h)
            if level.resample is not None:
                h = level.resample(h, emb)
                hs.append(h)
        h = self.mid["block2"](self.mid["attn"](self.mid["block1"](h, emb)), emb)
        feats.append(h)
        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            h = level.attns[0](h)
            feats.append(h)
            if level.resample is not None:
                h = level.resample(h, emb)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return (out, feats) if return_features else out
