"""Fashion-MNIST (Zalando Research): 28×28 grey images of 10 clothing classes.

The four original idx files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each gzipped or not) are read
from a folder: ``fashion-mnist:DIR``, or plain ``fashion-mnist`` for where Debian's
package ``dataset-fashion-mnist`` puts them (:data:`DEFAULT_DIR`). Nothing is
downloaded. Images are ``[N, 1, 28, 28]`` float32, ``uint8 / 127.5 - 1`` in [-1, 1], not
padded; labels int64 0..9. The ``train`` split (60,000) is what models learn and what
the protocol's FD is measured against; the ``test`` split (10,000) is the real/real floor.

The idx format (LeCun's MNIST page): a big-endian 32-bit magic number whose third byte
is the element type (0x08 = unsigned byte) and fourth the number of dimensions, then
one big-endian 32-bit size per dimension, then the data in C order.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch

from slimstep.data.base import DataError, DataInfo, LabelledSplits

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SIZES = {"train": 60000, "test": 10000}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
#: One line telling a user without the files what to do.
WHERE = ("the four Fashion-MNIST idx files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
         "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, from Zalando Research's release; gzipped "
         f"or not) in one folder, named as fashion-mnist:DIR; on Debian `apt-get install dataset-fashion-mnist` "
         f"puts them in {DEFAULT_DIR}")
_MAGIC = {3: 0x00000803, 1: 0x00000801}  # images (3 dims), labels (1 dim), unsigned bytes


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"no {stem}[.gz] in {folder}: fashion-mnist needs {WHERE}")


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """The uint8 array of one idx file (gzipped when its name ends in ``.gz``), checked:
    magic number, dimension count and that the data fill the declared sizes exactly."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, not even an idx header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _MAGIC[ndim]:
        raise DataError(f"{path} is not an idx file of {ndim}-d unsigned bytes: magic number 0x{magic:08x}, "
                        f"expected 0x{_MAGIC[ndim]:08x}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = memoryview(raw)[4 + 4 * ndim:]
    want = int(np.prod(dims))
    if len(body) != want:
        raise DataError(f"{path} is truncated or padded: the header declares {dims} = {want} bytes of data, "
                        f"the file holds {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


@functools.lru_cache(maxsize=4)
def _load_split(folder: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"fashion-mnist folder {root} does not exist: it needs {WHERE}")
    images_stem, labels_stem = FILES[split]
    images = read_idx(_find(root, images_stem), 3)
    labels = read_idx(_find(root, labels_stem), 1)
    if len(images) != len(labels):
        raise DataError(f"{root}: {split} has {len(images)} images but {len(labels)} labels")
    if images.shape[1:] != (28, 28):
        raise DataError(f"{root}: {split} images are {images.shape[1]}x{images.shape[2]}, Fashion-MNIST's are 28x28")
    if labels.size and labels.max() > 9:
        raise DataError(f"{root}: {split} labels reach {int(labels.max())}, Fashion-MNIST has classes 0..9")
    x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_fashion_split(split: str = "train", folder: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of one split (``train`` or ``test``): x float32 ``[N, 1, 28, 28]`` in
    [-1, 1], y int64 ``[N]``. Cached per folder and split: do not modify the tensors."""
    if split not in FILES:
        raise DataError(f"unknown fashion-mnist split '{split}' (expected train or test)")
    return _load_split(str(folder or DEFAULT_DIR), split)


def folder_of(spec: str) -> str:
    """The folder a ``fashion-mnist[:DIR]`` spec names."""
    return spec.partition(":")[2] or DEFAULT_DIR


class FashionMNIST(LabelledSplits):
    def __init__(self, folder: str | None = None, flip: bool = False, **unused):
        if unused:
            raise DataError(f"fashion-mnist takes no options {sorted(unused)} (only flip)")
        self.folder = str(folder or DEFAULT_DIR)
        self.x, self.y = load_fashion_split("train", self.folder)
        # Most classes are left/right mirror-symmetric, so a flip is a plausible image
        # (SlimFlow's flip trick is tested here).
        self.flip = flip
        self.info = DataInfo(
            spec="fashion-mnist" if folder is None else f"fashion-mnist:{folder}", kind="image",
            shape=(1, 28, 28), num_classes=10, scaling="uint8/127.5-1", options={"flip": flip},
        )

    def split(self, name):
        return load_fashion_split(name, self.folder)


__all__ = ["CLASSES", "DEFAULT_DIR", "FashionMNIST", "load_fashion_split", "read_idx"]
