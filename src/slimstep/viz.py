"""Pictures of samples: image grids (Pillow) and 2-D scatter plots (matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from slimstep.files import atomic_write


def image_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 1, scale: int = 1):
    """NCHW in [-1, 1] -> a PIL image grid (``scale`` enlarges tiny images). Other channel
    counts than 1 and 3 (latents, any range) show their first channel in grey, ±3
    standard deviations to black / white: a look at the samples, not a decoding."""
    from PIL import Image

    x = x.detach().float().cpu()
    if x.shape[1] not in (1, 3):
        x = x[:, :1] / (3 * x[:, :1].std().clamp_min(1e-12))
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    n, c, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h,
             pad + k * (w + pad):pad + k * (w + pad) + w] = x[i].transpose(1, 2, 0)
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def save_picture(x: torch.Tensor, path: str | Path, title: str = "") -> None:
    """Write samples as a PNG: a grid for images, a scatter for 2-D points."""
    path = Path(path)
    if x.dim() == 4:
        img = image_grid(x[:256], scale=max(1, 64 // x.shape[-1]))
        atomic_write(path, lambda p: img.save(p, format="PNG"))
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    pts = x.detach().float().cpu().numpy()
    ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title, fontsize=9)
    atomic_write(path, lambda p: fig.savefig(p, format="png", bbox_inches="tight"))
    plt.close(fig)
