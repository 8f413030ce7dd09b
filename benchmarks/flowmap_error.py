"""How far is a flow map from its teacher's ODE? The flow map f(z, δ) = z + δ F(z, δ)
(slimstep's `flowmap` method, docs/flowmap.md) against the teacher's Heun-16 solution from
noise to time δ, on the same noises, for δ from a quarter to the one-step jump.

    python benchmarks/flowmap_error.py --flowmap runs/fashion/flowmap/model-9d36649719 \\
        --teacher runs/fashion/dit-teacher/model-19e0d95ef0 --n 500

Printed per δ: the RMS per pixel of f - ODE, of the teacher's own Euler step - ODE (where the
map started: it is initialised to the teacher's velocity at t = 0), and of ODE - z (the scale
of the move). A one-step student's FD above its teacher's comes from the first column at δ = 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from slimstep.files import write_bytes  # noqa: E402
from slimstep.generator import load, seeded_noise  # noqa: E402
from slimstep.solvers import integrate  # noqa: E402

DELTAS = (0.25, 0.5, 0.75, 1.0)


def rms(a: torch.Tensor) -> float:
    return float(a.pow(2).mean().sqrt())


@torch.no_grad()
def flowmap_error(flowmap, teacher, n: int, deltas=DELTAS, steps: int = 16) -> list[dict]:
    """Per δ: RMS of the flow map's, and the teacher's Euler step's, distance to the teacher's
    Heun solution at δ (``steps`` Heun steps over [0, δ]), on seeds 0 .. n-1."""
    z, y = seeded_noise(tuple(flowmap.info.shape), list(range(n)), flowmap.num_classes)
    kappa = float(flowmap.sampling.s)  # the one-step rule's s is κ·1: the gap's scale in the s-embedding
    zeros = torch.zeros(n)
    rows = []
    for d in deltas:
        ode, _ = integrate(lambda x, t: teacher.net(x, t, y), z, solver="heun", steps=steps, t0=0.0, t1=d)
        f = z + d * flowmap.net(z, zeros, y, s=torch.full((n,), kappa * d))
        euler = z + d * teacher.net(z, zeros, y)
        rows.append({"delta": d, "map": rms(f - ode), "euler": rms(euler - ode), "move": rms(ode - z)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flowmap", required=True, help="a flowmap checkpoint")
    ap.add_argument("--teacher", required=True, help="the velocity teacher it was distilled from")
    ap.add_argument("--n", type=int, default=500, help="noises (seeds 0 .. n-1)")
    ap.add_argument("--out", type=Path, help="also write the table here (markdown)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    flowmap, teacher = load(a.flowmap), load(a.teacher)
    if getattr(flowmap.sampling, "kind", None) != "flowmap":
        ap.error(f"--flowmap {a.flowmap}: a {getattr(flowmap.sampling, 'kind', 'velocity')} checkpoint, not a flow map "
                 "(its s means something else)")
    if getattr(teacher.sampling, "kind", None) != "velocity":
        ap.error(f"--teacher {a.teacher}: not a velocity model")
    rows = flowmap_error(flowmap, teacher, a.n)  # unguided: Fashion's flowmap was trained at cfg_scale 1
    m = machine()
    md = [f"# A flow map against its teacher's ODE ({flowmap.info.spec})", "",
          f"{m['date']}, {a.n} noises: `python benchmarks/flowmap_error.py {' '.join(sys.argv[1:])}`", "",
          "| δ | RMS(map - ODE) | RMS(teacher Euler - ODE) | map / Euler | RMS(ODE - z) |", "|---|---|---|---|---|",
          *[f"| {r['delta']:g} | {r['map']:.4f} | {r['euler']:.4f} | {r['map'] / r['euler']:.2f}x | {r['move']:.4f} |"
            for r in rows], ""]
    print("\n".join(md))
    if a.out:
        write_bytes(a.out, "\n".join(md).encode())


if __name__ == "__main__":
    main()
