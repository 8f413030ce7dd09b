"""Reading a foreign weights file into ``{name: tensor}`` without running its code.

* ``.safetensors`` — a JSON header and raw buffers (no code by construction).
* ``.pt`` / ``.pth`` written by ``torch.save`` — ``torch.load(weights_only=True)``:
  torch's restricted unpickler, which rebuilds tensors and containers only.
  ``argparse.Namespace`` (the ``args`` that SiT's / DiT's ``train.py`` store beside
  the weights) is allowed too: it is a bag of attributes, reconstructed without a call.
* anything else (EDM's network pickles) — :mod:`slimstep.importers.safe_pickle`.

The file's kind is told by its first bytes, not its name: a zip archive (``PK``) or a
legacy ``torch.save`` pickle goes to ``torch.load``; a safetensors header is an
8-byte length followed by ``{``.
"""

from __future__ import annotations

import argparse
import hashlib
import struct
from pathlib import Path

import torch

from slimstep.errors import SlimstepError, load_refusal

#: sub-dicts of a training checkpoint that hold a state dict, in the order taken
#: (EMA first: what SiT's and DiT's own samplers load)
CONTAINER_KEYS = ("ema", "model", "state_dict", "module")


class TeacherImportError(SlimstepError, ValueError):
    """A file handed to ``slimstep import`` cannot be imported (one line)."""


def sniff(path: Path) -> str:
    """``"safetensors"``, ``"torch-zip"``, ``"pickle"`` or ``"unknown"``, from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80":  # a pickle protocol >= 2 (torch's legacy format is one too)
        return "pickle"
    return "unknown"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


def read_state_dict(path: Path, container: str | None = None
                    ) -> tuple[dict[str, torch.Tensor], str | None]:
    """``(tensors, container key used or None)`` from a ``.safetensors`` or ``torch.save``
    file. ``container`` picks a sub-dict (``ema``, ``model``...); by default the first of
    :data:`CONTAINER_KEYS` present, or the top level when it is all tensors."""
    kind = sniff(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise TeacherImportError(f"{path}: unreadable safetensors file ({_first_line(e)})") from None
    elif kind in ("torch-zip", "pickle"):
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise TeacherImportError(
                f"{path}: not a state dict that torch.load(weights_only=True) can read "
                f"({load_refusal(e)}); an EDM network pickle is --format edm") from None
    else:
        raise TeacherImportError(f"{path}: neither a torch.save file nor safetensors "
                                 "(unrecognised first bytes)")
    return _pick_state_dict(obj, path, container)


def _pick_state_dict(obj, path: Path, container: str | None):
    if not isinstance(obj, dict):
        raise TeacherImportError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if container is not None:
        if not isinstance(obj.get(container), dict):
            keys = ", ".join(k for k in obj if isinstance(k, str)) or "none"
            raise TeacherImportError(f"{path}: no sub-dict '{container}' (top-level keys: {keys})")
        obj, used = obj[container], container
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        used = None
    else:
        used = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if used is None:
            keys = ", ".join(str(k) for k in list(obj)[:8]) or "none"
            raise TeacherImportError(f"{path}: no state dict found (top-level keys: {keys}; "
                                     f"looked for {', '.join(CONTAINER_KEYS)})")
        obj = obj[used]
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise TeacherImportError(f"{path}: entries that are not named tensors: {', '.join(bad[:5])}")
    if not obj:
        raise TeacherImportError(f"{path}: the state dict is empty")
    return {k: v.detach() for k, v in obj.items()}, used
