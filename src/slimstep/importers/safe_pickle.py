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

**EDM mode** (``TensorUnpickler(f, edm=True)``, asked for by ``slimstep import --format
edm`` and ``--format edm2`` only). An EDM network snapshot (``network-snapshot-*.pkl``: a dict with ``ema``,
``loss_fn``, ``augment_pipe``, ``dataset_kwargs``) names, besides tensors, exactly these
globals (listed by running EDM's own pickling on its networks, protocols 2 and 4):

=================================================  ==============================================
global                                             served by (inert: records, never runs)
=================================================  ==============================================
``torch_utils.persistence._reconstruct_persistent  :func:`_persistent_record`: returns an
_obj``                                             :class:`ObjectRecord` of ``meta`` — the class
                                                   name, the ``state`` dict, the sha256 of
                                                   ``meta["module_src"]`` — and never executes
                                                   that source (EDM's function runs it)
``torch.nn.modules.container.ModuleDict`` (and     a stand-in class whose instances only record
``ModuleList``, ``Sequential``, ``Module``)        the state ``BUILD`` hands them
``dnnlib.util.EasyDict``                           a ``dict``
``numpy.dtype``, ``numpy.core.multiarray.scalar``  a numeric numpy scalar (``UNetBlock.skip_scale
(``numpy._core`` under numpy 2)                    = np.sqrt(0.5)``) decoded from its bytes
``builtins.set`` (``__builtin__`` in protocol 2)   ``set`` (a module's ``_non_persistent_buffers_
                                                   set``)
``numpy.core.multiarray._reconstruct``,            a :class:`NumpyArray` decoded from its bytes, for
``numpy.ndarray`` (``numpy._core`` under numpy 2)  numeric dtypes only (EDM2's ``StabilityVAEEncoder
                                                   .scale`` / ``.bias``)
=================================================  ==============================================

EDM2's snapshots (``--format edm2``) use the same persistence module and the same globals,
plus the encoder's numeric arrays.

A snapshot's networks thus come back as a tree of records whose ``state`` holds
``_parameters`` / ``_buffers`` / ``_modules`` exactly as ``torch.nn.Module.__dict__``
had them; :mod:`slimstep.importers.edm_layout` reads the tensors out of it. The reader
imports no module named in the file: every stand-in is defined here.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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


# ----------------------------------------------------------------------------- EDM mode


@dataclass(eq=False)  # records hold tensors: compare them by identity
class ObjectRecord:
    """What an object of the file would have been, never built: its class's name and the
    state the pickle hands it. ``source_sha256`` (EDM persistence objects only) is the hash
    of the module source the pickle embeds — kept to identify it, never run."""

    class_name: str
    state: dict = field(default_factory=dict)
    source_sha256: str | None = None
    version: int | None = None


def _persistent_record(meta) -> ObjectRecord:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj(meta)``: EDM's
    function executes ``meta["module_src"]`` and builds the class; this one records."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("a torch_utils.persistence object whose meta is not "
                                     "{type: 'class', ...}")
    src = meta.get("module_src")
    digest = hashlib.sha256(src.encode()).hexdigest() if isinstance(src, str) else None
    state = meta.get("state")
    return ObjectRecord(str(meta.get("class_name")), state if isinstance(state, dict) else {},
                        digest, meta.get("version"))


class _ModuleStandIn(ObjectRecord):
    """Base of the stand-ins for torch's container modules, which a pickle names by
    reference: ``NEWOBJ`` calls ``cls.__new__(cls)``, then ``BUILD`` hands the module's
    ``__dict__`` to ``__setstate__``. Both only fill the record."""

    qualname = "?"

    def __new__(cls, *args):
        obj = object.__new__(cls)
        ObjectRecord.__init__(obj, cls.qualname)
        return obj

    def __init__(self, *args) -> None:  # the record is filled by __new__ / __setstate__
        pass

    def __setstate__(self, state) -> None:
        self.state = state if isinstance(state, dict) else {}


def _module_stand_in(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[1], (_ModuleStandIn,), {"qualname": qualname})


class _AttrDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict whose attributes are its items)."""

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.update(state)


class _NumpyDType:
    """Stand-in for ``numpy.dtype(name, align, copy)``: remembers the name and the byte
    order ``BUILD`` gives; only :func:`_numpy_scalar` reads it."""

    def __init__(self, name, align=False, copy=True):
        self.name, self.order = str(name), "|"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]


_NUMERIC = re.compile(r"^(b1|[iu][1248]|f[248])$")


def _numpy_scalar(dtype, data=b""):
    """Stand-in for ``numpy.core.multiarray.scalar(dtype, bytes)``: a Python number read
    from the bytes, for bool / int / uint / float dtypes only."""
    if not isinstance(dtype, _NumpyDType) or not _NUMERIC.match(dtype.name) \
            or not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"a numpy scalar of dtype {getattr(dtype, 'name', dtype)!r}: "
                                     "only numeric scalars are read")
    dt = np.dtype(dtype.name).newbyteorder(dtype.order if dtype.order != "|" else "=")
    return np.frombuffer(data, dtype=dt, count=1)[0].item()


class NumpyArray:
    """Stand-in for a numpy array the pickle rebuilds with
    ``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`` and fills by ``BUILD`` with
    ``(version, shape, dtype, is_fortran, raw bytes)``: numeric dtypes only, decoded from the
    bytes by ``np.frombuffer`` (an object array's state is a list of pickled objects, and is
    refused). EDM2's ``StabilityVAEEncoder`` keeps its latent ``scale`` / ``bias`` this way."""

    def __init__(self, *args) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state) -> None:
        ok = isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _NumpyDType)
        if not ok or not _NUMERIC.match(state[2].name) or not isinstance(state[4], bytes):
            raise pickle.UnpicklingError("a numpy array that is not numeric: only numeric arrays are read")
        _, shape, dtype, fortran, raw = state
        dt = np.dtype(dtype.name).newbyteorder(dtype.order if dtype.order != "|" else "=")
        self.array = np.frombuffer(raw, dtype=dt).reshape(tuple(shape), order="F" if fortran else "C").copy()


