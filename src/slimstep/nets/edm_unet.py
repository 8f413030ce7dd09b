r"""EDM's U-Nets (Karras et al. 2022) under EDM's own tensor names, and their σ-preconditioned
denoiser read as a slimstep velocity. Written from the architecture's description (EDM's
``training/networks.py`` is CC BY-NC-SA: none of its code is here); tests/test_import_edm.py
checks it against an independent reference forward, docs/teachers.md against EDM's own code.

**The network is the denoiser** :math:`D(x; \sigma, y)` of EDM's preconditioning classes
(``EDMPrecond`` / ``VPPrecond`` / ``VEPrecond``) around a ``SongUNet`` or ``DhariwalUNet`` ``F``
(``model_type``):

.. math:: D(x; \sigma) = c_{skip}(\sigma)\,x + c_{out}(\sigma)\,F\big(c_{in}(\sigma)\,x;\ c_{noise}(\sigma), y\big)

with, for the three preconditionings (σd = ``sigma_data``)::

    edm  c_skip = σd²/(σ² + σd²)  c_out = σ·σd/√(σ² + σd²)  c_in = 1/√(σ² + σd²)  c_noise = ln(σ)/4
    vp   c_skip = 1               c_out = −σ                c_in = 1/√(σ² + 1)
         c_noise = (M − 1)·(√(β_min² + 2β_d·ln(1 + σ²)) − β_min)/β_d   (M − 1 times the VP time of σ)
    ve   c_skip = 1               c_out = σ                 c_in = 1             c_noise = ln(σ/2)
    gdd  c_skip = σd²/((σ−ε)² + σd²)  c_out = (σ−ε)·σd/√(σ² + σd²)  c_in, c_noise as edm; ε = 2e-3

``gdd`` is the preconditioning the GDD code (``GDDPrecond``, ``--precond=d2o``) wraps around
*every* teacher's ``F``, a VE one included (:mod:`slimstep.methods.gdd`, ``precond: official``).
It is a one-step generator's: its noise end is EDM's sampler start, ``G(z) = D(σ_max·z; σ_max)``,
so at ``t <= t_min`` its velocity is ``D(σ_max·x; σ_max) − x`` (the Euler step over [0, 1] is
then exactly ``G``); above ``t_min`` it is read on the path like the others.

and ``forward(x, t, y)`` is its velocity on slimstep's path,
:func:`slimstep.paths.velocity_from_denoiser` (σ = (1 − t)/t, ``v = (D(x_t/t; σ) − x_t)/(1 − t)``,
``t`` clamped to ``[1/(1 + sigma_max), 1/(1 + sigma_min)]``). Class labels: EDM feeds a
one-hot vector; slimstep's null class (index ``num_classes``, or ``y=None``) is the zero
vector, what EDM's own ``forward`` uses when it gets no labels.

**SongUNet** (DDPM++ / NCSN++, Song et al. 2021, as EDM writes it). ``L = len(channel_mult)``
levels; level ``l`` works at ``res = R >> l`` with ``model_channels·channel_mult[l]`` channels::

    emb  = embed(c_noise)                    positional: [sin, cos](c_noise·w_i), w_i = 10^(-4 i/(n/2-1));
                                             fourier: [sin, cos](2π f_i c_noise), f a buffer
           (+ map_label(√K · onehot(y)))     n = model_channels·channel_mult_noise
    emb  = SiLU(map_layer1(SiLU(map_layer0(emb))))
    enc  {R}x{R}_conv (3x3), then per level l > 0 {res}_down (a UNetBlock that halves), then
         num_blocks x {res}_block{i}; NCSN++'s residual encoder adds {res}_aux_residual after
         the down block: aux (first the image) through a 3x3 conv that halves (filtered after
         the conv), h = aux = (h + that)/√2
    dec  at the deepest level {res}_in0 (with attention), {res}_in1; elsewhere {res}_up
         (a UNetBlock that doubles); then num_blocks + 1 x {res}_block{i} on concat(h, skip),
         attention in the last one where res is in attn_resolutions; the output
         {R}_aux_norm -> SiLU -> {R}_aux_conv (3x3)

``UNetBlock`` (SongUNet's settings: skip scale √½, one attention head, additive embedding)::

    h = conv0(SiLU(norm0(x)))                conv0 3x3, re-sampling first when the block does
    h = SiLU(norm1(h + affine(emb)))
    h = (conv1(dropout(h)) + skip(x)) · √½   skip: a 1x1 conv (re-sampling first) when the
                                             channels or the resolution change, else identity
    attention: qkv (1x1, channels interleaved per head as [C/heads, 3]), softmax(qᵀk/√c) over
    the H·W positions, h = (proj(a) + h) · √½

**DhariwalUNet** (ADM, Dhariwal & Nichol 2021, EDM's ImageNet-64 network), the differences::

    emb  = [cos, sin](c_noise·w_i), w_i = 10^(-4 i/(n/2)), n = model_channels
    emb  = SiLU(map_layer1(SiLU(map_layer0(emb))) + map_label(onehot(y)))   label: no bias, unscaled
    enc  {R}x{R}_conv to model_channels·channel_mult[0]; attention in every block at an
         attn_resolutions level; no aux paths
    dec  as SongUNet's, attention in every block at those levels; out_norm -> SiLU -> out_conv
    UNetBlock: skip scale 1, GroupNorm ε 1e-5, h = SiLU(norm1(h)·(1 + scale) + shift) with
    (scale, shift) = affine(emb), one head per 64 channels, and a re-sampling skip without
    weights where the channels stay (EDM's resample_proj=False)

Re-sampling by the separable filter ``f = resample_filter / sum``: down = depthwise conv with
``f fᵀ``, stride 2; up = transposed depthwise conv with ``4 f fᵀ``, stride 2 (``[1, 1]``:
2x2 average pooling / nearest; ``[1, 3, 3, 1]``: NCSN++'s FIR blur). GroupNorm:
``min(32, C // 4)`` groups, ε = 1e-6 (ADM 1e-5). ``map_augment`` (EDM's augmentation-label input) is kept
as a buffer and never applied: no slimstep caller has augmentation labels (EDM's sampler
passes none either), and a buffer gets neither gradient nor optimizer state.

The names of the UNetBlock layers are EDM's, so GDD-I's freeze rule reads off them
(``conv0``, ``conv1``, ``proj``; ``qkv`` at level 2): :func:`slimstep.methods.gdd.gdd_i_frozen`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slimstep.nets.dit import attention, set_attention, timestep_embedding
from slimstep.paths import t_from_sigma, velocity_from_denoiser

PRECONDS = ("edm", "vp", "ve", "gdd")
#: GDDPrecond's shift of σ in c_skip and c_out (the GDD / D2O code's ``eps``)
GDD_EPS = 2e-3
EMBEDDINGS = ("positional", "fourier")
ENCODERS = ("standard", "skip", "residual")
DECODERS = ("standard", "skip")


# ----------------------------------------------------------------------------- layers


def group_norm(channels: int, eps: float = 1e-6) -> nn.GroupNorm:
    """EDM's GroupNorm: at most 32 groups of at least 4 channels."""
    return nn.GroupNorm(max(1, min(32, channels // 4)), channels, eps=eps)


class Conv2d(nn.Module):
    """A ``kernel`` x ``kernel`` convolution (none when ``kernel`` is 0) with an optional
    2x re-sampling by the separable filter ``resample_filter`` before it (``fused_resample``:
    down-sampling after it, NCSN++'s residual encoder)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 up: bool = False, down: bool = False, resample_filter=(1, 1),
                 fused_resample: bool = False) -> None:
        super().__init__()
        if up and down:
            raise ValueError("a Conv2d re-samples up or down, not both")
        if fused_resample and up:
            raise ValueError("fused up-sampling is not part of SongUNet")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        if kernel:
            self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # torch's default conv init
            self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        self.register_buffer("resample_filter",
                             (torch.outer(f, f) / f.sum() ** 2)[None, None] if up or down else None)

    def _depthwise(self, x: torch.Tensor, transposed: bool, padding: int) -> torch.Tensor:
        c = x.shape[1]
        f = self.resample_filter.to(x.dtype)
        if transposed:  # 4 f fᵀ: the 2x2 up-sampled copies keep the mean
            return F.conv_transpose2d(x, (4 * f).expand(c, 1, -1, -1), stride=2, padding=padding, groups=c)
        return F.conv2d(x, f.expand(c, 1, -1, -1), stride=2, padding=padding, groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (self.resample_filter.shape[-1] - 1) // 2 if self.resample_filter is not None else 0
        if self.fused_resample and self.down and w is not None:
            # conv on the padded input, then the filter with stride 2 and no padding
            x = self._depthwise(F.conv2d(x, w, padding=w_pad + f_pad), False, 0)
        else:
            if self.up:
                x = self._depthwise(x, True, f_pad)
            if self.down:
                x = self._depthwise(x, False, f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class UNetBlock(nn.Module):
    """EDM's U-Net block (module docstring). SongUNet's settings are the defaults; ADM's
    (DhariwalUNet) are ``skip_scale=1, eps=1e-5, resample_proj=False, adaptive_scale=True``
    and ``num_heads = out_channels // 64`` where it attends."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, num_heads: int = 0, dropout: float = 0.0,
                 skip_scale: float = math.sqrt(0.5), eps: float = 1e-6, resample_filter=(1, 1),
                 resample_proj: bool = True, adaptive_scale: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.num_heads = in_channels, out_channels, num_heads
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        self.norm0 = group_norm(in_channels, eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        # adaptive: (scale, shift) of the normalised state; else a shift added before the norm
        self.affine = nn.Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = group_norm(out_channels, eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:  # kernel 0: re-sampling only, no weights
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down,
                               resample_filter=resample_filter)
        if num_heads:
            self.norm2 = group_norm(out_channels, eps)
            self.qkv = Conv2d(out_channels, 3 * out_channels, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)
        self.attn_mode = "sdpa"

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb).to(h.dtype)[:, :, None, None]
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(shift + self.norm1(h) * (scale + 1))
        else:
            h = F.silu(self.norm1(h + params))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = (h + (self.skip(x) if self.skip is not None else x)) * self.skip_scale
        if self.num_heads:
            b, c, hh, ww = h.shape
            n, d = b * self.num_heads, c // self.num_heads
            # qkv channels are laid out [head, channel, (q, k, v)]
            q, k, v = self.qkv(self.norm2(h)).reshape(n, d, 3, hh * ww).unbind(2)
            a = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.attn_mode)
            # contiguous: a strided 1x1 conv output would reach the next GroupNorm, whose
            # forward-mode derivative (the JVP of scd / meanflow / flowmap) needs a plain layout
            a = a.transpose(1, 2).reshape(b, c, hh, ww).contiguous()
            h = (self.proj(a) + h) * self.skip_scale
        return h


class PositionalEmbedding(nn.Module):
    """The positional noise embedding (no tensors): DDPM++'s [sin, cos](x·w_i) with
    w_i = 10^(-4 i/(n/2 - 1)) (SongUNet swaps EDM's [cos, sin] halves), or ADM's
    [cos, sin](x·w_i) with w_i = 10^(-4 i/(n/2)) (``endpoint=False``, ``cos_first=True``)."""

    def __init__(self, num_channels: int, endpoint: bool = True, cos_first: bool = False) -> None:
        super().__init__()
        self.num_channels, self.endpoint, self.cos_first = num_channels, endpoint, cos_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(x, self.num_channels, cos_first=self.cos_first, endpoint=self.endpoint)


class FourierEmbedding(nn.Module):
    """NCSN++'s noise embedding: [sin, cos](2π f_i x) with random frequencies ``freqs``
    (a buffer of the file: std ``scale`` at init)."""

    def __init__(self, num_channels: int, scale: float = 16.0) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.to(self.freqs.dtype)[:, None] * (2 * math.pi * self.freqs)[None]
        return torch.cat([a.sin(), a.cos()], dim=1)


class AugmentMap(nn.Module):
    """EDM's augmentation-label map (a Linear without bias), kept as a buffer, never applied
    (module docstring)."""

    def __init__(self, augment_dim: int, out_channels: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(out_channels, augment_dim))


# ----------------------------------------------------------------------------- SongUNet


def _role(name: str) -> str:
    """``"16x16_block2"`` -> ``"block"``, ``"32x32_aux_conv"`` -> ``"aux_conv"``."""
    role = name.split("_", 1)[1]
    return "block" if role.startswith("block") else role


def attention_heads(model_type: str, attends: bool, channels: int) -> int:
    """Heads of a block that ``attends``: SongUNet one, DhariwalUNet one per 64 channels (so
    none below 64: EDM's ``channels_per_head``)."""
    if not attends:
        return 0
    return 1 if model_type == "SongUNet" else channels // 64


def _levels(resolution: int, channel_mult, decoding: bool = False):
    """``(level, mult, res, key prefix "{res}x{res}_")`` of every level, deepest first when
    decoding: how EDM names a U-Net's entries."""
    levels = list(enumerate(channel_mult))
    for level, mult in reversed(levels) if decoding else levels:
        r = resolution >> level
        yield level, mult, r, f"{r}x{r}_"


def walk_unet(enc, dec, x: torch.Tensor, emb: torch.Tensor, join, feature_at: set[str],
              features: list | None) -> torch.Tensor:
    """The encoder / decoder pass shared by EDM's and EDM2's U-Nets: every encoder output is
    a skip, a decoder ``block`` first joins the newest skip (``join(x, skip)``: EDM concatenates,
    EDM2 uses its magnitude-preserving mp_cat), and the states named in ``feature_at`` go to
    ``features``."""
    skips = []
    for name, block in enc.items():
        x = block(x) if _role(name) == "conv" else block(x, emb)
        skips.append(x)
        if features is not None and name in feature_at:
            features.append(x)
    for name, block in dec.items():
        if _role(name) == "block":
            x = join(x, skips.pop())
        x = block(x, emb)
        if features is not None and name in feature_at:
            features.append(x)
    return x


def _last_per_resolution(entries) -> set[str]:
    last = {}
    for name in entries:
        if not _role(name).startswith("aux"):
            last[name.split("_")[0]] = name
    return set(last.values())


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ as EDM writes it (module docstring), ``forward(x, c_noise, labels)``
    with ``labels`` one-hot float [B, K] (or None); ``features`` collects the hidden state at
    the end of every encoder and decoder resolution."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult=(1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions=(16,),
                 dropout: float = 0.10, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard",
                 decoder_type: str = "standard", resample_filter=(1, 1)) -> None:
        super().__init__()
        for value, valid, what in ((embedding_type, EMBEDDINGS, "embedding_type"),
                                   (encoder_type, ENCODERS, "encoder_type"),
                                   (decoder_type, DECODERS, "decoder_type")):
            if value not in valid:
                raise ValueError(f"{what} must be one of {', '.join(valid)}, not {value!r}")
        if img_resolution % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"resolution {img_resolution} is not divisible by 2^{len(channel_mult) - 1}")
        emb_ch, noise_ch = model_channels * channel_mult_emb, model_channels * channel_mult_noise
        self.label_dim = label_dim
        blk = dict(emb_channels=emb_ch, dropout=dropout, resample_filter=resample_filter)
        # SongUNet attends with one head (num_heads = 1 where it attends)

        self.map_noise = (PositionalEmbedding(noise_ch) if embedding_type == "positional"
                          else FourierEmbedding(noise_ch))
        self.map_label = nn.Linear(label_dim, noise_ch) if label_dim else None
        self.map_augment = AugmentMap(augment_dim, noise_ch) if augment_dim else None
        self.map_layer0 = nn.Linear(noise_ch, emb_ch)
        self.map_layer1 = nn.Linear(emb_ch, emb_ch)

        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        skips = []
        for level, mult, r, at in _levels(img_resolution, channel_mult, decoding=False):
            if level == 0:
                self.enc[at + "conv"] = Conv2d(cout, model_channels, 3)
                cout = model_channels
            else:
                self.enc[at + "down"] = UNetBlock(cout, cout, down=True, **blk)
                if encoder_type == "skip":
                    self.enc[at + "aux_down"] = Conv2d(caux, caux, 0, down=True, resample_filter=resample_filter)
                    self.enc[at + "aux_skip"] = Conv2d(caux, cout, 1)
                if encoder_type == "residual":
                    self.enc[at + "aux_residual"] = Conv2d(caux, cout, 3, down=True, resample_filter=resample_filter,
                                                           fused_resample=True)
                    caux = cout
            skips.append(cout)
            for i in range(num_blocks):
                self.enc[at + f"block{i}"] = UNetBlock(cout, model_channels * mult,
                                                       num_heads=int(r in attn_resolutions), **blk)
                cout = model_channels * mult
                skips.append(cout)

        self.dec = nn.ModuleDict()
        for level, mult, r, at in _levels(img_resolution, channel_mult, decoding=True):
            if level == len(channel_mult) - 1:
                self.dec[at + "in0"] = UNetBlock(cout, cout, num_heads=1, **blk)
                self.dec[at + "in1"] = UNetBlock(cout, cout, **blk)
            else:
                self.dec[at + "up"] = UNetBlock(cout, cout, up=True, **blk)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[at + f"block{i}"] = UNetBlock(
                    cin, cout, num_heads=int(i == num_blocks and r in attn_resolutions), **blk)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[at + "aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                     resample_filter=resample_filter)
                self.dec[at + "aux_norm"] = group_norm(cout)
                self.dec[at + "aux_conv"] = Conv2d(cout, out_channels, 3)
        # return_features reads the state after the last main entry of every resolution
        self._feature_at = {name for d in (self.enc, self.dec) for name in _last_per_resolution(d)}

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None,
                features: list | None = None) -> torch.Tensor:
        emb = self.map_noise(c_noise).to(x.dtype)
        if self.map_label is not None and labels is not None:
            emb = emb + self.map_label(labels.to(x.dtype) * math.sqrt(self.label_dim))
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips, aux = [], x
        for name, block in self.enc.items():
            role = _role(name)
            if role == "aux_down":
                aux = block(aux)
            elif role == "aux_skip":
                x = skips[-1] = x + block(aux)
            elif role == "aux_residual":
                x = skips[-1] = aux = (x + block(aux)) * (1 / math.sqrt(2))
            else:
                x = block(x) if role == "conv" else block(x, emb)
                skips.append(x)
            if features is not None and name in self._feature_at:
                features.append(x)

        out = tmp = None
        for name, block in self.dec.items():
            role = _role(name)
            if role == "aux_up":
                out = block(out)
            elif role == "aux_norm":
                tmp = block(x)
            elif role == "aux_conv":
                tmp = block(F.silu(tmp))
                out = tmp if out is None else tmp + out
            else:
                if role == "block":  # every decoder block reads the matching encoder state
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
            if features is not None and name in self._feature_at:
                features.append(x)
        return out


