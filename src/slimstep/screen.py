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

* ``classifier`` — the evaluation classifier's probability of the output's class
  (its max-softmax confidence for unconditional models): the model's data set's own
  shipped classifier (digits or Fashion-MNIST);
* ``density`` — k-NN density in the evaluation features: minus the distance from
  the candidate's classifier features to its k-th nearest train-split feature (k = 5);
* ``teacher`` — minus the mean squared distance between the student's output and
  the one-step teacher's output on the same noise. It costs one teacher call per
  candidate, so it screens for fidelity, not for speed;
* ``discriminator`` — a GDD checkpoint's discriminator logit (``--discriminator``);
* ``realism`` — the logit of a discriminator trained on *this student's* outputs
  against the real train split (:mod:`slimstep.realism`, ``slimstep screen-train``):
  an estimate of :math:`\log p_\mathrm{data}/p_S` (``--discriminator DISC``).

**Selection** (``select``): ``argmax`` keeps the best-scoring candidate (ties: the
lowest j); ``resample`` draws candidate j with probability
:math:`\propto \exp(s_j / T)` (``temperature`` T > 0; importance resampling with
the realism score at T = 1). T → 0 gives the argmax, T → ∞ a uniform pick. The
draw of output ``i`` is one uniform from its own CPU generator, seeded
``(seed + i) XOR 0x85EBCA6B`` (a stream apart from every plain seed of the call
for n < 2·10⁹), so a screened output still depends on its own seed only.

``final="teacher"`` maps the chosen noise once more with the one-step teacher.