def _numpy_reconstruct(cls, shape, typecode) -> NumpyArray:
    """Stand-in for ``numpy.core.multiarray._reconstruct``: an empty :class:`NumpyArray`."""
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("numpy _reconstruct of a class other than ndarray")
    return NumpyArray()


_NDARRAY = object()  # what the file's ``numpy.ndarray`` resolves to: a marker, never called

_EDM_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    **{("torch.nn.modules.container", n): _module_stand_in(f"torch.nn.modules.container.{n}")
       for n in ("ModuleDict", "ModuleList", "Sequential")},
    ("torch.nn.modules.module", "Module"): _module_stand_in("torch.nn.modules.module.Module"),
    ("dnnlib.util", "EasyDict"): _AttrDict,
    ("numpy", "dtype"): _NumpyDType,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    # numeric arrays (EDM2's encoder: the latents' scale / bias), numpy 1 and 2 names
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
}


class TensorUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` serves only :data:`_ALLOWED` (and torch
    dtypes), plus :data:`_EDM_ALLOWED` when built with ``edm=True``; anything else raises
    :class:`UnsafePickleError` before it is called."""

    def __init__(self, file, *, edm: bool = False) -> None:
        super().__init__(file)
        self.edm = edm

    def find_class(self, module: str, name: str):
        fn = _ALLOWED.get((module, name))
        if fn is None and self.edm:
            fn = _EDM_ALLOWED.get((module, name))
        if fn is not None:
            return fn
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafePickleError(module, name)

    def persistent_load(self, pid):
        # plain pickles of tensors carry no persistent ids; torch.save files are zip
        # archives and go through torch.load(weights_only=True) instead
        raise pickle.UnpicklingError("persistent ids are not supported")


def safe_load(path: str | Path, *, edm: bool = False):
    """Unpickle ``path`` with :class:`TensorUnpickler` (tensors on the CPU); ``edm=True``
    reads EDM's persistence objects as inert :class:`ObjectRecord` trees."""
    with open(path, "rb") as f:
        return TensorUnpickler(f, edm=edm).load()
