r"""The one-step maps: the closed set of rules that turn noise into a sample with one
network evaluation, written once and used by the generator, export and the methods.

* **euler** — a velocity field :math:`v(x, t, y)` (slimstep's time, ``t = 0`` noise)
  taken in one Euler step over [0, 1]: :math:`x = z + v(z, 0, y)`, with guidance
  :math:`v = v_\varnothing + w\,(v_y - v_\varnothing)` when ``cfg_scale`` ≠ 1. What a
  flow-matching teacher at Euler 1 and the reflow / slimflow / distill / gdd students do.
* **two_time** — a network with a second time input: :math:`x = z + \mathrm{net}(z, t, y, s)`
  with the checkpoint's ``t`` and ``s`` (flowmap: t = 0 and the jump δ = 1 times the gap
  scale; MeanFlow: start time 0 and gap 1; SLT the same call on its shared block). A
  depth-gap SLT student also takes ``steps`` (its number of depth jumps; still one call).

A checkpoint's ``generator.kind`` names the rule: ``velocity`` (the ODE, :mod:`slimstep.solvers`;
the euler map when sampled with ``solver=euler, steps=1``) or one of :data:`slimstep.spec.sampling.TWO_TIME_KINDS`.
"""

from __future__ import annotations

import torch
from torch import nn

#: the kinds a one-step DiT teacher for SLT may have
ONE_STEP_TEACHER_KINDS = ("flowmap", "meanflow")


def euler_step(net: nn.Module, z: torch.Tensor, y: torch.Tensor | None = None,
               cfg_scale: float = 1.0, num_classes: int = 0) -> torch.Tensor:
    """:math:`z + v(z, 0, y)`, guided when ``cfg_scale`` ≠ 1 (``num_classes`` is the null
    class index). The two guided rows go through the net as one batch."""
    t = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    if y is None or cfg_scale == 1.0:
        return z + net(z, t, y)
    out = net(torch.cat([z, z]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, num_classes)]))
    vc, vu = out[:z.shape[0]], out[z.shape[0]:]  # = out.chunk(2), without a batch guard
    return z + (vu + cfg_scale * (vc - vu))


def two_time_step(net: nn.Module, z: torch.Tensor, y: torch.Tensor | None = None,
                  t: float = 0.0, s: float = 1.0, steps: int | None = None) -> torch.Tensor:
    """:math:`z + \\mathrm{net}(z, t, y, s)`; ``steps`` only for a depth-gap SLT student."""
    tt = torch.full((z.shape[0],), float(t), device=z.device)
    ss = torch.full((z.shape[0],), float(s), device=z.device)
    if steps is None:
        return z + net(z, tt, y, s=ss)
    return z + net(z, tt, y, s=ss, steps=int(steps))