**NFE** (:func:`screen_nfe`, reported by ``sample``, ``eval``, the JSON and the
report alike): N candidates × (the student's NFE + the scorer's network calls:
the ``teacher`` scorer's one-step teacher) + the final call (the teacher's NFE for
``final="teacher"``; 0 for ``final="student"``, whose output is the chosen
candidate's, already computed). Classifier and discriminator evaluations are
scoring, not generator evaluations, and are not counted in NFE.

**MACs** (:func:`screen_macs`): NFE counts calls, not compute — an SLT student's one call runs
its block K times, and the classifier, discriminator and realism scorers run networks NFE
leaves out. The cost per screened output is therefore also given in multiply-accumulates,
counted (``torch.utils.flop_counter``) over one whole screened output: the N candidates'
student calls with every block pass, the scorer on all N, and the final teacher call. Only
matmuls, convolutions and attention are counted; the density scorer's k-NN distances
(``cdist``) and element-wise work are not.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from slimstep import checkpoint as ck
from slimstep.errors import SlimstepError
from slimstep.eval import protocol_split
from slimstep.eval.features import CLASSIFIERS, FeatureClassifier
from slimstep.eval.speed import count_macs
from slimstep.generator import Generator, load_net, seeded_noise
from slimstep.nets.discriminators import build_discriminator, sum_head_means
from slimstep.realism import realism_scorer

SCORERS = ("classifier", "density", "teacher", "discriminator", "realism")
SELECTS = ("argmax", "resample")
SEED_STEP = 0x9E3779B1  # golden-ratio Weyl step
SELECT_MASK = 0x85EBCA6B  # seeds of the resampling draws: (seed + i) ^ mask, bit 31 set

Scorer = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


class ScreenError(SlimstepError, ValueError):
    """Screening options that cannot work together (one clear line)."""


def candidate_seeds(seed: int, i: int, n_candidates: int) -> list[int]:
    """Seeds of the candidates of output ``i``: ``seed + i``, then
    ``(seed + i + j * 0x9E3779B1) mod 2**32`` for j >= 1."""
    return [seed + i] + [(seed + i + j * SEED_STEP) % 2**32 for j in range(1, n_candidates)]


def _protocol_classifier(spec: str, name: str) -> FeatureClassifier:
    """The shipped evaluation classifier of the model's data set (digits, Fashion-MNIST)."""
    kind = spec.partition(":")[0]
    if kind not in CLASSIFIERS:
        raise ScreenError(f"scorer '{name}' uses the evaluation classifier of "
                          f"{' or '.join(CLASSIFIERS)}; the model is on '{spec}'")
    return CLASSIFIERS[kind].load()


def classifier_scorer(spec: str = "digits") -> Scorer:
    clf = _protocol_classifier(spec, "classifier")

    def score(x, y, z):
        p = torch.softmax(clf.logits(x.clamp(-1, 1)), dim=1)
        if y is None:
            return p.max(1).values
        y = y.cpu()
        known = y < p.shape[1]  # the null class (unconditional sampling) scores max confidence
        return torch.where(known, p.gather(1, y.clamp(max=p.shape[1] - 1).view(-1, 1)).squeeze(1),
                           p.max(1).values)

    return score


def density_scorer(spec: str = "digits", k: int = 5) -> Scorer:
    clf = _protocol_classifier(spec, "density")
    ref = clf.features(protocol_split(spec, "train")[0])

    def score(x, y, z):
        d = torch.cdist(clf.features(x.clamp(-1, 1)), ref)
        return -d.kthvalue(k, dim=1).values

    return score


def teacher_scorer(teacher: Generator, batch_size: int = 256) -> Scorer:
    def score(x, y, z):
        xt = teacher.sample_from(z, y, batch_size)
        return -(x - xt).pow(2).flatten(1).mean(1)

    score.nfe = teacher.nfe  # one teacher sample per candidate: part of screening's NFE
    return score


def screen_nfe(n_candidates: int, student: Generator, scorer: Scorer, final: str = "student",
               teacher: Generator | None = None) -> int:
    """Generator evaluations per screened output: N x (student + scorer calls) + the final call."""
    last = teacher.nfe if final == "teacher" and teacher is not None else 0
    return n_candidates * (student.nfe + int(getattr(scorer, "nfe", 0))) + last


def screen_macs(student: Generator, n_candidates: int, scorer: Scorer, final: str = "student",
                teacher: Generator | None = None, y: torch.Tensor | None = None) -> int:
    """Multiply-accumulates of one screened output (module doc): :func:`screen` of one sample
    under the FLOP counter (seed 0; the count does not depend on the seed)."""
    return count_macs(lambda: screen(student, 1, n_candidates, scorer, final=final,
                                     teacher=teacher, y=y))


def discriminator_scorer(ckpt: str | Path) -> Scorer:
    """The discriminator of a GDD run (its newest training snapshot)."""
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

    def score(x, y, z):  # the mean over heads of each head's mean patch logit
        with torch.no_grad():
            return (sum_head_means(disc(x, y).float(), disc.head_sizes)
                    / len(disc.head_sizes)).cpu()

    return score


def make_scorer(name: str, student: Generator, teacher: Generator | None = None,
                discriminator: str | None = None, student_ckpt: str | Path | None = None) -> Scorer:
    if name == "classifier":
        return classifier_scorer(student.info.spec)
    if name == "density":
        return density_scorer(student.info.spec)
    if name == "teacher":
        if teacher is None:
            raise ScreenError("--scorer teacher needs --teacher CKPT (a one-step checkpoint)")
        return teacher_scorer(teacher)
    if name == "discriminator":
        if not discriminator:
            raise ScreenError("--scorer discriminator needs --discriminator CKPT (a GDD run "
                              "whose snapshot holds a discriminator); none was given")
        return discriminator_scorer(discriminator)
    if name == "realism":

        if not discriminator:
            raise ScreenError("--scorer realism needs --discriminator DISC (made by slimstep "
                              "screen-train --ckpt STUDENT --data SPEC --out DISC); none was given")
        return realism_scorer(discriminator, student, student_ckpt)
    raise ScreenError(f"unknown scorer '{name}' (expected one of {', '.join(SCORERS)})")


def select_candidates(scores: torch.Tensor, select: str, temperature: float,
                      seeds: list[int]) -> torch.Tensor:
    """Chosen candidate per row of ``scores`` [outputs, N]: the argmax, or a draw with
    probability softmax(scores / T) by inverse CDF on one uniform from row i's
    generator (seeded ``seeds[i] ^ SELECT_MASK``)."""
    if select == "argmax":
        return scores.argmax(1)
    p = torch.softmax(scores.double() / temperature, dim=1)  # float64: T -> 0 stays one-hot
    u = torch.stack([torch.rand((), generator=torch.Generator().manual_seed((s ^ SELECT_MASK) % 2**32),
                                dtype=torch.float64) for s in seeds])
    j = torch.searchsorted(p.cumsum(1), u[:, None], right=True).squeeze(1)
    return j.clamp(max=scores.shape[1] - 1)  # u above a cumsum rounded below 1


def check_select(select: str, temperature: float | None) -> float:
    """The temperature to use (1 when not given); one clear error for a bad pair."""
    if select not in SELECTS:
        raise ScreenError(f"--select must be one of {', '.join(SELECTS)}, not '{select}'")
    if temperature is not None and select == "argmax":
        raise ScreenError("--temperature goes with --select resample (argmax has none)")
    t = 1.0 if temperature is None else float(temperature)
    if not t > 0:  # also rejects nan
        raise ScreenError(f"--temperature must be > 0, not {temperature} (T -> 0 is --select argmax)")
    return t


@torch.no_grad()
def screen(student: Generator, n: int, n_candidates: int, scorer: Scorer, *, seed: int = 0,
           final: str = "student", teacher: Generator | None = None,
           y: torch.Tensor | None = None, batch_size: int = 256, chunk: int = 64,
           select: str = "argmax", temperature: float | None = None
           ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """``n`` screened samples (CPU). Returns (x, labels, info) where ``info`` holds the
    chosen candidate index and its score per output, and the NFE per output."""
    temperature = check_select(select, temperature)
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
        s = scorer(x, yr, z).reshape(len(idx), n_candidates).float().cpu()
        j = select_candidates(s, select, temperature, [seed + i for i in idx])
        pick = torch.arange(len(idx)) * n_candidates + j
        xs.append(teacher.sample_from(z[pick], yc, batch_size) if final == "teacher" else x[pick])
        ys.append(yc)
        chosen.append(j)
        best.append(s.gather(1, j[:, None]).squeeze(1))
    labels = torch.cat(ys) if ys and ys[0] is not None else None
    return torch.cat(xs), labels, {"candidate": torch.cat(chosen), "score": torch.cat(best),
                                   "nfe": screen_nfe(n_candidates, student, scorer, final, teacher)}
