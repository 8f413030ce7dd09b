"""Image data sets held in memory: a folder of PNG/JPEG files, an ``.npz`` array,
CIFAR-10 python batches.

All three become an :class:`ImageData`: NCHW tensors kept as uint8 (mapped to
[-1, 1] by ``v / 127.5 - 1`` when drawn) or as float32 already in [-1, 1].

``folder:PATH``
    ``*.png``, ``*.jpg``, ``*.jpeg`` (any case) anywhere below PATH, hidden files
    skipped, in sorted relative-path order. If no image lies directly in PATH and
    at least two immediate subfolders hold images, each such subfolder is a class
    (sorted names → labels 0..K-1, names in ``info.options["classes"]``);
    otherwise the set is unconditional. Colour: 1 channel if every image is grey
    (Pillow modes 1, L, LA, I, I;16…), else 3 (RGB, alpha dropped).
``npz:PATH``
    array ``x`` (or ``images``, or ``arr_0``): uint8 NHWC (or NHW) with values
    0..255, or float NCHW already in [-1, 1] (values outside [-1.01, 1.01] are
    an error; the slack is clamped). Optional labels ``y`` (or ``labels``), ints >= 0.
``cifar10:PATH``
    the CIFAR-10 "python version" directory (or its parent holding
    ``cifar-10-batches-py``): ``data_batch_1..5`` → split ``train`` (those
    present), ``test_batch`` → split ``test``, ``batches.meta`` → class names.
    Each batch is a protocol-2 pickle of a dict with ``b"data"`` (uint8
    ``[N, 3072]``: the R, G, B planes of a 32×32 image, each row-major) and
    ``b"labels"`` (N ints in 0..9). It is read by :class:`SafeUnpickler`,
    which can rebuild NumPy arrays and nothing else.

Resizing (``resolution``): plain resize to ``resolution × resolution`` (aspect
not kept), or with ``center_crop`` a resize of the short side to ``resolution``
then a centred square crop. Pillow LANCZOS when shrinking, BICUBIC when
enlarging. ``center_crop`` without ``resolution`` is an error.

``reference``: folder and npz sets have one pool, so ``test`` and ``train``
both return it (first ``n`` in the fixed order above); CIFAR-10 has the real
split. ``draw`` trains on the pool (CIFAR-10: the train split).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from slimstep.data.base import DataError, DataInfo
from slimstep.errors import load_refusal

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_GREY_MODES = ("1", "L", "LA", "I", "F")  # plus every "I;16*"


class ImageData:
    """An in-memory image data set (see the module docstring)."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor | None, info: DataInfo,
        splits: dict[str, tuple] | None = None,  # split -> (x, y), or (loader_fn, None) if lazy
    ):
        self.x, self.y, self.info = x, y, info
        self.flip = bool(info.options.get("flip", False))
        # Extra splits (CIFAR-10 test); folder / npz: one pool for every split.
        self._splits = splits if splits is not None else {"train": (x, y), "test": (x, y)}

    def __len__(self) -> int:
        return len(self.x)

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = torch.randint(len(self.x), (n,), generator=generator)
        x = _to_float(self.x[idx])
        if self.flip:
            m = torch.rand(n, generator=generator) < 0.5
            x = torch.where(m[:, None, None, None], x.flip(-1), x)
        return x, None if self.y is None else self.y[idx]

    def reference(
        self, n: int | None = None, *, split: str = "test", seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y = self._split(split)
        x, y = x[:n], None if y is None else y[:n]
        return _to_float(x), y

    def split_size(self, split: str) -> int:
        return len(self._split(split)[0])

    def take(self, index: torch.Tensor, split: str = "train") -> torch.Tensor:
        """The images at ``index`` of ``split`` in data space: a subset is converted to
        float, not the whole split first (CIFAR-10's train split is 600 MB as float)."""
        return _to_float(self._split(split)[0][index])

    def _split(self, split: str) -> tuple:
        if split not in self._splits:
            raise DataError(f"unknown split '{split}' of {self.info.spec} (expected train, test)")
        x, y = self._splits[split]
        if callable(x):  # a lazily loaded split
            x, y = self._splits[split] = x()
        return x, y


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()


def open_image_data(
    kind: str, path: str, *, resolution: int | None = None, center_crop: bool = False,
    flip: bool = False, **unused,
) -> ImageData:
    """Open ``folder:``, ``npz:`` or ``cifar10:`` data at ``path``."""
    if unused:
        raise DataError(f"image options are resolution, center_crop, flip, not {sorted(unused)}")
    if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
        raise DataError(f"resolution must be a positive integer, got {resolution!r}")
    if center_crop and resolution is None:
        raise DataError("center_crop needs a resolution")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{kind} data path does not exist: {path}")
    loader = {"folder": _load_folder, "npz": _load_npz, "cifar10": _load_cifar10}.get(kind)
    if loader is None:
        raise DataError(f"unknown image data kind '{kind}' (expected folder, npz or cifar10)")
    fit = (lambda a: _fit_array(a, resolution, center_crop)) if resolution else (lambda a: a)
    x, y, classes, scaling, splits = loader(p, resolution, center_crop, fit)
    num_classes = 0 if y is None else len(classes) if classes else int(y.max()) + 1
    info = DataInfo(
        spec=f"{kind}:{path}", kind="image", shape=tuple(x.shape[1:]), num_classes=num_classes,
        scaling=scaling, options={
            "resolution": resolution, "center_crop": center_crop, "flip": flip,
            "classes": list(classes) if classes else None,
        },
    )
    return ImageData(x, y, info, splits)


# --- resizing --------------------------------------------------------------------------


def _resize(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    if im.size == size:
        return im
    shrink = size[0] * size[1] < im.size[0] * im.size[1]
    return im.resize(size, Image.Resampling.LANCZOS if shrink else Image.Resampling.BICUBIC)


def _fit(im: Image.Image, res: int, center_crop: bool) -> Image.Image:
    if not center_crop:
        return _resize(im, (res, res))
    w, h = im.size
    s = res / min(w, h)
    w, h = max(res, round(w * s)), max(res, round(h * s))
    left, top = (w - res) // 2, (h - res) // 2
    return _resize(im, (w, h)).crop((left, top, left + res, top + res))


def _fit_array(x: np.ndarray, res: int, center_crop: bool) -> np.ndarray:
    """Resize NCHW uint8 or float images through Pillow (uint8: as L / RGB images;
    float: one mode-"F" channel at a time, then clamped to [-1, 1] as LANCZOS overshoots)."""
    if x.shape[2:] == (res, res):
        return x
    if x.dtype == np.uint8:
        hwc = x.transpose(0, 2, 3, 1) if x.shape[1] == 3 else x[:, 0]
        out = np.stack([np.asarray(_fit(Image.fromarray(a), res, center_crop)) for a in hwc])
        return out.transpose(0, 3, 1, 2) if out.ndim == 4 else out[:, None]
    out = np.stack([
        np.stack([np.asarray(_fit(Image.fromarray(c), res, center_crop)) for c in img])
        for img in x
    ])
    return np.clip(out, -1, 1).astype(np.float32)


# --- folder ----------------------------------------------------------------------------


def _read_image(f: Path) -> tuple[np.ndarray, bool]:
    """``(HxW or HxWx3 uint8 array, is_grey)`` of one file."""
    try:
        with Image.open(f) as im:
            im.load()
            grey = im.mode in _GREY_MODES or im.mode.startswith("I;16")
            if im.mode.startswith("I"):  # 16/32-bit grey: scale to 8 bits, not clip
                a = np.asarray(im, dtype=np.float64)
                peak = 65535.0 if a.max() > 255 else 255.0
                return np.clip(np.rint(a * (255 / peak)), 0, 255).astype(np.uint8), True
            return np.asarray(im.convert("L" if grey else "RGB")), grey
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {f}: {e}") from None


def _load_folder(p: Path, res: int | None, center_crop: bool, fit):
    if not p.is_dir():
        raise DataError(f"folder data path is not a directory: {p}")
    files = sorted(
        (f for f in p.rglob("*")
         if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file()),
        key=lambda f: f.relative_to(p).as_posix(),
    )
    if not files:
        raise DataError(f"no PNG/JPEG images under {p}")
    tops = [f.relative_to(p).parts for f in files]
    classes = sorted({t[0] for t in tops}) if all(len(t) > 1 for t in tops) else []
    if len(classes) < 2:  # one subfolder carries no label information
        classes = []
    imgs, grey = [], True
    for f in files:
        a, g = _read_image(f)
        if res is not None:
            a = np.asarray(_fit(Image.fromarray(a), res, center_crop))
        imgs.append(a)
        grey &= g
    if not grey:  # RGB unless every image is grey
        imgs = [np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a for a in imgs]
    sizes = {a.shape[:2] for a in imgs}
    if len(sizes) > 1:
        raise DataError(
            f"images under {p} differ in size ({len(sizes)} sizes, e.g. "
            f"{sorted(sizes)[:2]} as HxW); pass a resolution"
        )
    x = np.stack(imgs)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    y = torch.tensor([classes.index(t[0]) for t in tops]) if classes else None
    return torch.from_numpy(np.ascontiguousarray(x)), y, classes, "uint8/127.5-1", None


# --- npz -------------------------------------------------------------------------------


def read_npz(p: Path, keys: tuple[str, ...], what: str) -> tuple[dict[str, np.ndarray], str]:
    """Every array of the ``.npz`` at ``p`` (never un-pickled) and the first of ``keys`` it
    has (``what`` names the array in the error)."""
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:  # also zipfile.BadZipFile, pickled objects
        raise DataError(f"cannot read npz {p}: {load_refusal(e)}") from None
    key = next((k for k in keys if k in arrays), None)
    if key is None:
        raise DataError(f"{p} has no {what} array {', '.join(keys[:-1])} or {keys[-1]} (keys: {sorted(arrays)})")
    return arrays, key


def npz_labels(arrays: dict[str, np.ndarray], n: int, p: Path) -> torch.Tensor | None:
    """Optional labels ``y`` (or ``labels``): ``n`` integers >= 0."""
    ykey = next((k for k in ("y", "labels") if k in arrays), None)
    if ykey is None:
        return None
    yv = arrays[ykey]
    if not np.issubdtype(yv.dtype, np.integer) or yv.shape != (n,) or yv.min() < 0:
        raise DataError(f"{p}: '{ykey}' must be {n} integers >= 0, got {yv.dtype} {yv.shape}")
    return torch.from_numpy(yv.astype(np.int64))


#: How a float array outside [-1, 1] is refused: what it probably is, and where it goes.
NOT_AN_IMAGE = "a float data set in any range (e.g. SD-VAE latents) is latents:PATH (docs/data.md)"


def _load_npz(p: Path, res: int | None, center_crop: bool, fit):
    arrays, xkey = read_npz(p, ("x", "images", "arr_0"), "image")
    x = arrays[xkey]
    if x.dtype == np.uint8:
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise DataError(f"{p}: uint8 '{xkey}' must be NHWC with 1 or 3 channels, got {x.shape}")
        x, scaling = x.transpose(0, 3, 1, 2), "uint8/127.5-1"
    elif np.issubdtype(x.dtype, np.floating):
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise DataError(f"{p}: float '{xkey}' images must be NCHW with 1 or 3 channels, got "
                            f"{x.shape}; {NOT_AN_IMAGE}")
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if not (-1.01 <= lo and hi <= 1.01):  # also catches NaN
            raise DataError(f"{p}: float '{xkey}' images must lie in [-1, 1], found [{lo:.3g}, {hi:.3g}]; "
                            f"{NOT_AN_IMAGE}")
        x, scaling = np.clip(x, -1, 1).astype(np.float32), "float, already in [-1, 1]"
    else:
        raise DataError(f"{p}: '{xkey}' must be uint8 NHWC or float NCHW, got dtype {x.dtype}")
    if len(x) == 0:
        raise DataError(f"{p}: '{xkey}' holds no images")
    y = npz_labels(arrays, len(x), p)
    x = torch.from_numpy(np.ascontiguousarray(fit(x)))
    return x, y, [], scaling, None


# --- CIFAR-10 --------------------------------------------------------------------------


def _latin1_encode(s: str, encoding: str = "latin1") -> bytes:
    """Python 3 writes ``bytes`` into protocol-2 pickles as ``_codecs.encode(s,
    "latin1")``; this admits exactly that and no other codec."""
    if not isinstance(s, str) or encoding.replace("-", "").lower() != "latin1":
        raise DataError(f"pickle asks for _codecs.encode with {encoding!r}; refused")
    return s.encode("latin1")


# NumPy's own array-rebuilding function, found without importing a private module
# (numpy.core in NumPy 1, numpy._core in NumPy 2).
_RECONSTRUCT = np.zeros(0).__reduce__()[0]


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds NumPy arrays, dicts, lists, str, bytes and
    numbers, and refuses every other global (so no code from the file runs)."""

    def __init__(self, file):
        super().__init__(file, encoding="bytes")  # Python 2 str -> bytes, as in the real files

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(f"pickle asks for forbidden global {module}.{name}; refused") from None


def safe_unpickle(path: Path):
    """Read one pickle file with :class:`SafeUnpickler`; every failure is a DataError."""
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(io.BytesIO(f.read())).load()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 -- a corrupt pickle raises almost anything
        raise DataError(f"cannot unpickle {path}: {type(e).__name__}: {e}") from None


def _get(d, key: str, path: Path):
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch (a {type(d).__name__}, not a dict)")
    for k in (key.encode(), key):  # bytes keys in the real files; str if re-pickled
        if k in d:
            return d[k]
    raise DataError(f"{path} is not a CIFAR-10 batch: no '{key}' entry")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = safe_unpickle(path)
    data = _get(d, "data", path)
    labels = np.asarray(_get(d, "labels", path))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: data must be uint8 [N, 3072], got {desc}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer) \
            or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DataError(f"{path}: labels must be {len(data)} integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _load_cifar10(p: Path, res: int | None, center_crop: bool, fit):
    if (p / "cifar-10-batches-py").is_dir():
        p = p / "cifar-10-batches-py"
    if not p.is_dir():
        raise DataError(f"cifar10 path is not a directory: {p}")
    batches = [p / f"data_batch_{i}" for i in range(1, 6) if (p / f"data_batch_{i}").is_file()]
    if not batches:
        raise DataError(f"no CIFAR-10 training batches data_batch_1..5 in {p}")

    def load(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(_read_cifar_batch(f) for f in files), strict=True)
        x = np.ascontiguousarray(fit(np.concatenate(xs)))
        return torch.from_numpy(x), torch.from_numpy(np.concatenate(ys))

    def load_test() -> tuple[torch.Tensor, torch.Tensor]:
        if not (p / "test_batch").is_file():
            raise DataError(f"no CIFAR-10 test_batch in {p}")
        return load([p / "test_batch"])

    classes = list(CIFAR10_CLASSES)
    if (p / "batches.meta").is_file():
        names = _get(safe_unpickle(p / "batches.meta"), "label_names", p / "batches.meta")
        if not isinstance(names, list) or len(names) != 10:
            raise DataError(f"{p / 'batches.meta'}: label_names must list 10 names")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    x, y = load(batches)
    return x, y, classes, "uint8/127.5-1", {"train": (x, y), "test": (load_test, None)}
