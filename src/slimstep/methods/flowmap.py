r"""FreeFlow: data-free distillation of a one-step flow map from a velocity teacher.

**Time convention.** FreeFlow writes time with ``t = 1`` noise; slimstep keeps
``t = 0`` noise, ``t = 1`` data (``x_t = t x_1 + (1 - t) x_0``). FreeFlow's map
from noise at its time 1 to its time ``1 - δ`` is, in ours, the map from
``t = 0`` to ``t = δ``; its velocity is minus ours. Everything below is already
converted, so no sign flip happens anywhere in the code.

**Student.** The teacher's DiT (or MLP, for the toys) with a second time embedding (``extra_time_embeds=1``),

.. math:: f(z, \delta) = z + \delta\,F(z, \delta),\qquad
          F(z, \delta) = \mathrm{net}(z,\ t{=}0,\ y,\ s{=}\kappa\delta),

(κ = ``s_scale``, by default 1 / the network's ``time_scale`` so δ reaches the
sinusoid unscaled; the sampling rule stores s = κ), initialised from the
teacher's weights with ``s_embedder`` zeroed, so at
initialisation :math:`F(z, \delta) = v_T(z, 0)` — the exact limit of a flow map
as :math:`\delta \to 0`. The one-step sample is :math:`f(z, 1) = z + F(z, 1)`.

**Prediction loss** (only noise is sampled: data-free). A flow map satisfies
:math:`\partial_\delta f = v_T(f, \delta)`, i.e.
:math:`F = v_T(f(z,\delta), \delta) - \delta\,\partial_\delta F`. With
:math:`\partial_\delta F` by forward-mode ``torch.func.jvp`` (tangent 1 on δ;
a central finite difference as fallback)

.. math:: r = F - \mathrm{sg}\big[v_T^{w}(f(z,\delta), \delta) - \delta\,\partial_\delta F\big],
          \qquad \mathcal L_{pred} = \mathrm{sg}\big[(\lVert r\rVert^2/d + \epsilon)^{-k}\big]\,
          \lVert r\rVert^2/d ,

a power-law adaptive weight (k = 1 by default, k = 0 is plain L2).
:math:`v_T^{w} = v_\varnothing + w (v_y - v_\varnothing)` folds classifier-free
guidance into the teacher (``cfg_scale`` w) for conditional teachers.

**Correction loss** (optional, VSD-style). A "fake velocity" network
:math:`v_\phi` (initialised from the teacher) learns flow matching on the
student's own samples :math:`\hat x = f(z, 1)` (phase ``fake``). At
:math:`x_t = t\,\mathrm{sg}[\hat x] + (1 - t) n` with ``t`` biased to the noise
end, the student gets the gradient of
:math:`\langle \hat x,\ \mathrm{sg}[v_\phi(x_t, t) - v_T^{w}(x_t, t)]\rangle`,
which moves :math:`\hat x` along :math:`(1-t)(v_T - v_\phi) \propto
\hat x_{1,T} - \hat x_{1,\phi}` (real minus fake x-prediction). The batch is
split 75 / 25 between the two losses (``correction_fraction``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import jvp

from slimstep.methods.base import NON_NEGATIVE, POSITIVE, UNIT, Method, MethodError
from slimstep.methods.flow_matching import sample_time
from slimstep.nets import build_net
from slimstep.nets.dit import math_attention
from slimstep.solvers import guided
from slimstep.spec.rules import non_negative, positive, rule, unit
from slimstep.spec.sampling import TwoTimeRule


def _bc(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


#: Each network's second time embedding; its last Linear is zero-initialised (EDM2's U-Net:
#: its gain, EDM2's idiom for a branch that starts switched off).
_S_EMBED = {"dit": "s_embedder", "mlp": "s_embed", "edm2_unet": "s_embedder"}


def two_time_student(teacher, name: str) -> tuple[torch.nn.Module, dict]:
    """The teacher's network (DiT, MLP or EDM2 U-Net) with a second time embedding ``s``, initialised
    from ``teacher``'s weights with the new embedding's last layer zeroed (so
    ``net(x, t, s) = teacher(x, t)`` for every s)."""
    if teacher is None:
        raise MethodError(f"method '{name}' needs a velocity teacher: pass --teacher CKPT")
    spec = dict(teacher.config.get("net") or {})
    if spec.get("name") not in _S_EMBED:
        raise MethodError(f"method '{name}' needs a DiT, MLP or EDM2 U-Net teacher, got net "
                          f"'{spec.get('name')}'")
    spec["extra_time_embeds"] = 1
    net = build_net(spec)
    prefix = _S_EMBED[spec["name"]] + "."
    sd = {k: v for k, v in teacher.net.state_dict().items() if not k.startswith(prefix)}
    net.load_state_dict(sd, strict=False)
    if spec["name"] == "edm2_unet":  # a normalised weight cannot be zero: the gain is
        torch.nn.init.zeros_(net.s_embedder.gain)
        return net, spec
    layer = [m for m in net.get_submodule(prefix[:-1]).modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    return net, spec


def gap_scale(net: torch.nn.Module, s_scale: float | None) -> float:
    """κ with which a time gap δ enters the s-embedding (``s = κ δ``, then × the net's
    ``time_scale``). ``None`` derives it from the network: κ = 1 / time_scale, so the gap
    reaches the sinusoid unscaled (fastest frequency 1 rad per unit δ), whatever the
    teacher's time scale. A JVP along δ then follows the function, not the embedding."""
    if s_scale is not None:
        return float(s_scale)
    return 1.0 / float(getattr(net, "time_scale", 1.0))


