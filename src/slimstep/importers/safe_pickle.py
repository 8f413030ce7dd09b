"""A restricted unpickler: tensors and plain containers, nothing else.

A Python pickle is a program: every ``GLOBAL`` / ``STACK_GLOBAL`` / ``INST`` / ``OBJ``
opcode asks :meth:`pickle.Unpickler.find_class` for a callable that ``REDUCE`` then
calls with arguments from the file. EDM's network pickles use that to carry their
source code (``torch_utils.persistence._reconstruct_persistent_obj`` executes a module
source string), and any pickle can name ``os.system``. :class:`TensorUnpickler`
overrides ``find_class`` with an allow-list, so the only callables a file can reach are:

* torch's tensor rebuild functions (``torch._utils._rebuild_tensor_v2``,
  ``_rebuild_parameter`` ...), which build a tensor view of a storage;
* ``torch.storage._load_from_bytes`` — the storage of a tensor pickled with plain
  ``pickle`` is a nested ``torch.save`` blob; torch's own function reads it with
  ``weights_only=False``, so it is replaced by one that reads it with
  ``torch.load(weights_only=True)`` (torch's restricted unpickler, ``torch._weights_only_unpickler``);
* ``collections.OrderedDict``, ``torch.Size``, torch dtypes and ``_codecs.encode``
  (how protocol-2 pickles spell ``bytes``): data, no behaviour.

Any other global — a class, a function, ``builtins.eval`` — ends the read *before it
is called*, with :class:`UnsafePickleError` naming it. The check happens at lookup, so
nothing of the file's choosing ever runs.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path

import torch
import torch._utils

from slimstep.errors import SlimstepError


class UnsafePickleError(SlimstepError, ValueError):
    """A pickle names a global outside the tensors-and-containers allow-list."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


def _storage_from_bytes(data: bytes):
    """A storage pickled inside a plain pickle (a legacy ``torch.save`` blob), read with
    torch's weights-only unpickler instead of ``torch.storage._load_from_bytes``."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


_TORCH_REBUILD = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter",
                  "_rebuild_parameter_with_state")

_ALLOWED = {
    **{("torch._utils", n): getattr(torch._utils, n) for n in _TORCH_REBUILD
       if hasattr(torch._utils, n)},
    ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch", "Size"): torch.Size,
    ("torch", "Tensor"): torch.Tensor,  # the type argument of _rebuild_from_type_v2
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): __import__("codecs").encode,
}


class TensorUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` serves only :data:`_ALLOWED` (and torch
    dtypes); anything else raises :class:`UnsafePickleError` before it is called."""

    def find_class(self, module: str, name: str):
        fn = _ALLOWED.get((module, name))
        if fn is not None:
            return fn
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafePickleError(module, name)

    def persistent_load(self, pid):
        # plain pickles of tensors carry no persistent ids; torch.save files are zip
        # archives and go through torch.load(weights_only=True) instead
        raise pickle.UnpicklingError("persistent ids are not supported")


def safe_load(path: str | Path):
    """Unpickle ``path`` with :class:`TensorUnpickler` (tensors on the CPU)."""
    with open(path, "rb") as f:
        return TensorUnpickler(f).load()
