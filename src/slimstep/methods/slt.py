r"""SLT: re-distil the depth of a deep one-step DiT into one shared block.

Teacher: a one-step DiT checkpoint (``flowmap`` or ``meanflow``) whose sample is
:math:`x = z + T(z)`, :math:`T(z) = \mathrm{net}_T(z, t_0, y, s{=}s_0)` (both
kinds store ``t_0 = 0, s_0 = 1``). Student: :class:`~slimstep.nets.shared_block.SharedBlockDiT`
(one block applied K times, P depth patches, fusion into the head), called the
same way, so its sample is :math:`x = z + S(z)`. Data-free: only noise (and
random labels) are drawn; the teacher is frozen.

**Student-step ↔ teacher-layer map.** Patch ``j = 1..P`` matches the student's
state after :math:`k_j = \mathrm{round}(jK/P)` applications (projected to the
teacher's width) with the teacher's hidden state after layer
:math:`l_j = \mathrm{round}(jL/P)` (L = teacher depth). Both lists end at the
final state (k_P = K, l_P = L): the depth ODE is sampled at P evenly spaced
"times" j/P on both sides.

.. math:: \mathcal L = w_h \frac1P\sum_{j=1}^P
          \frac{\lVert \Pi_j h^S_{k_j} - h^T_{l_j}\rVert^2}{\overline{\lVert h^T_{l_j}\rVert^2}}
          + w_o \lVert S(z) - T(z)\rVert^2 ,

each hidden term normalised by the teacher state's mean square (states grow with
depth; without it the last layers dominate). The head reads the fused patch
states, so the output term trains the fusion.
"""

from __future__ import annotations

import torch

from slimstep.generator import register_kind
from slimstep.methods.base import Method, MethodError
from slimstep.methods.flowmap import one_step_rule, random_labels
from slimstep.nets import build_net, count_params
from slimstep.nets.shared_block import patch_steps

register_kind("slt", one_step_rule)

ONE_STEP_KINDS = ("flowmap", "meanflow")


def layer_map(steps: int, patches: int, depth: int) -> list[tuple[int, int]]:
    """[(student step k_j, teacher layer l_j)], both 1-based, j = 1..P."""
    if patches > depth:
        raise ValueError(f"patches={patches} exceeds the teacher depth {depth}")
    return list(zip(patch_steps(steps, patches),
                    [round(j * depth / patches) for j in range(1, patches + 1)], strict=True))


class SLT(Method):
    name = "slt"
    defaults = {
        "hidden_weight": 1.0,  # w_h
        "output_weight": 1.0,  # w_o
    }

    def __init__(self, cfg, info, *, device, teacher=None):
        super().__init__(cfg, info, device=device, teacher=teacher)
        if teacher is None or teacher.sampling.get("kind") not in ONE_STEP_KINDS:
            raise MethodError("slt needs a one-step DiT teacher (a flowmap or meanflow "
                              "checkpoint): pass --teacher CKPT")
        tspec = teacher.config["net"]
        self.t0 = float(teacher.sampling.get("t", 0.0))
        self.s0 = float(teacher.sampling.get("s", 1.0))
        n = dict(cfg["net"])
        n.pop("name", None)
        self.spec = {
            "name": "shared_block", "in_shape": list(info.shape),
            "num_classes": int(tspec.get("num_classes", 0) or 0),
            "patch_size": tspec.get("patch_size", 2), "teacher_hidden": tspec["hidden_size"],
            "time_scale": tspec.get("time_scale", 1000.0), "extra_time_embeds": 1,
            "hidden_size": tspec["hidden_size"], "num_heads": tspec.get("num_heads", 4),
            **n}
        try:
            self.net = build_net(self.spec).to(device)
            self.map = layer_map(self.spec.get("steps", 8), self.spec.get("patches", 4),
                                 tspec["depth"])
        except ValueError as e:
            raise MethodError(f"slt: {e}") from None
        self.teacher_net = teacher.net.to(device).eval().requires_grad_(False)
        self.num_classes = self.spec["num_classes"]
        self.ratio = count_params(self.net) / count_params(self.teacher_net)

    def loss(self, batch, step, phase):
        n, dev = len(batch[0]), batch[0].device
        z = torch.randn(n, *batch[0].shape[1:], device=dev)
        y = random_labels(n, self.num_classes, dev)
        t = torch.full((n,), self.t0, device=dev)
        s = torch.full((n,), self.s0, device=dev)
        with torch.no_grad():
            out_t, feats_t = self.teacher_net(z, t, y, s=s, return_features=True)
        out_s, feats_s = self.net(z, t, y, s=s, return_features=True)
        hidden = sum(
            (fs.float() - feats_t[lj - 1].float()).pow(2).mean() / feats_t[lj - 1].float().pow(2).mean()
            for fs, (_, lj) in zip(feats_s, self.map, strict=True)) / len(self.map)
        output = (out_s.float() - out_t.float()).pow(2).mean()
        loss = self.opts["hidden_weight"] * hidden + self.opts["output_weight"] * output
        return {"loss": loss, "hidden": hidden.detach(), "output": output.detach()}

    def export(self):
        return {"kind": "slt", "nfe": 1, "t": self.t0, "s": self.s0,
                "layer_map": [list(p) for p in self.map]}
