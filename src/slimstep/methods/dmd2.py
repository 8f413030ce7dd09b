r"""DMD2: "Improved Distribution Matching Distillation for Fast Image Synthesis"
(Yin et al. 2024), in slimstep's time convention (``t = 0`` noise, ``t = 1`` data,
:math:`x_t = t\,x_1 + (1 - t)\,x_0`, :math:`v = x_1 - x_0`).

**Generator.** The teacher's own network, initialised from its EMA weights and called
once at the noise end (GDD's rule, :func:`slimstep.onestep.euler_step`):

.. math:: G(z, y) = z + v_\theta(z, 0, y),\qquad z \sim \mathcal N(0, I),

so at step 0 ``G`` is the teacher's one-step Euler sampler (DMD2: the teacher's
x0-prediction at the largest noise level). Labels ``y`` are the real batch's, in the
teacher's classes; the export is ``kind=velocity, solver=euler, steps=1``.

**Scores in our time.** On the linear path the noise std is :math:`1 - t` and the
data scale :math:`t`; with :math:`\hat x_1 = x_t + (1 - t)\,v` (the x1-prediction) and
:math:`\hat x_0 = x_t - t\,v`,

.. math:: s(x_t, t) = \nabla \log p_t(x_t) = -\frac{\hat x_0}{1 - t},\qquad
          s_{real} - s_{fake} = \frac{t}{1 - t}\,(v_T - v_\phi),\qquad
          \hat x_{1,real} - \hat x_{1,fake} = (1 - t)\,(v_T - v_\phi).

**Distribution-matching gradient** (DMD and DMD2). At a noised generator
sample :math:`x_t = t\,\mathrm{sg}[G(z)] + (1 - t)\,n`, ``t ~ U(t_min, t_max)``
(DMD2: timesteps 20 … 980 of 1000), the generator gets

.. math:: \nabla_x \mathcal L_{DM} = \frac{\hat x_{1,fake} - \hat x_{1,real}}
          {\mathrm{mean}_d\,\lvert x - \hat x_{1,real}\rvert}
          = \frac{(1 - t)(v_\phi - v_T^{w})}{\mathrm{mean}_d\,\lvert x - \hat x_{1,real}\rvert},

.. math:: \mathcal L_{DM} = \tfrac12\,\mathrm{mean}\,
          \lVert x - \mathrm{sg}[x - \nabla_x\mathcal L_{DM}]\rVert^2 ,

i.e. the generator's sample moves along :math:`s_{real} - s_{fake}` (the reverse-KL
gradient, weighted per sample by DMD's :math:`1 / \mathrm{mean}\lvert x - \hat x_{1,real}\rvert`).
:math:`v_T^{w} = v_\varnothing + w\,(v_y - v_\varnothing)` is the real score with
classifier-free guidance ``cfg_scale`` w (DMD2's "real guidance"); the fake score is
unguided.

**Fake velocity network** :math:`v_\phi`, initialised from the teacher, learns flow
matching on the generator's current outputs (phase ``fake``):
:math:`\lVert v_\phi(x_t, t, y) - (\mathrm{sg}[G(z)] - n)\rVert^2`, ``t ~ U(0, 1)``.
**Two time-scale update rule** (DMD2): the fake network (and the classifier head)
steps every iteration, the generator once every ``fake_updates`` iterations (DMD2: 5),
on the iterations with ``(step + 1) % fake_updates == 0``; the loop asks
:meth:`DMD2.phase_active`. No regression loss (DMD2 drops DMD's paired-noise L2).

**GAN term** (DMD2). A small classifier head :math:`c_\psi` on one feature map
of the fake network (``gan_feature``; by default the middle of its feature list: the
U-Net's bottleneck, the MLP's or DiT's middle block), globally pooled, reads noised real
and noised generated samples (same ``t`` law as the DM term):

.. math:: \mathcal L_{fake} = \mathcal L_{FM}
          + \lambda_{cls}\,\big[\mathrm{softplus}(c(x^{fake}_t)) + \mathrm{softplus}(-c(x^{real}_t))\big],
          \qquad \mathcal L_{gen} = \mathcal L_{DM} + \lambda_{gan}\,\mathrm{softplus}(-c(x^{fake}_t)),

the classifier loss training the head and the fake network's trunk together (DMD2's
guidance classifier), the generator's through the fixed fake network and head.
DMD2's weights, ``cls_weight`` 1e-2 and ``gan_weight`` 3e-3 (ImageNet-64), are the defaults
on images and latents; on 2-D points the term is off unless a recipe sets them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slimstep.methods.base import NON_NEGATIVE, POSITIVE, POSITIVE_OR_NULL, UNIT, Method, MethodError, OptimizerSettings
from slimstep.nets import build_net
from slimstep.onestep import euler_step
from slimstep.solvers import guided
from slimstep.spec.rules import non_negative, positive, rule, unit
from slimstep.spec.sampling import VelocityRule


def _bc(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def teacher_copy(teacher, info, name: str) -> tuple[nn.Module, dict]:
    """A trainable copy of the teacher's network (its EMA weights), label dropout off
    (the generator's output must follow ``y``); refuses a teacher without a net spec or
    of another data shape."""
    if teacher is None or not getattr(teacher, "config", {}).get("net"):
        raise MethodError(f"method '{name}' needs a teacher checkpoint (--teacher DIR) whose "
                          f"config.json has a 'net' section")
    spec = dict(teacher.config["net"])
    shape = tuple(spec.get("in_shape", ()))
    if shape != tuple(info.shape):
        raise MethodError(f"the teacher's network takes {shape}, the data is {tuple(info.shape)}")
    net = build_net(spec)
    net.load_state_dict(teacher.net.state_dict())
    for m in net.modules():
        if hasattr(m, "dropout_prob"):
            m.dropout_prob = 0.0
    return net, spec


# ----------------------------------------------------------------------------- the math


def x1_prediction(xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """:math:`\\hat x_1 = x_t + (1 - t)\\,v` (Tweedie's data estimate on the linear path)."""
    return xt + (1 - _bc(t, xt)) * v


def dm_gradient(x: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, v_real: torch.Tensor,
                v_fake: torch.Tensor) -> torch.Tensor:
    """DMD's per-sample gradient of the distribution-matching loss with respect to the
    generator's sample ``x`` (no graph): ``(x̂1_fake - x̂1_real) / mean_d |x - x̂1_real|``."""
    with torch.no_grad():
        p_real = x1_prediction(xt, t, v_real).float()
        p_fake = x1_prediction(xt, t, v_fake).float()
        w = (x.float() - p_real).abs().flatten(1).mean(1).clamp_min(1e-8)
        return (p_fake - p_real) / _bc(w, x)


def dm_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``0.5 mean (x - sg(x - grad))²``: its gradient in ``x`` is ``grad / x.numel()``."""
    target = (x.float() - grad).detach()
    return 0.5 * F.mse_loss(x.float(), target)


class FeatureClassifier(nn.Module):
    """DMD2's classifier head on a feature of the fake network: global average pooling
    (maps ``[B, C, H, W]`` over H, W; tokens ``[B, N, C]`` over N), then
    Linear -> SiLU -> Linear to one logit."""

    def __init__(self, channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    @staticmethod
    def pool(h: torch.Tensor) -> torch.Tensor:
        if h.dim() == 4:
            return h.mean(dim=(2, 3))
        if h.dim() == 3:
            return h.mean(dim=1)
        return h

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.pool(h).float()).squeeze(1)


#: An index into the fake network's features (negative: from the end). Its range is the
#: network's, so ``DMD2.__init__`` checks it; the option checker passes a type it does not read.
FeatureIndex = int


class DMD2(Method):
    name = "dmd2"
    phases = ("fake", "gen")
    style = ("#008080", "d")  # the baselines users pick instead: teal, goldenrod, olive
    starts_from_teacher = True  # the generator and the fake network copy the teacher's

    @dataclass(frozen=True)
    class Options(Method.Options):
        # fake-network updates per generator update (DMD2's TTUR: 5)
        fake_updates: int = rule(5, positive, POSITIVE)
        # t ~ U(t_min, t_max) for the DM and GAN terms (DMD2: 20..980 / 1000)
        t_min: float = rule(0.02, unit, UNIT)
        t_max: float = rule(0.98, unit, UNIT)
        cfg_scale: float = 1.0  # guidance of the real score (DMD2's real_guidance_scale)
        # λ_gan of the generator's GAN term and λ_cls of the classifier loss in the fake phase;
        # null = DMD2's values (ImageNet-64: 3e-3 and 1e-2) on images and latents, 0 on points
        gan_weight: float | None = rule(None, non_negative, NON_NEGATIVE)
        cls_weight: float | None = rule(None, non_negative, NON_NEGATIVE)
        gan_feature: FeatureIndex | None = None  # index into the fake net's features; null = the middle one
        cls_hidden: int = rule(256, positive, POSITIVE)  # the classifier head's width
        lr_g: float | None = rule(None, positive, POSITIVE_OR_NULL)  # null = train.lr
        # the fake network's and classifier's lr; null = train.lr
        lr_d: float | None = rule(None, positive, POSITIVE_OR_NULL)

    def __init__(self, cfg, info, *, device, teacher=None):
        super().__init__(cfg, info, device=device, teacher=teacher)
        o = self.opts
        if not o.t_min < o.t_max:
            raise MethodError(f"method.t_min must be below method.t_max ({o.t_min} >= {o.t_max})")
        net, self.spec = teacher_copy(teacher, info, self.name)
        self.net = net.to(device)
        spatial = info.kind in ("image", "latent")
        self.gan_weight = float(o.gan_weight if o.gan_weight is not None else 3e-3 * spatial)
        self.cls_weight = float(o.cls_weight if o.cls_weight is not None else 1e-2 * spatial)
        self.num_classes = int(getattr(net, "num_classes", 0) or 0)
        if self.num_classes and info.num_classes != self.num_classes:
            raise MethodError(f"the teacher has {self.num_classes} classes, the data "
                              f"{info.num_classes}: DMD2 generates with the real batch's labels")
        self.teacher_net = teacher.net.to(device).eval().requires_grad_(False)
        fake, _ = teacher_copy(teacher, info, self.name)
        self.fake = fake.to(device)
        self.cls = None
        if self.gan_weight > 0 or self.cls_weight > 0:
            with torch.no_grad():
                probe = torch.zeros(2, *info.shape, device=device)
                feats = self.fake(probe, torch.full((2,), 0.5, device=device), None,
                                  return_features=True)[1]
            idx = len(feats) // 2 if o.gan_feature is None else o.gan_feature
            if isinstance(idx, bool) or not isinstance(idx, int) or not -len(feats) <= idx < len(feats):
                raise MethodError(f"method.gan_feature must index the fake network's "
                                  f"{len(feats)} features, not {idx}")
            self.feature = idx
            self.cls = FeatureClassifier(FeatureClassifier.pool(feats[idx]).shape[1],
                                         o.cls_hidden).to(device)
        self._fake_params = self.parameters("fake")

    # -- the contract
    def modules(self):
        return {"net": self.net, "fake": self.fake, **({"cls": self.cls} if self.cls else {})}

    def parameters(self, phase):
        mods = [self.net] if phase == "gen" else [self.fake] + ([self.cls] if self.cls else [])
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    def optimizer_options(self, phase):
        lr = self.opts.lr_g if phase == "gen" else self.opts.lr_d
        return OptimizerSettings(lr=lr)

    def phase_active(self, phase: str, step: int) -> bool:
        """The two time-scale rule: the generator steps once per ``fake_updates``."""
        return phase != "gen" or (step + 1) % self.opts.fake_updates == 0

    def export(self):
        return VelocityRule(solver="euler", steps=1)

    # -- the math
    def generate(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return euler_step(self.net, z, y)

    def _t(self, n: int, device) -> torch.Tensor:
        lo, hi = float(self.opts.t_min), float(self.opts.t_max)
        return lo + (hi - lo) * torch.rand(n, device=device)

    def _noised(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tb = _bc(t, x)
        return tb * x + (1 - tb) * torch.randn_like(x)

    def _logit(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The classifier's logit of ``x`` noised at a fresh ``t``."""
        t = self._t(len(x), x.device)
        feats = self.fake(self._noised(x, t), t, y, return_features=True)[1]
        return self.cls(feats[self.feature])

    def loss(self, batch, step, phase):
        x_real = batch[0]
        y = batch[1] if self.num_classes else None
        o = self.opts
        z = torch.randn_like(x_real)
        if phase == "fake":
            for p in self._fake_params:
                p.requires_grad_(True)
            with torch.no_grad():
                x = self.generate(z, y)
            n = torch.randn_like(x)
            t = torch.rand(len(x), device=x.device)
            tb = _bc(t, x)
            v = self.fake(tb * x + (1 - tb) * n, t, y)
            fm = (v.float() - (x - n).float()).pow(2).mean()
            out = {"fm": fm.detach()}
            loss = fm
            if self.cls is not None and self.cls_weight > 0:
                lf, lr = self._logit(x, y), self._logit(x_real, y)
                cls = F.softplus(lf).mean() + F.softplus(-lr).mean()
                loss = loss + self.cls_weight * cls
                out.update(cls=cls.detach(), acc=0.5 * ((lf < 0).float().mean() + (lr > 0).float().mean()))
            return {"loss": loss, **out}

        for p in self._fake_params:  # fixed functions in the generator's phase
            p.requires_grad_(False)
        x = self.generate(z, y)
        t = self._t(len(x), x.device)
        with torch.no_grad():
            xt = self._noised(x.detach(), t)
            v_real = guided(self.teacher_net, y, float(o.cfg_scale), self.num_classes)(xt, t)
            v_fake = self.fake(xt, t, y)
        grad = dm_gradient(x.detach(), xt, t, v_real, v_fake)
        dm = dm_loss(x, grad)
        out = {"dm": dm.detach(), "dm_grad": grad.flatten(1).norm(dim=1).mean()}
        loss = dm
        if self.cls is not None and self.gan_weight > 0:
            gan = F.softplus(-self._logit(x, y)).mean()
            loss = loss + self.gan_weight * gan
            out["gan"] = gan.detach()
        return {"loss": loss, **out}
