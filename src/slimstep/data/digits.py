"""scikit-learn's 8x8 handwritten digits: the embedded default data set.

1,797 grey images with values 0..16, mapped to [-1, 1] by ``v / 8 - 1``.
The train / test split is fixed for ever (a permutation from seed 0, one third
held out): the teacher trains on ``train``; evaluation compares samples with
``train`` and reports FD(test, train) as the real/real floor.
"""

from __future__ import annotations

import numpy as np
import torch

from slimstep.data.base import DataError, DataInfo, LabelledSplits

N_TEST = 597  # a third of 1,797, fixed: changing it changes every reported number


def load_digits_split(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of one split (``train``, ``test`` or ``all``): x float32
    ``[N, 1, 8, 8]`` in [-1, 1], y int64 ``[N]``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    if split == "all":
        return x, y
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(x)))
    idx = {"test": perm[:N_TEST], "train": perm[N_TEST:]}.get(split)
    if idx is None:
        raise DataError(f"unknown digits split '{split}' (expected train, test or all)")
    return x[idx].contiguous(), y[idx].contiguous()


class Digits(LabelledSplits):
    def __init__(self, flip: bool = False, **unused):
        if unused:
            raise DataError(f"digits takes no options {sorted(unused)}")
        self.x, self.y = load_digits_split("train")
        # Flipping digits makes other glyphs; allowed only because a user asked.
        self.flip = flip
        self.info = DataInfo(
            spec="digits", kind="image", shape=(1, 8, 8), num_classes=10,
            scaling="v/8-1 (sklearn values 0..16)", options={"flip": flip},
        )

    def split(self, name):
        return load_digits_split(name)
