r"""Reflow and SlimFlow's Annealing Reflow: a (small) student trained on teacher pairs.

Pairs :math:`(z, \hat x)` come from ``slimstep pairs`` (the teacher's ODE from
``z``). At step ``k`` the student regresses the straight-line velocity from a
(possibly re-noised) start :math:`z'` to the teacher's image:

.. math::  z' = \sqrt{1 - \beta_k^2}\, z + \beta_k\, \varepsilon,\quad
           x_t = t \hat x + (1 - t) z',\quad
           \mathcal L = \lVert v_\theta(x_t, t, y) - (\hat x - z') \rVert^2 ,

with fresh :math:`\varepsilon \sim \mathcal N(0, I)` every step. ``z'`` stays
standard normal for every β. β = 1 pairs the image with independent noise
(plain flow matching on teacher images), β = 0 is plain reflow. Annealing
Reflow moves from the first to the second over ``anneal_steps`` K:

* ``linear``:   :math:`\beta = 1 - u`, :math:`u = \min(1, k/K)` (SlimFlow's default)
* ``cos``:      :math:`\beta = (1 + \cos \pi u) / 2` (the official code's cosine)
* ``exp``:      :math:`\beta = e^{-k/K}` (the official code's: ``k/K`` is *not* clipped, so
  β is 1/e ≈ 0.37 at ``K`` and keeps decaying, never reaching 0: re-noising never ends)
* ``cos-half``: :math:`\beta = \cos(\pi u / 2)` (slimstep's earlier ``cos``)
* ``exp5``:     :math:`\beta = (e^{-5u} - e^{-5}) / (1 - e^{-5})` (slimstep's earlier ``exp``:
  fast early decay, exactly 0 at K)

``K = 0`` is plain reflow (β = 0) for every schedule.

**Flip trick** (images only): with probability 0.5, one coin per batch, the
image *and* its noise are mirrored horizontally together, which keeps the
pair a valid teacher pair of the mirrored data distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from slimstep.generator import load_net
from slimstep.methods.base import NON_NEGATIVE, POSITIVE, Method, MethodError
from slimstep.methods.flow_matching import net_spec, sample_time
from slimstep.nets import build_net
from slimstep.paths import interpolate
from slimstep.spec import RunConfig
from slimstep.spec.rules import non_negative, positive, rule
from slimstep.spec.sampling import VelocityRule

SCHEDULES = ("linear", "cos", "exp", "cos-half", "exp5")


def beta_schedule(step: int, anneal_steps: int, kind: str = "linear") -> float:
    """β at training step ``step``: 1 at the start, then down to 0 at ``anneal_steps``
    (``exp``: down to 1/e there, and on towards 0 after it); formulas in the module docstring."""
    if kind not in SCHEDULES:
        raise MethodError(f"beta_schedule must be one of {', '.join(SCHEDULES)}, not '{kind}'")
    if anneal_steps <= 0:
        return 0.0
    if kind == "exp":
        return math.exp(-step / anneal_steps)
    u = min(1.0, step / anneal_steps)
    if kind == "linear":
        return 1.0 - u
    if kind == "cos":
        return (1 + math.cos(math.pi * u)) / 2
    if kind == "cos-half":
        return math.cos(math.pi * u / 2) if u < 1 else 0.0
    return (math.exp(-5 * u) - math.exp(-5)) / (1 - math.exp(-5))


def renoise(z: torch.Tensor, beta: float) -> torch.Tensor:
    """:math:`\\sqrt{1-\\beta^2} z + \\beta \\varepsilon` with fresh ε."""
    if beta == 0.0:
        return z
    return math.sqrt(1 - beta * beta) * z + beta * torch.randn_like(z)


def flip_pair(x: torch.Tensor, z: torch.Tensor, p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """One coin for the whole batch: mirror image and noise together."""
    if x.dim() == 4 and float(torch.rand(())) < p:
        return x.flip(-1), z.flip(-1)
    return x, z


def pairs_spec(cfg: RunConfig) -> str:
    if not cfg.pairs:
        raise MethodError(f"method '{cfg.method.name}' trains on teacher pairs: pass --pairs DIR "
                          "(made by slimstep pairs)")
    return f"pairs:{cfg.pairs}"


def student_net(cfg: RunConfig, info, conditional: bool, weights: str = "ema"):
    """The student: from ``--init`` (its own architecture and weights) or built
    from the recipe's ``net`` section with random weights. Returns (net, spec)."""
    if cfg.init:
        net, icfg = load_net(cfg.init, weights)
        if tuple(icfg["data"]["shape"]) != tuple(info.shape):
            raise MethodError(f"--init {cfg.init} was trained on shape {icfg['data']['shape']}, "
                              f"the pairs have {list(info.shape)}")
        return net, icfg["net"]
    spec = net_spec(cfg, info, conditional)
    return build_net(spec), spec


class Reflow(Method):
    name = "reflow"
    style = ("#17becf", "v")

    @dataclass(frozen=True)
    class Options(Method.Options):
        flip: bool = False  # mirror image and noise together, p = 0.5 per batch (images only)
        conditional: bool | str = "auto"  # auto = when the pairs carry labels
        time_sampling: str = "uniform"  # uniform | logit-normal
        logit_mean: float = 0.0  # t ~ LN(logit_mean, logit_std) when logit-normal
        logit_std: float = rule(1.0, positive, POSITIVE)

    @classmethod
    def data_spec(cls, cfg):
        return pairs_spec(cfg)

    def __init__(self, cfg, info, *, device, teacher=None):
        super().__init__(cfg, info, device=device, teacher=teacher)
        cond = self.opts.conditional
        self.conditional = info.num_classes > 0 if cond == "auto" else bool(cond)
        sample_time(1, self.opts.time_sampling, 0, 1, "cpu")  # validate early
        net, self.spec = student_net(cfg, info, self.conditional)
        self.net = net.to(device)

    def beta(self, step: int) -> float:
        return 0.0

    def loss(self, batch, step, phase):
        x1, y, z = batch
        if self.opts.flip:
            x1, z = flip_pair(x1, z)
        beta = self.beta(step)
        z = renoise(z, beta)
        t = sample_time(len(x1), self.opts.time_sampling, self.opts.logit_mean,
                        self.opts.logit_std, x1.device)
        v = self.net(interpolate(z, x1, t), t, y if self.conditional else None)
        return {"loss": (v.float() - (x1 - z)).pow(2).mean(), "beta": torch.tensor(beta)}

    def export(self):
        s = self.cfg.sample
        return VelocityRule(solver=s.solver, steps=s.steps, rtol=s.rtol, atol=s.atol)


class AnnealingReflow(Reflow):
    name = "annealing-reflow"
    style = ("#1f77b4", "^")

    @dataclass(frozen=True)
    class Options(Reflow.Options):
        anneal_steps: int = rule(1000, non_negative, NON_NEGATIVE)  # steps over which β anneals 1 -> 0
        beta_schedule: str = "linear"  # linear | cos | exp | cos-half | exp5 (module doc)

    def __init__(self, cfg, info, *, device, teacher=None):
        super().__init__(cfg, info, device=device, teacher=teacher)
        beta_schedule(0, 1, self.opts.beta_schedule)  # validate early

    def beta(self, step: int) -> float:
        return beta_schedule(step, int(self.opts.anneal_steps), self.opts.beta_schedule)
