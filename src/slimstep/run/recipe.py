"""The recipe: its schema, loading and resolution into :class:`Stage` values, and the
hashes that name each stage's product (``slimstep run RECIPE``).

A **recipe** (``configs/digits/all.yaml``) is a list of named *stages*, each of
one kind:

* ``teacher`` — train a flow-matching teacher (``config``);
* ``pairs`` — solve a teacher's ODE from per-seed noise (``teacher``, ``n``,
  ``solver``, ``steps``);
* ``distill`` — train a method (``method``, ``config``; optional ``teacher``,
  ``pairs``, ``init``: names of earlier stages);
* ``screen`` — noise screening with a one-step student (``student``,
  ``candidates``, ``scorer``, ``final``, optional ``teacher``, ``select``,
  ``temperature``), evaluated only; ``scorer: realism`` first trains the
  student's realism discriminator (:mod:`slimstep.realism`; optional
  ``realism: {steps: ...}``) into the stage's directory.

Every stage may carry ``overrides`` (``key=value`` strings, as on the command
line). A stage names only stages above it.

**Hashes.** A stage's hash covers its resolved config, its stage parameters and the
hashes of every stage it reads (a realism screen stage's also covers its
discriminator's effective training settings, screen-train's defaults included);
:func:`config_hash` leaves out the training settings that do not change the weights.
The shipped recipes' hashes are pinned by ``tests/test_config_hash.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from slimstep import realism
from slimstep.config import DEFAULTS, ConfigError, _yaml, find_config, load_config
from slimstep.data import SPEC_KINDS, DataError, missing_path, student_data
from slimstep.eval import default_n as default_n  # the protocol's, named here for recipes
from slimstep.eval.features import CLASSIFIERS
from slimstep.methods import method_names
from slimstep.screen import SELECTS
from slimstep.spec import DataSection, Named, PairsConfig, RunConfig, is_int, is_number

KINDS = ("teacher", "pairs", "distill", "screen")
#: Keys a stage of each kind may hold (besides ``kind`` and ``overrides``).
STAGE_KEYS = {
    "teacher": {"config"},
    "pairs": {"teacher", "n", "solver", "steps", "seed"},
    "distill": {"method", "config", "teacher", "pairs", "init"},
    "screen": {"student", "teacher", "candidates", "scorer", "final", "select", "temperature", "realism"},
}
EVAL_DEFAULTS = {"n": None, "seeds": [0], "teacher_nfes": [1, 2, 4, 8, 16, 32], "speed_batch": 256}
#: Part of an evaluation's cache key (not of any model's hash): bumped when what a row holds
#: changes, so a rerun re-evaluates (and reuses every trained model). Issue 24: MACs per
#: sample on every row (attention counted), toy floors averaged over the seeds' draws.
PROTOCOL_VERSION = 2
#: Training settings that do not change the trained weights: left out of the hash.
UNHASHED_TRAIN = ("log_every", "ckpt_every", "keep", "device")


class RecipeError(ConfigError):
    """A recipe file is unusable (one clear line)."""


@dataclass
class Stage:
    name: str
    kind: str
    params: dict
    cfg: RunConfig | None = None  # resolved training config (teacher, distill)
    deps: dict = field(default_factory=dict)  # role -> stage name
    spec: str = ""  # data spec of the stage's model
    hash: str = ""
    overrides: list = field(default_factory=list)

    @property
    def trains(self) -> bool:
        return self.kind in ("teacher", "distill")


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def config_hash(cfg: RunConfig) -> str:
    """Hash of what determines a training run's weights (not its logging): of the plain
    config as written, so typing it changed no hash."""
    plain = cfg.to_dict()
    keep = {k: plain[k] for k in ("data", "net", "method", "train")}
    keep["train"] = {k: v for k, v in keep["train"].items() if k not in UNHASHED_TRAIN}
    return digest(keep)


# ---------------------------------------------------------------- the recipe

def load_recipe(path: str | Path, data: str | None = None) -> tuple[dict, list[Stage]]:
    """Read and resolve a recipe: (eval settings, stages in file order). ``data``, when
    given, is the data spec of every teacher stage (``slimstep run --data``: a generic
    recipe such as ``images/run-16`` names no data set of its own); the students take
    their teacher's."""
    try:
        path = find_config(path, "recipe")
    except ConfigError as e:
        raise RecipeError(str(e)) from None
    try:
        raw = _yaml(path.read_text()) or {}
    except yaml.YAMLError as e:  # with its first line
        raise RecipeError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), dict) or not raw["stages"]:
        raise RecipeError(f"{path}: a recipe is a mapping with a non-empty 'stages' mapping")
    unknown = set(raw) - {"stages", "eval", "title"}
    if unknown:
        raise RecipeError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}")
    ev = _eval_settings(path, raw.get("eval"))
    ev["title"] = raw.get("title") or path.stem
    stages: dict[str, Stage] = {}
    for name, body in raw["stages"].items():
        _check_name(path, name)
        stages[name] = _resolve(path, str(name), body or {}, stages, data)
    return ev, list(stages.values())


