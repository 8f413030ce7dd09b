r"""Sampling a velocity field: integrate :math:`dx/dt = v(x, t)` from ``t0`` to ``t1``.

* ``euler`` — ``steps`` evaluations, :math:`x \leftarrow x + h\,v(x, t)`.
* ``heun``  — the second-order trapezoid corrector of EDM (Karras et al.
  2022, Alg. 1) on a uniform grid. EDM skips the correction on its last
  step (σ = 0 is singular there); the linear path has no such point at
  ``t = 1``, so every step is corrected: ``2 * steps`` evaluations.
* ``dopri5`` — adaptive Dormand–Prince through ``torchdiffeq`` with
  ``rtol`` / ``atol``; its NFE is whatever the error control needs.

Every solver returns the end state and the number of function evaluations
(NFE) it spent, so a report never has to guess it. With classifier-free
guidance the conditional and unconditional passes share one batched call,
counted as one evaluation (the usual convention).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from slimstep.spec.sampling import SOLVERS  # the names, defined once

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # v(x, t[B]) -> like x



class _Counted:
    """Counts calls of a velocity field (torchdiffeq calls it with scalar t)."""

    def __init__(self, v: Velocity):
        self.v, self.nfe = v, 0

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        tb = t.to(x.dtype).expand(x.shape[0]) if t.dim() == 0 else t
        return self.v(x, tb)


@torch.no_grad()
def integrate(
    velocity: Velocity,
    x: torch.Tensor,
    *,
    solver: str = "euler",
    steps: int = 1,
    t0: float = 0.0,
    t1: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[torch.Tensor, int]:
    """Integrate from ``t0`` to ``t1`` starting at ``x``; returns ``(x_t1, nfe)``."""
    f = _Counted(velocity)
    if solver == "dopri5":
        from torchdiffeq import odeint

        ts = torch.tensor([t0, t1], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                          device=x.device)
        out = odeint(f, x, ts, method="dopri5", rtol=rtol, atol=atol)
        return out[-1], f.nfe
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver '{solver}' (expected {', '.join(SOLVERS)})")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    grid = torch.linspace(t0, t1, steps + 1, dtype=torch.float64).tolist()
    for ta, tb in zip(grid[:-1], grid[1:], strict=True):
        h = tb - ta
        d = f(torch.tensor(ta, device=x.device), x)
        if solver == "euler":
            x = x + h * d
        else:  # heun: average the slopes at both ends of the Euler step
            x_pred = x + h * d
            d2 = f(torch.tensor(tb, device=x.device), x_pred)
            x = x + h * 0.5 * (d + d2)
    return x, f.nfe


def guided(velocity: Callable, y: torch.Tensor | None, scale: float, null_class: int) -> Velocity:
    r"""Classifier-free guidance: :math:`v = v_\varnothing + w (v_y - v_\varnothing)`.

    ``velocity(x, t, y)`` is a class-conditional net; ``null_class`` its null
    label. ``scale = 1`` is the plain conditional field (one evaluation);
    otherwise the conditional and unconditional halves run as one batch.
    """
    if y is None or scale == 1.0:
        return lambda x, t: velocity(x, t, y)

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        null = torch.full_like(y, null_class)
        out = velocity(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        vc, vu = out.chunk(2)
        return vu + scale * (vc - vu)

    return v
