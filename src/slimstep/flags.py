"""Flags: what a reader must know about a result row before trusting its number.

Each flag is a short badge on the row (report tables, ``slimstep run``'s
summary) and one sentence in the report's notes, said once for all the rows
that carry it:

* ``equals-init`` — **equals its init**: the one-step map did not move from what
  it started from. The *initialisation* of a student is what its weights are
  copied from before training: the teacher for ``gdd``, ``gdd-i``, ``flowmap``,
  ``dmd2``, ``scd``, ``ect`` and ``meanflow`` with ``init: teacher`` (their untrained one-step map is the
  teacher's Euler step, ``x = z + v(z, 0)``), else the stage named by ``init``
  (reflow, SlimFlow, distill fine-tune it; its one-step Euler map is the start).
  The student's samples for the protocol's first seed are compared with the
  initialisation's one-step samples from the *same* seeds (so the same noise):
  the row is flagged when they are closer to each other — FD in the digits
  classifier's features, W2 on 2-D toys, SWD on images — than held-out real data
  is to the reference (the row's real/real floor), i.e. no measurement at this N
  can tell the student from where it started; or, where a data set has no floor,
  when the paired samples agree to ``SHIFT_TOL`` of their spread.
* ``below-floor`` — the headline metric is below the real/real floor: closer to
  the training split than fresh data is, which is copying unless the copy rate
  says otherwise.
* ``fewer-seeds`` — scored on fewer seeds than the recipe asked (a seed's
  evaluation failed: its error is in the notes).
* ``failed``, ``diverged``, ``skipped`` — the stage has no model (training or
  evaluation failed, the NaN guard stopped it, or a stage it reads failed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from slimstep.data import IMAGE_KINDS
from slimstep.eval.fd import feature_stats, frechet_distance
from slimstep.eval.features import DigitsClassifier
from slimstep.eval.swd import patch_swd
from slimstep.eval.toy import w2
from slimstep.methods import method_class, starts_from_teacher
from slimstep.numbers import fmt
from slimstep.spec.results import HEADLINES, Flag, InitCheck, Row

#: id -> (badge, what it means: the sentence said once in the notes)
FLAGS: dict[str, tuple[str, str]] = {
    "equals-init": ("equals its init", (
        "the one-step map did not move from what it started from: its samples are closer to its "
        "initialisation's one-step samples from the same seeds than held-out real data is to the "
        "reference (distance below the real/real floor): at this N its number is its "
        "initialisation's, not the method's (more steps or a higher learning rate, or look at its loss)")),
    "below-floor": ("below floor", (
        "the headline metric is below the real/real floor: the samples are closer to the training "
        "split than held-out data is; a copy rate well above the held-out one means copying")),
    "fewer-seeds": ("fewer seeds", "scored on fewer seeds than the recipe asked: a seed's evaluation failed"),
    "failed": ("failed", "the stage failed: no model to score (the stage table has its error)"),
    "diverged": ("diverged", "training diverged (the NaN guard stopped it): no model to score"),
    "skipped": ("skipped", "a stage it reads failed, so it did not run"),
}
#: Paired samples closer than this fraction of their spread are the same map.
SHIFT_TOL = 1e-3


def flag(fid: str, detail: str = "") -> Flag:
    """The flag ``fid`` with its badge and the row's ``detail``."""
    return Flag(fid, FLAGS[fid][0], detail)


def initialisation(method: str, method_opts: dict, deps: dict) -> str | None:
    """The stage a student's weights start from (None: from scratch), given its method,
    method options and its ``deps`` (role -> stage name)."""
    if method == "meanflow":
        start = method_opts.get("init", method_class("meanflow").Options().init)
        return deps.get("teacher") if start == "teacher" else None  # scratch: a fresh DiT
    if starts_from_teacher(method):  # the method's own declaration
        return deps.get("teacher")
    if method == "slt":  # a fresh shared block, trained to follow the teacher's layers
        return None
    return deps.get("init")  # reflow, annealing-reflow, slimflow, distill: student_net(--init)


def _distance(x: torch.Tensor, x0: torch.Tensor, spec: str) -> tuple[str, float] | None:
    """(metric, value) between two sample sets in the protocol's own space (images: SWD,
    with the initialisation's samples as the reference), or None where there is none."""
    if spec == "digits":
        clf = DigitsClassifier.load()
        fa, fb = clf.features(x.clamp(-1, 1)), clf.features(x0.clamp(-1, 1))  # clamped as evaluate does
        return "fd", float(frechet_distance(*feature_stats(fa), *feature_stats(fb)))
    if spec.startswith("toy2d:"):
        return "w2", float(w2(x, x0))
    if spec.partition(":")[0] in IMAGE_KINDS:
        return "swd", patch_swd(x0.clamp(-1, 1), x.clamp(-1, 1))[0]["swd"]
    return None


