r"""MeanFlow: a one-step average-velocity model trained with a JVP target.

**MeanFlow's own time** (used only inside :func:`meanflow_loss`): ``t = 1`` is
noise, :math:`z_t = (1 - t) x + t\,\varepsilon`, :math:`v = \varepsilon - x`, and
the average velocity :math:`u(z_t, r, t) = \frac{1}{t - r}\int_r^t v\,d\tau`
moves :math:`z_r = z_t - (t - r)\,u`. Differentiating in ``t`` gives the
MeanFlow identity and its stop-gradient target

.. math:: u = v - (t - r)\,\tfrac{d}{dt}u,\qquad
          \tfrac{d}{dt}u = v\,\partial_z u + \partial_t u
          = \mathrm{JVP}\big(u, (z, r, t), (v, 0, 1)\big).

**Conversion to slimstep's time** (``a = 1 - t`` noise → ``b = 1 - r`` data
side, :math:`v_{ours} = x_1 - x_0 = -v_{MF}`). The network outputs the average
velocity *in our direction*, conditioned on our start time and the gap
(``t - r = b - a``, MeanFlow's "(t, t − r)" pair, two summed embeddings):

.. math:: \bar u(x_a, a, b) = \mathrm{net}(x_a,\ t{=}a,\ y,\ s{=}\kappa(b - a)),\qquad
          x_b = x_a + (b - a)\,\bar u,\qquad
          u_{MF}(z, r, t) = -\mathrm{net}(z,\ 1 - t,\ y,\ s{=}\kappa(t - r)),

with κ = ``s_scale`` (by default 1 / the network's ``time_scale``: the gap reaches the
sinusoid unscaled, see :func:`~slimstep.methods.flowmap.gap_scale`).

**A smooth time embedding is required.** The target differentiates u along t, and t
reaches the network through ``sin/cos(time_scale · t · w_i)``, w_i <= 1. With DiT's
``time_scale`` 1000 the JVP's du/dt is dominated by the embedding's fastest terms, not by
the function (issue 10's measurement on the digits DiT: rms 4.9 against a
finite-difference slope of 2.4), and the one-step map never moves. So a network with ``time_scale`` above
:data:`MAX_TIME_SCALE` is refused; train the teacher with ``net.time_scale: 1`` (t in
[0, 1] unscaled, as SiT and the official MeanFlow code do).

The one-step sample (noise ``a = 0`` to data ``b = 1``) is
:math:`x = z + \mathrm{net}(z, 0, y, s{=}\kappa)`, the same call as ``flowmap``.

**Training.** (t, r): t ~ logit-normal(``logit_mean``, ``logit_std``) and r ~
logit-normal(``r_logit_mean``, ``r_logit_std``) (by default the same law: MeanFlow's
ImageNet setting, (−0.4, 1); py-meanflow's CIFAR setting draws t ~ LN(−0.6, 1.6),
r ~ LN(−4, 1.6)), sorted so t ≥ r, and r = t for all but ``r_neq_t`` of the samples
(then the target is just v, plain flow matching; ImageNet 25 %, CIFAR 75 %). Adaptive
weight :math:`w = \mathrm{sg}[1/(\lVert\Delta\rVert^2 + c)^p]`. ``velocity: teacher``
replaces the conditional :math:`\varepsilon - x` by the teacher's marginal velocity
(lower variance; still needs data for :math:`z_t`). Then the r = t samples start at
Δ ≈ 0 (the student *is* the teacher there), and c = 1e-3 with p = 1 would weigh them up
to 1000x (issue 10 reports pre-clip gradient norms of 300-500): use p = 0 or a larger c.
With a teacher, the net starts from its weights (``s_embedder`` zeroed:
:math:`\bar u(x, a, b) = v_T(x, a)`, exact at b = a); without one it is built from the
recipe's ``net`` (from scratch).

**Guided target** (MeanFlow §4.2 and Appendix, eq. 21; the official code's
``guidance_fn``): classifier-free guidance folded into the training target. For a
class-conditional sample with MeanFlow time ``t`` in ``[guidance_t_min, guidance_t_max]``
the velocity ``v`` is replaced by the mixed velocity

.. math:: \tilde v = \omega\,v + \kappa\,u(z_t, t, t \mid c)
          + (1 - \omega - \kappa)\,u(z_t, t, t \mid \varnothing),

with the network's own ``u`` at ``r = t`` (its instantaneous velocity; no gradient,
labels not dropped), and ṽ is also the JVP's tangent: the target is
``sg(ṽ - (t - r) JVP(u, (z, r, t), (ṽ, 0, 1)))``. Outside the interval, and for the samples
whose label was dropped to the null class, ṽ = v. ω = 1, κ = 0 (the defaults) is the
unguided target; the sampler sees the guidance scale ω' = ω / (1 - κ) (κ = 0: plain CFG
with scale ω). MeanFlow's ImageNet-256 XL/2 run: ω = 0.2, κ = 0.92 (ω' = 2.5).

**DDP.** ``torch.func.jvp`` runs on the bare module (no DDP wrapper can be
differentiated forward-mode); the loop averages gradients by hand
(:func:`slimstep.train.dist.allreduce_grads`). Attention uses the math path
inside the JVP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import jvp

from slimstep.methods.base import (
    BELOW_ONE,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_OR_NULL,
    UNIT,
    Method,
    MethodError,
)
from slimstep.methods.flow_matching import net_spec
from slimstep.methods.flowmap import gap_scale, two_time_student
from slimstep.nets import build_net
from slimstep.nets.dit import math_attention
from slimstep.spec.rules import below_one, non_negative, positive, rule, unit
from slimstep.spec.sampling import TwoTimeRule

#: The largest network ``time_scale`` MeanFlow accepts: the embedding's fastest term then
#: varies by at most 10 rad per unit t, and a JVP along t agrees with a central difference
#: of step 1e-2 (tests/test_meanflow.py); at DiT's 1000 the two differ by more than 50 %.
MAX_TIME_SCALE = 10.0


def _bc(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def u_meanflow(net: nn.Module, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor,
               y: torch.Tensor | None, s_scale: float = 1.0) -> torch.Tensor:
    """MeanFlow's :math:`u(z, r, t)` (t = 1 noise) read from our network (see module doc);
    the gap enters the s-embedding as ``s_scale·(t - r)``."""
    return -net(z, 1 - t, y, s=s_scale * (t - r))


def guided_velocity(v: torch.Tensor, u_cond: torch.Tensor, u_uncond: torch.Tensor,
                    omega: float, kappa: float, on: torch.Tensor | None = None) -> torch.Tensor:
    """MeanFlow's mixed velocity ``ω v + κ u_c + (1 - ω - κ) u_∅`` where ``on`` (a ``[B]``
    mask; default every sample), ``v`` elsewhere (MeanFlow eq. 21, MeanFlow's direction)."""
    mixed = omega * v + kappa * u_cond + (1.0 - omega - kappa) * u_uncond
    return mixed if on is None else torch.where(_bc(on, v).bool(), mixed, v)


def meanflow_target(net: nn.Module, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor,
                    v: torch.Tensor, y: torch.Tensor | None, s_scale: float = 1.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u, sg(v - (t - r) du/dt))`` with du/dt = JVP along tangents (v, 0, 1); a guided
    run passes its mixed velocity ṽ as ``v`` (tangent and target alike)."""
    with math_attention():
        u, dudt = jvp(lambda z_, r_, t_: u_meanflow(net, z_, r_, t_, y, s_scale), (z, r, t),
                      (v, torch.zeros_like(r), torch.ones_like(t)))
    return u, (v - _bc(t - r, z) * dudt).detach()


def meanflow_loss(net: nn.Module, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
                  r: torch.Tensor, y: torch.Tensor | None, power: float = 1.0, c: float = 1e-3,
                  v: torch.Tensor | None = None, s_scale: float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The MeanFlow loss for given data ``x``, noise ``eps`` and MeanFlow times ``t >= r``.

    ``v`` (MeanFlow direction) defaults to the conditional ``eps - x``. Returns
    (adaptively weighted loss, plain mean squared error). A pure function of its inputs,
    so a data-parallel test can split the batch across processes.
    """
    z = (1 - _bc(t, x)) * x + _bc(t, x) * eps
    v = eps - x if v is None else v
    u, target = meanflow_target(net, z, r, t, v, y, s_scale)
    err = (u.float() - target.float()).pow(2).flatten(1).sum(1)
    w = (err.detach() + c).pow(-power)
    return (w * err).mean(), err.mean() / x[0].numel()


TR_SAMPLERS = ("sort", "v1")


def sample_t_r(n: int, mean: float, std: float, r_neq_t: float, device,
               r_mean: float | None = None, r_std: float | None = None, order: str = "sort"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ LN(mean, std), r ~ LN(r_mean, r_std) (default: the same law); r = t except for a
    fraction ``r_neq_t``.

    ``order="sort"`` (MeanFlow's JAX code): the pair is sorted first (t = max, r = min),
    then masked. ``order="v1"`` (py-meanflow's CIFAR-10 ``v1`` sampler): masked first, then
    r = min(t, r), so t keeps its own law LN(mean, std) and r is never above it. The two
    draws and the mask are the same random numbers in both orders; they differ on the
    pairs with r drawn above t (t then becomes r's draw under ``sort``)."""
    a = torch.sigmoid(mean + std * torch.randn(n, device=device))
    r_mean = mean if r_mean is None else r_mean
    r_std = std if r_std is None else r_std
    b = torch.sigmoid(r_mean + r_std * torch.randn(n, device=device))
    neq = torch.rand(n, device=device) < r_neq_t
    if order == "v1":
        return a, torch.where(neq, torch.minimum(a, b), a)
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    return t, torch.where(neq, r, t)


def check_smooth_time(net: nn.Module, what: str) -> None:
    """Refuse a network whose time embedding is too sharp for a JVP along t."""
    scale = float(getattr(net, "time_scale", 1.0))
    if scale > MAX_TIME_SCALE:
        raise MethodError(
            f"meanflow differentiates along t, but {what} embeds t with time_scale {scale:g} "
            f"(at most {MAX_TIME_SCALE:g}): the JVP would follow the embedding, not the "
            f"function. Train the teacher with net.time_scale=1 (configs/digits/dit-teacher.yaml "
            f"does) or use method.init=scratch with net.time_scale=1")




class MeanFlow(Method):
    name = "meanflow"
    style = ("#e377c2", "p")  # starts from the teacher only with init: teacher (flags.initialisation)

    @dataclass(frozen=True)
    class Options(Method.Options):
        logit_mean: float = -0.4  # t ~ LN(logit_mean, logit_std)
        logit_std: float = rule(1.0, positive, POSITIVE)
        r_logit_mean: float | None = None  # r ~ LN(r_logit_mean, r_logit_std); None = t's law
        r_logit_std: float | None = rule(None, positive, POSITIVE_OR_NULL)
        r_neq_t: float = rule(0.25, unit, UNIT)  # share of r != t (MeanFlow ImageNet 0.25, py-meanflow CIFAR 0.75)
        weight_power: float = rule(1.0, non_negative, NON_NEGATIVE)  # p of the adaptive weight (MeanFlow: 0.75 - 1)
        weight_eps: float = rule(1e-3, positive, POSITIVE)
        init: str = "teacher"  # teacher (fine-tune the teacher's weights) | scratch
        velocity: str = "data"  # data (eps - x) | teacher (the teacher's marginal velocity)
        label_dropout: float = rule(0.1, unit, UNIT)
        s_scale: float | None = None  # gap enters as s = s_scale·(t - r); None = 1 / time_scale (gap_scale)
        tr_sampler: str = "sort"  # sort (JAX code: sort, then mask) | v1 (py-meanflow: mask, r = min)
        # ω of the guided target (1 with κ = 0: no guidance)
        guidance_omega: float = rule(1.0, non_negative, NON_NEGATIVE)
        guidance_kappa: float = rule(0.0, below_one, BELOW_ONE)  # κ: weight of the class-conditional u in ṽ
        guidance_t_min: float = rule(0.0, unit, UNIT)  # guided for MeanFlow times t (1 = noise) in [t_min, t_max]
        guidance_t_max: float = rule(1.0, unit, UNIT)

    def __init__(self, cfg, info, *, device, teacher=None):
        super().__init__(cfg, info, device=device, teacher=teacher)
        o = self.opts
        if o.init not in ("teacher", "scratch") or o.velocity not in ("data", "teacher"):
            raise MethodError("meanflow: init must be teacher|scratch, velocity data|teacher")
        if o.init == "teacher" or o.velocity == "teacher":
            if teacher is None:
                raise MethodError("meanflow with init=teacher or velocity=teacher needs --teacher CKPT")
        if o.init == "teacher":
            net, self.spec = two_time_student(teacher, self.name)
            check_smooth_time(net, "the teacher's network")
        else:
            if cfg.net.name not in ("dit", "mlp"):
                raise MethodError("meanflow from scratch needs net.name: dit or mlp")
            self.spec = {**net_spec(cfg, info, info.num_classes > 0), "extra_time_embeds": 1}
            net = build_net(self.spec)
            check_smooth_time(net, "net")
        self.net = net.to(device)
        self.s_scale = gap_scale(self.net, o.s_scale)
        self.num_classes = int(self.spec.get("num_classes", 0) or 0)
        if o.tr_sampler not in TR_SAMPLERS:
            raise MethodError(f"method.tr_sampler must be one of {', '.join(TR_SAMPLERS)}, "
                              f"not {o.tr_sampler!r} (meanflow)")
        if not o.guidance_t_min <= o.guidance_t_max:
            raise MethodError("method.guidance_t_min must be at most method.guidance_t_max (meanflow)")
        self.guided = o.guidance_omega != 1.0 or o.guidance_kappa != 0.0
        if self.guided and not self.num_classes:
            raise MethodError("meanflow's guided target (guidance_omega != 1 or guidance_kappa != 0) "
                              "needs class-conditional data and network")
        self.teacher_net = None
        if o.velocity == "teacher":
            self.teacher_net = teacher.net.to(device).eval().requires_grad_(False)

    def loss(self, batch, step, phase):
        x, y = batch[:2]
        o = self.opts
        y = y if self.num_classes else None
        if y is not None:
            drop = torch.rand(len(y), device=y.device) < o.label_dropout
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        eps = torch.randn_like(x)
        t, r = sample_t_r(len(x), o.logit_mean, o.logit_std, o.r_neq_t, x.device,
                          o.r_logit_mean, o.r_logit_std, o.tr_sampler)
        v = None
        z = (1 - _bc(t, x)) * x + _bc(t, x) * eps
        if self.teacher_net is not None:
            with torch.no_grad():  # our velocity at our time 1 - t, flipped to MeanFlow's
                v = -self.teacher_net(z, 1 - t, y)
        out = {}
        if self.guided:
            v = self._guided(z, t, y, eps - x if v is None else v)
            out["v_shift"] = (v - (eps - x)).pow(2).flatten(1).sum(1).mean().detach()
        loss, mse = meanflow_loss(self.net, x, eps, t, r, y, o.weight_power, o.weight_eps, v,
                                  self.s_scale)
        return {"loss": loss, "mse": mse.detach(), **out}

    @torch.no_grad()
    def _guided(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                v: torch.Tensor) -> torch.Tensor:
        """ṽ (module doc) for the samples with a real label and t in the interval."""
        o = self.opts
        null = torch.full_like(y, self.num_classes)
        was = self.net.training
        self.net.eval()  # the network's own label dropout must not touch u(· | c)
        try:
            both = u_meanflow(self.net, torch.cat([z, z]), torch.cat([t, t]), torch.cat([t, t]),
                              torch.cat([y, null]), self.s_scale)
        finally:
            self.net.train(was)
        u_c, u_u = both.chunk(2)
        on = (y != self.num_classes) & (t >= o.guidance_t_min) & (t <= o.guidance_t_max)
        return guided_velocity(v, u_c, u_u, o.guidance_omega, o.guidance_kappa, on)

    def export(self):
        return TwoTimeRule(kind="meanflow", t=0.0, s=self.s_scale)
