r"""SLT's student: one DiT block applied K times (weight tying in depth).

A deep one-step DiT computes :math:`h_{l+1} = h_l + B_l(h_l, c)` — Euler steps of
an ODE in depth. The student replaces the L different blocks by *one* block
``B`` applied ``K`` times, told where it is by a learned depth embedding added
to the conditioning:

.. math:: h_{k+1} = h_k + B(h_k,\ c + e_k),\qquad k = 0, \dots, K - 1,

with ``h_0`` = patch embedding + position embedding, ``c`` = time embedding(s)
+ class embedding (the DiT's adaLN conditioning). Parameters do not depend on K
(only the K rows of the depth table, ``K·width`` numbers).

**Patches.** P depth patches: patch ``j = 1..P`` reads student step
:math:`k_j = \mathrm{round}(jK/P)` (the state after :math:`k_j` applications);
:meth:`patch_steps` lists them, the last is always K. Each patch state goes
through its own linear projection ``proj.{j}`` to ``teacher_hidden`` (identity
when the widths agree) — those projected states are what ``return_features``
returns and what SLT matches against the teacher's layers.

**Tokens.** ``patch_size`` may be a multiple r of the teacher's (``teacher_patch_size``):
each student token then covers an r x r group of teacher tokens, attention and MLP run
on r² times fewer tokens (the MACs of a block scale with the token count), and each
projection predicts the group's r² teacher states (``Linear(width → r²·teacher_hidden)``,
rearranged into the teacher's token order); only the features pay for it, not a sample.

**Fusion** of the patch states (student width) into the output head:

* ``sum`` — softmax-weighted sum, :math:`\sum_j \mathrm{softmax}(\alpha)_j h_{k_j}`
  (α learned, initialised to favour the last patch);
* ``concat`` — ``Linear(P·width → width)`` on the concatenated states, initialised
  to pass the last patch through;
* ``last`` — no fusion, the head reads :math:`h_K` (the ablation baseline).

**Depth arms** (``depth``):

* ``table`` — the update above, one learned vector ``e_k`` per application
  (``nn.Embedding(K, width)``): the block is told *which* step it is, so it can
  only be run with the K steps it was trained for.
* ``gap`` — a flow map in depth, FreeFlow's derivation with the layer index as
  time: the block is told its depth time :math:`\tau_k` *and* the size of its
  jump :math:`\Delta` (FreeFlow's δ), each through a frequency embedding + MLP
  (the DiT's time embedder), and the update is

  .. math:: h_{k+1} = h_k + \Delta\, F(h_k;\ \tau_k, \Delta),\qquad
            F = B(h_k,\ c + E_\tau(\tau_k) + E_\Delta(\Delta)) - h_k,

  with :math:`\tau_k = k/n`, :math:`\Delta = 1/n` for ``n`` steps. ``F`` is a
  rate (state change per unit depth), so the same weights run any ``n``
  (``forward(..., steps=n)``, default K) and no parameter depends on K. With
  ``n < P`` several patches read the same state (patch j reads step
  :math:`\max(1, \mathrm{round}(jn/P))`), so the fusion always sees P states.

The head is the DiT's adaLN final layer + unpatchify. The call signature is the
DiT's: ``forward(x, t, y=None, s=None, return_features=False)`` (+ ``steps``).
"""

from __future__ import annotations

import torch
from torch import nn

from slimstep.nets.dit import DiTBlock, DiTStem, FinalLayer, TimestepEmbedder, init_linears

FUSIONS = ("sum", "concat", "last")
DEPTHS = ("table", "gap")


def round_ratio(num: int, den: int) -> int:
    """``num / den`` rounded half up, in integers: ``floor(num/den + 1/2)``. Python's
    ``round`` rounds halves to even, which spaced SLT's patches unevenly (L = 28, P = 8 gave
    layers 4, 7, 10, 14, 18, 21, 24, 28: gaps 4 3 3 4 4 3 3 4); half up gives 4, 7, 11, 14,
    18, 21, 25, 28 (gaps alternate 4 3)."""
    return (2 * num + den) // (2 * den)


def patch_steps(steps: int, patches: int, fewer: bool = False) -> list[int]:
    """Student steps :math:`k_j = \\max(1, \\mathrm{round}(jK/P))`, j = 1..P (1-based: after
    k_j applications; halves rounded up, :func:`round_ratio`). ``fewer=True`` allows K < P
    (the depth-gap arm run with few steps); for K >= P the max never binds, so both rules
    agree."""
    if patches < 1 or (patches > steps and not fewer) or steps < 1:
        raise ValueError(f"need 1 <= patches <= steps, got patches={patches}, steps={steps}")
    return [max(1, round_ratio(j * steps, patches)) for j in range(1, patches + 1)]


