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

from pathlib import Path
from typing import Any

import torch

from slimstep.eval import EvalError, _as_samples, _clamp

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


def _inception_features(net, ds, split: str, index: torch.Tensor) -> torch.Tensor:
    """Inception features of the images at ``index``, a batch at a time."""
    return torch.cat([net.features(ds.take(index[i : i + _BATCH], split)) for i in range(0, len(index), _BATCH)])


def _inception_block(net, x: torch.Tensor, held: torch.Tensor, ds, ref_split: str, ref_index: torch.Tensor,
                     ref_stats: Any, notes: list[str]) -> tuple[dict, dict, dict]:
    """``(metrics, floor, extra)``: FID, and KID where the reference features are at
    hand, of the samples ``x`` and of the held-out images ``held``; ``extra`` holds the
    KID protocol's top-level keys."""
    from slimstep.eval.fd import feature_stats, frechet_distance, load_ref_features, load_stats, save_stats
    from slimstep.eval.kid import KID_SUBSET_SIZE, KID_SUBSETS, kid, kid_subset_size

    if ref_stats is not None and Path(ref_stats).is_file():
        mu_r, s_r = load_stats(ref_stats)
        ref_feats = load_ref_features(ref_stats)
        if ref_feats is None:
            notes.append(f"no KID: reference stats {ref_stats} hold mu and sigma only (EDM's, pytorch-fid's or an "
                         "older slimstep's file), and KID needs the reference features; give a new --ref-stats "
                         "path (or remove this file) to have them computed and stored")
    else:
        ref_feats = _inception_features(net, ds, ref_split, ref_index)
        mu_r, s_r = feature_stats(ref_feats)
        if ref_stats is not None:
            save_stats(ref_stats, mu_r, s_r, features=ref_feats)
            notes.append(f"reference stats and features of {len(ref_index)} images saved to {ref_stats}")
    if mu_r.shape[0] != net.dim:
        raise EvalError(f"reference stats have {mu_r.shape[0]} dims, Inception gives {net.dim}")
    fx, fh = net.features(x), net.features(held)
    metrics = {"fid": frechet_distance(*feature_stats(fx), mu_r, s_r)}
    floor = {"fid": frechet_distance(*feature_stats(fh), mu_r, s_r)}
    extra: dict[str, Any] = {}
    if ref_feats is not None:
        m = kid_subset_size(len(fx), len(fh), len(ref_feats))
        metrics.update(kid(fx, ref_feats, subset_size=m))
        floor.update(kid(fh, ref_feats, subset_size=m))
        extra = {"kid_subset_size": m, "kid_subsets": KID_SUBSETS}
        if m < KID_SUBSET_SIZE:
            notes.append(f"KID subsets of {m}, not torch-fidelity's {KID_SUBSET_SIZE}: the smallest of samples "
                         f"({len(fx)}), held-out ({len(fh)}) and reference ({len(ref_feats)}) sets; KID is unbiased "
                         "at any subset size, its spread over subsets is wider at small ones")
    return metrics, floor, extra


def evaluate_images(
    spec: str, samples: Any, n_ref: int | None, data_options: dict, inception_weights: Any,
    ref_stats: Any, notes: list[str],
) -> dict[str, Any]:
    from slimstep.data import load_data
    from slimstep.eval.features import NO_FID, InceptionFeatures
    from slimstep.eval.swd import patch_swd

    if ref_stats is not None and inception_weights is None:
        raise EvalError("reference stats are Inception statistics for FID / KID: give the Inception weights too "
                        "(--inception-weights)")
    net = InceptionFeatures(inception_weights) if inception_weights is not None else None  # before data work
    x = _clamp(_as_samples(samples, None, "image"), notes)
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
        metrics, floor_m, extra = _inception_block(net, x, held, ds, ref_split, ref_idx[:n_ref], ref_stats, notes)
        features = f"{net.name}; {features}"
    else:
        notes.append(NO_FID)
    return {"metrics": {**metrics, **score}, "floor": {**floor_m, **floor}, "floor_n": len(held),
            "reference_n": len(ref), "features": features, **extra}
