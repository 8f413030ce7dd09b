"""The contract between a method and the one training loop.

A method is a small object that owns its math and nothing else::

    m = SomeMethod(cfg, data_info, device=..., teacher=None)
    m.phases                 # ("main",) — one optimizer per phase (GDD: ("disc", "gen"))
    m.parameters(phase)      # what that phase's optimizer steps
    m.loss(batch, step, phase) -> {"loss": scalar tensor, **scalars to log}
    m.phase_active(phase, step) # False skips that phase's step (default: always True)
                             # batch = the data set's draw(): (x, y) or (x, y, z) for pairs
    type(m).data_spec(cfg)   # which data set the loop draws from (default cfg.data.spec)
    m.net                    # the exported network: it gets the EMA and goes to model.safetensors
    m.modules()              # every trained module, saved raw in training_state.pt
    m.export()               # the SamplingRule of m.net (config.json's "generator" section)

The loop owns optimizers, schedules, EMA, clipping, precision, data
parallelism, logging, checkpoints, resume and the NaN guard. Randomness
inside ``loss`` comes from torch's global RNG, which the loop reseeds from
(seed, rank, step) before every step, so a method needs no RNG state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from slimstep.errors import SlimstepError
from slimstep.spec import RunConfig, is_number
from slimstep.spec.sampling import SamplingRule


class MethodError(SlimstepError, ValueError):
    """A method's configuration is unusable (one clear line for the user)."""


_num = is_number


_POS = (lambda v: _num(v) and v > 0, "a positive number")
_NONNEG = (lambda v: _num(v) and v >= 0, "a number, 0 or more")
_UNIT = (lambda v: _num(v) and 0 <= v <= 1, "a number from 0 to 1")
_POS_OR_NONE = (lambda v: v is None or (_num(v) and v > 0), "a positive number or null")
_BELOW_ONE = (lambda v: _num(v) and 0 <= v < 1, "a number from 0 to below 1")

#: Ranges of method options, by name (a name means the same thing in every method that has
#: it). With the type check against each method's defaults, a nonsense value is one line
#: before anything trains (issue 13: ``method.r_neq_t=2`` trained, ``method.lr_g=-1`` ended
#: in torch's traceback).
OPTION_RULES: dict[str, tuple] = {
    **dict.fromkeys(("logit_std", "correction_logit_std", "weight_eps", "fd_eps", "fake_updates",
                     "cls_hidden", "sigma_data", "stage_steps", "shrink_q"), _POS),
    **dict.fromkeys(("r_logit_std", "lr_g", "lr_d"), _POS_OR_NONE),
    **dict.fromkeys(("label_dropout", "fake_label_dropout", "r_neq_t", "delta_one",
                     "correction_fraction", "tau_min", "tau_max", "guidance_t_min",
                     "guidance_t_max", "t_min", "t_max"), _UNIT),
    "guidance_kappa": _BELOW_ONE,
    **dict.fromkeys(("weight_power", "r1_gamma", "r1_every", "gan_weight", "instance_weight",
                     "pair_weight", "guide_weight", "hidden_weight", "output_weight",
                     "correction_weight", "anneal_steps", "bank", "guidance_omega", "cls_weight", "tangent_c",
                     "tangent_warmup", "shrink_k", "shrink_b", "huber_c"), _NONNEG),
}


def check_options(method: str, opts: dict, defaults: dict) -> None:
    """Each given option has its default's kind (number, integer, true/false) and its range."""
    for k, v in opts.items():
        d = defaults.get(k)
        if isinstance(d, bool):
            ok, want = isinstance(v, bool), "true or false"
        elif isinstance(d, int):
            ok, want = isinstance(v, int) and not isinstance(v, bool), "an integer"
        elif isinstance(d, float):
            ok, want = _num(v), "a finite number"
        else:
            ok, want = True, ""
        if ok and k in OPTION_RULES:
            ok, want = OPTION_RULES[k][0](v), OPTION_RULES[k][1]
        if not ok:
            raise MethodError(f"method.{k} must be {want}, not {v!r} ({method})")


@dataclass(frozen=True)
class OptimizerSettings:
    """A phase's departures from the ``train`` section's optimizer (None: train's own)."""

    lr: float | None = None
    betas: tuple[float, float] | None = None
    lr_scale: float = 1.0  # applied to whichever lr holds (GDD's lazy-R1 ratio)


class Method:
    name: ClassVar[str] = ""
    phases: ClassVar[tuple[str, ...]] = ("main",)
    #: method-section keys and their defaults; others are rejected
    defaults: ClassVar[dict] = {}
    #: trains from the teacher alone (noise in, teacher out): the loop reads no data set
    data_free: ClassVar[bool] = False
    net: nn.Module

    def __init__(self, cfg: RunConfig, info, *, device: torch.device, teacher=None):
        self.cfg, self.info, self.device, self.teacher = cfg, info, device, teacher
        opts = dict(cfg.method.options)
        unknown = sorted(set(opts) - set(self.defaults))
        if unknown:
            raise MethodError(f"method '{self.name}' has no option(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(self.defaults)) or 'none'}")
        check_options(self.name, opts, self.defaults)
        self.opts = {**self.defaults, **opts}

    @classmethod
    def data_spec(cls, cfg: RunConfig) -> str:
        """The data set the loop draws batches from (pairs methods override)."""
        return cfg.data.spec

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def compiled_modules(self) -> dict[str, nn.Module]:
        """The modules ``train.compile`` compiles (those that a double backward does not
        pass through: torch.compile's autograd cannot differentiate a gradient)."""
        return self.modules()

    def parameters(self, phase: str) -> Iterable[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def phase_active(self, phase: str, step: int) -> bool:
        """Whether ``phase`` takes an optimizer step at ``step`` (default: every step; GDD's
        separate lazy R1 step, DMD2's generator under the two time-scale rule skip some)."""
        return True

    def shared_optimizer(self, phase: str) -> str | None:
        """An earlier phase whose optimizer (and schedule) ``phase`` steps too (default: its own)."""
        return None

    def optimizer_options(self, phase: str) -> OptimizerSettings:
        """Per-phase overrides of the ``train`` optimizer settings (e.g. GAN betas)."""
        return OptimizerSettings()

    def loss(self, batch: tuple[torch.Tensor | None, ...], step: int,
             phase: str) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def export(self) -> SamplingRule:
        """How to sample ``self.net``: config.json's ``generator`` section."""
        raise NotImplementedError

    def method_config(self) -> dict:
        return {"name": self.name, **self.opts}
