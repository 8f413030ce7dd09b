r"""Consistency models from a teacher: ``scd`` (continuous-time consistency distillation,
sCM, Lu & Song 2024) and ``ect`` (Easy Consistency Tuning, Geng et al. 2024), in
slimstep's time (``t = 0`` noise, ``t = 1`` data, :math:`x_t = t\,x_1 + (1 - t)\,x_0`).

**The consistency function.** The teacher's network ``F`` (initialised from its EMA
weights) read as a velocity, with the boundary condition built in:

.. math:: f_\theta(x_t, t) = x_t + (1 - t)\,F_\theta(x_t, t, y),\qquad f_\theta(x, 1) = x .

At initialisation :math:`F = v_T` and ``f`` is the teacher's x1-prediction
:math:`\mathbb E[x_1 \mid x_t]`. ``f`` must be constant along the teacher's ODE
:math:`\dot x = v_T(x, t)`; the one-step sample is :math:`f(z, 0) = z + F(z, 0)`, the
same call as GDD's and DMD2's generator (export ``kind=velocity, solver=euler, steps=1``).

**scd — continuous time.** Along the ODE

.. math:: \frac{df_\theta}{dt} = v_T - F_\theta + (1 - t)\,\frac{dF_\theta}{dt},\qquad
          \frac{dF_\theta}{dt} = \partial_x F_\theta\,v_T + \partial_t F_\theta
          = \mathrm{JVP}\big(F_\theta, (x_t, t), (v_T, 1)\big),

by forward-mode ``torch.func.jvp`` through a *smooth* time embedding (the network's
``time_scale`` at most :data:`~slimstep.methods.meanflow.MAX_TIME_SCALE`: MeanFlow's
lesson). The limit of the discrete loss :math:`\lVert f_\theta(x_t) - f_{\theta^-}(x_{t+dt})\rVert^2`
has the gradient :math:`-\nabla_\theta f_\theta^\top\,df_{\theta^-}/dt`, i.e. ``F`` is
pulled toward :math:`F_{\theta^-} + c(t)\,df/dt` with a positive ``c``.

*TrigFlow on the linear path.* sCM writes :math:`x_\vartheta = \cos\vartheta\,x_1 +
\sin\vartheta\,\sigma_d z`, :math:`f = \cos\vartheta\,x_\vartheta - \sin\vartheta\,\sigma_d F^{trig}`.
Both paths hold the same point when :math:`\sigma_d\tan\vartheta = (1 - t)/t`; then
:math:`dF^{ours} = k\,dF^{trig}` with :math:`k = \sigma_d / \rho`,
:math:`\rho = \sqrt{\sigma_d^2 t^2 + (1 - t)^2}`, and sCM's tangent
:math:`g = \cos\vartheta\,df/d\vartheta` (its "unit" weighting) becomes, in F-trig units,

.. math:: g = t\,\rho\,\frac{df}{dt}\quad\text{(our } t\text{ and } f\text{)} .

Its **time law** :math:`\tan\vartheta = e^\tau/\sigma_d`, :math:`\tau \sim \mathcal N(P_{mean}, P_{std})`
is :math:`t = \mathrm{sigmoid}(-\tau)`: ``t ~ logit-normal(logit_mean = −P_mean, logit_std = P_std)``
(defaults: sCM's CIFAR-10 values, P_mean −1.0, P_std 1.4). **Tangent normalisation**
:math:`\hat g = g / (\lVert g\rVert + c)`, ``c = tangent_c`` (0.1), on the trig-unit
tangent as published; **tangent warm-up**: the term holding the network's own time
derivative, :math:`(1 - t)\,dF/dt`, is scaled by :math:`\min(1, \mathrm{step}/\mathrm{tangent\_warmup})`
(sCM ramps the :math:`\sin\vartheta\cos\vartheta(x_\vartheta + \sigma_d dF/d\vartheta)` term
over 10k iterations; on the linear path the term with the network's derivative is the one
that carries it). **Adaptive weighting** (sCM's): a learnt log-weight :math:`w_\phi(t)`,

.. math:: \mathcal L = \frac{e^{w_\phi(t)}}{D}\,
          \Big\lVert \frac{F_\theta - F_{\theta^-}}{k} - \hat g \Big\rVert^2 - w_\phi(t),

minimised over :math:`w_\phi` at :math:`e^{w} = 1/\mathrm{MSE}(t)`. The value of the bracket is
:math:`\hat g` (so the target is :math:`F_{\theta^-} + k\hat g`); :math:`\theta^- = \mathrm{sg}(\theta)`.
The teacher's velocity carries classifier-free guidance ``cfg_scale``.

**ect — discrete, shrinking Δt** (ECT's ``ECMLoss``). In EDM's noise level
:math:`\sigma = (1 - t)/t` (the same point: :math:`x_t / t = x_1 + \sigma z`):
``t ~ logit-normal(logit_mean, logit_std)`` (ECT: :math:`\log\sigma \sim \mathcal N(-1.1, 2.0)`,
so logit_mean 1.1, logit_std 2.0); the partner level

.. math:: \sigma_r = \max\Big(0,\ \sigma_t\big(1 - q^{-(s+1)}\,(1 + k\,\mathrm{sigmoid}(-b\,\sigma_t))\big)\Big),
          \qquad s = \lfloor \mathrm{step} / \mathrm{stage\_steps} \rfloor,

(q = 2, k = 8, b = 1: Δt halves every stage), both points on one conditional path with shared
noise, :math:`x_t = t x_1 + (1 - t) z`, :math:`x_r = r x_1 + (1 - r) z`, :math:`r = 1/(1 + \sigma_r)`;
the target :math:`\mathrm{sg}[f_\theta(x_r, r)]` with the same dropout draw (the data
:math:`x_1` where :math:`\sigma_r = 0`), and the loss

.. math:: \mathcal L = \frac{\sqrt{\lVert f_\theta(x_t, t) - \mathrm{sg}[f_\theta(x_r, r)]\rVert^2 + c^2} - c}
          {\sigma_t - \sigma_r}

(``huber_c`` c = 0 is ECT's default: the L2 norm, an adaptive weight of power 1/2). ECT
*tunes* the teacher's weights with data only (consistency training, no teacher call).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import jvp

from slimstep.methods.base import NON_NEGATIVE, POSITIVE, Method, MethodError
from slimstep.methods.dmd2 import teacher_copy
from slimstep.methods.meanflow import MAX_TIME_SCALE
from slimstep.nets.dit import math_attention
from slimstep.nets.unet import sinusoidal
from slimstep.solvers import guided
from slimstep.spec.rules import non_negative, positive, rule
from slimstep.spec.sampling import VelocityRule


def _bc(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32 (a bf16 autocast output is widened, float64 kept)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def consistency_fn(net: nn.Module, x: torch.Tensor, t: torch.Tensor,
                   y: torch.Tensor | None) -> torch.Tensor:
    """:math:`f(x_t, t) = x_t + (1 - t)\\,F(x_t, t, y)`."""
    return x + (1 - _bc(t, x)) * net(x, t, y)


# ----------------------------------------------------------------------------- scd


def scd_tangent(net: nn.Module, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor,
                y: torch.Tensor | None, warm: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F with graph, df/dt along the teacher's flow, no graph)``:
    :math:`df/dt = v - F + w\\,(1 - t)\\,\\mathrm{JVP}(F, (x, t), (v, 1))`, ``w`` the
    tangent warm-up factor (1 = the exact derivative)."""
    with math_attention():
        F, dF = jvp(lambda x_, t_: net(x_, t_, y), (xt, t), (v, torch.ones_like(t)))
    tb = _bc(t, xt)
    return F, (v - F.detach() + warm * (1 - tb) * dF.detach()).detach()


