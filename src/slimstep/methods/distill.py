r"""The naive one-step baseline: regress :math:`g(z) = z + v(z, 0)` on teacher
pairs, :math:`\mathcal L = D(g(z), \hat x)`.

It is :class:`~slimstep.methods.slimflow.SlimFlow` without the guidance term,
so the ablation "flow-guided distillation vs naive distillation" differs in
exactly that term. The student starts from ``--init`` (raw weights, like
SlimFlow) or, without it, from random weights built from the recipe's ``net``.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimstep.methods.base import NON_NEGATIVE, Method
from slimstep.methods.slimflow import SlimFlow
from slimstep.spec.rules import non_negative, rule


class Distill(SlimFlow):
    name = "distill"
    style = ("#8c564b", "D")
    requires_init = False
    guided = False

    @dataclass(frozen=True)
    class Options(Method.Options):
        """SlimFlow's options without the guidance term's (guide_weight, tau_min, tau_max)."""

        distance: str = "l2"  # l2 | pseudo-huber | lpips
        lpips_weights: str | None = None  # local LPIPS-VGG safetensors file (distance=lpips)
        pair_weight: float = rule(1.0, non_negative, NON_NEGATIVE)  # w_p: the offline pairs term
        flip: bool = False  # mirror image and noise together, p = 0.5 per batch
