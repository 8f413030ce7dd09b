r"""EDM2's magnitude-preserving U-Net (Karras et al. 2024, "Analyzing and Improving the
Training Dynamics of Diffusion Models") under EDM2's own tensor names, and its
σ-preconditioned denoiser read as a slimstep velocity. Written from the paper's equations
and the architecture's description (EDM2's ``training/networks_edm2.py`` is CC BY-NC-SA:
none of its code is here); tests/test_import_edm2.py checks it against an independent
reference forward.

**Magnitude-preserving primitives** (the paper's equation numbers)::

    normalize(x, dims)   x / (ε + ‖x‖_dims / √N_dims)        ε = 1e-4, N_dims = elements per norm
    mp_silu(x)           silu(x) / 0.596                      (81)
    mp_sum(a, b; t)      ((1 − t)·a + t·b) / √((1 − t)² + t²)  (88)
    mp_cat(a, b; t)      [w_a·a, w_b·b],  C = √((N_a + N_b)/((1 − t)² + t²)),
                         w_a = C (1 − t)/√N_a,  w_b = C t/√N_b  (103; N = channels)
    MPFourier(x)         √2 · cos(x·f_i + φ_i)                f, φ buffers (f already × 2π) (75)
    MPConv(x; g)         conv / matmul with  ŵ = g · normalize(w) / √fan_in,           (47, 66)
                         normalize over each output channel's fan-in (in·k·k) elements
    resample(x, f, mode) keep: x; down: depthwise f fᵀ/(Σf)², stride 2; up: transposed,
                         4 f fᵀ/(Σf)², stride 2; padding (len f − 1)//2

EDM2 *also* re-normalises the stored weights in place at every training forward ("forced
weight normalisation", eq. 66). slimstep does not: the forward normalisation makes the
function independent of each weight's scale, so inference and import need only it, and an
in-place write to a parameter inside ``forward`` would break ``torch.func.jvp``,
``torch.compile`` and frozen (GDD-I) weights. What remains different in fine-tuning is
Adam's effective step size as weight norms grow (docs/teachers.md).

**Block** (``flavor`` enc / dec, ``resample_mode`` keep / down / up)::

    x = resample(x)
    enc:  x = conv_skip(x) (1x1, when the channels change);  x = normalize(x, channels)
    y = conv_res0(mp_silu(x))                                            3x3
    y = mp_silu(y · (1 + emb_linear(emb; gain = emb_gain)))              emb_gain a scalar, 0 at init
    y = conv_res1(dropout(y))                                            3x3
    dec:  x = conv_skip(x) (1x1, when the channels change)
    x = mp_sum(x, y; res_balance)
    attention (where it has heads = out // channels_per_head):
        q, k, v = normalize(attn_qkv(x) as [B, heads, C/heads, 3, HW], over C/heads)
        x = mp_sum(x, attn_proj(softmax(qᵀk/√(C/heads)) v); attn_balance)
    x = clip(x, ±clip_act)

**UNet**: ``cblock = model_channels·channel_mult``; the noise embedding width
``cnoise = model_channels·channel_mult_noise`` (else cblock[0]), the embedding width
``cemb = model_channels·channel_mult_emb`` (else max(cblock))::

    emb = emb_noise(emb_fourier(c_noise))
          (with labels:  emb = mp_sum(emb, emb_label(√K · onehot(y)); label_balance))
    emb = mp_silu(emb)
    x   = [x, 1]                                     a constant channel joins the image
    enc {R}x{R}_conv (3x3), then per level l > 0 {r}x{r}_down, then num_blocks x {r}x{r}_block{i}
    dec deepest: {r}x{r}_in0 (attention), {r}x{r}_in1; else {r}x{r}_up; then num_blocks + 1 x
        {r}x{r}_block{i} on mp_cat(x, skip; concat_balance)
    out = out_conv(x; gain = out_gain)               out_gain a scalar, 0 at init

**Precond** (σd = ``sigma_data``)::

    D(x; σ, y) = c_skip x + c_out F(c_in x; c_noise, y)
    c_skip = σd²/(σ² + σd²)   c_out = σ σd/√(σ² + σd²)   c_in = 1/√(σ² + σd²)   c_noise = ln(σ)/4

and ``forward(x, t, y)`` is its velocity on slimstep's path,
:func:`slimstep.paths.velocity_from_denoiser` (σ = (1 − t)/t, ``v = (D(x_t/t; σ) − x_t)/(1 − t)``,
``t`` clamped to ``[1/(1 + sigma_max), 1/(1 + sigma_min)]``). Class labels: slimstep's null
class (index ``num_classes``, or ``y=None``) is the zero label vector, what EDM2's own
``Precond`` feeds when it gets no labels (its embedding still enters ``mp_sum``).

The uncertainty head ``logvar_fourier`` / ``logvar_linear`` (``u(σ)`` of EDM2's loss
weighting, eq. 21: ``logvar = logvar_linear(logvar_fourier(c_noise))``) is kept as buffers
and offered by :meth:`EDM2UNet.logvar`; the denoiser never reads it. EDM2's ``use_fp16``
is not offered: the network runs in the dtype of its input (float32 on the CPU); the norms
are computed in float32 at least, as EDM2 does, and in float64 for float64 inputs.

**A second time input** (``extra_time_embeds=1``, built by flowmap's student): the jump
``s`` is embedded like the noise level and added to the embedding before its
``mp_silu``, ``emb += s_embedder.linear(s_embedder.fourier(s); gain = s_embedder.gain)``,
with the gain 0 at construction (EDM2's own idiom for ``emb_gain`` / ``out_gain``), so the
student starts as the teacher for every ``s``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slimstep.nets.dit import attention, set_attention
from slimstep.nets.edm_unet import _last_per_resolution, _levels, walk_unet
from slimstep.paths import t_from_sigma, velocity_from_denoiser

FLAVORS = ("enc", "dec")
RESAMPLE_MODES = ("keep", "down", "up")
#: the constant ε of EDM2's ``normalize``
NORM_EPS = 1e-4
#: mp_silu's divisor: the standard deviation of silu(x) for x ~ N(0, 1)
SILU_STD = 0.596


# ----------------------------------------------------------------------------- primitives


def _acc(dtype: torch.dtype) -> torch.dtype:
    """The dtype norms are taken in: float32 at least (EDM2's), float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def normalize(x: torch.Tensor, dim: list[int] | None = None, eps: float = NORM_EPS) -> torch.Tensor:
    """``x / (eps + ‖x‖ / √N)`` with the norm over ``dim`` (default: all but the first) and
    N the number of elements each norm runs over: unit root-mean-square along ``dim``."""
    dim = list(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=_acc(x.dtype))
    norm = eps + norm * math.sqrt(norm.numel() / x.numel())
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU scaled to keep unit variance for unit-variance inputs."""
    return F.silu(x) / SILU_STD


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """``lerp(a, b, t)`` rescaled so that two independent unit-variance inputs give one."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenation along ``dim`` weighting ``b`` by ``t`` against ``a``, rescaled so the
    result has the inputs' magnitude whatever their channel counts."""
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2))
    return torch.cat([(c / math.sqrt(na) * (1 - t)) * a, (c / math.sqrt(nb) * t) * b], dim=dim)