def scd_target(F: torch.Tensor, dfdt: torch.Tensor, t: torch.Tensor, sigma_data: float,
               tangent_c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k, ĝ)``: sCM's normalised tangent in F-trig units and the unit change
    ``k = dF_ours / dF_trig``; the regression target of ``F`` is ``sg(F) + k ĝ``."""
    tb = _wide(_bc(t, F))
    rho = (sigma_data ** 2 * tb ** 2 + (1 - tb) ** 2).sqrt()
    g = tb * rho * _wide(dfdt)
    norm = g.flatten(1).norm(dim=1)
    return sigma_data / rho, g / _bc(norm + tangent_c, g)


class TimeWeight(nn.Module):
    """sCM's adaptive log-weight :math:`w_\\phi(t)`: a linear map of sinusoidal features of
    :math:`\\mathrm{logit}(t)` (zero-initialised: weight 1)."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.dim = dim
        self.lin = nn.Linear(dim, 1)
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        lt = torch.logit(t.float().clamp(1e-6, 1 - 1e-6))
        return self.lin(sinusoidal(lt, self.dim)).squeeze(1)


# ----------------------------------------------------------------------------- ect


def ect_partner(t: torch.Tensor, stage: int, q: float, k: float, b: float) -> torch.Tensor:
    """ECT's partner time ``r > t`` (closer to the data) in our time, from the mapping in
    EDM's σ = (1 − t)/t: σ_r = σ_t (1 − q^-(stage+1) (1 + k sigmoid(−b σ_t))), clamped at 0."""
    sig = (1 - t) / t
    ratio = 1 - q ** -(stage + 1) * (1 + k * torch.sigmoid(-b * sig))
    sig_r = (sig * ratio).clamp_min(0)
    return 1 / (1 + sig_r)


