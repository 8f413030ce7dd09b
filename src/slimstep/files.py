"""Atomic file writes and the samples format.

Every output is written to a temporary file in the same folder, flushed,
fsync'ed and renamed over the target, so a kill never leaves half a file.

**A full disk.** Binary formats are serialised in memory first (:func:`torch_bytes`,
:func:`tensor_bytes`) and written by :func:`write_bytes` with Python's own file
object, whose every failed write is an ``OSError`` carrying its errno. Libraries that
write a path themselves do not say why they failed: torch's zip writer reports a
short write as "unexpected pos", TorchScript's aborts the process. The cost is one
copy of the file in memory while it is written.

``samples.npz`` (written by ``slimstep sample``, read by ``slimstep eval``):
``samples`` float32 in data space (NCHW in [-1, 1] or (N, 2)), ``seeds`` int64,
``labels`` int64 (conditional models only), ``nfe``, ``data`` (the data
spec the model was trained on) and ``data_options`` (a JSON string: the loader
options that give its images, e.g. ``{"resolution": 16}``). A model trained on
``vae:`` latents writes its decoded images as ``samples`` (``data`` is then the image
data set) and the latents as ``latents`` with their spec in ``latent_data``. Read with
``allow_pickle=False``.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from slimstep.errors import OutputError, SlimstepError, load_refusal, os_error


class FileFormatError(SlimstepError, ValueError):
    """A file a user handed in is not in the expected format."""


def cache_dir(kind: str) -> Path:
    """``$SLIMSTEP_CACHE/<kind>`` (default ``~/.cache/slimstep/<kind>``): products that are a
    pure function of their inputs (encoded latents, a teacher's targets), kept across runs."""
    import os

    return Path(os.environ.get("SLIMSTEP_CACHE") or Path.home() / ".cache" / "slimstep").expanduser() / kind


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` then move the finished file onto ``path``.
    The file gets the permissions a plain ``open`` would give it (mkstemp's are 0600)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a directory: name a file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise os_error(e, path) from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):  # disk full, quota, read-only: one line naming the file
            raise os_error(e, path) from None
        if _no_space(e):  # a library (safetensors) that reports ENOSPC in its own error type
            raise os_error(OSError(errno.ENOSPC, "No space left on device", str(path))) from None
        raise
    fsync_dir(path.parent)


def _no_space(e: BaseException) -> bool:
    text = str(e)
    return "No space left on device" in text or "os error 28" in text


def write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically; a full disk is one line naming ``path``."""
    def write(p):
        with open(p, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def torch_bytes(obj: Any) -> memoryview:
    """``torch.save(obj)`` into memory (see the module docstring: a full disk)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer()


def tensor_bytes(tensors: dict, metadata: dict | None = None) -> bytes:
    """A safetensors file in memory."""
    from safetensors.torch import save

    return save(tensors, metadata=metadata)


def write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2) + "\n"
    atomic_write(path, lambda p: Path(p).write_text(text))


def write_npz(path: str | Path, **arrays) -> None:
    buf = io.BytesIO()  # np.savez writes through zipfile; in memory, the disk write is ours
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    write_bytes(path, buf.getbuffer())


def read_samples(path: str | Path) -> dict[str, np.ndarray]:
    """Load a samples file; ``samples`` is required, the rest optional."""
    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"samples file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except Exception as e:
        raise FileFormatError(f"{p}: not a readable .npz ({load_refusal(e)})") from None
    if "samples" not in d:
        raise FileFormatError(f"{p}: no 'samples' array (keys: {', '.join(d) or 'none'})")
    x = d["samples"]
    if x.dtype.kind != "f" or x.ndim not in (2, 4):
        raise FileFormatError(f"{p}: 'samples' must be float (N,2) or NCHW, got {x.dtype} {x.shape}")
    return d


def samples_data_options(d: dict[str, np.ndarray], path: str | Path) -> dict:
    """The loader options a samples file records (none in files from before they were)."""
    if "data_options" not in d:
        return {}
    try:
        opts = json.loads(str(d["data_options"]))
    except json.JSONDecodeError:
        opts = None
    if not isinstance(opts, dict):
        raise FileFormatError(f"{path}: 'data_options' is not a JSON mapping of loader options")
    return opts