class DhariwalUNet(nn.Module):
    """ADM (Dhariwal & Nichol 2021) as EDM writes it (module docstring),
    ``forward(x, c_noise, labels)`` like :class:`SongUNet`."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult=(1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions=(32, 16, 8),
                 dropout: float = 0.10) -> None:
        super().__init__()
        if img_resolution % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"resolution {img_resolution} is not divisible by 2^{len(channel_mult) - 1}")
        emb_ch = model_channels * channel_mult_emb
        blk = dict(emb_channels=emb_ch, dropout=dropout, skip_scale=1.0, eps=1e-5,
                   resample_proj=False, adaptive_scale=True)
        heads = lambda attends, ch: attention_heads("DhariwalUNet", attends, ch)  # noqa: E731
        self.map_noise = PositionalEmbedding(model_channels, endpoint=False, cos_first=True)
        self.map_augment = AugmentMap(augment_dim, model_channels) if augment_dim else None
        self.map_layer0 = nn.Linear(model_channels, emb_ch)
        self.map_layer1 = nn.Linear(emb_ch, emb_ch)
        self.map_label = nn.Linear(label_dim, emb_ch, bias=False) if label_dim else None

        self.enc = nn.ModuleDict()
        cout, skips = in_channels, []
        for level, mult, r, at in _levels(img_resolution, channel_mult, decoding=False):
            if level == 0:
                self.enc[at + "conv"] = Conv2d(cout, model_channels * mult, 3)
                cout = model_channels * mult
            else:
                self.enc[at + "down"] = UNetBlock(cout, cout, down=True, **blk)
            skips.append(cout)
            for i in range(num_blocks):
                c = model_channels * mult
                self.enc[at + f"block{i}"] = UNetBlock(cout, c, num_heads=heads(r in attn_resolutions, c), **blk)
                cout = c
                skips.append(cout)
        self.dec = nn.ModuleDict()
        for level, mult, r, at in _levels(img_resolution, channel_mult, decoding=True):
            if level == len(channel_mult) - 1:
                self.dec[at + "in0"] = UNetBlock(cout, cout, num_heads=heads(True, cout), **blk)
                self.dec[at + "in1"] = UNetBlock(cout, cout, **blk)
            else:
                self.dec[at + "up"] = UNetBlock(cout, cout, up=True, **blk)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[at + f"block{i}"] = UNetBlock(cin, cout, num_heads=heads(r in attn_resolutions, cout),
                                                       **blk)
        self.out_norm = group_norm(cout, eps=1e-5)
        self.out_conv = Conv2d(cout, out_channels, 3)
        self._feature_at = {name for d in (self.enc, self.dec) for name in _last_per_resolution(d)}

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None,
                features: list | None = None) -> torch.Tensor:
        emb = self.map_layer1(F.silu(self.map_layer0(self.map_noise(c_noise).to(x.dtype))))
        if self.map_label is not None and labels is not None:  # ADM adds the label after the MLP
            emb = emb + self.map_label(labels.to(x.dtype))
        emb = F.silu(emb)
        x = walk_unet(self.enc, self.dec, x, emb, lambda a, b: torch.cat([a, b], dim=1),
                      self._feature_at, features)
        return self.out_conv(F.silu(self.out_norm(x)))


# ----------------------------------------------------------------------------- the teacher


MODEL_TYPES = ("SongUNet", "DhariwalUNet")
#: SongUNet's options DhariwalUNet does not have, with the one value it fixes them to
_SONG_ONLY = {"embedding_type": "positional", "channel_mult_noise": 1, "encoder_type": "standard",
              "decoder_type": "standard", "resample_filter": [1, 1]}


class EDMUNet(nn.Module):
    """EDM's preconditioned SongUNet or DhariwalUNet (``model_type``) as a slimstep velocity
    network (module docstring).

    ``sigma_min`` / ``sigma_max`` are the σ range the velocity clamps to (EDM's sampler's
    default, [0.002, 80], within the network's own range); ``sigma_data`` is EDM's, and
    ``beta_d``, ``beta_min``, ``M`` are the VP preconditioning's. The architecture options
    are EDM's, under its names; ``embedding_type`` ... ``resample_filter`` are SongUNet's only."""

    def __init__(
        self,
        in_shape: list[int] | tuple[int, ...] = (3, 32, 32),
        num_classes: int = 0,
        precond: str = "edm",
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,
        model_type: str = "SongUNet",
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: list[int] | tuple[int, ...] = (2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: list[int] | tuple[int, ...] = (16,),
        dropout: float = 0.1,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: list[int] | tuple[int, ...] = (1, 1),
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        if h != w:
            raise ValueError(f"EDM's networks take square images, not {h}x{w}")
        if precond not in PRECONDS:
            raise ValueError(f"precond must be one of {', '.join(PRECONDS)}, not {precond!r}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.in_shape, self.num_classes = (c, h, w), num_classes
        self.precond, self.sigma_data = precond, float(sigma_data)
        self.beta_d, self.beta_min, self.M = float(beta_d), float(beta_min), int(M)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.t_min, self.t_max = t_from_sigma(self.sigma_max), t_from_sigma(self.sigma_min)
        arch = dict(img_resolution=h, in_channels=c, out_channels=c, label_dim=num_classes,
                    augment_dim=augment_dim, model_channels=model_channels, channel_mult=channel_mult,
                    channel_mult_emb=channel_mult_emb, num_blocks=num_blocks,
                    attn_resolutions=attn_resolutions, dropout=dropout)
        song = dict(embedding_type=embedding_type, channel_mult_noise=channel_mult_noise,
                    encoder_type=encoder_type, decoder_type=decoder_type,
                    resample_filter=list(resample_filter))
        if model_type == "SongUNet":
            self.model = SongUNet(**arch, **song)
        elif model_type == "DhariwalUNet":
            other = {k: v for k, v in song.items() if v != _SONG_ONLY[k]}
            if other:
                raise ValueError(f"{', '.join(other)}: SongUNet options, not DhariwalUNet's")
            self.model = DhariwalUNet(**arch)
        else:
            raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, not {model_type!r}")
        self.model_type = model_type

    def set_attention(self, mode: str) -> EDMUNet:
        """"sdpa" (default) or "math" (explicit softmax: double backward, torch.func.jvp)."""
        return set_attention(self, mode)

    def coefficients(self, sigma: torch.Tensor):
        """``(c_skip, c_out, c_in, c_noise)`` of the preconditioning at ``sigma``."""
        if self.precond == "edm":
            sd = self.sigma_data
            r = (sigma ** 2 + sd ** 2).rsqrt()
            return sd ** 2 * r ** 2, sigma * sd * r, r, sigma.log() / 4
        if self.precond == "gdd":
            sd, s = self.sigma_data, sigma - GDD_EPS
            r = (sigma ** 2 + sd ** 2).rsqrt()
            return sd ** 2 / (s ** 2 + sd ** 2), s * sd * r, r, sigma.log() / 4
        if self.precond == "vp":  # c_noise = (M - 1) t(σ), t the VP schedule's inverse
            t = ((self.beta_min ** 2 + 2 * self.beta_d * torch.log1p(sigma ** 2)).sqrt()
                 - self.beta_min) / self.beta_d
            return torch.ones_like(sigma), -sigma, (sigma ** 2 + 1).rsqrt(), (self.M - 1) * t
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor | None = None,
                features: list | None = None) -> torch.Tensor:
        """EDM's ``D(x; σ, y)`` (``sigma`` [B]); ``y`` int64 class indices, the null class
        (``num_classes``) or None giving the zero label vector."""
        sigma = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        labels = None
        if self.num_classes:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            labels = F.one_hot(y, self.num_classes + 1)[:, :self.num_classes].to(x.dtype)
        f_x = self.model(c_in * x, c_noise.flatten(), labels, features)
        return c_skip * x + c_out * f_x

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                return_features: bool = False, **cond: torch.Tensor):
        if cond:
            raise TypeError(f"EDMUNet got unexpected conditioning {sorted(cond)}")
        feats = [] if return_features else None
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        if self.precond == "gdd" and bool((t <= self.t_min).all()):  # G(z) = D(σ_max z; σ_max)
            sigma = torch.full_like(t, self.sigma_max)
            v = self.denoise(self.sigma_max * x, sigma, y, feats) - x
            return (v, feats) if return_features else v
        if self.precond == "gdd" and bool((t <= self.t_min).any()):
            raise ValueError("a gdd-preconditioned EDMUNet takes t at the noise end (<= t_min) "
                             "for the whole batch or for none of it")
        v = velocity_from_denoiser(self.denoise, x, t, y, t_min=self.t_min, t_max=self.t_max,
                                   features=feats)
        return (v, feats) if return_features else v
