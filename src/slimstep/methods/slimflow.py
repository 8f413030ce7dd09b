r"""SlimFlow's flow-guided distillation: make a reflowed student one-step.

Student :math:`v_s` and a frozen guide :math:`v_g` both start from an
(annealing-)reflow checkpoint — the student from its *raw* weights, the guide
from its *EMA* weights (as in the official code). The one-step map is
:math:`g(z) = z + v_s(z, 0)`. With a distance ``D`` (:mod:`slimstep.losses`):

.. math::
   \mathcal L = w_p\, D\big(g(z), \hat x\big)
              + w_g\, D\big(g(n), \tilde x\big),\qquad
   x_\tau = n + \tau\, \mathrm{sg}[v_s(n, 0)],\quad
   \tilde x = x_\tau + (1 - \tau)\, v_g(x_\tau, \tau),

on offline pairs :math:`(z, \hat x)` and fresh noise ``n`` with
:math:`\tau \sim U(0.2, 0.8)` per sample. The second term is a two-step
sample — one student Euler step to τ, one guide step to 1 — that the one-step
student must match: online targets beyond the finite pair set. ``x_τ`` uses
the student's own velocity without gradient; the same forward pass gives
:math:`g(n)` with gradient, so the term costs one student and one guide call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimstep.generator import load_net
from slimstep.losses import Distance
from slimstep.methods.base import NON_NEGATIVE, UNIT, Method, MethodError
from slimstep.methods.reflow import flip_pair, pairs_spec, student_net
from slimstep.onestep import euler_step
from slimstep.spec.rules import non_negative, rule, unit
from slimstep.spec.sampling import VelocityRule


class SlimFlow(Method):
    name = "slimflow"
    style = ("#ff7f0e", "s")

    @dataclass(frozen=True)
    class Options(Method.Options):
        distance: str = "l2"  # l2 | pseudo-huber | lpips
        lpips_weights: str | None = None  # local LPIPS-VGG safetensors file (distance=lpips)
        pair_weight: float = rule(1.0, non_negative, NON_NEGATIVE)  # w_p: the offline pairs term
        guide_weight: float = rule(1.0, non_negative, NON_NEGATIVE)  # w_g: the online two-step guidance term
        tau_min: float = rule(0.2, unit, UNIT)  # τ ~ U(tau_min, tau_max) of the guidance term
        tau_max: float = rule(0.8, unit, UNIT)
        flip: bool = False  # mirror image and noise together, p = 0.5 per batch
    requires_init = True
    guided = True  # the online two-step guidance term (distill: the same method without it)

    @classmethod
    def data_spec(cls, cfg):
        return pairs_spec(cfg)

    def __init__(self, cfg, info, *, device, teacher=None):
        super().__init__(cfg, info, device=device, teacher=teacher)
        if self.requires_init and not cfg.init:
            raise MethodError(f"method '{self.name}' starts from a reflow checkpoint: pass --init CKPT")
        try:
            self.distance = Distance(self.opts.distance, self.opts.lpips_weights).to(device)
        except ValueError as e:
            raise MethodError(str(e)) from None
        net, self.spec = student_net(cfg, info, info.num_classes > 0, weights="raw")
        self.net = net.to(device)
        self.conditional = bool(getattr(net, "num_classes", 0))
        self.guide = None
        if self.guided and self.opts.guide_weight > 0:
            guide, _ = load_net(cfg.init, "ema")
            self.guide = guide.to(device).eval().requires_grad_(False)

    def loss(self, batch, step, phase):
        x1, y, z = batch
        y = y if self.conditional else None
        if self.opts.flip:
            x1, z = flip_pair(x1, z)
        out = {}
        loss = torch.zeros((), device=x1.device)
        if self.opts.pair_weight > 0:
            out["pair"] = self.distance(euler_step(self.net, z, y), x1).mean()
            loss = loss + self.opts.pair_weight * out["pair"]
        if self.guide is not None:
            n = torch.randn_like(z)
            tau = torch.empty(len(n), device=n.device).uniform_(self.opts.tau_min, self.opts.tau_max)
            tb = tau.view(-1, *([1] * (n.dim() - 1)))
            v = self.net(n, torch.zeros_like(tau), y)
            with torch.no_grad():
                x_tau = n + tb * v.detach()
                target = x_tau + (1 - tb) * self.guide(x_tau, tau, y)
            out["guide"] = self.distance(n + v, target).mean()
            loss = loss + self.opts.guide_weight * out["guide"]
        out["loss"] = loss
        return out

    def export(self):
        return VelocityRule(solver="euler", steps=1)
