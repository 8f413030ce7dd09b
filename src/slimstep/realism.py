r"""The ``realism`` screening score: a small discriminator trained on *the screened
student's own outputs* against the real train split (``slimstep screen-train``).

With the logistic loss

.. math:: \mathcal L(D) = \mathbb E_{x\sim p_\mathrm{data}}\,\mathrm{softplus}(-D(x, y))
          + \mathbb E_{x\sim p_S}\,\mathrm{softplus}(D(x, y))

the optimal logit is :math:`D^*(x, y) = \log p_\mathrm{data}(x\mid y) - \log p_S(x\mid y)`
(fake samples carry the real batch's labels, so the class marginals agree and D
judges "a real image *of class y*"). Screening with ``select: resample`` at
temperature 1 then picks candidate j with probability ∝ :math:`p_\mathrm{data}/p_S`:
importance resampling of the student toward the data (discriminator rejection
sampling, Azadi et al. 2019, in its sampling-importance-resampling form); as the
candidate count grows the screened distribution tends to the data, while the
argmax of the same score is mode-seeking.

The discriminator is the MLP (default) or conv one of
:mod:`slimstep.nets.discriminators`. It is scored on every candidate, so it must
cost far less than the student. Measured per 8x8 digit: the default MLP (hidden
128, 3 layers) 41k MACs, 5 % of the chain recipe's student (patch 4, width 80, K = 2: 788k);
the residual conv net 0.62M at 16 channels and 9.9M at its default 64 — as much
as the student or ten times more, which would undo the point of screening (128
candidates in the time of two 91M-MAC teacher samples leave ~1.4M MACs per
candidate, student and score together). The conv kind
(``disc: conv``) runs *without* the minibatch-std channel: that channel makes a
score depend on the other samples of the batch, and a screening score must depend
only on its own candidate (per-seed determinism).

A light R1 on real samples (γ = 0.001) keeps the logit smooth without flattening
it. Training records the held-out *logit scale* (:func:`platt_scale`; 1 =
calibrated). A flat logit makes resampling at T = 1 nearly uniform: γ = 0.1 gave a
scale of ~4 (docs/slt.md, "Screening").

The output directory is a small checkpoint: ``config.json`` (``kind: realism``,
the discriminator, the data, the student it was trained against with a digest of
its weights, training settings, held-out accuracy and logit scale) + ``model.safetensors``.
Scoring refuses a discriminator trained against another student: the ratio it
estimates is that student's.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from slimstep import checkpoint as ck
from slimstep.data import load_data, loader_options
from slimstep.errors import SlimstepError
from slimstep.generator import Generator, load, resolve_checkpoint
from slimstep.methods.gdd import r1_penalty
from slimstep.nets.discriminators import build_discriminator
from slimstep.outdir import check_output, output_dir
from slimstep.spec import is_number

KIND = "realism"
EXPECT = "realism discriminator"  # the product's name to slimstep.outdir
DEFAULTS = {
    "steps": 3000,  # 30-50 s on one CPU thread for the digits chain's SLT student
    "batch_size": 128,
    "lr": 2e-4,
    "betas": [0.5, 0.99],
    # R1 weight on real samples, every step. 0.1 shrank the logit ~4x (recorded held-out
    # scale 4.09: resampling at T = 1 barely moved the candidates); 0.001 leaves it
    # calibrated (0.94-1.15 over three seeds; benchmarks/results/slt-chain-screen-seeds.md)
    "r1_gamma": 0.001,
    "seed": 0,
    "disc": "mlp",  # mlp (flattened input; any shape) | conv (images)
    "disc_options": {},  # keyword arguments of that kind, e.g. {hidden: 128, depth: 3}
}


class RealismError(SlimstepError, ValueError):
    """A realism discriminator cannot be trained or used as asked (one clear line)."""


def weights_digest(ckpt: str | Path) -> str:
    """Short sha256 of a checkpoint's model.safetensors: which student a discriminator saw
    (``ckpt`` may be a run's stage folder, as everywhere a checkpoint is read)."""
    try:
        return ck.weights_digest(resolve_checkpoint(ckpt))
    except ck.CheckpointError as e:
        raise RealismError(str(e)) from None


def build_realism_disc(kind: str, shape, num_classes: int, options: dict) -> torch.nn.Module:
    """The realism discriminator (random weights): ``mlp`` or ``conv`` without minibatch-std."""
    if kind not in ("mlp", "conv"):
        raise RealismError(f"the realism discriminator is mlp or conv, not '{kind}'")
    opts = dict(options or {})
    if kind == "conv":
        opts["mbstd_group"] = 1  # no batch statistics: a score depends on its own sample only
    return build_discriminator(kind, list(shape), num_classes, **opts)


#: recorded in a discriminator's config: what it judges (a recipe retrains one without it)
JUDGED = "images clamped to [-1, 1]"


def as_judged(x: torch.Tensor, kind: str) -> torch.Tensor:
    """A sample as the evaluation sees it: images clamped to [-1, 1] (real images never leave
    it). Without this the discriminator learns to spot out-of-range pixel values — 25 % of
    the 28-layer chain's one-step samples are outside [-1, 1] — a difference the clamp in
    the evaluation erases, so resampling by it moved nothing (docs/slt.md). Latents and
    points are judged as they are."""
    return x.clamp(-1, 1) if kind == "image" else x


def disc_score(disc: torch.nn.Module, num_classes: int, kind: str = "image"):
    """The scorer ``(x, y, z) -> logit`` of a realism discriminator (one number per candidate),
    on the sample as judged (:func:`as_judged`)."""
    def score(x, y, z):
        yk = y.cpu() if (num_classes and y is not None) else None
        if num_classes and (yk is None or bool((yk >= num_classes).any())):
            raise RealismError("the realism discriminator judges an image of its class: screen "
                               "with class labels (random or a class), not the null class")
        with torch.no_grad():
            return disc(as_judged(x.float(), kind), yk).reshape(len(x), -1).mean(1)

    return score


def settings(options: dict | None) -> dict:
    """The effective screen-train settings: :data:`DEFAULTS` overridden by ``options``
    (``None`` values = the default), checked — one clear error for an unknown name or a
    value of the wrong kind or range."""
    if options is not None and not isinstance(options, dict):
        raise RealismError(f"realism options are a mapping of screen-train options "
                           f"({', '.join(DEFAULTS)}), not {options!r}")
    given = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise RealismError(f"unknown screen-train option(s) {', '.join(unknown)}")
    o = {**DEFAULTS, **given}
    try:
        ints = {k: int(o[k]) for k in ("steps", "batch_size", "seed")}
        floats = {k: float(o[k]) for k in ("lr", "r1_gamma")}
        betas = [float(b) for b in o["betas"]]
    except (TypeError, ValueError):
        raise RealismError(f"screen-train options steps, batch_size, seed are integers, lr and "
                           f"r1_gamma numbers and betas two numbers, not {given}") from None
    if any(isinstance(o[k], float) and o[k] != int(o[k]) for k in ints):
        raise RealismError(f"screen-train options steps, batch_size, seed are integers, not {given}")
    if ints["steps"] < 1 or ints["batch_size"] < 2:
        raise RealismError("screen-train needs steps >= 1 and batch_size >= 2")
    if ints["seed"] < 0:  # as every other seed of slimstep
        raise RealismError(f"screen-train's seed must be an integer >= 0, not {ints['seed']}")
    if not (is_number(floats["r1_gamma"]) and floats["r1_gamma"] >= 0
            and is_number(floats["lr"]) and floats["lr"] > 0):  # also rejects nan
        raise RealismError(f"screen-train needs a finite r1_gamma >= 0 and lr > 0, not "
                           f"{o['r1_gamma']} and {o['lr']}")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise RealismError(f"screen-train betas are two numbers in [0, 1), not {o['betas']}")
    if not isinstance(o["disc_options"], dict):
        raise RealismError(f"screen-train disc_options is a mapping, not {o['disc_options']!r}")
    return {**o, **ints, **floats, "betas": betas}


def train_realism(student_ckpt: str | Path, data_spec: str, out: str | Path, *,
                  log=print, overwrite: bool = False, **options) -> Path:
    """Train the realism discriminator of ``student_ckpt`` against ``data_spec``'s train split
    and write it to ``out``. ``options`` override :data:`DEFAULTS`. An existing discriminator
    in ``out`` is replaced only with ``overwrite``; any other product there never is
    (:func:`slimstep.outdir.output_dir`)."""
    o = settings(options)
    check_output(out, EXPECT, overwrite)  # before training, not after it
    weights_digest(student_ckpt)  # a student without weights fails now, not after training
    student = load(student_ckpt)
    if student.nfe != 1:
        raise RealismError(f"{student_ckpt} is not a one-step generator (NFE {student.nfe}): "
                           f"screening maps every candidate with a cheap one-step student")
    data = load_data(data_spec, **(loader_options(student.info.options) if data_spec == student.info.spec else {}))
    if tuple(data.info.shape) != tuple(student.info.shape):
        raise RealismError(f"data '{data_spec}' has shape {tuple(data.info.shape)}, the student "
                           f"makes {tuple(student.info.shape)}")
    k = student.num_classes if data.info.num_classes == student.num_classes else 0
    torch.manual_seed(int(o["seed"]))
    disc = build_realism_disc(o["disc"], student.info.shape, k, o["disc_options"])
    opt = torch.optim.Adam(disc.parameters(), lr=float(o["lr"]), betas=tuple(o["betas"]))
    g_data = torch.Generator().manual_seed(int(o["seed"]))
    g_noise = torch.Generator().manual_seed(int(o["seed"]) + 1)
    tic, bs, shape = time.perf_counter(), int(o["batch_size"]), tuple(student.info.shape)
    for step in range(1, int(o["steps"]) + 1):
        x, y = data.draw(bs, g_data)
        y = y if k else None
        with torch.no_grad():  # fresh student samples every step, labelled like the real batch
            fake = as_judged(student.sample_from(torch.randn((bs, *shape), generator=g_noise), y, bs),
                             student.info.kind)
        real_logits, r1 = r1_penalty(disc, x, y)
        fake_logits = disc(fake, y)
        loss = (torch.nn.functional.softplus(-real_logits).mean()
                + torch.nn.functional.softplus(fake_logits).mean() + 0.5 * float(o["r1_gamma"]) * r1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, int(o["steps"]) // 5) == 0 or step == int(o["steps"]):
            log(f"screen-train step {step}/{o['steps']}: loss {loss.item():.4f}, "
                f"logit real {real_logits.mean().item():+.3f} fake {fake_logits.mean().item():+.3f}")
    disc.eval()
    held = _heldout(disc, data, student, k, g_noise)
    cfg = {"kind": KIND, "disc": {"kind": o["disc"], "options": o["disc_options"]},
           "data": {"spec": data_spec, "shape": list(shape), "num_classes": k},
           "student": {"path": str(resolve_checkpoint(student_ckpt).resolve()),
                       "weights": weights_digest(student_ckpt)},
           "train": {key: o[key] for key in DEFAULTS},
           "judged": JUDGED, "heldout_accuracy": held and held["accuracy"],
           "heldout_scale": held and held["scale"], "seconds": round(time.perf_counter() - tic, 1)}
    with output_dir(out, expect=EXPECT, overwrite=overwrite):
        ck.save_model(out, disc, cfg)
    if held is not None:
        scale = ("none (the scores separate real from fake completely, or do not vary)"
                 if held["scale"] is None else f"{held['scale']:.2f}")
        log(f"held-out (real test split vs fresh student samples): accuracy {held['accuracy']:.3f}, "
            f"logit scale {scale} (1 = calibrated: resample at T = 1 is importance resampling "
            f"by the estimated ratio; a > 1 means the logit is too flat, T ~ 1/a)")
    return Path(out)


def realism_for_stage(student_ckpt: str | Path, data_spec: str, out: Path, options: dict | None,
                      log=print) -> Path:
    """A recipe's screen stage: the realism discriminator of ``student_ckpt`` in ``out``,
    reused when it was trained against these student weights with these options."""
    want = settings(options)
    if (out / ck.CONFIG).is_file():
        cfg = ck.read_config(out)
        same = json.loads(json.dumps(want)) == cfg.get("train")  # JSON-normalised (tuples, ints)
        if (same and cfg.get("judged") == JUDGED  # trained before images were clamped: retrain
                and cfg.get("student", {}).get("weights") == weights_digest(student_ckpt)):
            return out
    log(f"[screen-train] realism discriminator -> {out}")
    return train_realism(student_ckpt, data_spec, out, log=lambda *_: None, overwrite=True, **want)


def _heldout(disc, data, student: Generator, k: int, gen: torch.Generator) -> dict | None:
    """Real test split vs as many fresh student samples: how well the ratio generalises.

    ``accuracy``: 0.5 = the student is indistinguishable; near 1 on train but not here =
    overfit. ``scale``: the ``a`` of the logistic fit ``sigmoid(a * D + b)`` on these
    held-out samples (Platt scaling). ``D`` is a calibrated log-ratio where ``a`` is about 1;
    a flat logit (``a`` >> 1, e.g. from strong R1) makes resampling at T = 1 nearly uniform."""
    try:
        x, y = data.reference(512, split="test", seed=0)
    except Exception:  # an infinite or split-less data set: nothing held out to report
        return None
    y = y if k else None
    with torch.no_grad():
        fake = as_judged(student.sample_from(torch.randn((len(x), *x.shape[1:]), generator=gen), y),
                         student.info.kind)
        s_real, s_fake = disc(x, y).mean(1), disc(fake, y).mean(1)
    right = (s_real > 0).sum() + (s_fake <= 0).sum()
    a = platt_scale(s_real.float(), s_fake.float())
    return {"accuracy": round(float(right) / (2 * len(x)), 4),
            "scale": round(a, 4) if math.isfinite(a) else None}


def platt_scale(s_real: torch.Tensor, s_fake: torch.Tensor) -> float:
    """The slope ``a`` of the logistic regression ``P(real | s) = sigmoid(a * s + b)`` fitted
    to scores of real and fake samples, the two sets weighed equally. NaN where no finite
    slope exists: constant scores, or scores that separate the two sets completely (the
    maximum-likelihood slope is then infinite)."""
    lo_r, hi_r, lo_f, hi_f = s_real.min(), s_real.max(), s_fake.min(), s_fake.max()
    if not (hi_r > lo_f and hi_f > lo_r):  # no overlap: separable (or both constant)
        return math.nan
    s = torch.cat([s_real, s_fake]).double()
    t = torch.cat([torch.ones(len(s_real)), torch.zeros(len(s_fake))]).double()
    w = torch.cat([torch.full((len(s_real),), 0.5 / len(s_real)),
                   torch.full((len(s_fake),), 0.5 / len(s_fake))]).double()
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([ab], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (w * torch.nn.functional.binary_cross_entropy_with_logits(
            ab[0] * s + ab[1], t, reduction="none")).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float(ab[0].detach())


def realism_scorer(path: str | Path, student: Generator, student_ckpt: str | Path | None = None):
    """The logit of the realism discriminator in ``path`` (higher = more data-like);
    refuses one trained against other data or (given ``student_ckpt``) another student."""
    cfg = ck.read_config(path)
    if cfg.get("kind") != KIND:
        raise RealismError(f"{path}: not a realism discriminator (make one with slimstep "
                           f"screen-train --ckpt STUDENT --data SPEC --out DIR)")
    d = cfg["data"]
    if tuple(d["shape"]) != tuple(student.info.shape) or d["spec"] != student.info.spec:
        raise RealismError(f"{path} judges '{d['spec']}' {tuple(d['shape'])}, the student makes "
                           f"'{student.info.spec}' {tuple(student.info.shape)}")
    if student_ckpt is not None and weights_digest(student_ckpt) != cfg["student"]["weights"]:
        raise RealismError(f"{path} was trained against another student ({cfg['student']['path']}): "
                           f"the density ratio it estimates is that student's; run screen-train "
                           f"for this one")
    disc = build_realism_disc(cfg["disc"]["kind"], d["shape"], int(d["num_classes"]),
                              cfg["disc"]["options"])
    disc.load_state_dict(ck.load_weights(path))
    return disc_score(disc.eval(), int(d["num_classes"]), student.info.kind)