class SharedBlockDiT(DiTStem):
    def __init__(
        self,
        in_shape: list[int] | tuple[int, ...] = (1, 8, 8),
        num_classes: int = 0,
        patch_size: int = 2,
        hidden_size: int = 96,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        steps: int = 8,
        patches: int = 4,
        fusion: str = "sum",
        teacher_hidden: int | None = None,
        extra_time_embeds: int = 1,
        time_scale: float = 1000.0,
        frequency_embedding_size: int = 256,
        depth: str = "table",
        depth_scale: float = 100.0,
        teacher_patch_size: int | None = None,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, not '{fusion}'")
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {', '.join(DEPTHS)}, not '{depth}'")
        self._build_stem(in_shape, num_classes, patch_size, hidden_size, extra_time_embeds, time_scale,
                         frequency_embedding_size=frequency_embedding_size)
        self.fusion, self.depth = fusion, depth
        self.steps, self.patches, self.patch_at = steps, patches, patch_steps(steps, patches)
        teacher_hidden = teacher_hidden or hidden_size
        # coarser tokens than the teacher's: one student token stands for an r x r group of
        # teacher tokens, and its projection predicts all r^2 of them (features only)
        teacher_patch_size = teacher_patch_size or patch_size
        if patch_size % teacher_patch_size:
            raise ValueError(f"patch_size {patch_size} must be a multiple of the teacher's "
                             f"patch size {teacher_patch_size}")
        self.group = patch_size // teacher_patch_size
        self.teacher_hidden = teacher_hidden

        if depth == "table":
            self.depth_embed = nn.Embedding(steps, hidden_size)
        else:
            # tau, delta in [0, 1] times depth_scale before the sinusoid: frequencies up to
            # ~depth_scale rad per unit depth tell 1/28-apart layers apart; nothing
            # differentiates along depth, so no smoothness is needed here (unlike flowmap's s)
            self.depth_scale = depth_scale
            self.tau_embedder = TimestepEmbedder(hidden_size, frequency_embedding_size)
            self.gap_embedder = TimestepEmbedder(hidden_size, frequency_embedding_size)
        self.block = DiTBlock(hidden_size, num_heads, mlp_ratio)  # the one shared block
        self.proj = nn.ModuleList(
            nn.Identity() if teacher_hidden == hidden_size and self.group == 1
            else nn.Linear(hidden_size, self.group ** 2 * teacher_hidden)
            for _ in self.patch_at)
        self.fuse_logits = nn.Parameter(torch.zeros(patches)) if fusion == "sum" else None
        self.fuse_linear = nn.Linear(patches * hidden_size, hidden_size) if fusion == "concat" else None
        self.final_layer = FinalLayer(hidden_size, patch_size, self.in_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_linears(self)
        self.block.reset_parameters()
        self.final_layer.reset_parameters()
        self._init_embedders()
        if self.depth == "table":
            nn.init.normal_(self.depth_embed.weight, std=0.02)
        else:  # the DiT's time-embedding init: every step starts alike, as the table's N(0, 0.02)
            for emb in (self.tau_embedder, self.gap_embedder):
                nn.init.normal_(emb.mlp[0].weight, std=0.02)
                nn.init.normal_(emb.mlp[2].weight, std=0.02)
        if self.fuse_logits is not None:  # start close to "read the last patch"
            with torch.no_grad():
                self.fuse_logits.zero_()
                self.fuse_logits[-1] = 2.0
        if self.fuse_linear is not None:  # start as "pass the last patch through"
            d = self.fuse_linear.out_features
            with torch.no_grad():
                self.fuse_linear.weight.zero_()
                self.fuse_linear.weight[:, -d:] = torch.eye(d)

    def depth_conditions(self, n: int, device, dtype) -> torch.Tensor:
        """[n, width]: what step k of n adds to the conditioning (gap arm: E_tau(k/n) + E_delta(1/n),
        one embedding per step for the whole batch)."""
        tau = torch.arange(n, device=device, dtype=torch.float32) / n
        gap = torch.full((1,), 1.0 / n, device=device)
        return (self.tau_embedder(tau * self.depth_scale)
                + self.gap_embedder(gap * self.depth_scale)).to(dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                return_features: bool = False, s: torch.Tensor | None = None,
                steps: int | None = None):
        h, c = self.embed(x, t, y, s)
        n = self.steps if steps is None else int(steps)
        if self.depth == "table":
            if n != self.steps:
                raise ValueError(f"a depth-table student runs its K = {self.steps} steps only "
                                 f"(asked for {n}); the depth-gap arm takes 1..K")
            at, cond = self.patch_at, self.depth_embed.weight
        else:
            at, cond = patch_steps(n, self.patches, fewer=True), self.depth_conditions(n, h.device, h.dtype)
        hs = []
        for k in range(n):
            if self.depth == "table":
                h = self.block(h, c + cond[k])
            else:  # a jump of 1/n along the depth flow map
                h = h + (self.block(h, c + cond[k]) - h) / n
            hs.append(h)
        states = [hs[k - 1] for k in at]
        if self.fusion == "sum":
            a = torch.softmax(self.fuse_logits, 0).to(h.dtype)
            fused = sum(a[j] * st for j, st in enumerate(states))
        elif self.fusion == "concat":
            fused = self.fuse_linear(torch.cat(states, dim=-1))
        else:
            fused = states[-1]
        out = self.unpatchify(self.final_layer(fused, c))
        if return_features:
            return out, [self._teacher_tokens(p(st)) for p, st in zip(self.proj, states, strict=True)]
        return out

    def _teacher_tokens(self, f: torch.Tensor) -> torch.Tensor:
        """[B, g*g, r*r*D_T] (student grid g) -> [B, (g r)^2, D_T] in the teacher's row-major
        token order; the identity when the tokens are the teacher's (r = 1)."""
        r = self.group
        if r == 1:
            return f
        b, g = f.shape[0], self.grid
        f = f.reshape(b, g, g, r, r, self.teacher_hidden).permute(0, 1, 3, 2, 4, 5)
        return f.reshape(b, g * r * g * r, self.teacher_hidden)
