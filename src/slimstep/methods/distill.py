r"""The naive one-step baseline: regress :math:`g(z) = z + v(z, 0)` on teacher
pairs, :math:`\mathcal L = D(g(z), \hat x)`.

It is :class:`~slimstep.methods.slimflow.SlimFlow` without the guidance term,
so the ablation "flow-guided distillation vs naive distillation" differs in
exactly that term. The student starts from ``--init`` (raw weights, like
SlimFlow) or, without it, from random weights built from the recipe's ``net``.
"""

from __future__ import annotations

from slimstep.methods.slimflow import SlimFlow


class Distill(SlimFlow):
    name = "distill"
    defaults = {k: v for k, v in SlimFlow.defaults.items()
                if k not in ("guide_weight", "tau_min", "tau_max")}
    requires_init = False
