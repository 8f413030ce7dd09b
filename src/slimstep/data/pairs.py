"""``pairs:DIR`` — teacher pairs made by ``slimstep pairs`` (see :mod:`slimstep.pairs`).

``draw`` returns ``(x_hat, y, z)``: the teacher's image, its class (or None)
and the noise it came from. ``info`` is the *teacher's* data info, so a
student trained on pairs is evaluated on the teacher's data protocol. All
shards are held in memory (digits: 50k pairs are 26 MB); at CIFAR scale keep
the pair count within RAM (1M pairs at 3x32x32 in float32 take 24 GB).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from slimstep.checkpoint import weights_digest
from slimstep.data.base import DataError, DataInfo

MANIFEST = "manifest.json"


def read_manifest(directory: Path) -> dict | None:
    """``DIR/manifest.json`` as a dict (None when there is none); a corrupt one is one line."""
    m = Path(directory) / MANIFEST
    if not m.is_file():
        return None
    try:
        man = json.loads(m.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{m}: not valid JSON ({getattr(e, 'msg', e)}); delete the directory "
                         "and make the pairs again") from None
    if not isinstance(man, dict) or not all(isinstance(man.get(k), t) for k, t in
                                            (("args", dict), ("shards", int), ("data", dict))):
        raise DataError(f"{m}: not a slimstep pairs manifest (needs 'args', 'shards' and 'data')")
    return man


class PairsData:
    def __init__(self, path: str, **options):
        if options:
            raise DataError(f"pairs take no data options, got {sorted(options)}")
        d = Path(path)
        man = read_manifest(d)
        if man is None:
            raise DataError(f"{d} holds no pairs (no manifest.json): run slimstep pairs first")
        if not man.get("complete"):
            raise DataError(f"{d}: pair generation did not finish; rerun slimstep pairs with the "
                            "same arguments to complete it")
        parts = []
        for i in range(man["shards"]):
            f = d / f"shard-{i:05d}.safetensors"
            try:
                parts.append(load_file(str(f)))
            except Exception as e:  # safetensors raises its own error types
                raise DataError(f"{f}: unreadable shard ({e})") from None
        self.x = torch.cat([p["x"] for p in parts])
        self.z = torch.cat([p["z"] for p in parts])
        self.y = torch.cat([p["y"] for p in parts]) if "y" in parts[0] else None
        self.manifest = man
        info = DataInfo.from_dict(man["data"])
        self.info = DataInfo(spec=info.spec, kind=info.kind, shape=info.shape,
                             num_classes=info.num_classes, scaling=info.scaling,
                             options={**info.options, "pairs": str(d)})

    def __len__(self) -> int:
        return len(self.x)

    def draw(self, n, generator):
        idx = torch.randint(len(self.x), (n,), generator=generator)
        return self.x[idx], (self.y[idx] if self.y is not None else None), self.z[idx]

    def reference(self, n=None, *, split="test", seed=0):
        # Pairs have no held-out split; the teacher's own images are what they hold.
        x, y = self.x, self.y
        return (x, y) if n is None else (x[:n], y[:n] if y is not None else None)


def check_teacher(data, teacher) -> None:
    """Refuse pairs that another teacher made: the pairs' data (spec, shape, classes) must
    be the teacher's, and when the manifest records the weights' digest (pairs made since
    it was added), the teacher's model.safetensors must be those weights."""
    man = getattr(data, "manifest", None)
    if man is None or teacher is None:
        return
    where = data.info.options.get("pairs")
    mine = teacher.info
    pd = DataInfo.from_dict(man["data"])
    if (pd.spec, tuple(pd.shape), pd.num_classes) != (mine.spec, tuple(mine.shape), mine.num_classes):
        raise DataError(f"pairs in {where} are {pd.spec} {list(pd.shape)} with {pd.num_classes} classes, "
                        f"the teacher's data is {mine.spec} {list(mine.shape)} with {mine.num_classes}: "
                        "make pairs with this teacher")
    sha, src = man.get("teacher_sha"), getattr(teacher, "source", None)
    if sha and src is not None:
        if weights_digest(src) != sha:
            raise DataError(f"pairs in {where} were made by another teacher (weights {sha}, "
                            f"{src}'s are {weights_digest(src)}): make pairs with this teacher")

