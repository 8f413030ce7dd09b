r"""Distances :math:`D(a, b)` between generated and target samples, per sample.

* ``l2`` — mean squared error over the sample's elements.
* ``pseudo-huber`` — :math:`\sqrt{\lVert a - b \rVert^2 + c^2} - c` with
  :math:`c = 0.00054\sqrt{d}` (``d`` = elements per sample), the choice of
  improved consistency training (Song & Dhariwal 2023); robust like L1 far from
  the target, smooth like L2 near it, and needs no network.
* ``lpips`` — LPIPS (Zhang et al. 2018) with a VGG16 backbone, what SlimFlow
  uses; images are resized to 64×64 (SlimFlow's setting) and grey images
  repeated to RGB. The weights come from a **local safetensors file** holding
  torchvision's ``vgg16().features`` keys (``features.N.weight/bias``) and
  LPIPS's linear heads (``lin0 … lin4`` as ``lin{k}.model.1.weight``); see
  ``docs/slimflow.md`` for a conversion one-liner. Nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DISTANCES = ("l2", "pseudo-huber", "lpips")

# VGG16 "D" configuration; LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)  # indices of those ReLUs in torchvision's vgg16().features
_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG distance; ``forward(a, b) -> [B]`` for images in [-1, 1]."""

    def __init__(self, weights: str | Path, resize: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(ch, 1, 1, bias=False) for ch in _CHANNELS)
        # LPIPS's input normalisation for [-1, 1] images
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.resize = resize
        self._load(Path(weights))
        self.eval().requires_grad_(False)

    def _load(self, path: Path) -> None:
        from safetensors.torch import load_file

        if not path.is_file():
            raise ValueError(f"LPIPS weights file not found: {path} (distance=lpips needs local weights; "
                             "see docs/slimflow.md)")
        sd = load_file(str(path))
        feats = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        lins = {f"{k[3]}.weight": v for k, v in sd.items()
                if k.startswith("lin") and k.endswith(".model.1.weight")}
        try:
            self.features.load_state_dict(feats, strict=True)
            self.lins.load_state_dict(lins, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path}: not an LPIPS-VGG weights file ({str(e).splitlines()[0]})") from None

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[-1] != self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return (x - self.shift) / self.scale

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self._prep(a), self._prep(b)])
        total = torch.zeros(len(a), device=a.device, dtype=h.dtype)
        k = 0
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                fa, fb = h.chunk(2)
                fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + self.lins[k]((fa - fb).pow(2)).mean(dim=(1, 2, 3))
                k += 1
                if k == len(_TAPS):
                    break
        return total


class Distance(nn.Module):
    """``Distance(kind, lpips_weights=None)(a, b) -> [B]`` per-sample distance."""

    def __init__(self, kind: str = "l2", lpips_weights: str | None = None):
        super().__init__()
        if kind not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, not '{kind}'")
        if kind == "lpips" and not lpips_weights:
            raise ValueError("distance=lpips needs method.lpips_weights=PATH (a local weights file)")
        self.kind = kind
        self.lpips = LPIPS(lpips_weights) if kind == "lpips" else None

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a.float(), b.float()
        if self.kind == "l2":
            return (a - b).pow(2).flatten(1).mean(1)
        if self.kind == "pseudo-huber":
            c = 0.00054 * math.sqrt(a[0].numel())
            return ((a - b).pow(2).flatten(1).sum(1) + c * c).sqrt() - c
        return self.lpips(a, b)
