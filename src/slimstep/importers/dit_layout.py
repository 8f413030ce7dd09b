"""The DiT / SiT / FreeFlow state-dict layout: the network's size read off the tensor
shapes, and every tensor assigned to slimstep's network exactly once.

The three codebases share DiT's names (``x_embedder.proj``, ``t_embedder.mlp.{0,2}``,
``y_embedder.embedding_table``, ``pos_embed``, ``blocks.{i}.{attn.qkv, attn.proj,
mlp.fc1, mlp.fc2, adaLN_modulation.1}``, ``final_layer.{linear, adaLN_modulation.1}``),
which :mod:`slimstep.nets.dit` keeps, so the map is the identity except FreeFlow's
``dt_embedder`` (slimstep's second time input, ``s_embedder``). What shapes give:

======================  =====================================================
hidden size D, C, p     ``x_embedder.proj.weight`` [D, C, p, p]
image side              ``pos_embed`` [1, T, D]: side = p·sqrt(T)
depth                   number of ``blocks.{i}``
mlp ratio               ``blocks.0.mlp.fc1.weight`` [r·D, D]
output channels         ``final_layer.linear.weight`` [p²·C_out, D]: learn_sigma iff C_out = 2C
classes                 ``y_embedder.embedding_table.weight`` [K + 1, D] (row K = null class)
heads                   not in any shape: the published sizes (S, B, L, XL) or ``num_heads=``
======================  =====================================================
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from slimstep.importers.readers import TeacherImportError

#: (hidden size, depth) -> heads of the published DiT / SiT configurations
KNOWN_HEADS = {(1152, 28): 16, (1024, 24): 16, (768, 12): 12, (384, 12): 6}
#: renames from a format's names to slimstep's
RENAMES = {"freeflow": {"dt_embedder.": "s_embedder."}}


def _need(sd: dict[str, torch.Tensor], key: str, ndim: int, where: str) -> torch.Tensor:
    if key not in sd:
        raise TeacherImportError(f"{where}: no tensor '{key}': not a DiT/SiT-layout state dict")
    if sd[key].ndim != ndim:
        raise TeacherImportError(f"{where}: '{key}' has shape {list(sd[key].shape)}, expected {ndim} dims")
    return sd[key]


def infer_dit(sd: dict[str, torch.Tensor], where: str, num_heads: int | None = None) -> dict:
    """DiT constructor kwargs (``in_shape``, ``num_classes``, ``patch_size``,
    ``hidden_size``, ``depth``, ``num_heads``, ``mlp_ratio``, ``learn_sigma``) read off the
    shapes of a DiT-layout state dict."""
    w = _need(sd, "x_embedder.proj.weight", 4, where)
    hidden, c, p, p2 = w.shape
    if p != p2:
        raise TeacherImportError(f"{where}: non-square patches {p}x{p2}")
    pos = _need(sd, "pos_embed", 3, where)
    tokens = pos.shape[1]
    grid = math.isqrt(tokens)
    if grid * grid != tokens or pos.shape[2] != hidden:
        raise TeacherImportError(f"{where}: pos_embed {list(pos.shape)} is not a square grid "
                                 f"of {hidden}-d tokens")
    if hidden % 4:
        raise TeacherImportError(f"{where}: hidden size {hidden} is not divisible by 4")
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = len(blocks)
    if depth == 0 or blocks != set(range(depth)):
        raise TeacherImportError(f"{where}: transformer blocks are not numbered 0..N-1 "
                                 f"(found {sorted(blocks)[:6]})")
    fc1 = _need(sd, "blocks.0.mlp.fc1.weight", 2, where)
    out = _need(sd, "final_layer.linear.weight", 2, where)
    c_out, rem = divmod(out.shape[0], p * p)
    if rem or c_out not in (c, 2 * c):
        raise TeacherImportError(f"{where}: final_layer.linear gives {out.shape[0]} outputs per "
                                 f"token, not {p * p}x{c} or {p * p}x{2 * c}")
    freq = _need(sd, "t_embedder.mlp.0.weight", 2, where).shape[1]
    if freq != 256:
        raise TeacherImportError(f"{where}: a {freq}-d frequency embedding; slimstep's DiT has 256")
    table = sd.get("y_embedder.embedding_table.weight")
    num_classes = int(table.shape[0]) - 1 if table is not None else 0
    if table is not None and num_classes < 1:
        raise TeacherImportError(f"{where}: y_embedder has {table.shape[0]} row(s); slimstep needs "
                                 "the classes plus a null row")
    heads = num_heads if num_heads is not None else KNOWN_HEADS.get((hidden, depth))
    if heads is None:
        raise TeacherImportError(f"{where}: hidden size {hidden}, depth {depth} is not a published "
                                 "DiT/SiT size, and heads are in no tensor shape: pass num_heads=N")
    if heads < 1 or hidden % heads:
        raise TeacherImportError(f"{where}: num_heads={heads} does not divide hidden size {hidden}")
    return {"in_shape": [int(c), int(grid * p), int(grid * p)], "num_classes": num_classes,
            "patch_size": int(p), "hidden_size": int(hidden), "depth": depth, "num_heads": int(heads),
            "mlp_ratio": fc1.shape[0] / hidden, "learn_sigma": bool(c_out == 2 * c)}


def renamed(sd: dict[str, torch.Tensor], fmt: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``sd`` under slimstep's names, and ``{slimstep name: file name}`` for the renamed ones."""
    rules = RENAMES.get(fmt, {})
    out, changed = {}, {}
    for k, v in sd.items():
        new = next((to + k[len(src):] for src, to in rules.items() if k.startswith(src)), k)
        if new in out:
            raise TeacherImportError(f"two tensors map to '{new}'")
        out[new] = v
        if new != k:
            changed[new] = k
    return out, changed


def assign_exactly_once(net: nn.Module, sd: dict[str, torch.Tensor], names: dict[str, str],
                        where: str) -> int:
    """Load ``sd`` into ``net`` so that every file tensor fills exactly one network tensor
    and every network tensor gets one; otherwise one line naming the leftovers / missing
    (in the file's names). Returns the number of tensors used."""
    own = net.state_dict()
    file_name = lambda k: names.get(k, k)  # noqa: E731
    extra = sorted(file_name(k) for k in sd if k not in own)
    missing = sorted(k for k in own if k not in sd)
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"{len(extra)} tensor(s) of the file unused: {', '.join(extra[:4])}"
                         + (" ..." if len(extra) > 4 else ""))
        if missing:
            parts.append(f"{len(missing)} missing: {', '.join(missing[:4])}"
                         + (" ..." if len(missing) > 4 else ""))
        raise TeacherImportError(f"{where}: the file does not fill the inferred network exactly "
                                 f"({'; '.join(parts)})")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise TeacherImportError(f"{where}: {file_name(k)} is {list(sd[k].shape)} in the file, "
                                     f"the inferred network needs {list(v.shape)}")
    used = {k: 0 for k in sd}
    converted = {}
    for k in own:
        converted[k] = sd[k].to(own[k].dtype)  # fp16 / bf16 files load as the net's fp32
        used[k] += 1
    assert all(n == 1 for n in used.values())  # the name checks above imply it
    net.load_state_dict(converted, strict=True)
    return len(converted)