#: a stage name becomes a folder of the run: one path component, never ``.``/``..``, no
#: separator, no leading dot (the run's temporary files start with one)
STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def _check_name(path: Path, name) -> None:
    if not isinstance(name, str) or not STAGE_NAME.fullmatch(name):
        raise RecipeError(f"{path}: stage name {str(name)!r} is not a plain folder name (letters, digits, "
                          "'_', '-', '+', '.'; starting with a letter or digit; at most 100 characters)")


def _whole(v, low: int) -> bool:
    return is_int(v) and v >= low


def _eval_settings(path: Path, given) -> dict:
    """The recipe's ``eval`` section, every value checked (a value is never replaced)."""
    if given is not None and not isinstance(given, dict):
        raise RecipeError(f"{path}: eval is a mapping of {', '.join(EVAL_DEFAULTS)}, not {given!r}")
    ev = {**EVAL_DEFAULTS, **(given or {})}
    if set(ev) - set(EVAL_DEFAULTS):
        raise RecipeError(f"{path}: unknown eval key(s) {', '.join(sorted(set(ev) - set(EVAL_DEFAULTS)))}")
    if ev["n"] is not None and not _whole(ev["n"], 1):
        raise RecipeError(f"{path}: eval.n must be an integer >= 1 (or left out for the protocol's "
                          f"default), not {ev['n']!r}")
    for key, low in (("seeds", 0), ("teacher_nfes", 1)):
        v = ev[key]
        if not (isinstance(v, list) and v and all(_whole(x, low) for x in v)):
            raise RecipeError(f"{path}: eval.{key} must be a non-empty list of integers >= {low}, "
                              f"not {v!r}")
    if not _whole(ev["speed_batch"], 1):
        raise RecipeError(f"{path}: eval.speed_batch must be an integer >= 1, not {ev['speed_batch']!r}")
    return ev


def _check_screen(where: str, body: dict, deps: dict, spec: str) -> None:
    """A screen stage's settings, checked at load as ``slimstep sample --screen`` checks them
    (a bad one would otherwise fail after every stage above it had trained)."""
    n = body["candidates"]
    if not _whole(n, 1):
        raise RecipeError(f"{where}: candidates must be an integer >= 1, not {n!r}")
    scorers = ("classifier", "density", "teacher", "realism")  # discriminator needs a file: CLI only
    if body["scorer"] not in scorers:
        raise RecipeError(f"{where}: scorer must be one of {', '.join(scorers)}, not {body['scorer']!r}")
    if body["scorer"] in ("classifier", "density") and spec.partition(":")[0] not in CLASSIFIERS:
        raise RecipeError(f"{where}: scorer '{body['scorer']}' uses the evaluation classifier of "
                          f"{' or '.join(CLASSIFIERS)}; the student is on '{spec}'")
    if body["scorer"] == "teacher" and "teacher" not in deps:
        raise RecipeError(f"{where}: scorer: teacher needs a teacher stage")
    if body["final"] not in ("student", "teacher"):
        raise RecipeError(f"{where}: final must be student or teacher, not {body['final']!r}")
    select = body.get("select", "argmax")
    if select not in SELECTS:
        raise RecipeError(f"{where}: select must be one of {', '.join(SELECTS)}, not {select!r}")
    t = body.get("temperature")
    if t is not None and (select != "resample" or not is_number(t) or t <= 0):
        raise RecipeError(f"{where}: temperature is a positive finite number and goes with "
                          f"select: resample, not {t!r}")


