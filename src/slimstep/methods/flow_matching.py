r"""Flow matching on the linear path: the teacher every other method starts from.

For data :math:`x_1`, noise :math:`x_0 \sim \mathcal N(0, I)` and a time
:math:`t` (uniform, or logit-normal :math:`t = \sigma(m + s\,n)` which puts
more weight mid-path), minimise

.. math:: \mathbb E\,\lVert v_\theta(x_t, t, y) - (x_1 - x_0) \rVert^2,
          \qquad x_t = t x_1 + (1-t) x_0 .

Class-conditional training replaces the label by the null class with
probability ``label_dropout``, so one network also gives the unconditional
field needed for classifier-free guidance at sampling time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimstep.methods.base import POSITIVE, UNIT, Method, MethodError
from slimstep.nets import build_net
from slimstep.paths import interpolate, target_velocity
from slimstep.spec import RunConfig
from slimstep.spec.rules import positive, rule, unit
from slimstep.spec.sampling import VelocityRule


def sample_time(n: int, kind: str, mean: float, std: float, device) -> torch.Tensor:
    if kind == "uniform":
        return torch.rand(n, device=device)
    if kind == "logit-normal":
        return torch.sigmoid(mean + std * torch.randn(n, device=device))
    raise MethodError(f"time_sampling must be uniform or logit-normal, not '{kind}'")


def net_spec(cfg: RunConfig, info, conditional: bool) -> dict:
    """The network section completed with what the data fixes (a net.in_shape that
    contradicts the data is a mistake, not something to overwrite quietly)."""
    given = cfg.net.options.get("in_shape")
    if given is not None and list(given) != list(info.shape):
        raise MethodError(f"net.in_shape={list(given)} but the data {info.spec} has samples of shape "
                          f"{list(info.shape)}: leave net.in_shape out, the data sets it")
    return {**cfg.net.to_dict(), "in_shape": list(info.shape),
            "num_classes": info.num_classes if conditional else 0}


class FlowMatching(Method):
    name = "flow_matching"

    @dataclass(frozen=True)
    class Options(Method.Options):
        time_sampling: str = "uniform"  # uniform | logit-normal
        logit_mean: float = 0.0  # t ~ LN(logit_mean, logit_std) when logit-normal
        logit_std: float = rule(1.0, positive, POSITIVE)
        conditional: bool | str = "auto"  # auto = when the data has classes
        label_dropout: float = rule(0.1, unit, UNIT)  # share of labels dropped to the null class

    def __init__(self, cfg, info, *, device, teacher=None):
        super().__init__(cfg, info, device=device, teacher=teacher)
        cond = self.opts.conditional
        self.conditional = info.num_classes > 0 if cond == "auto" else bool(cond)
        if self.conditional and info.num_classes == 0:
            raise MethodError("conditional=true but the data set has no classes")
        sample_time(1, self.opts.time_sampling, 0, 1, "cpu")  # validate early
        self.spec = net_spec(cfg, info, self.conditional)
        self.net = build_net(self.spec).to(device)

    def loss(self, batch, step, phase):
        x1, y = batch[:2]
        x0 = torch.randn_like(x1)
        t = sample_time(len(x1), self.opts.time_sampling, self.opts.logit_mean,
                        self.opts.logit_std, x1.device)
        if self.conditional:
            drop = torch.rand(len(y), device=y.device) < self.opts.label_dropout
            y = torch.where(drop, torch.full_like(y, self.info.num_classes), y)
        else:
            y = None
        v = self.net(interpolate(x0, x1, t), t, y)
        return {"loss": (v.float() - target_velocity(x0, x1)).pow(2).mean()}

    def export(self):
        s = self.cfg.sample
        return VelocityRule(solver=s.solver, steps=s.steps, cfg_scale=s.cfg_scale, rtol=s.rtol, atol=s.atol)
