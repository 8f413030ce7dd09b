"""Executing one stage of a run: where its product lives, whether it is done, and the
training (or pair making) that makes it.

**Reuse.** A trained model lives in ``DIR/<stage>/model-<hash>`` (pairs in
``pairs-<hash>``; :func:`slimstep.run.recipe.config_hash` and the stage hashes). A
rerun reuses a finished model, resumes an interrupted one from its last snapshot and
trains anew when anything upstream changed.
"""

from __future__ import annotations

import time
from pathlib import Path

from slimstep import checkpoint as ckpt
from slimstep.data.pairs import read_manifest
from slimstep.errors import SlimstepError
from slimstep.files import write_json
from slimstep.inputs import resolve_inputs
from slimstep.pairs import generate_pairs
from slimstep.run.recipe import RecipeError, Stage
from slimstep.train.loop import train, training_seconds


def check_contained(out: Path, stages: list[Stage]) -> None:
    """Every folder a stage writes stays inside ``out``: a stage folder (or a model folder in
    it) that is a symbolic link, or resolves elsewhere, is refused before anything runs."""
    root = out.resolve()
    for st in stages:
        for d in (stage_dir(out, st), model_dir(out, st)):
            if d.is_symlink() or not d.resolve().is_relative_to(root):
                raise RecipeError(f"{d} is a symbolic link or leads outside {out}: a run writes only "
                                  "inside its --out (remove the link)")


def stage_dir(out: Path, st: Stage) -> Path:
    return out / st.name


def model_dir(out: Path, st: Stage) -> Path:
    """Where a stage's product lives (a checkpoint, or pair shards)."""
    prefix = {"pairs": "pairs", "screen": "screen"}.get(st.kind, "model")
    return out / st.name / f"{prefix}-{st.hash}"


def root_teacher(st: Stage, by_name: dict[str, Stage]) -> Stage | None:
    """The flow-matching teacher a stage descends from (itself for a teacher)."""
    seen = st
    while seen.kind != "teacher":
        nxt = seen.deps.get("teacher") or seen.deps.get("student") or seen.deps.get("init")
        if nxt is None:
            return None
        seen = by_name[nxt]
    return seen


def _finished(ckpt_dir: Path, steps: int) -> bool:
    return (ckpt_dir / ckpt.CONFIG).is_file() and ckpt.read_config(ckpt_dir).get("step") == steps


def is_done(out: Path, st: Stage) -> bool:
    d = model_dir(out, st)
    if st.kind == "pairs":
        m = read_manifest(d)
        return m is not None and bool(m.get("complete"))
    if st.trains:
        return _finished(d, st.cfg.train.steps)
    return True


def execute(out: Path, st: Stage, deps: dict[str, Path], progress: bool = False) -> float:
    """Run one stage (train or make pairs) and return its wall seconds."""
    d = model_dir(out, st)
    tic = time.perf_counter()
    if st.kind == "pairs":
        p = st.params
        generate_pairs(deps["teacher"], d, int(p["n"]), solver=p["solver"], steps=int(p["steps"]),
                       seed=int(p["seed"]), progress=progress)
    elif st.trains:
        cfg, inputs = resolve_inputs(st.cfg, teacher=deps.get("teacher"), pairs=deps.get("pairs"),
                                     init=deps.get("init"))
        train(cfg, d, resume=bool(ckpt.list_snapshots(d)), teacher=inputs.teacher, progress=progress)
    secs = time.perf_counter() - tic
    write_json(d / "stage.json", {"stage": st.name, "kind": st.kind, "hash": st.hash, "seconds": secs})
    return secs


def stage_train_seconds(out: Path, st: Stage, secs: float | None = None) -> float | None:
    """A trained stage's training time over every invocation that resumed it
    (:func:`~slimstep.train.loop.training_seconds`); else ``secs``, this invocation's."""
    try:
        got = training_seconds(model_dir(out, st)) if st.trains else None
    except (OSError, ValueError, SlimstepError):  # bookkeeping: a damaged file must not stop a run
        got = None
    return got if got is not None else secs
