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

**DDP.** ``torch.func.jvp`` runs on the bare module (no DDP wrapper can be
differentiated forward-mode); the loop averages gradients by hand
(:func:`slimstep.train.dist.allreduce_grads`). Attention uses the math path
inside the JVP.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import jvp

from slimstep.methods.base import Method, MethodError
from slimstep.methods.flow_matching import net_spec
from slimstep.methods.flowmap import gap_scale, two_time_student
from slimstep.nets import build_net
from slimstep.nets.dit import math_attention

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


def meanflow_target(net: nn.Module, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor,
                    v: torch.Tensor, y: torch.Tensor | None, s_scale: float = 1.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u, sg(v - (t - r) du/dt))`` with du/dt = JVP along tangents (v, 0, 1)."""
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


def sample_t_r(n: int, mean: float, std: float, r_neq_t: float, device,
               r_mean: float | None = None, r_std: float | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ LN(mean, std), r ~ LN(r_mean, r_std) (default: the same law), sorted so t >= r;
    r = t except for a fraction ``r_neq_t``."""
    a = torch.sigmoid(mean + std * torch.randn(n, device=device))
    r_mean = mean if r_mean is None else r_mean
    r_std = std if r_std is None else r_std
    b = torch.sigmoid(r_mean + r_std * torch.randn(n, device=device))
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    r = torch.where(torch.rand(n, device=device) < r_neq_t, r, t)
    return t, r


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
    defaults = {
        "logit_mean": -0.4,  # t ~ LN(logit_mean, logit_std)
        "logit_std": 1.0,
        "r_logit_mean": None,  # r ~ LN(r_logit_mean, r_logit_std); None = t's law
        "r_logit_std": None,
        "r_neq_t": 0.25,  # share of r != t (MeanFlow ImageNet 0.25, py-meanflow CIFAR 0.75)
        "weight_power": 1.0,  # p of the adaptive weight (MeanFlow: 0.75 - 1)
        "weight_eps": 1e-3,
        "init": "teacher",  # teacher (fine-tune the teacher's weights) | scratch
        "velocity": "data",  # data (eps - x) | teacher (the teacher's marginal velocity)
        "label_dropout": 0.1,
        "s_scale": None,  # gap enters as s = s_scale·(t - r); None = 1 / time_scale (gap_scale)
    }

    def __init__(self, cfg, info, *, device, teacher=None):
        super().__init__(cfg, info, device=device, teacher=teacher)
        o = self.opts
        if o["init"] not in ("teacher", "scratch") or o["velocity"] not in ("data", "teacher"):
            raise MethodError("meanflow: init must be teacher|scratch, velocity data|teacher")
        if o["init"] == "teacher" or o["velocity"] == "teacher":
            if teacher is None:
                raise MethodError("meanflow with init=teacher or velocity=teacher needs --teacher CKPT")
        if o["init"] == "teacher":
            net, self.spec = two_time_student(teacher, self.name)
            check_smooth_time(net, "the teacher's network")
        else:
            if cfg["net"].get("name") not in ("dit", "mlp"):
                raise MethodError("meanflow from scratch needs net.name: dit or mlp")
            self.spec = {**net_spec(cfg, info, info.num_classes > 0), "extra_time_embeds": 1}
            net = build_net(self.spec)
            check_smooth_time(net, "net")
        self.net = net.to(device)
        self.s_scale = gap_scale(self.net, o["s_scale"])
        self.num_classes = int(self.spec.get("num_classes", 0) or 0)
        self.teacher_net = None
        if o["velocity"] == "teacher":
            self.teacher_net = teacher.net.to(device).eval().requires_grad_(False)

    def loss(self, batch, step, phase):
        x, y = batch[:2]
        o = self.opts
        y = y if self.num_classes else None
        if y is not None:
            drop = torch.rand(len(y), device=y.device) < o["label_dropout"]
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        eps = torch.randn_like(x)
        t, r = sample_t_r(len(x), o["logit_mean"], o["logit_std"], o["r_neq_t"], x.device,
                          o["r_logit_mean"], o["r_logit_std"])
        v = None
        if self.teacher_net is not None:
            with torch.no_grad():  # our velocity at our time 1 - t, flipped to MeanFlow's
                z = (1 - _bc(t, x)) * x + _bc(t, x) * eps
                v = -self.teacher_net(z, 1 - t, y)
        loss, mse = meanflow_loss(self.net, x, eps, t, r, y, o["weight_power"], o["weight_eps"], v,
                                  self.s_scale)
        return {"loss": loss, "mse": mse.detach()}

    def export(self):
        return {"kind": "meanflow", "nfe": 1, "t": 0.0, "s": self.s_scale}
