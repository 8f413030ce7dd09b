"""Checkpoints: a directory a user can read without running our code.

::

    DIR/config.json          network class + kwargs, method, data info, step, versions
    DIR/model.safetensors    EMA weights of the exported network (what inference uses)
    DIR/training_state.pt    (snapshots only) raw weights, optimizers, schedulers, step, RNG

A training run writes snapshots ``OUT/checkpoints/step-NNNNNNNN/`` (the last
``keep``) and mirrors the newest ``config.json`` + ``model.safetensors`` at
``OUT/`` so ``--ckpt OUT`` always names the latest model.

Every file is written atomically (temp file in the same folder, flush,
fsync, ``os.replace``), and a snapshot directory is assembled under a
temporary name and renamed into place, so a kill at any moment leaves either
the old snapshot or the new one, never half of one. ``training_state.pt``
holds only tensors and plain containers and is read with
``torch.load(weights_only=True)``; nothing is ever un-pickled.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from slimstep._version import __version__
from slimstep.errors import EnvironmentFailure, SlimstepError, load_refusal
from slimstep.files import current_umask, fsync_dir, tensor_bytes, torch_bytes, write_bytes, write_json
from slimstep.spec.sampling import sampling_rule

CONFIG, WEIGHTS, STATE = "config.json", "model.safetensors", "training_state.pt"
#: config.json's ``format``: bumped when a reader of the old layout would misread the new one
FORMAT = "slimstep-checkpoint/1"
_SNAP = re.compile(r"^step-(\d{8,})$")


class CheckpointError(SlimstepError, ValueError):
    """A checkpoint a user pointed at is missing or unusable."""


def versions() -> dict:
    return {"slimstep": __version__, "torch": torch.__version__,
            "python": platform.python_version()}


def _contiguous_state(module: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared / non-contiguous storage; clone makes each tensor its own.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_model(directory: str | Path, module: nn.Module, config: dict) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = _contiguous_state(module)
    write_bytes(d / WEIGHTS, tensor_bytes(tensors))
    write_json(d / CONFIG, {**config, "versions": versions()})


def read_config(directory: str | Path) -> dict:
    """A checkpoint's ``config.json``: a JSON object of a format this version reads."""
    d = Path(directory)
    if not (d / CONFIG).is_file():
        raise CheckpointError(f"{d} is not a slimstep checkpoint (no {CONFIG})")
    try:
        cfg = json.loads((d / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{d / CONFIG}: not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{d / CONFIG}: must hold a JSON object, not {type(cfg).__name__}")
    fmt = cfg.get("format", FORMAT)  # files of the first releases carry no format: version 1
    if fmt != FORMAT:
        raise CheckpointError(f"{d / CONFIG}: format {fmt!r}, this slimstep "
                              f"({versions()['slimstep']}) reads {FORMAT!r}")
    return cfg


def read_model_config(directory: str | Path) -> dict:
    """``config.json`` with what inference needs checked: the network (``net.name``),
    the data (``spec``, ``kind``, ``shape``) and the sampling rule (``generator.kind``)."""
    cfg, where = read_config(directory), Path(directory) / CONFIG
    need = {"net": ("name",), "data": ("spec", "kind", "shape"), "generator": ("kind",)}
    for section, keys in need.items():
        sec = cfg.get(section)
        if not isinstance(sec, dict) or not sec:
            raise CheckpointError(f"{where} has no '{section}' section")
        missing = [k for k in keys if k not in sec]
        if missing:
            raise CheckpointError(f"{where}: '{section}' lacks {', '.join(missing)}")
    shape = cfg["data"]["shape"]
    if not (isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape)):
        raise CheckpointError(f"{where}: data.shape must be a list of positive sizes, not {shape!r}")
    in_shape = cfg["net"].get("in_shape")
    if isinstance(in_shape, list) and in_shape != shape:  # samples the network cannot take
        raise CheckpointError(f"{where}: data.shape {shape} contradicts the network's in_shape {in_shape}")
    sampling_rule(cfg["generator"], str(where), CheckpointError)
    return cfg


def check_fits(module: nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights that do not fit ``module``, in one line (torch's own message
    lists every mismatched tensor)."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{where}: weights of another shape than the network in config.json: "
                              f"{k} is {list(sd[k].shape)} in the file, {list(own[k].shape)} in the "
                              f"network ({len(wrong)} tensor(s) differ)")
    if missing or unexpected:
        raise CheckpointError(f"{where}: weights do not fit the network in config.json "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def weights_digest(directory: str | Path) -> str:
    """Short sha256 of a checkpoint's model.safetensors: which weights made a product
    (teacher pairs, a realism discriminator's student)."""
    import hashlib

    p = Path(directory) / WEIGHTS
    if not p.is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS}")
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]


def load_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    p = Path(directory) / WEIGHTS
    if not p.is_file():
        raise CheckpointError(f"{Path(directory)} has no {WEIGHTS}")
    try:
        return load_file(str(p))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{p}: unreadable safetensors file ({e})") from None


def save_snapshot(out: str | Path, step: int, module: nn.Module, config: dict,
                  state: dict, keep: int) -> Path:
    """Write ``OUT/checkpoints/step-N`` (model + training state), mirror the
    model at ``OUT/`` and prune to the newest ``keep`` snapshots."""
    out = Path(out)
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; a snapshot is a normal folder
        save_model(tmp, module, config)
        write_bytes(tmp / STATE, torch_bytes(state))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except EnvironmentFailure as e:  # name the snapshot's file, not the temporary folder's
        shutil.rmtree(tmp, ignore_errors=True)
        raise EnvironmentFailure(str(e).replace(str(tmp), str(final))) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    save_model(out, module, config)
    for old in list_snapshots(out)[:-max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_snapshots(out: str | Path) -> list[Path]:
    """Complete snapshots, oldest first (partial ones never carry the name)."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    snaps = [p for p in root.iterdir() if _SNAP.match(p.name) and (p / STATE).is_file()]
    return sorted(snaps, key=lambda p: int(_SNAP.match(p.name).group(1)))


def load_training_state(snapshot: str | Path) -> dict:
    p = Path(snapshot) / STATE
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{p}: cannot be read as a training state ({load_refusal(e)})") from None
