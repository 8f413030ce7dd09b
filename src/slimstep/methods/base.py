"""The contract between a method and the one training loop.

A method is a small object that owns its math and nothing else::

    m = SomeMethod(cfg, data_info, device=..., teacher=None)
    m.opts                   # its Options: the method section, checked and typed (SomeMethod.Options)
    m.phases                 # ("main",) — one optimizer per phase (GDD: ("disc", "gen"))
    m.parameters(phase)      # what that phase's optimizer steps
    m.loss(batch, step, phase) -> {"loss": scalar tensor, **scalars to log}
    m.phase_active(phase, step) # False skips that phase's step (default: always True)
                             # batch = the data set's draw(): (x, y) or (x, y, z) for pairs
    type(m).data_spec(cfg)   # which data set the loop draws from (default cfg.data.spec)
    m.net                    # the exported network: it gets the EMA and goes to model.safetensors
    m.modules()              # every trained module, saved raw in training_state.pt
    m.export()               # the SamplingRule of m.net (config.json's "generator" section)

A method declares, next to its math: ``name`` (the method section's ``name``),
``Options`` (a frozen dataclass of its keys), ``style`` (its colour and marker in
plots) and ``starts_from_teacher``. Nothing else lists methods: the registry
(:mod:`slimstep.methods`) finds them (docs/adding-a-method.md).

The loop owns optimizers, schedules, EMA, clipping, precision, data
parallelism, logging, checkpoints, resume and the NaN guard. Randomness
inside ``loss`` comes from torch's global RNG, which the loop reseeds from
(seed, rank, step) before every step, so a method needs no RNG state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import nn

from slimstep.errors import SlimstepError
from slimstep.spec import RunConfig
from slimstep.spec.rules import Section
from slimstep.spec.sampling import SamplingRule


class MethodError(SlimstepError, ValueError):
    """A method's configuration is unusable (one clear line for the user)."""


#: The ranges method options share, in the words an error line says (``rule(1.4, positive,
#: POSITIVE)``): a name means the same thing in every method that has it (issue 13:
#: ``method.r_neq_t=2`` trained, ``method.lr_g=-1`` ended in torch's traceback).
POSITIVE = "a positive number"
NON_NEGATIVE = "a number, 0 or more"
UNIT = "a number from 0 to 1"
POSITIVE_OR_NULL = "a positive number or null"
BELOW_ONE = "a number from 0 to below 1"


@dataclass(frozen=True)
class OptimizerSettings:
    """A phase's departures from the ``train`` section's optimizer (None: train's own)."""

    lr: float | None = None
    betas: tuple[float, float] | None = None
    lr_scale: float = 1.0  # applied to whichever lr holds (GDD's lazy-R1 ratio)


class Method:
    name: ClassVar[str] = ""
    phases: ClassVar[tuple[str, ...]] = ("main",)

    @dataclass(frozen=True)
    class Options(Section):
        """The method section's keys (besides ``name``): a method declares its own, each
        field typed, ranged with :func:`~slimstep.spec.rules.rule` and commented; a
        subclass method extends its parent's by inheritance. Others are rejected."""

    #: (colour, marker) of the method in every plot (:mod:`slimstep.palette`); None: one
    #: picked from its name
    style: ClassVar[tuple[str, str] | None] = None
    #: the student's network starts as a copy of the teacher's (:mod:`slimstep.flags`)
    starts_from_teacher: ClassVar[bool] = False
    #: trains from the teacher alone (noise in, teacher out): the loop reads no data set
    data_free: ClassVar[bool] = False
    net: nn.Module
    opts: Options

    def __init__(self, cfg: RunConfig, info, *, device: torch.device, teacher=None):
        self.cfg, self.info, self.device, self.teacher = cfg, info, device, teacher
        opts = dict(cfg.method.options)
        known = [f.name for f in fields(self.Options)]
        unknown = sorted(set(opts) - set(known))
        if unknown:
            raise MethodError(f"method '{self.name}' has no option(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known)) or 'none'}")
        self.opts = self.Options.from_dict(opts, "method", error=MethodError, context=f" ({self.name})")

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
        """config.json's ``method`` section: the name and every option, given or default."""
        return {"name": self.name, **self.opts.to_dict()}
