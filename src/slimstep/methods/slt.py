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

**Depth-gap arm** (``net.depth: gap``, a flow map in depth). With
``random_steps: true`` every batch draws one step count :math:`n \sim U\{1..K\}`
and the student runs n jumps of 1/n; patch j then reads step
:math:`k_j = \max(1, \mathrm{round}(jn/P))` at depth time :math:`k_j/n`, matched with
the teacher layer at the same depth time, :math:`\mathrm{round}(k_j L/n)`
(:func:`gap_layer_map`; at n = K with P | K it is the map above). The output term
asks every n for the teacher's output, so one student serves 1..K steps
(``slimstep sample --steps n``).

**Teacher bank** (``bank: N``). The frozen teacher's forward is nearly all of a step's
cost (a 28-layer teacher has ~90x the student's MACs), and its targets are a pure
function of (noise, label). ``bank: N`` draws N noises and labels once (seeded by
``train.seed``), runs the teacher on them once, keeps its output and the hidden states
the layer map reads, and each step draws its batch from that bank (with replacement,
from the loop's per-step RNG). The bank is cached in ``$SLIMSTEP_CACHE/slt-bank``
under a key of everything its values depend on (the teacher's weights and architecture,
N, the seed, the layers, the device type), so the runs of an ablation share it.
``bank: 0`` (the default) draws fresh noise every step, the paper's data-free setting;
a bank is a finite sample of it (docs/slt.md compares them).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass

import torch
from safetensors.torch import load_file

from slimstep.errors import OutputError
from slimstep.files import cache_dir, tensor_bytes, write_bytes
from slimstep.methods.base import NON_NEGATIVE, Method, MethodError
from slimstep.methods.flowmap import random_labels
from slimstep.nets import build_net, count_params
from slimstep.nets.shared_block import patch_steps, round_ratio
from slimstep.onestep import ONE_STEP_TEACHER_KINDS
from slimstep.spec.rules import non_negative, rule
from slimstep.spec.sampling import TwoTimeRule


def layer_map(steps: int, patches: int, depth: int) -> list[tuple[int, int]]:
    """[(student step k_j, teacher layer l_j)], both 1-based, j = 1..P."""
    if patches > depth:
        raise ValueError(f"patches={patches} exceeds the teacher depth {depth}")
    return list(zip(patch_steps(steps, patches),
                    [round_ratio(j * depth, patches) for j in range(1, patches + 1)], strict=True))


def gap_layer_map(steps: int, patches: int, depth: int) -> list[tuple[int, int]]:
    """Depth-gap arm at ``steps`` = n jumps: [(k_j, l_j)] with the student state after k_j
    of n jumps (depth time k_j/n) matched to the teacher layer at the same depth time,
    l_j = max(1, round(k_j L / n)). Any n >= 1 (n < P repeats states)."""
    return [(k, max(1, round_ratio(k * depth, steps))) for k in patch_steps(steps, patches, fewer=True)]


#: Part of the bank's cache key: bump it when what a bank holds or how it is drawn changes.
BANK_FORMAT = "slt-bank/1"


class SLT(Method):
    name = "slt"
    data_free = True  # the teacher fixes shape and classes; nothing is read
    style = ("#d62728", "*")

    @dataclass(frozen=True)
    class Options(Method.Options):
        hidden_weight: float = rule(1.0, non_negative, NON_NEGATIVE)  # w_h
        output_weight: float = rule(1.0, non_negative, NON_NEGATIVE)  # w_o
        # depth-gap arm only: a fresh step count n ~ U{1..K} per batch, so the student
        # learns every n it may be sampled with; off = always K (as the table arm)
        random_steps: bool = False
        # a fixed bank of N teacher targets computed once (cached on disk); 0 = fresh
        # noise and a teacher call every step
        bank: int = rule(0, non_negative, NON_NEGATIVE)

    def __init__(self, cfg, info, *, device, teacher=None):
        super().__init__(cfg, info, device=device, teacher=teacher)
        if teacher is None or teacher.sampling.kind not in ONE_STEP_TEACHER_KINDS:
            raise MethodError("slt needs a one-step DiT teacher (a flowmap or meanflow "
                              "checkpoint): pass --teacher CKPT")
        tspec = teacher.config["net"]
        self.t0 = teacher.sampling.t
        self.s0 = teacher.sampling.s
        n = cfg.net.to_dict()
        n.pop("name", None)
        self.spec = {
            "name": "shared_block", "in_shape": list(info.shape),
            "num_classes": int(tspec.get("num_classes", 0) or 0),
            "patch_size": tspec.get("patch_size", 2), "teacher_patch_size": tspec.get("patch_size", 2),
            "teacher_hidden": tspec["hidden_size"],
            "time_scale": tspec.get("time_scale", 1000.0), "extra_time_embeds": 1,
            "hidden_size": tspec["hidden_size"], "num_heads": tspec.get("num_heads", 4),
            **n}
        for k, v in (("teacher_patch_size", tspec.get("patch_size", 2)),
                     ("teacher_hidden", tspec["hidden_size"])):  # the teacher's, not options
            if self.spec[k] != v:
                raise MethodError(f"slt: net.{k} is the teacher's ({v}), not {self.spec[k]}")
        try:
            self.net = build_net(self.spec).to(device)
            self.map = layer_map(self.spec.get("steps", 8), self.spec.get("patches", 4),
                                 tspec["depth"])
        except ValueError as e:
            raise MethodError(f"slt: {e}") from None
        self.teacher_net = teacher.net.to(device).eval().requires_grad_(False)
        self.num_classes = self.spec["num_classes"]
        self.ratio = count_params(self.net) / count_params(self.teacher_net)
        self.depth, self.steps = self.net.depth, self.net.steps
        self.teacher_depth = tspec["depth"]
        if self.opts.random_steps and self.depth != "gap":
            raise MethodError("slt: random_steps needs the depth-gap arm (net.depth: gap): a "
                              "depth table runs only its K steps")
        self.layers = sorted({lj for _, lj in self._all_pairs()})
        self.bank_seed = cfg.train.seed
        self.teacher_spec = dict(tspec)
        self._bank = None

    def _all_pairs(self):
        """Every (k_j, l_j) a step can use: the table map, or the depth-gap map at each n."""
        if self.depth != "gap":
            return list(self.map)
        ns = range(1, self.steps + 1) if self.opts.random_steps else [self.steps]
        return [p for n in ns for p in gap_layer_map(n, len(self.map), self.teacher_depth)]

    def _teacher(self, z, y):
        """The teacher's output and its hidden states at ``self.layers`` ({layer: state})."""
        n = len(z)
        t = torch.full((n,), self.t0, device=z.device)
        s = torch.full((n,), self.s0, device=z.device)
        with torch.no_grad():
            out, feats = self.teacher_net(z, t, y, s=s, return_features=True)
        return out, {lj: feats[lj - 1] for lj in self.layers}

    def _bank_key(self, n: int, shape, device) -> str:
        """Everything the bank's values depend on: the teacher (weights and architecture), the
        draw (N, shape, classes, seed), the layers, the call point, the device type (TF32
        convolutions on a GPU) and the bank's own format."""
        h = hashlib.sha256(BANK_FORMAT.encode())
        for k, v in sorted(self.teacher_net.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        h.update(json.dumps([self.teacher_spec, n, list(shape), self.num_classes, self.bank_seed,
                             self.layers, self.t0, self.s0, torch.device(device).type],
                            sort_keys=True, default=str).encode())
        return h.hexdigest()[:20]

    def bank(self, shape, device):
        """{"z", "y"?, "out", "h<layer>"...}: the bank, made once (or read from the cache).
        The teacher runs in float32 whatever the loop's precision (the cached targets must
        not depend on the run that made them). Every data-parallel rank builds the same bank;
        atomic writes make the concurrent writes safe (each rank pays the teacher pass)."""
        if self._bank is not None:
            return self._bank
        n = int(self.opts.bank)
        path = cache_dir("slt-bank") / f"{self._bank_key(n, shape, device)}.safetensors"
        if path.is_file():
            try:
                bank = load_file(str(path))
            except Exception:  # a damaged cache file is remade, not trusted
                bank = None
            if bank is not None and len(bank.get("z", ())) == n:
                self._bank = {k: v.to(device) for k, v in bank.items()}
                return self._bank
        g = torch.Generator().manual_seed(self.bank_seed ^ 0xBA4C)
        z = torch.randn(n, *shape, generator=g)
        y = torch.randint(self.num_classes, (n,), generator=g) if self.num_classes else None
        bank: dict[str, torch.Tensor] = {"z": z, **({"y": y} if y is not None else {})}
        with torch.autocast(torch.device(device).type, enabled=False):
            for i in range(0, n, 512):
                yi = None if y is None else y[i:i + 512].to(device)
                out, feats = self._teacher(z[i:i + 512].to(device), yi)
                for k, v in (("out", out), *((f"h{lj}", f) for lj, f in feats.items())):
                    if k not in bank:  # preallocated: no list of chunks, no concatenated copy
                        bank[k] = torch.empty(n, *v.shape[1:])
                    bank[k][i:i + len(v)] = v.float().cpu()
        try:
            write_bytes(path, tensor_bytes(bank))
        except (OutputError, OSError) as e:  # a full or read-only cache costs the reuse, not the run
            warnings.warn(f"slt: the teacher bank is not cached ({e}); training goes on", stacklevel=2)
        self._bank = {k: v.to(device) for k, v in bank.items()}
        return self._bank

    def loss(self, batch, step, phase):
        n, dev = len(batch[0]), batch[0].device
        if self.opts.bank:
            b = self.bank(batch[0].shape[1:], dev)
            i = torch.randint(len(b["z"]), (n,)).to(dev)
            z, y = b["z"][i], (b["y"][i] if "y" in b else None)
            out_t, feats_t = b["out"][i], {lj: b[f"h{lj}"][i] for lj in self.layers}
        else:
            z = torch.randn(n, *batch[0].shape[1:], device=dev)
            y = random_labels(n, self.num_classes, dev)
            out_t, feats_t = self._teacher(z, y)
        t = torch.full((n,), self.t0, device=dev)
        s = torch.full((n,), self.s0, device=dev)
        steps, pairs = self.steps, self.map
        if self.opts.random_steps:
            steps = int(torch.randint(1, self.steps + 1, ()))
        if self.depth == "gap":
            pairs = gap_layer_map(steps, len(self.map), self.teacher_depth)
        out_s, feats_s = self.net(z, t, y, s=s, return_features=True, steps=steps)
        hidden = sum(
            (fs.float() - feats_t[lj].float()).pow(2).mean() / feats_t[lj].float().pow(2).mean()
            for fs, (_, lj) in zip(feats_s, pairs, strict=True)) / len(pairs)
        output = (out_s.float() - out_t.float()).pow(2).mean()
        loss = self.opts.hidden_weight * hidden + self.opts.output_weight * output
        return {"loss": loss, "hidden": hidden.detach(), "output": output.detach()}

    def export(self):
        pairs = gap_layer_map(self.steps, len(self.map), self.teacher_depth) if self.depth == "gap" else self.map
        return TwoTimeRule(kind="slt", t=self.t0, s=self.s0, layer_map=[list(p) for p in pairs])
