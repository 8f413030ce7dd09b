r"""Discriminators for GAN-trained one-step generators (GDD / GDD-I), none of which
needs a download.

Contract: ``D(x, y=None) -> logits [B, K]`` — ``K`` logits per sample: one, or
one per patch of every head of a multi-head (multi-scale) discriminator — and
``D.head_sizes``, the number of logits of each head in order (summing to ``K``;
``(1,)`` for the single-logit kinds). Every head weighs the same whatever its
patch count: a GAN loss is the sum over heads of the head's mean over its
patches, :func:`sum_head_means` (as projected-GAN style heads are combined in the
official GDD code), and the R1 penalty differentiates the same per-sample score
``Σ_h mean_{k ∈ h} D_k``. For class-conditional data every head adds a projection term
(Miyato & Koyama 2018): ``logit = w·h + <e_y, h> / sqrt(dim h)``, with ``e_y``
a learnt class embedding, so the discriminator judges "a real image *of class y*".

Kinds (:func:`build_discriminator`):

* ``conv`` — from scratch, for images: a residual conv net (StyleGAN2's D in
  miniature): 3x3 stem, residual blocks that halve the resolution down to 4x4,
  a minibatch-standard-deviation channel (Karras et al. 2018; lets D see the
  diversity of a batch and so punishes mode collapse), conv, linear layers.
* ``mlp`` — from scratch, for 2-D points: LeakyReLU MLP.
* ``teacher`` — trainable heads on the *frozen teacher's own features*: the
  teacher is called at ``x_t = t·x + (1 − t)·n``, ``n ~ N(0, I)`` fresh per
  call, for a few fixed ``t`` with ``return_features=True``; a small conv head
  on every feature map gives patch logits. The teacher has learnt which
  structure distinguishes data from noise at every noise level: its features
  are the in-house stand-in for the paper's ImageNet backbones.
* ``projected`` — the paper's construction: a frozen pretrained ``timm``
  backbone (input mapped from [-1, 1] to ImageNet statistics and resized) with
  trainable heads on its intermediate feature maps. The weights are a local
  file the user supplies (``.safetensors``, or a ``.pt``/``.pth`` state dict
  read with ``weights_only=True``); nothing is downloaded.

Frozen trunks (teacher, backbone) are held *outside* the module tree: they are
not in ``state_dict()`` (nothing to save — they are rebuilt from the teacher or
the weights file), ``parameters()`` (never optimised) or ``train()`` (always in
eval mode); ``.to()`` still moves them.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from slimstep.errors import SlimstepError, load_refusal


class DiscriminatorError(SlimstepError, ValueError):
    """A discriminator cannot be built as configured (one clear line)."""


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def minibatch_std(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append one channel: the std of each feature over a group of samples,
    averaged over features and positions (Karras et al. 2018). The group is the
    largest divisor of the batch that is <= ``group``."""
    b, c, h, w = x.shape
    g = min(group, b)
    while b % g:
        g -= 1
    y = x.float().reshape(g, b // g, c, h, w)
    y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [b // g]
    y = y.to(x.dtype).repeat(g)[:, None, None, None].expand(b, 1, h, w)
    return torch.cat([x, y], dim=1)


class Projection(nn.Module):
    """Output layer ``w·h + b`` plus the class projection ``<e_y, h>/sqrt(d)`` over
    the channel dimension 1 of ``h`` ([B, d] or [B, d, H, W]); returns [B, K]."""

    def __init__(self, dim: int, num_classes: int = 0, kernel: int = 1) -> None:
        super().__init__()
        self.out = nn.Conv2d(dim, 1, kernel, padding=kernel // 2)
        self.embed = nn.Embedding(num_classes, dim) if num_classes > 0 else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, std=1.0)
        self.scale = 1 / math.sqrt(dim)

    def forward(self, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h4 = h[:, :, None, None] if h.ndim == 2 else h
        out = self.out(h4)
        if self.embed is not None:
            if y is None:
                raise ValueError("a class-conditional discriminator needs labels y")
            out = out + self.scale * (self.embed(y)[:, :, None, None] * h4).sum(1, keepdim=True)
        return out.flatten(1)


# ----------------------------------------------------------------------------- from scratch


def sum_head_means(values: torch.Tensor, head_sizes: tuple[int, ...] | list[int]) -> torch.Tensor:
    """``[B, K] -> [B]``: for each sample, the sum over heads of the mean of that head's
    columns (``head_sizes`` consecutive columns each). A head of 4 patches and one of 64
    count alike, where a mean over all ``K`` would give the second 16 times the weight."""
    if sum(head_sizes) != values.shape[1]:
        raise DiscriminatorError(f"head sizes {list(head_sizes)} do not add up to the "
                                 f"{values.shape[1]} logits")
    return sum(v.mean(1) for v in values.split(list(head_sizes), dim=1))


class DBlock(nn.Module):
    """``(conv3x3 -> lrelu -> conv3x3 -> lrelu -> avgpool) + (avgpool -> conv1x1)``, / sqrt 2."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, padding=1)
        self.conv2 = nn.Conv2d(cin, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(_lrelu(self.conv2(_lrelu(self.conv1(x)))), 2)
        return (h + self.skip(F.avg_pool2d(x, 2))) * (1 / math.sqrt(2))


class ConvDiscriminator(nn.Module):
    """Residual conv discriminator for ``in_shape = (C, H, W)`` images.

    Channels ``channels * 2^i`` (capped at ``max_channels``) while halving the
    resolution down to ``min_res``; then minibatch-std, conv3x3, a linear layer
    to ``channels_last`` features and the (projection) output: ``[B, 1]``.
    """

    head_sizes = (1,)

    def __init__(self, in_shape: list[int] | tuple[int, ...], num_classes: int = 0,
                 channels: int = 64, max_channels: int = 256, min_res: int = 4,
                 mbstd_group: int = 4) -> None:
        super().__init__()
        c, h, w = in_shape
        self.mbstd_group = mbstd_group
        ch = channels
        self.stem = nn.Conv2d(c, ch, 3, padding=1)
        blocks, res = [], min(h, w)
        while res > min_res and res % 2 == 0:
            nxt = min(ch * 2, max_channels)
            blocks.append(DBlock(ch, nxt))
            ch, res = nxt, res // 2
        self.blocks = nn.Sequential(*blocks)
        self.conv = nn.Conv2d(ch + (1 if mbstd_group > 1 else 0), ch, 3, padding=1)
        self.fc = nn.Linear(ch * (h >> len(blocks)) * (w >> len(blocks)), ch)
        self.head = Projection(ch, num_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.blocks(_lrelu(self.stem(x)))
        if self.mbstd_group > 1:
            h = minibatch_std(h, self.mbstd_group)
        h = _lrelu(self.fc(_lrelu(self.conv(h)).flatten(1)))
        return self.head(h, y)


class MLPDiscriminator(nn.Module):
    """LeakyReLU MLP on flat points ``[B, *in_shape]`` -> ``[B, 1]``."""

    head_sizes = (1,)

    def __init__(self, in_shape: list[int] | tuple[int, ...] = (2,), num_classes: int = 0,
                 hidden: int = 128, depth: int = 3) -> None:
        super().__init__()
        d = math.prod(in_shape)
        self.layers = nn.ModuleList(nn.Linear(d if i == 0 else hidden, hidden) for i in range(depth))
        self.head = Projection(hidden, num_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = x.flatten(1)
        for layer in self.layers:
            h = _lrelu(layer(h))
        return self.head(h, y)


# ----------------------------------------------------------------------------- heads on frozen features


def as_map(f: torch.Tensor) -> torch.Tensor:
    """A feature as ``[B, C, H, W]``: conv maps as they are, vectors ``[B, C]`` as
    1x1 maps, square token grids ``[B, T, C]`` (DiT) as ``[B, C, sqrt T, sqrt T]``."""
    if f.ndim == 4:
        return f
    if f.ndim == 2:
        return f[:, :, None, None]
    if f.ndim == 3:
        b, t, c = f.shape
        g = math.isqrt(t)
        if g * g != t:
            raise DiscriminatorError(f"cannot lay {t} tokens out as a square map")
        return f.transpose(1, 2).reshape(b, c, g, g)
    raise DiscriminatorError(f"feature of shape {tuple(f.shape)} is not a map, tokens or vector")


class PatchHead(nn.Module):
    """``conv(k) -> lrelu -> projection(1x1)`` on a feature map: one logit per position.
    ``k = 3`` on maps of at least 3x3, else 1."""

    def __init__(self, cin: int, hidden: int, num_classes: int, spatial: int) -> None:
        super().__init__()
        k = 3 if spatial >= 3 else 1
        self.conv = nn.Conv2d(cin, hidden, k, padding=k // 2)
        self.proj = Projection(hidden, num_classes)

    def forward(self, f: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.proj(_lrelu(self.conv(f)), y)


class _FrozenTrunk(nn.Module):
    """Base for discriminators with a frozen trunk held outside the module tree."""

    trunk: nn.Module

    def _set_trunk(self, trunk: nn.Module) -> None:
        trunk = trunk.eval().requires_grad_(False)
        object.__setattr__(self, "trunk", trunk)  # not a submodule: see the module docstring

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .float() move the trunk too
        self.trunk._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def _heads(self, feats: list[torch.Tensor], hidden: int, num_classes: int) -> nn.ModuleList:
        """One :class:`PatchHead` per feature map (it keeps the map's size: one logit per
        position); the heads' logit counts are appended to ``head_sizes``."""
        maps = [as_map(f) for f in feats]
        self.head_sizes = (*getattr(self, "head_sizes", ()), *(m.shape[2] * m.shape[3] for m in maps))
        return nn.ModuleList(PatchHead(m.shape[1], hidden, num_classes, min(m.shape[2:]))
                             for m in maps)


class TeacherFeatureDiscriminator(_FrozenTrunk):
    r"""Heads on the frozen teacher's features at noise levels ``t_levels``.

    For each ``t`` in ``t_levels``: ``x_t = t·x + (1 − t)·n`` with fresh
    ``n ~ N(0, I)``, features ``F = teacher(x_t, t, y, return_features=True)[1]``
    (or the subset ``features``), one :class:`PatchHead` per (t, feature);
    the logits of all heads are concatenated, ``head_sizes`` in the same order.

    Why noised inputs: the teacher is a denoiser, trained only on ``x_t``; at
    ``t`` near 1 its features resolve fine detail, at ``t`` = 0.5 (SNR 1) only
    coarse structure survives. Noise also makes the real and fake
    distributions overlap, which keeps the discriminator smooth (Diffusion-GAN's
    argument). ``t`` = 0 (pure noise) carries no information and is refused.
    """

    def __init__(self, teacher: nn.Module, in_shape: list[int] | tuple[int, ...],
                 num_classes: int = 0, t_levels: list[float] | tuple[float, ...] = (0.5, 0.8),
                 features: list[int] | None = None, hidden: int = 64) -> None:
        super().__init__()
        if not t_levels or any(not 0.0 < t <= 1.0 for t in t_levels):
            raise DiscriminatorError(f"t_levels must be in (0, 1], got {list(t_levels)}")
        trunk = copy.deepcopy(teacher)
        if hasattr(trunk, "set_attention"):
            trunk.set_attention("math")  # fused attention kernels have no double backward (R1)
        self._set_trunk(trunk)
        self.t_levels = [float(t) for t in t_levels]
        self.num_classes = num_classes
        self.cond_trunk = (getattr(trunk, "num_classes", 0) or 0) > 0
        with torch.no_grad():
            dev = next(trunk.parameters()).device
            x = torch.zeros(2, *in_shape, device=dev)
            feats = trunk(x, torch.full((2,), 0.5, device=dev), None, return_features=True)[1]
        idx = list(range(len(feats))) if features is None else [int(i) for i in features]
        if not idx or any(not -len(feats) <= i < len(feats) for i in idx):
            raise DiscriminatorError(f"features must index the teacher's {len(feats)} feature maps, "
                                     f"got {features}")
        self.features = idx
        self.heads = nn.ModuleList(self._heads([feats[i] for i in idx], hidden, num_classes)
                                   for _ in self.t_levels)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        out = []
        ty = y if self.cond_trunk else None
        for t, heads in zip(self.t_levels, self.heads, strict=True):
            xt = t * x + (1 - t) * torch.randn_like(x)
            feats = self.trunk(xt, torch.full((len(x),), t, device=x.device, dtype=x.dtype), ty,
                               return_features=True)[1]
            out += [h(as_map(feats[i]), y) for h, i in zip(heads, self.features, strict=True)]
        return torch.cat(out, dim=1)


# ----------------------------------------------------------------------------- projected (timm)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _import_timm():
    try:
        import timm
    except ImportError as e:
        raise DiscriminatorError(
            f"the projected discriminator needs the optional package timm (pip install timm; "
            f"import failed: {e})") from None
    return timm


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A local state dict: ``.safetensors``, or a torch file read with ``weights_only=True``
    (a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper is unwrapped)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DiscriminatorError(f"{p}: cannot be read as a state dict ({load_refusal(e)})") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise DiscriminatorError(f"{p}: holds no state dict")
    return sd


class ProjectedDiscriminator(_FrozenTrunk):
    """Trainable heads on the intermediate features of a frozen ``timm`` backbone.

    ``x`` in [-1, 1] -> [0, 1] -> normalised by ``mean``/``std`` (ImageNet by
    default), grey images repeated to 3 channels, resized (bilinear) to
    ``resolution``; features from ``backbone.forward_intermediates(x, indices=layers,
    intermediates_only=True)`` (timm >= 1.0); one :class:`PatchHead` each, its logits
    concatenated in order (``head_sizes``).
    """

    def __init__(self, in_shape: list[int] | tuple[int, ...], num_classes: int = 0,
                 backbone: str = "tf_efficientnet_lite0", weights: str | None = None,
                 resolution: int = 224, layers: int | list[int] | None = None, hidden: int = 64,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
                 ) -> None:
        super().__init__()
        if not weights:
            raise DiscriminatorError(
                f"the projected discriminator needs the backbone's pretrained weights as a local "
                f"file: set disc_options.weights=PATH (a state dict of timm's '{backbone}'); "
                f"slimstep never downloads them")
        if not Path(weights).is_file():
            raise DiscriminatorError(f"projected discriminator weights not found: {weights}")
        timm = _import_timm()
        try:
            net = timm.create_model(backbone, pretrained=False, num_classes=0)
        except Exception as e:  # unknown model name etc.
            raise DiscriminatorError(f"timm cannot build '{backbone}': {e}") from None
        if not hasattr(net, "forward_intermediates"):
            raise DiscriminatorError(f"timm model '{backbone}' has no forward_intermediates")
        sd = load_state_dict_file(weights)
        missing, _ = net.load_state_dict(sd, strict=False)  # a classifier head may be extra
        if missing:
            raise DiscriminatorError(f"{weights} does not fit timm's '{backbone}' "
                                     f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''})")
        self._set_trunk(net)
        self.in_channels, self.resolution, self.layers = in_shape[0], int(resolution), layers
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        with torch.no_grad():
            feats = self._features(torch.zeros(2, *in_shape))
        self.heads = self._heads(feats, hidden, num_classes)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                              align_corners=False)
        return list(self.trunk.forward_intermediates(x, indices=self.layers,
                                                     intermediates_only=True))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        feats = self._features(x)
        return torch.cat([h(as_map(f), y) for h, f in zip(self.heads, feats, strict=True)], dim=1)


# ----------------------------------------------------------------------------- factory

KINDS = ("conv", "mlp", "teacher", "projected")


def build_discriminator(kind: str, in_shape: list[int] | tuple[int, ...], num_classes: int = 0,
                        teacher: nn.Module | None = None, **options) -> nn.Module:
    """``kind`` in :data:`KINDS` (``auto``: conv for images, mlp for points);
    ``options`` are the kind's keyword arguments."""
    if kind == "auto":
        kind = "conv" if len(in_shape) == 3 else "mlp"
    try:
        if kind == "conv":
            if len(in_shape) != 3:
                raise DiscriminatorError(f"the conv discriminator needs images, data shape {in_shape}")
            return ConvDiscriminator(in_shape, num_classes, **options)
        if kind == "mlp":
            return MLPDiscriminator(in_shape, num_classes, **options)
        if kind == "teacher":
            if teacher is None:
                raise DiscriminatorError("the teacher-feature discriminator needs the teacher")
            return TeacherFeatureDiscriminator(teacher, in_shape, num_classes, **options)
        if kind == "projected":
            if len(in_shape) != 3:
                raise DiscriminatorError(f"the projected discriminator needs images, data shape {in_shape}")
            return ProjectedDiscriminator(in_shape, num_classes, **options)
    except TypeError as e:  # an unknown option name
        raise DiscriminatorError(f"discriminator '{kind}': {e}") from None
    raise DiscriminatorError(f"unknown discriminator '{kind}' (expected auto, {', '.join(KINDS)})")


__all__ = ["KINDS", "ConvDiscriminator", "DiscriminatorError", "MLPDiscriminator",
           "ProjectedDiscriminator", "TeacherFeatureDiscriminator", "build_discriminator",
           "minibatch_std", "sum_head_means"]