def _resolve(path: Path, name: str, body: dict, done: dict[str, Stage], data: str | None = None) -> Stage:
    where = f"{path}: stage '{name}'"
    if not isinstance(body, dict):
        raise RecipeError(f"{where} must be a mapping")
    body = dict(body)
    kind = body.pop("kind", None) or ("distill" if "method" in body else None)
    if kind not in KINDS:
        raise RecipeError(f"{where}: kind must be one of {', '.join(KINDS)} (or give a method)")
    overrides = body.pop("overrides", []) or []
    if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        raise RecipeError(f"{where}: overrides is a list of key=value strings (one per line, "
                          f"'- train.steps=100'), not {overrides!r}")
    extra = set(body) - STAGE_KEYS[kind]
    if extra:
        raise RecipeError(f"{where}: unknown key(s) {', '.join(sorted(extra))} for a {kind} stage")
    st = Stage(name, kind, body, overrides=list(overrides))
    for role in ("teacher", "pairs", "init", "student"):
        if role in body:
            dep = body[role]
            if dep not in done:
                raise RecipeError(f"{where}: {role} '{dep}' is not a stage above it")
            st.deps[role] = dep
    need = {"pairs": ["teacher"], "screen": ["student"], "teacher": [], "distill": []}[kind]
    for role in need:
        if role not in st.deps:
            raise RecipeError(f"{where}: a {kind} stage needs '{role}'")

    def dep(role):
        return done[st.deps[role]] if role in st.deps else None

    if st.trains:
        if "config" not in body:
            raise RecipeError(f"{where}: needs 'config' (a YAML file, relative to the recipe)")
        try:
            cfg = load_config(path.parent / body["config"], list(overrides))
        except ConfigError as e:
            raise RecipeError(f"{where}: {e}") from None
        if kind == "teacher" and cfg.method.name != "flow_matching":
            raise RecipeError(f"{where}: a teacher trains flow_matching, its config names "
                              f"'{cfg.method.name}'")
        if kind == "teacher":
            if data is not None:
                cfg = cfg.replace(data=DataSection(data, cfg.data.options))
            _check_data_path(where, cfg.data.spec)
        if kind == "distill":
            method = body.get("method") or cfg.method.name
            if method not in method_names(students_only=True):
                raise RecipeError(f"{where}: unknown method {method!r} (one of "
                                  f"{', '.join(method_names(students_only=True))})")
            named = cfg.method.name
            if named not in (method, DEFAULTS["method"]["name"]):
                raise RecipeError(f"{where}: {body['config']} is a recipe for '{named}', not '{method}'")
            cfg = cfg.replace(method=Named(method, cfg.method.options))
            if dep("teacher") is not None:  # its teacher's data, at the teacher's resolution and crop
                try:
                    d = student_data(cfg.data.to_dict(), dep("teacher").spec, dep("teacher").cfg.data.options)
                except DataError as e:
                    raise RecipeError(f"{where}: {e}") from None
                cfg = cfg.replace(data=DataSection(d["spec"], d["options"]))
        st.cfg, st.spec = cfg, cfg.data.spec
        own = config_hash(cfg)
    else:
        if overrides:
            raise RecipeError(f"{where}: only teacher and distill stages take overrides")
        if kind == "pairs":
            given = {k: v for k, v in body.items() if k != "teacher"}
            try:  # every value checked now, not after the teacher has trained
                pc = PairsConfig.from_dict(given, name)
            except ConfigError as e:
                raise RecipeError(f"{where}: {e}") from None
            for key in ("n", "solver", "steps", "seed"):  # the recipe's defaults (spec.PairsConfig)
                body.setdefault(key, getattr(pc, key))
        if kind == "screen":
            body.setdefault("candidates", 16)
            body.setdefault("scorer", "classifier")
            body.setdefault("final", "student")
            if body["final"] == "teacher" and "teacher" not in st.deps:
                raise RecipeError(f"{where}: final: teacher needs a teacher stage")
        st.spec = (dep("teacher") or dep("student")).spec
        if kind == "screen":
            _check_screen(where, body, st.deps, dep("student").spec)
        own = digest(body)
        if kind == "screen" and body["scorer"] == "realism":
            # the discriminator's effective settings, screen-train's defaults included: a change
            # of those defaults must not reuse the rows of a discriminator trained the old way
            try:  # checked now, not after every stage above it has trained
                effective = realism.settings(body.get("realism"))
            except realism.RealismError as e:
                raise RecipeError(f"{where}: {e}") from None
            own = digest([own, effective, realism.JUDGED])
    st.hash = digest([kind, own, {r: done[d].hash for r, d in sorted(st.deps.items())}])
    return st


def _check_data_path(where: str, spec: str) -> None:
    """A teacher's data must be a known kind and its files must exist before anything
    trains (a generic recipe's placeholder path is caught here, not after the stages
    before it have run)."""
    if spec.partition(":")[0] not in SPEC_KINDS:
        raise RecipeError(f"{where}: unknown data spec '{spec}' (a kind of {', '.join(SPEC_KINDS)})")
    if missing_path(spec) is not None:
        raise RecipeError(f"{where}: its data {spec} does not exist (slimstep run RECIPE --data SPEC "
                          "names the data set of every teacher)")
