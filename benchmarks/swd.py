"""The image protocol's SWD on real photographs, without weights or downloads.

Data: 32 x 32 crops at random positions of the two photographs scikit-learn ships
(``sklearn.datasets.load_sample_images``: china.jpg, flower.jpg, 427 x 640), written as
an ``npz:`` set, so the whole protocol runs as ``slimstep eval`` runs it: a fixed
shuffle cut into a reference and a held-out half, SWD of samples against the reference,
floor = held-out images against the same reference.

Rows: the floor at several N (SWD's small-N bias); held-out images under known
perturbations (Gaussian noise, one octave of blur, a brightness offset, a colour swap);
uniform noise; and the seconds one evaluation takes.

    python benchmarks/swd.py            # -> benchmarks/results/swd.json, swd.md
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine  # noqa: E402

from slimstep.data import load_data  # noqa: E402
from slimstep.eval import evaluate  # noqa: E402
from slimstep.eval.images import real_pools  # noqa: E402
from slimstep.eval.swd import _expand, _reduce  # noqa: E402

CROPS, SIZE = 8000, 32


def crops(path: Path) -> None:
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    photos = load_sample_images().images
    out = []
    for i in range(CROPS):
        img = photos[i % len(photos)]
        y, x = rng.integers(0, img.shape[0] - SIZE), rng.integers(0, img.shape[1] - SIZE)
        out.append(img[y : y + SIZE, x : x + SIZE])
    np.savez(path, x=np.stack(out).astype(np.uint8))


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "crops.npz"
        crops(npz)
        spec = f"npz:{npz}"
        ds = load_data(spec)
        _, (split, held_idx) = real_pools(ds, "npz")
        held = ds.take(held_idx, split)

        def score(name: str, x: torch.Tensor) -> None:
            tic = time.perf_counter()
            r = evaluate(x, spec)
            secs = time.perf_counter() - tic
            rows.append({"name": name, "n": len(x), **r["metrics"], "floor": r["floor"]["swd"],
                         "floor_n": r["floor_n"], "seconds": round(secs, 1)})
            print(rows[-1], flush=True)

        for n in (250, 500, 1000, 2000, 4000):
            score(f"held-out real images (= the floor), N = {n}", held[:n])
        x = held[:2000]
        g = torch.Generator().manual_seed(1)
        eps = torch.randn(x.shape, generator=g)
        for s in (0.02, 0.05, 0.1, 0.2):
            score(f"+ Gaussian noise, std {s}", (x + s * eps).clamp(-1, 1))
        score("blurred: one octave (reduce, expand)", _expand(_reduce(x), x.shape[-2:]))
        score("blurred: two octaves", _expand(_expand(_reduce(_reduce(x)), (16, 16)), x.shape[-2:]))
        for c in (0.05, 0.1):
            score(f"brightness + {c} (of the [-1, 1] range)", (x + c).clamp(-1, 1))
        score("colour channels swapped (RGB -> BGR)", x.flip(1))
        score("uniform noise", torch.rand(x.shape, generator=g) * 2 - 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "swd.json").write_text(json.dumps({"data": f"{CROPS} crops {SIZE}x{SIZE} of sklearn's sample "
                                                  "images", "rows": rows}, indent=2) + "\n")
    m = machine()
    lines = ["# SWD, the image metric without weights", "",
             f"{m['date']}, {m['cores']} CPU cores, one thread, torch {m['torch']}: `python benchmarks/swd.py` "
             f"({CROPS} {SIZE}x{SIZE} crops of scikit-learn's two shipped photographs through the `npz:` "
             "path; the protocol in docs/evaluation.md).", "",
             "| samples | N | SWD | SWD 32 | SWD 16 | floor (N) | s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['n']} | {r['swd']:.4f} | {r['swd_32']:.4f} | {r['swd_16']:.4f} | "
                     f"{r['floor']:.4f} ({r['floor_n']}) | {r['seconds']} |")
    (RESULTS / "swd.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
