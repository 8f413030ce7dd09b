"""Where along the path does a teacher err? Its data-prediction error per time bin, on the
held-out split, every model on the same images, noises and times (paired).

    python benchmarks/time_error.py --data fashion-mnist \\
        --ckpt unet=runs/fashion/teacher/model-7754aaf630 --ckpt dit=runs/fashion/dit-teacher/model-19e0d95ef0

For a velocity teacher v(x_t, t) on the linear path x_t = (1 - t) z + t x (t = 1: data), the
error of its data prediction x̂ = x_t + (1 - t) v is (1 - t)(v - (x - z)): the error a sampler's
last steps leave in the picture. Printed per bin as the mean squared error per pixel, with each
model's ratio to the first. A teacher that samples worse than another at the same training loss
(the loss averages over t with its own weighting) shows here where it loses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from slimstep.eval import protocol_split  # noqa: E402
from slimstep.files import write_bytes  # noqa: E402
from slimstep.generator import load_net  # noqa: E402
from slimstep.paths import interpolate, x1_from_velocity  # noqa: E402

EDGES = (0.0, 0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0)


@torch.no_grad()
def time_error(nets: dict[str, torch.nn.Module], x1: torch.Tensor, y: torch.Tensor | None,
               seed: int = 0, edges=EDGES, batch: int = 256, patch: int | None = None) -> list[dict]:
    """``[{"bin": (a, b), "mse": {name: ...}}]``: each model's data-prediction MSE per pixel
    in each time bin, all models on the same noises and times (drawn from ``seed``). With
    ``patch``: also ``"coarse"``, the part of the MSE in the error's ``patch``×``patch`` block
    means (the rest is within blocks: the two parts are orthogonal and sum to the MSE), to
    see whether a patch-``patch`` transformer's excess error lies inside its patches."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(x1.shape, generator=g)
    rows = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        t = a + (b - a) * torch.rand(len(x1), generator=g)
        sq, coarse = dict.fromkeys(nets, 0.0), dict.fromkeys(nets, 0.0)
        for i in range(0, len(x1), batch):
            sl = slice(i, i + batch)
            xt = interpolate(z[sl], x1[sl], t[sl])
            for name, net in nets.items():
                yb = y[sl] if y is not None and getattr(net, "num_classes", 0) else None
                x1_hat = x1_from_velocity(xt, net(xt, t[sl], yb), t[sl])
                err = x1_hat - x1[sl]
                sq[name] += float((err ** 2).sum())
                if patch:
                    blocks = F.interpolate(F.avg_pool2d(err, patch), scale_factor=patch, mode="nearest")
                    coarse[name] += float((blocks ** 2).sum())
        row = {"bin": (a, b), "mse": {n: s / x1.numel() for n, s in sq.items()}}
        if patch:
            row["coarse"] = {n: c / x1.numel() for n, c in coarse.items()}
        rows.append(row)
    return rows


def table(rows: list[dict], patch: int | None = None) -> list[str]:
    names, first = list(rows[0]["mse"]), next(iter(rows[0]["mse"]))
    cols = [f"{n} MSE" for n in names] + [f"{n} / {first}" for n in names[1:]]
    if patch:
        cols += [f"{n} / {first}, {p}" for n in names[1:] for p in (f"{patch}x{patch} means", "within")]
    md = ["| t bin | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        m = r["mse"]
        cells = [f"{m[n]:.3g}" for n in names] + [f"{m[n] / m[first]:.2f}x" for n in names[1:]]
        if patch:
            c = r["coarse"]
            for n in names[1:]:
                cells += [f"{c[n] / c[first]:.2f}x", f"{(m[n] - c[n]) / (m[first] - c[first]):.2f}x"]
        md.append(f"| [{r['bin'][0]:.2f}, {r['bin'][1]:.2f}) | " + " | ".join(cells) + " |")
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist", help="a classifier protocol's data set (its test split)")
    ap.add_argument("--ckpt", action="append", required=True, metavar="NAME=PATH",
                    help="a velocity model; the first is the one the others are compared with")
    ap.add_argument("--n", type=int, default=512, help="test images per bin")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patch", type=int, help="also split each error into its PxP block means and the rest")
    ap.add_argument("--out", type=Path, help="also write the table here (markdown)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    nets = {}
    for spec in a.ckpt:
        name, _, path = spec.partition("=")
        if not path:
            ap.error(f"--ckpt {spec!r}: expected NAME=PATH")
        nets[name] = load_net(path)[0].eval()
    x1, y = protocol_split(a.data, "test")
    rows = time_error(nets, x1[:a.n], y[:a.n] if y is not None else None, a.seed, patch=a.patch)
    m = machine()
    md = [f"# Data-prediction error along the path ({a.data})", "",
          f"{m['date']}, {a.data} test split, the first {a.n:,} images per bin, seed {a.seed}: "
          f"`python benchmarks/time_error.py {' '.join(sys.argv[1:])}`", "", *table(rows, a.patch), ""]
    print("\n".join(md))
    if a.out:
        write_bytes(a.out, "\n".join(md).encode())


if __name__ == "__main__":
    main()