def compare_to_init(x: torch.Tensor, x0: torch.Tensor, spec: str, floor: dict, init_name: str) -> dict:
    """How far a student's samples ``x`` are from its initialisation's one-step samples
    ``x0`` from the same seeds: an :class:`~slimstep.spec.results.InitCheck` as its dict
    (``{"init", "shift", "metric", "distance", "floor", "equal"}``, what a row stores).
    ``shift`` is the paired rms difference over the rms spread of ``x0``."""
    x, x0 = x.double(), x0.double()
    if x.shape != x0.shape:
        raise ValueError(f"samples {tuple(x.shape)} and initialisation samples {tuple(x0.shape)} differ in shape")
    spread = (x0 - x0.mean(0)).pow(2).mean().sqrt().clamp_min(1e-12)
    shift = float((x - x0).pow(2).mean().sqrt() / spread)
    metric = distance = near = None
    d = _distance(x.float(), x0.float(), spec)
    if d is not None:
        metric, distance = d
        near = floor.get(metric)
    equal = bool(shift < SHIFT_TOL or (near is not None and distance < near))
    return InitCheck(init_name, shift, metric, distance, near, equal).to_dict()


def metric_moved(row: Row | Mapping[str, Any], init_row: Row | Mapping[str, Any] | None) -> bool:
    """Did the headline metric leave its initialisation's, beyond twice the larger spread
    over seeds (with one seed: by more than 5 %)? Samples closer to the init's than the real/real floor can still score
    apart on paired seeds: a fine-tuned student that moved by 5 % of the spread and cut its
    W2 from 0.133 to 0.116 (sd 0.0017) has moved (issue 10: moons slimflow was flagged)."""
    if not init_row:
        return False
    row, init_row = Row.of(row), Row.of(init_row)
    key = next((k for k in HEADLINES if k in row.metrics and k in init_row.metrics), None)
    if key is None:
        return False
    sd = max((row.metrics_sd or {}).get(key) or 0.0, (init_row.metrics_sd or {}).get(key) or 0.0)
    delta = abs(row.metrics[key] - init_row.metrics[key])
    if sd > 0:
        return delta > 2 * sd
    # one seed, no spread: paired seeds share their noise, so a score that moved by more than
    # 5 % of the init's moved (the demo's distill, FD 12.2 -> 10.1, was flagged; the unmoved
    # MeanFlow of issue 10 scored 62.5 against its init's 62.8)
    return delta > 0.05 * abs(init_row.metrics[key])


def row_flags(row: Row | Mapping[str, Any], seeds_asked: int,
              rows_by_name: Mapping[str, Row | Mapping[str, Any]] | None = None) -> list[dict]:
    """The flags of one scored row (``row["init_check"]`` from :func:`compare_to_init`), as
    the dicts a row stores (:func:`flags_of` gives the records). ``rows_by_name`` (every
    row of the run) lets "equals its init" check the metric too."""
    return [f.to_dict() for f in flags_of(row, seeds_asked, rows_by_name)]


def flags_of(row: Row | Mapping[str, Any], seeds_asked: int,
             rows_by_name: Mapping[str, Row | Mapping[str, Any]] | None = None) -> list[Flag]:
    """The :class:`~slimstep.spec.results.Flag` records of one scored row (see :func:`row_flags`)."""
    row = Row.of(row)
    out = []
    chk = row.init_check
    if chk and chk.equal and chk.shift >= SHIFT_TOL and metric_moved(
            row, (rows_by_name or {}).get(chk.init)):
        chk = None  # close in distribution, but its score moved
    if chk and chk.equal:
        far = (f"{chk.metric.upper()} {fmt(chk.distance)} from {chk.init}'s one-step samples, "
               f"floor {fmt(chk.floor)}" if chk.distance is not None
               else f"paired shift {chk.shift:.1e} of the spread from {chk.init}'s one-step samples")
        out.append(flag("equals-init", far))
    key = row.headline_key
    floor = (row.floor or {}).get(key)
    if key and floor is not None and row.metrics[key] < floor:
        detail = f"{key.upper()} {fmt(row.metrics[key])} < floor {fmt(floor)}"
        if "copy_rate" in row.metrics:
            detail += (f", copy rate {row.metrics['copy_rate']:.2f} (held-out data "
                       f"{row.floor.get('copy_rate', 0.05):.2f})")
        out.append(flag("below-floor", detail))
    got = len(row.per_seed or [])
    if got < seeds_asked:
        errs = "; ".join(f"seed {e['seed']}: {e['error']}" for e in row.failed_seeds or [])
        out.append(flag("fewer-seeds", f"{got} of {seeds_asked}" + (f" ({errs})" if errs else "")))
    return out


def stage_flag(status: Mapping[str, Any]) -> Flag | None:
    """The flag of a stage that has no model, from its status in ``run_stages``."""
    s = status.get("status")
    if s == "skipped":
        return flag("skipped", status.get("error", ""))
    if s == "failed":
        err = status.get("error", "")
        return flag("diverged" if err.startswith("training diverged") else "failed", err)
    return None