def correction_lambda(weight: float, balance: bool, pred_norm: torch.Tensor,
                      g: torch.Tensor) -> torch.Tensor:
    r"""The correction term's weight λ (no graph).

    Fixed (``balance`` off): λ = ``weight``. Balanced (FreeFlow): the correction's gradient
    direction :math:`\Delta_{corr} = v_\phi - v_T` is rescaled to the size of the
    prediction residual :math:`\Delta_{pred} = F - \mathrm{target}`,
    :math:`\lambda = \alpha\,\mathbb E\lVert\Delta_{pred}\rVert / \mathbb E\lVert\Delta_{corr}\rVert`
    with α = ``weight``, so neither term drowns the other as the fake net catches up
    (Δ_corr shrinks) or the prediction converges (Δ_pred shrinks).
    """
    if not balance:
        return torch.tensor(float(weight), device=g.device)
    corr_norm = g.detach().float().flatten(1).norm(dim=1).mean()
    return float(weight) * pred_norm.float() / corr_norm.clamp_min(1e-12)


def random_labels(n: int, num_classes: int, device) -> torch.Tensor | None:
    return torch.randint(num_classes, (n,), device=device) if num_classes else None


class FlowMap(Method):
    name = "flowmap"
    data_free = True  # the teacher fixes shape and classes; nothing is read
    style = ("#9467bd", "h")
    starts_from_teacher = True  # a two-time DiT built from the teacher, zero gap embedding

    @dataclass(frozen=True)
    class Options(Method.Options):
        derivative: str = "jvp"  # jvp | fd (central finite difference, step fd_eps)
        fd_eps: float = rule(1e-3, positive, POSITIVE)
        weight_power: float = rule(1.0, non_negative, NON_NEGATIVE)  # k of the power-law adaptive weight; 0 = plain L2
        weight_eps: float = rule(1e-3, positive, POSITIVE)
        delta_one: float = rule(0.25, unit, UNIT)  # fraction of prediction samples at δ = 1 (the one-step map)
        # δ enters the s-embedding as s = s_scale·δ (then × the net's time_scale); None =
        # 1 / time_scale (see gap_scale): F smooth in δ, which the target δ·∂_δF needs
        s_scale: float | None = None
        cfg_scale: float = 1.0  # guidance folded into the teacher velocity
        correction: bool = False  # the VSD-style correction loss with a fake velocity net
        correction_weight: float = rule(1.0, non_negative, NON_NEGATIVE)  # fixed λ, or α when correction_balance is on
        # FreeFlow's balance: λ = α·E‖Δ_pred‖ / E‖Δ_corr‖ per batch (see correction_lambda)
        correction_balance: bool = False
        correction_fraction: float = rule(0.25, unit, UNIT)  # batch share of the correction loss (75/25 split)
        correction_logit_mean: float = -0.8  # t of the correction: logit-normal, biased to noise
        correction_logit_std: float = rule(1.0, positive, POSITIVE)
        fake_label_dropout: float = rule(0.1, unit, UNIT)  # the fake velocity net's label dropout

    def __init__(self, cfg, info, *, device, teacher=None):
        super().__init__(cfg, info, device=device, teacher=teacher)
        if self.opts.derivative not in ("jvp", "fd"):
            raise MethodError("derivative must be jvp or fd")
        net, self.spec = two_time_student(teacher, self.name)
        self.net = net.to(device)
        self.s_scale = gap_scale(self.net, self.opts.s_scale)
        self.teacher_net = teacher.net.to(device).eval().requires_grad_(False)
        self.num_classes = int(self.spec.get("num_classes", 0) or 0)
        self.fake = None
        if self.opts.correction:
            self.fake = build_net(teacher.config["net"]).to(device)
            self.fake.load_state_dict(teacher.net.state_dict())
            self.phases = ("fake", "main")

    def modules(self):
        return {"net": self.net, **({"fake": self.fake} if self.fake is not None else {})}

    def parameters(self, phase):
        net = self.fake if phase == "fake" else self.net
        return [p for p in net.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ math

    def v_teacher(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return guided(self.teacher_net, y, float(self.opts.cfg_scale), self.num_classes)(x, t)

    def F(self, z, delta, y):
        return self.net(z, torch.zeros_like(delta), y, s=self.s_scale * delta)

    def F_and_dF(self, z, delta, y) -> tuple[torch.Tensor, torch.Tensor]:
        """F(z, δ) (with graph) and ∂_δF (no graph) by JVP or finite difference."""
        if self.opts.derivative == "jvp":
            with math_attention():
                F, dF = jvp(lambda d: self.F(z, d, y), (delta,), (torch.ones_like(delta),))
            return F, dF.detach()
        F = self.F(z, delta, y)
        with torch.no_grad():
            e = float(self.opts.fd_eps)
            dF = (self.F(z, delta + e, y) - self.F(z, delta - e, y)) / (2 * e)
        return F, dF

    def prediction_loss(self, z, delta, y) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted loss, unweighted mean squared residual). The residual's mean norm is
        kept in ``self.pred_norm`` (no graph) for the correction balance."""
        F, dF = self.F_and_dF(z, delta, y)
        with torch.no_grad():
            db = _bc(delta, z)
            target = self.v_teacher(z + db * F.detach(), delta, y) - db * dF
        err = (F.float() - target.float()).pow(2).flatten(1).mean(1)
        self.pred_norm = (err.detach() * z[0].numel()).sqrt().mean()  # E‖Δ_pred‖
        w = (err.detach() + self.opts.weight_eps).pow(-self.opts.weight_power)
        return (w * err).mean(), err.mean()

    def loss(self, batch, step, phase):
        n = len(batch[0])
        dev = batch[0].device
        shape = batch[0].shape[1:]
        n_corr = int(round(n * self.opts.correction_fraction)) if self.fake is not None else 0
        if phase == "fake":  # flow matching of the fake net on the student's own samples
            z = torch.randn(n_corr, *shape, device=dev)
            y = random_labels(n_corr, self.num_classes, dev)
            with torch.no_grad():
                x = z + self.F(z, torch.ones(n_corr, device=dev), y)
            x0 = torch.randn_like(x)
            t = torch.rand(n_corr, device=dev)
            yd = y
            if y is not None:
                drop = torch.rand(n_corr, device=dev) < self.opts.fake_label_dropout
                yd = torch.where(drop, torch.full_like(y, self.num_classes), y)
            tb = _bc(t, x)
            v = self.fake(tb * x + (1 - tb) * x0, t, yd)
            return {"loss": (v.float() - (x - x0)).pow(2).mean()}
        n_pred = n - n_corr
        z = torch.randn(n_pred, *shape, device=dev)
        y = random_labels(n_pred, self.num_classes, dev)
        delta = torch.rand(n_pred, device=dev)
        delta = torch.where(torch.rand(n_pred, device=dev) < self.opts.delta_one,
                            torch.ones_like(delta), delta)
        loss, mse = self.prediction_loss(z, delta, y)
        out = {"pred": loss.detach(), "residual": mse.detach()}
        if n_corr:
            zc = torch.randn(n_corr, *shape, device=dev)
            yc = random_labels(n_corr, self.num_classes, dev)
            x = zc + self.F(zc, torch.ones(n_corr, device=dev), yc)
            t = sample_time(n_corr, "logit-normal", self.opts.correction_logit_mean,
                            self.opts.correction_logit_std, dev)
            with torch.no_grad():
                tb = _bc(t, x)
                xt = tb * x.detach() + (1 - tb) * torch.randn_like(x)
                g = guided(self.fake, yc, float(self.opts.cfg_scale), self.num_classes)(xt, t) \
                    - self.v_teacher(xt, t, yc)
            corr = (x.float() * g.float()).flatten(1).mean(1).mean()
            lam = correction_lambda(self.opts.correction_weight, self.opts.correction_balance,
                                    self.pred_norm, g)
            out["corr"], out["corr_lambda"] = corr.detach(), lam.detach()
            loss = (n_pred * loss + n_corr * lam * corr) / n
        out["loss"] = loss
        return out

    def export(self):
        return TwoTimeRule(kind="flowmap", t=0.0, s=self.s_scale)