def ect_loss(net: nn.Module, x1: torch.Tensor, z: torch.Tensor, t: torch.Tensor,
             r: torch.Tensor, y: torch.Tensor | None, huber_c: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ECT's loss, mean ‖Δ‖² / D). ``x_t`` and ``x_r`` share the noise ``z``; the target
    is computed with the same RNG state (the same dropout mask) and without graph."""
    xt = _bc(t, x1) * x1 + (1 - _bc(t, x1)) * z
    xr = _bc(r, x1) * x1 + (1 - _bc(r, x1)) * z
    cuda = x1.device.type == "cuda"
    state = torch.get_rng_state(), (torch.cuda.get_rng_state(x1.device) if cuda else None)
    f_t = consistency_fn(net, xt, t, y)
    torch.set_rng_state(state[0])
    if cuda:
        torch.cuda.set_rng_state(state[1], x1.device)
    with torch.no_grad():
        f_r = consistency_fn(net, xr, r, y)
        f_r = torch.where((r >= 1).reshape(-1, *([1] * (x1.dim() - 1))), x1, f_r)
    d2 = _wide(f_t - f_r).pow(2).flatten(1).sum(1)
    c = float(huber_c)
    dist = (d2 + c * c).clamp_min(1e-20).sqrt() - c
    sig_t, sig_r = (1 - t) / t, (1 - r) / r
    return (dist / (sig_t - sig_r).clamp_min(1e-12)).mean(), d2.mean() / x1[0].numel()


# ----------------------------------------------------------------------------- the methods


class _Consistency(Method):
    """The shared part: the teacher's network as ``F``, its one-step export."""

    jvp: bool = False
    starts_from_teacher = True  # F is a copy of the teacher's network

    def __init__(self, cfg, info, *, device, teacher=None):
        super().__init__(cfg, info, device=device, teacher=teacher)
        net, self.spec = teacher_copy(teacher, info, self.name)
        scale = float(getattr(net, "time_scale", 1.0))
        if self.jvp and scale > MAX_TIME_SCALE:
            raise MethodError(
                f"{self.name} differentiates along t, but the teacher's network embeds t with "
                f"time_scale {scale:g} (at most {MAX_TIME_SCALE:g}): the JVP would follow the "
                f"embedding, not the function. Train the teacher with net.time_scale=1")
        self.net = net.to(device)
        self.num_classes = int(getattr(net, "num_classes", 0) or 0)
        if self.num_classes and info.num_classes != self.num_classes:
            raise MethodError(f"the teacher has {self.num_classes} classes, the data "
                              f"{info.num_classes}: {self.name} trains with the batch's labels")

    def export(self):
        return VelocityRule(solver="euler", steps=1)

    def _draw(self, batch):
        x1 = batch[0]
        y = batch[1] if self.num_classes else None
        t = torch.sigmoid(self.opts.logit_mean + self.opts.logit_std
                          * torch.randn(len(x1), device=x1.device))
        return x1, y, t.clamp(1e-4, 1 - 1e-4), torch.randn_like(x1)


class SCD(_Consistency):
    name = "scd"
    jvp = True
    style = ("#b8860b", "<")

    @dataclass(frozen=True)
    class Options(Method.Options):
        logit_mean: float = 1.0  # t ~ LN(logit_mean, logit_std) = sCM's τ ~ N(-1.0, 1.4) (CIFAR-10)
        logit_std: float = rule(1.4, positive, POSITIVE)
        sigma_data: float = rule(0.5, positive, POSITIVE)  # σ_d of TrigFlow: sets the trig-unit tangent and k
        tangent_c: float = rule(0.1, non_negative, NON_NEGATIVE)  # ĝ = g / (‖g‖ + c)
        # steps over which (1 - t) dF/dt ramps 0 -> 1 (sCM: 10k)
        tangent_warmup: int = rule(10000, non_negative, NON_NEGATIVE)
        adaptive_weight: bool = True  # sCM's learnt e^{w(t)}; false = plain mean squared error
        cfg_scale: float = 1.0  # guidance folded into the teacher's velocity

    def __init__(self, cfg, info, *, device, teacher=None):
        super().__init__(cfg, info, device=device, teacher=teacher)
        self.teacher_net = teacher.net.to(device).eval().requires_grad_(False)
        self.weight = TimeWeight().to(device) if self.opts.adaptive_weight else None

    def modules(self):
        return {"net": self.net, **({"weight": self.weight} if self.weight is not None else {})}

    def parameters(self, phase):
        mods = [self.net] + ([self.weight] if self.weight is not None else [])
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    def loss(self, batch, step, phase):
        o = self.opts
        x1, y, t, z = self._draw(batch)
        tb = _bc(t, x1)
        xt = tb * x1 + (1 - tb) * z
        with torch.no_grad():
            v = guided(self.teacher_net, y, float(o.cfg_scale), self.num_classes)(xt, t)
        warm = min(1.0, step / o.tangent_warmup) if o.tangent_warmup > 0 else 1.0
        F, dfdt = scd_tangent(self.net, xt, t, v, y, warm)
        k, g = scd_target(F, dfdt, t, float(o.sigma_data), float(o.tangent_c))
        mse = ((_wide(F) - _wide(F.detach())) / k - g).pow(2).flatten(1).mean(1)
        out = {"mse": mse.mean().detach(), "tangent": dfdt.float().flatten(1).norm(dim=1).mean(),
               "warmup": torch.tensor(warm)}
        if self.weight is None:
            return {"loss": mse.mean(), **out}
        w = self.weight(t)
        return {"loss": (w.exp() * mse - w).mean(), **out}


class ECT(_Consistency):
    name = "ect"
    style = ("#6b8e23", ">")

    @dataclass(frozen=True)
    class Options(Method.Options):
        logit_mean: float = 1.1  # t ~ LN(logit_mean, logit_std) = ECT's log σ ~ N(-1.1, 2.0)
        logit_std: float = rule(2.0, positive, POSITIVE)
        stage_steps: int = rule(1000, positive, POSITIVE)  # steps per stage: Δt shrinks by q at every stage
        shrink_q: float = rule(2.0, positive, POSITIVE)  # q (ECT: 2; above 1)
        shrink_k: float = rule(8.0, non_negative, NON_NEGATIVE)  # k of the sigmoid mapping (ECT: 8)
        shrink_b: float = rule(1.0, non_negative, NON_NEGATIVE)  # b (ECT: 1)
        huber_c: float = rule(0.0, non_negative, NON_NEGATIVE)  # c of sqrt(‖Δ‖² + c²) - c (ECT: 0, the L2 norm)

    def __init__(self, cfg, info, *, device, teacher=None):
        super().__init__(cfg, info, device=device, teacher=teacher)
        if not self.opts.shrink_q > 1:
            raise MethodError(f"method.shrink_q must be above 1, not {self.opts.shrink_q!r} (ect)")

    def loss(self, batch, step, phase):
        o = self.opts
        x1, y, t, z = self._draw(batch)
        stage = step // o.stage_steps
        r = ect_partner(t, stage, float(o.shrink_q), float(o.shrink_k), float(o.shrink_b))
        loss, mse = ect_loss(self.net, x1, z, t, r, y, o.huber_c)
        return {"loss": loss, "mse": mse.detach(), "stage": torch.tensor(float(stage))}