def resample(x: torch.Tensor, f: list[int] | tuple[int, ...] = (1, 1), mode: str = "keep") -> torch.Tensor:
    """2x re-sampling by the separable filter ``f`` (even length): ``down`` a depthwise
    convolution with f fᵀ/(Σf)² at stride 2, ``up`` the transposed one with 4 f fᵀ/(Σf)²
    (``[1, 1]``: 2x2 average pooling / nearest neighbour); ``keep`` returns ``x``."""
    if mode == "keep":
        return x
    g = torch.as_tensor(f, dtype=x.dtype, device=x.device)
    g = g / g.sum()
    k = torch.outer(g, g)[None, None]
    c, pad = x.shape[1], (len(f) - 1) // 2
    if mode == "down":
        return F.conv2d(x, k.expand(c, 1, -1, -1), groups=c, stride=2, padding=pad)
    if mode != "up":
        raise ValueError(f"resample mode must be one of {', '.join(RESAMPLE_MODES)}, not {mode!r}")
    return F.conv_transpose2d(x, (4 * k).expand(c, 1, -1, -1), groups=c, stride=2, padding=pad)


# ----------------------------------------------------------------------------- layers


class MPConv(nn.Module):
    """A magnitude-preserving convolution (``kernel`` (k, k)) or fully-connected layer
    (``kernel`` ()): the weight is normalised per output channel in every forward and
    scaled by ``gain / √fan_in`` (module docstring); no bias. ``as_buffer`` keeps the
    weight as a buffer (a head slimstep never trains: ``logvar_linear``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...] = (),
                 as_buffer: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        w = torch.randn(out_channels, in_channels, *kernel)
        if as_buffer:
            self.register_buffer("weight", w)
        else:
            self.weight = nn.Parameter(w)

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        w = normalize(self.weight.to(_acc(x.dtype)))
        w = (w * (gain / math.sqrt(w[0].numel()))).to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


class MPFourier(nn.Module):
    """``√2 cos(x f_i + φ_i)``: unit-variance Fourier features of a scalar, frequencies
    ``freqs`` (2π·N(0, bandwidth²)) and phases ``phases`` (2π·U(0, 1)) as buffers."""

    def __init__(self, num_channels: int, bandwidth: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = _acc(x.dtype)
        y = torch.outer(x.to(acc), self.freqs.to(acc)) + self.phases.to(acc)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class Block(nn.Module):
    """EDM2's encoder / decoder block (module docstring). ``num_heads`` 0: no attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, flavor: str = "enc",
                 resample_mode: str = "keep", resample_filter=(1, 1), num_heads: int = 0,
                 dropout: float = 0.0, res_balance: float = 0.3, attn_balance: float = 0.3,
                 clip_act: float | None = 256) -> None:
        super().__init__()
        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}, not {flavor!r}")
        if resample_mode not in RESAMPLE_MODES:
            raise ValueError(f"resample_mode must be one of {', '.join(RESAMPLE_MODES)}, not {resample_mode!r}")
        self.out_channels, self.flavor = out_channels, flavor
        self.resample_mode, self.resample_filter = resample_mode, list(resample_filter)
        self.num_heads, self.dropout = num_heads, dropout
        self.res_balance, self.attn_balance, self.clip_act = res_balance, attn_balance, clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        # enc: the skip conv runs before the residual branch, so conv_res0 sees out channels
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, (3, 3))
        self.emb_linear = MPConv(emb_channels, out_channels)
        self.conv_res1 = MPConv(out_channels, out_channels, (3, 3))
        self.conv_skip = MPConv(in_channels, out_channels, (1, 1)) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, 3 * out_channels, (1, 1)) if num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, (1, 1)) if num_heads else None
        self.attn_mode = "sdpa"

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, self.resample_filter, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=[1])  # pixel norm: unit magnitude per position
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, self.res_balance)
        if self.num_heads:
            b, c, h, w = x.shape
            # qkv channels are laid out [head, channel, (q, k, v)]; each of q, k, v is
            # normalised over its head's channels
            qkv = normalize(self.attn_qkv(x).reshape(b, self.num_heads, -1, 3, h * w), dim=[2])
            q, k, v = (u.reshape(b * self.num_heads, -1, h * w).transpose(1, 2) for u in qkv.unbind(3))
            a = attention(q, k, v, self.attn_mode)  # [b·heads, hw, c/heads]
            y = self.attn_proj(a.transpose(1, 2).reshape(b, c, h, w))
            x = mp_sum(x, y, self.attn_balance)
        if self.clip_act is not None:
            x = x.clamp(-self.clip_act, self.clip_act)
        return x


