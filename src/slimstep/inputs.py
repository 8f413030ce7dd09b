"""A training run's inputs — teacher, pairs, init — resolved and checked in one place.

``slimstep distill`` (:mod:`slimstep.cli`) and a ``slimstep run`` stage
(:mod:`slimstep.run`) both call :func:`resolve_inputs`, so the two paths cannot
assemble a run differently. It loads the teacher, makes the config's data set the
teacher's, at the teacher's resolution and crop (a config that names another one is
refused), checks that the pairs and the init exist in their formats, and writes the
resolved absolute paths into the config (config.json records them). Pairs made by
another teacher are refused by the training loop itself
(:func:`slimstep.data.pairs.check_teacher`), which every path goes through.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slimstep import checkpoint as ckpt
from slimstep.config import DEFAULTS
from slimstep.data import student_data
from slimstep.data.pairs import read_manifest
from slimstep.errors import ConfigError
from slimstep.generator import Generator, load, resolve_checkpoint
from slimstep.spec import DataSection, RunConfig


@dataclass(frozen=True)
class Inputs:
    """What a run reads besides its data: the loaded teacher and the checked paths."""

    teacher: Generator | None = None
    pairs: Path | None = None
    init: Path | None = None


def resolve_inputs(cfg: RunConfig, *, teacher: str | Path | None = None, pairs: str | Path | None = None,
                   init: str | Path | None = None, device="cpu") -> tuple[RunConfig, Inputs]:
    """Load and check ``teacher``, ``pairs`` and ``init`` (each optional) for ``cfg``; returns
    ``cfg`` with their absolute paths recorded (and a teacher's data set) and the inputs.
    Bad input is one :class:`~slimstep.errors.SlimstepError` line."""
    gen = None
    if teacher is not None:
        gen = load(teacher, device)
        spec = cfg.data.spec
        if spec not in (gen.info.spec, DEFAULTS["data"]["spec"]):
            raise ConfigError(f"the config trains on '{spec}' but the teacher on '{gen.info.spec}'")
        data = student_data(cfg.data.to_dict(), gen.info.spec, gen.info.options)
        cfg = cfg.replace(data=DataSection(data["spec"], data["options"]), teacher=str(gen.source))
    pairs_dir = None
    if pairs is not None:
        pairs_dir = Path(pairs).resolve()
        if read_manifest(pairs_dir) is None:
            raise ConfigError(f"--pairs {pairs}: no pairs there (no manifest.json): run slimstep pairs first")
        cfg = cfg.replace(pairs=str(pairs_dir))
    init_dir = None
    if init is not None:
        init_dir = resolve_checkpoint(init).resolve()
        if not (init_dir / ckpt.CONFIG).is_file():
            raise ConfigError(f"--init {init}: not a checkpoint (no {ckpt.CONFIG})")
        cfg = cfg.replace(init=str(init_dir))
    return cfg, Inputs(gen, pairs_dir, init_dir)
