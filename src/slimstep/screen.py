r"""Noise screening: draw N candidate noises per output, map all of them with a
cheap one-step student, score each candidate, keep the best.

**Candidate seeds.** Output ``i`` of a call with ``seed`` has candidates
``j = 0..N-1`` with noise from the CPU generator seeded

.. math:: s_{ij} = (\mathrm{seed} + i + j \cdot \mathtt{0x9E3779B1}) \bmod 2^{32}
          \quad (j \ge 1),\qquad s_{i0} = \mathrm{seed} + i,

so candidate 0 is exactly the unscreened sample of ``slimstep sample`` (N = 1
reproduces it), and every output depends only on its own seed — not on n, the
batch size or the device (EDM's per-seed rule). Modulo 2^32 because torch's CPU
generator keeps only the low 32 bits of a seed (seeds 2^32 apart give the same
noise). The golden-ratio step is a Weyl sequence: for j ≤ 4096 it stays more than
765,000 away from 0 mod 2^32, so no candidate seed equals the plain seed of
another output of the same call while n < 765,000. The class label of output ``i``
(conditional models) is drawn from seed ``seed + i`` as in plain sampling and
shared by all its candidates, so screening never changes the class histogram.

**Scorers** (higher = better; one score per candidate):

* ``classifier`` — the digits classifier's probability of the output's class
  (its max-softmax confidence for unconditional models);
* ``density`` — k-NN density in the evaluation features: minus the distance from
  the candidate's digits-classifier features to its k-th nearest train-split
  feature (k = 5);
* ``teacher`` — minus the mean squared distance between the student's output and
  the one-step teacher's output on the same noise. It costs one teacher call per
  candidate, so it screens for fidelity, not for speed;
* ``discriminator`` — a GDD checkpoint's discriminator logit (``--discriminator``).

``final="teacher"`` maps the chosen noise once more with the one-step teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from slimstep.errors import SlimstepError
from slimstep.generator import Generator, seeded_noise

SCORERS = ("classifier", "density", "teacher", "discriminator")
SEED_STEP = 0x9E3779B1  # golden-ratio Weyl step

Scorer = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


class ScreenError(SlimstepError, ValueError):
    """Screening options that cannot work together (one clear line)."""


def candidate_seeds(seed: int, i: int, n_candidates: int) -> list[int]:
    """Seeds of the candidates of output ``i``: ``seed + i``, then
    ``(seed + i + j * 0x9E3779B1) mod 2**32`` for j >= 1."""
    return [seed + i] + [(seed + i + j * SEED_STEP) % 2**32 for j in range(1, n_candidates)]


def _digits_only(gen: Generator, name: str) -> None:
    if gen.info.spec != "digits":
        raise ScreenError(f"scorer '{name}' uses the digits classifier; the model is on "
                          f"'{gen.info.spec}'")


def classifier_scorer() -> Scorer:
    from slimstep.eval.features import DigitsClassifier

    clf = DigitsClassifier.load()

    def score(x, y, z):
        p = torch.softmax(clf.logits(x.clamp(-1, 1)), dim=1)
        if y is None:
            return p.max(1).values
        y = y.cpu()
        known = y < p.shape[1]  # the null class (unconditional sampling) scores max confidence
        return torch.where(known, p.gather(1, y.clamp(max=p.shape[1] - 1).view(-1, 1)).squeeze(1),
                           p.max(1).values)

    return score


def density_scorer(k: int = 5) -> Scorer:
    from slimstep.data.digits import load_digits_split
    from slimstep.eval.features import DigitsClassifier

    clf = DigitsClassifier.load()
    ref = clf.features(load_digits_split("train")[0])

    def score(x, y, z):
        d = torch.cdist(clf.features(x.clamp(-1, 1)), ref)
        return -d.kthvalue(k, dim=1).values

    return score


def teacher_scorer(teacher: Generator, batch_size: int = 256) -> Scorer:
    def score(x, y, z):
        xt = teacher.sample_from(z, y, batch_size)
        return -(x - xt).pow(2).flatten(1).mean(1)

    return score


def discriminator_scorer(ckpt: str | Path) -> Scorer:
    """The discriminator of a GDD run (its newest training snapshot)."""
    from slimstep.generator import load_net
    from slimstep.nets.discriminators import build_discriminator
    from slimstep.train import checkpoint as ck

    cfg = ck.read_config(ckpt)
    m = cfg.get("method", {})
    snaps = ck.list_snapshots(ckpt)
    if m.get("name") not in ("gdd", "gdd-i") or not snaps:
        raise ScreenError(f"--discriminator {ckpt}: not a GDD run with a training snapshot "
                          f"(the discriminator lives in training_state.pt)")
    shape = list(cfg["data"]["shape"])
    kind = m.get("disc", "auto")
    kind = ("conv" if len(shape) == 3 else "mlp") if kind == "auto" else kind
    tnet = load_net(cfg["teacher"])[0] if kind == "teacher" else None
    disc = build_discriminator(kind, shape, int(cfg["data"].get("num_classes", 0)), teacher=tnet,
                               **dict((m.get("disc_options") or {}).get(kind) or {}))
    disc.load_state_dict(ck.load_training_state(snaps[-1])["modules"]["disc"])
    disc.eval()

    def score(x, y, z):
        with torch.no_grad():
            return disc(x, y).float().reshape(len(x), -1).mean(1).cpu()

    return score


def make_scorer(name: str, student: Generator, teacher: Generator | None = None,
                discriminator: str | None = None) -> Scorer:
    if name == "classifier":
        _digits_only(student, name)
        return classifier_scorer()
    if name == "density":
        _digits_only(student, name)
        return density_scorer()
    if name == "teacher":
        if teacher is None:
            raise ScreenError("--scorer teacher needs --teacher CKPT (a one-step checkpoint)")
        return teacher_scorer(teacher)
    if name == "discriminator":
        if not discriminator:
            raise ScreenError("--scorer discriminator needs --discriminator CKPT (a GDD run "
                              "whose snapshot holds a discriminator); none was given")
        return discriminator_scorer(discriminator)
    raise ScreenError(f"unknown scorer '{name}' (expected one of {', '.join(SCORERS)})")


@torch.no_grad()
def screen(student: Generator, n: int, n_candidates: int, scorer: Scorer, *, seed: int = 0,
           final: str = "student", teacher: Generator | None = None,
           y: torch.Tensor | None = None, batch_size: int = 256, chunk: int = 64
           ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """``n`` screened samples (CPU). Returns (x, labels, info) where ``info`` holds the
    chosen candidate index and its score per output."""
    if final not in ("student", "teacher"):
        raise ScreenError(f"--final must be student or teacher, not '{final}'")
    if final == "teacher" and teacher is None:
        raise ScreenError("--final teacher needs --teacher CKPT (a one-step checkpoint)")
    if n_candidates < 1:
        raise ScreenError("--screen N needs N >= 1")
    shape = tuple(student.info.shape)
    xs, ys, chosen, best = [], [], [], []
    for i0 in range(0, n, chunk):
        idx = list(range(i0, min(n, i0 + chunk)))
        z0, yc = seeded_noise(shape, [seed + i for i in idx], student.num_classes)
        if y is not None:
            yc = y[idx[0]:idx[-1] + 1].long()
        if n_candidates > 1:
            rest, _ = seeded_noise(shape, [s for i in idx
                                           for s in candidate_seeds(seed, i, n_candidates)[1:]])
            z = torch.cat([z0[:, None], rest.view(len(idx), n_candidates - 1, *shape)], 1)
        else:
            z = z0[:, None]
        z = z.reshape(-1, *shape)  # [outputs * candidates], output-major
        yr = yc.repeat_interleave(n_candidates) if yc is not None else None
        x = student.sample_from(z, yr, batch_size)
        s = scorer(x, yr, z).reshape(len(idx), n_candidates)
        j = s.argmax(1)
        pick = torch.arange(len(idx)) * n_candidates + j
        xs.append(teacher.sample_from(z[pick], yc, batch_size) if final == "teacher" else x[pick])
        ys.append(yc)
        chosen.append(j)
        best.append(s.max(1).values)
    labels = torch.cat(ys) if ys and ys[0] is not None else None
    return torch.cat(xs), labels, {"candidate": torch.cat(chosen), "score": torch.cat(best)}