class UNet(nn.Module):
    """EDM2's U-Net (module docstring), ``forward(x, c_noise, labels, extra_emb)`` with
    ``labels`` one-hot float [B, K] (or None), ``extra_emb`` added to the embedding before
    its ``mp_silu`` (a second time input); ``features`` collects the state at the end of
    every encoder and decoder resolution."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0,
                 model_channels: int = 192, channel_mult=(1, 2, 3, 4), channel_mult_noise: int | None = None,
                 channel_mult_emb: int | None = None, num_blocks: int = 3, attn_resolutions=(16, 8),
                 label_balance: float = 0.5, concat_balance: float = 0.5, channels_per_head: int = 64,
                 **block: object) -> None:
        super().__init__()
        if img_resolution % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"resolution {img_resolution} is not divisible by 2^{len(channel_mult) - 1}")
        cblock = [model_channels * m for m in channel_mult]
        self.cnoise = model_channels * channel_mult_noise if channel_mult_noise else cblock[0]
        self.cemb = model_channels * channel_mult_emb if channel_mult_emb else max(cblock)
        self.label_dim, self.label_balance, self.concat_balance = label_dim, label_balance, concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(self.cnoise)
        self.emb_noise = MPConv(self.cnoise, self.cemb)
        self.emb_label = MPConv(label_dim, self.cemb) if label_dim else None

        def heads(attends: bool, ch: int) -> int:
            return ch // channels_per_head if attends else 0

        self.enc = nn.ModuleDict()
        cout = img_channels + 1  # the constant channel
        for level, mult, r, at in _levels(img_resolution, channel_mult):
            if level == 0:
                self.enc[at + "conv"] = MPConv(cout, cblock[0], (3, 3))
                cout = cblock[0]
            else:
                self.enc[at + "down"] = Block(cout, cout, self.cemb, "enc", "down", **block)
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[at + f"block{i}"] = Block(cin, cout, self.cemb, "enc",
                                                   num_heads=heads(r in attn_resolutions, cout), **block)
        skips = [m.out_channels for m in self.enc.values()]
        self.dec = nn.ModuleDict()
        for level, mult, r, at in _levels(img_resolution, channel_mult, decoding=True):
            if level == len(channel_mult) - 1:
                self.dec[at + "in0"] = Block(cout, cout, self.cemb, "dec", num_heads=heads(True, cout), **block)
                self.dec[at + "in1"] = Block(cout, cout, self.cemb, "dec", **block)
            else:
                self.dec[at + "up"] = Block(cout, cout, self.cemb, "dec", "up", **block)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[at + f"block{i}"] = Block(cin, cout, self.cemb, "dec",
                                                   num_heads=heads(r in attn_resolutions, cout), **block)
        self.out_conv = MPConv(cout, img_channels, (3, 3))
        self._feature_at = {name for d in (self.enc, self.dec) for name in _last_per_resolution(d)}

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None,
                extra_emb: torch.Tensor | None = None, features: list | None = None) -> torch.Tensor:
        emb = self.emb_noise(self.emb_fourier(c_noise))
        if self.emb_label is not None:
            if labels is None:  # the null class: EDM2's zero label vector (it still enters mp_sum)
                labels = x.new_zeros(1, self.label_dim)
            emb = mp_sum(emb, self.emb_label(labels.to(emb.dtype) * math.sqrt(self.label_dim)),
                         self.label_balance)
        if extra_emb is not None:
            emb = emb + extra_emb
        emb = mp_silu(emb)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        x = walk_unet(self.enc, self.dec, x, emb, lambda a, b: mp_cat(a, b, t=self.concat_balance),
                      self._feature_at, features)
        return self.out_conv(x, gain=self.out_gain)


class TimeEmbedding(nn.Module):
    """A second scalar input embedded like EDM2's noise level, scaled by ``gain`` (0 at
    construction, so it adds nothing until trained)."""

    def __init__(self, num_channels: int, emb_channels: int) -> None:
        super().__init__()
        self.fourier = MPFourier(num_channels)
        self.linear = MPConv(num_channels, emb_channels)
        self.gain = nn.Parameter(torch.zeros([]))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.linear(self.fourier(s), gain=self.gain)


# ----------------------------------------------------------------------------- the teacher


class EDM2UNet(nn.Module):
    """EDM2's ``Precond`` around its ``UNet`` as a slimstep velocity network (module
    docstring). Tensor names are EDM2's: ``unet.*``, ``logvar_fourier.*``, ``logvar_linear.*``.

    ``sigma_min`` / ``sigma_max`` are the σ range the velocity clamps to (EDM2's sampler's
    default [0.002, 80]); the other options are EDM2's ``UNet`` / ``Block`` arguments under
    its names (``channels_per_head`` decides the heads, ``logvar_channels`` the uncertainty
    head's width); ``extra_time_embeds=1`` adds the second time input ``s``."""

    def __init__(
        self,
        in_shape: list[int] | tuple[int, ...] = (4, 64, 64),
        num_classes: int = 0,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        model_channels: int = 192,
        channel_mult: list[int] | tuple[int, ...] = (1, 2, 3, 4),
        channel_mult_noise: int | None = None,
        channel_mult_emb: int | None = None,
        num_blocks: int = 3,
        attn_resolutions: list[int] | tuple[int, ...] = (16, 8),
        label_balance: float = 0.5,
        concat_balance: float = 0.5,
        channels_per_head: int = 64,
        resample_filter: list[int] | tuple[int, ...] = (1, 1),
        dropout: float = 0.0,
        res_balance: float = 0.3,
        attn_balance: float = 0.3,
        clip_act: float | None = 256,
        logvar_channels: int = 128,
        extra_time_embeds: int = 0,
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        if h != w:
            raise ValueError(f"EDM2's networks take square images, not {h}x{w}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if extra_time_embeds not in (0, 1):
            raise ValueError("extra_time_embeds must be 0 or 1")
        if len(resample_filter) % 2 or not resample_filter:
            raise ValueError(f"resample_filter must have an even length, not {list(resample_filter)}")
        if channels_per_head < 1:
            raise ValueError("channels_per_head must be at least 1")
        self.in_shape, self.num_classes = (c, h, w), num_classes
        self.sigma_data = float(sigma_data)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.t_min, self.t_max = t_from_sigma(self.sigma_max), t_from_sigma(self.sigma_min)
        self.unet = UNet(h, c, num_classes, model_channels, list(channel_mult), channel_mult_noise,
                         channel_mult_emb, num_blocks, list(attn_resolutions), label_balance,
                         concat_balance, channels_per_head, resample_filter=list(resample_filter),
                         dropout=dropout, res_balance=res_balance, attn_balance=attn_balance,
                         clip_act=clip_act)
        # the uncertainty head: buffers (read by logvar() only; never trained by slimstep)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, as_buffer=True)
        self.s_embedder = TimeEmbedding(self.unet.cnoise, self.unet.cemb) if extra_time_embeds else None

    def set_attention(self, mode: str) -> EDM2UNet:
        """"sdpa" (default) or "math" (explicit softmax: double backward, torch.func.jvp)."""
        return set_attention(self, mode)

    def coefficients(self, sigma: torch.Tensor):
        """``(c_skip, c_out, c_in, c_noise)`` of EDM2's preconditioning at ``sigma``."""
        sd = self.sigma_data
        r = (sigma ** 2 + sd ** 2).rsqrt()
        return sd ** 2 * r ** 2, sigma * sd * r, r, sigma.log() / 4

    def logvar(self, sigma: torch.Tensor) -> torch.Tensor:
        """EDM2's uncertainty estimate ``u(σ)`` [B]: ``logvar_linear(logvar_fourier(ln σ / 4))``."""
        c_noise = sigma.log().flatten() / 4
        return self.logvar_linear(self.logvar_fourier(c_noise)).flatten()

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor | None = None,
                features: list | None = None, s: torch.Tensor | None = None) -> torch.Tensor:
        """EDM2's ``D(x; σ, y)`` (``sigma`` [B]); ``y`` int64 class indices, the null class
        (``num_classes``) or None giving the zero label vector; ``s`` [B] the second time."""
        sigma = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        labels = None
        if self.num_classes:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            labels = F.one_hot(y, self.num_classes + 1)[:, :self.num_classes].to(x.dtype)
        extra = None
        if self.s_embedder is not None:
            if s is None:
                raise TypeError("this EDM2 U-Net was built with extra_time_embeds=1: pass s=")
            extra = self.s_embedder(s.to(x.dtype).expand(x.shape[0]))
        f_x = self.unet(c_in * x, c_noise.flatten(), labels, extra, features)
        return c_skip * x + c_out * f_x

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                return_features: bool = False, s: torch.Tensor | None = None, **cond: torch.Tensor):
        if cond:
            raise TypeError(f"EDM2UNet got unexpected conditioning {sorted(cond)}")
        if s is not None and self.s_embedder is None:
            raise TypeError("this EDM2 U-Net has no second time input (extra_time_embeds=0)")
        feats = [] if return_features else None
        kw = {"s": s} if self.s_embedder is not None else {}
        v = velocity_from_denoiser(self.denoise, x, t, y, t_min=self.t_min, t_max=self.t_max,
                                   features=feats, **kw)
        return (v, feats) if return_features else v
