"""``slimstep run RECIPE --out DIR``: every method of a recipe, one evaluation protocol, one report.

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

**Reuse.** A trained model lives in ``DIR/<stage>/model-<hash>``, the hash being
that of its resolved config, its stage parameters and the hashes of every stage
it reads (a realism screen stage's also covers its discriminator's effective
training settings, screen-train's defaults included). A rerun reuses a finished
model, resumes an interrupted one from its last snapshot and trains anew when
anything upstream changed. Evaluations are
kept in ``DIR/<stage>/result.json`` under the same hash and the protocol's, so a
killed run, rerun, redoes only what had not finished.

**One protocol.** Every model is sampled from the same seeds (``eval.seeds``,
``eval.n`` samples from each) and scored by :func:`slimstep.eval.evaluate`; the
table shows the mean over seeds (and their spread). Speed is measured after all
training, one model at a time, at batch 256.

**Parallel stages.** ``jobs`` worker processes (one thread each) train
independent stages side by side — on a small CPU box two single-thread jobs beat
one two-thread job.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import re
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from slimstep.config import CONFIGS, DEFAULTS, ConfigError, _yaml, find_config, load_config
from slimstep.data import SPEC_KINDS, DataError, missing_path, student_data
from slimstep.errors import SlimstepError, os_error
from slimstep.methods import method_names
from slimstep.outdir import output_dir
from slimstep.spec import DataSection, Named, PairsConfig, RunConfig
from slimstep.spec.sampling import VelocityRule

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


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def config_hash(cfg: RunConfig) -> str:
    """Hash of what determines a training run's weights (not its logging): of the plain
    config as written, so typing it changed no hash."""
    plain = cfg.to_dict()
    keep = {k: plain[k] for k in ("data", "net", "method", "train")}
    keep["train"] = {k: v for k, v in keep["train"].items() if k not in UNHASHED_TRAIN}
    return _digest(keep)


def default_n(spec: str) -> int:
    """The protocol's sample count: the floor's size on digits (597) and Fashion-MNIST
    (10,000), 2,000 elsewhere."""
    if spec.partition(":")[0] == "fashion-mnist":
        return 10000
    return 597 if spec == "digits" else 2000


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
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


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
    from slimstep.screen import SELECTS

    n = body["candidates"]
    if not _whole(n, 1):
        raise RecipeError(f"{where}: candidates must be an integer >= 1, not {n!r}")
    scorers = ("classifier", "density", "teacher", "realism")  # discriminator needs a file: CLI only
    if body["scorer"] not in scorers:
        raise RecipeError(f"{where}: scorer must be one of {', '.join(scorers)}, not {body['scorer']!r}")
    if body["scorer"] in ("classifier", "density") and spec != "digits":
        raise RecipeError(f"{where}: scorer '{body['scorer']}' uses the digits classifier; the "
                          f"student is on '{spec}'")
    if body["scorer"] == "teacher" and "teacher" not in deps:
        raise RecipeError(f"{where}: scorer: teacher needs a teacher stage")
    if body["final"] not in ("student", "teacher"):
        raise RecipeError(f"{where}: final must be student or teacher, not {body['final']!r}")
    select = body.get("select", "argmax")
    if select not in SELECTS:
        raise RecipeError(f"{where}: select must be one of {', '.join(SELECTS)}, not {select!r}")
    t = body.get("temperature")
    if t is not None and (select != "resample" or isinstance(t, bool) or not isinstance(t, (int, float))
                          or not math.isfinite(t) or t <= 0):
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
        own = _digest(body)
        if kind == "screen" and body["scorer"] == "realism":
            # the discriminator's effective settings, screen-train's defaults included: a change
            # of those defaults must not reuse the rows of a discriminator trained the old way
            from slimstep import realism

            try:  # checked now, not after every stage above it has trained
                effective = realism.settings(body.get("realism"))
            except realism.RealismError as e:
                raise RecipeError(f"{where}: {e}") from None
            own = _digest([own, effective, realism.JUDGED])
    st.hash = _digest([kind, own, {r: done[d].hash for r, d in sorted(st.deps.items())}])
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


def _check_contained(out: Path, stages: list[Stage]) -> None:
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


# ---------------------------------------------------------------- training

def _finished(ckpt_dir: Path, steps: int) -> bool:
    from slimstep.checkpoint import CONFIG, read_config

    return (ckpt_dir / CONFIG).is_file() and read_config(ckpt_dir).get("step") == steps


def is_done(out: Path, st: Stage) -> bool:
    d = model_dir(out, st)
    if st.kind == "pairs":
        from slimstep.data.pairs import read_manifest

        m = read_manifest(d)
        return m is not None and bool(m.get("complete"))
    if st.trains:
        return _finished(d, st.cfg.train.steps)
    return True


def execute(out: Path, st: Stage, deps: dict[str, Path], progress: bool = False) -> float:
    """Run one stage (train or make pairs) and return its wall seconds."""
    from slimstep import checkpoint as ckpt
    from slimstep.files import write_json
    from slimstep.inputs import resolve_inputs
    from slimstep.pairs import generate_pairs
    from slimstep.train.loop import train

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


def _worker_init(threads: int, parent: int) -> None:
    torch.set_num_threads(threads)
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive ``slimstep run``: killed (``kill``, a closed terminal), the
    parent runs no cleanup, and its workers would train on for minutes. On Linux the kernel
    sends SIGTERM when the parent dies (PR_SET_PDEATHSIG); elsewhere a thread polls."""
    import signal
    import sys
    import threading

    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        try:  # 1 = PR_SET_PDEATHSIG; 0 = done
            armed = ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM)) == 0
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before the call above took effect
        os._exit(1)
    if armed:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _worker(out: str, st: Stage, deps: dict[str, str]) -> tuple[float, str | None]:
    """Entry point in a worker process: never raises, returns (seconds, error line)."""
    try:
        return execute(Path(out), st, {k: Path(v) for k, v in deps.items()}), None
    except SlimstepError as e:  # deliberate failures (bad input, divergence) carry one line
        return 0.0, str(e)
    except OSError as e:  # disk full, permissions: one line naming the file
        return 0.0, str(os_error(e))
    except Exception:  # a bug: keep the whole story for the log
        return 0.0, traceback.format_exc(limit=8)


def run_stages(out: Path, stages: list[Stage], jobs: int = 1, log=print) -> dict[str, dict]:
    """Train / make every stage not yet done, ``jobs`` at a time. Returns
    ``{stage: {"status": done|reused|failed|skipped, "seconds", "error"?}}``."""
    by_name = {s.name: s for s in stages}
    status: dict[str, dict] = {}
    pending = [s for s in stages if s.kind != "screen"]
    for s in stages:
        if s.kind == "screen":
            status[s.name] = {"status": "evaluated only", "seconds": 0.0}

    def deps_of(st):
        return {role: str(model_dir(out, by_name[name])) for role, name in st.deps.items()}

    threads = max(1, (os.cpu_count() or 1) // max(jobs, 1))
    # spawn, not fork: a forked child inherits the parent's OpenMP state and can hang.
    pool = (ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                initializer=_worker_init, initargs=(threads, os.getpid())) if jobs > 1 else None)
    running: dict = {}
    # Longest chain first: a stage that others wait on (or a long one) starts before a leaf.
    work = _chain_work(stages)
    try:
        while pending or running:
            for st in sorted(pending, key=lambda s: -work[s.name]):
                states = [status.get(d, {}).get("status") for d in st.deps.values()]
                if any(s in ("failed", "skipped") for s in states):
                    status[st.name] = {"status": "skipped", "seconds": 0.0,
                                       "error": "an upstream stage failed"}
                    pending.remove(st)
                    log(f"[skip] {st.name}: an upstream stage failed")
                    continue
                if not all(s in ("done", "reused") for s in states):
                    continue
                if is_done(out, st):
                    prev = model_dir(out, st) / "stage.json"
                    secs = json.loads(prev.read_text())["seconds"] if prev.is_file() else float("nan")
                    status[st.name] = {"status": "reused", "seconds": secs}
                    pending.remove(st)
                    log(f"[reuse] {st.name} ({model_dir(out, st)})")
                    continue
                if pool is None:
                    log(f"[run] {st.name} -> {model_dir(out, st)}")
                    secs, err = _worker(str(out), st, deps_of(st))
                    _record(status, st, secs, err, log)
                    pending.remove(st)
                elif len(running) < jobs:
                    log(f"[run] {st.name} -> {model_dir(out, st)}")
                    running[pool.submit(_worker, str(out), st, deps_of(st))] = st
                    pending.remove(st)
            if running:
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for f in finished:
                    st = running.pop(f)
                    secs, err = f.result()
                    _record(status, st, secs, err, log)
            elif pending and not any(  # nothing can start and nothing runs: a stuck dependency
                    all(status.get(d, {}).get("status") in ("done", "reused") for d in s.deps.values())
                    for s in pending):
                raise RecipeError(f"stages {', '.join(s.name for s in pending)} cannot start")
    except BaseException:  # Ctrl-C, SIGTERM, a bug: stop the workers now, do not wait for them
        if pool is not None:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            pool = None
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    for st in stages:  # screening reads trained stages: skip it when one of them is missing
        if st.kind == "screen" and any(status[d]["status"] in ("failed", "skipped") for d in st.deps.values()):
            status[st.name] = {"status": "skipped", "seconds": 0.0, "error": "an upstream stage failed"}
    return status


def _chain_work(stages: list[Stage]) -> dict[str, float]:
    """Training steps on the longest chain from each stage to a leaf (itself included)."""
    work: dict[str, float] = {}
    for st in reversed(stages):  # every reader comes after what it reads
        own = st.cfg.train.steps if st.trains else 0
        readers = [work[r.name] for r in stages if st.name in r.deps.values()]
        work[st.name] = own + max(readers, default=0)
    return work


def _record(status: dict, st: Stage, secs: float, err: str | None, log) -> None:
    if err is None:
        status[st.name] = {"status": "done", "seconds": secs}
        log(f"[done] {st.name} in {secs:.0f} s")
    else:
        status[st.name] = {"status": "failed", "seconds": secs, "error": err.strip().splitlines()[-1]}
        log(f"[failed] {st.name}: {err.strip()}")


# ---------------------------------------------------------------- evaluation

def _mean_metrics(results: list[dict]) -> tuple[dict, dict]:
    keys = [k for k, v in results[0]["metrics"].items() if isinstance(v, (int, float))]
    mean, sd = {}, {}
    for k in keys:
        vals = torch.tensor([float(r["metrics"][k]) for r in results], dtype=torch.float64)
        mean[k] = float(vals.mean())
        sd[k] = float(vals.std()) if len(vals) > 1 else 0.0
    return mean, sd


def score_samples(make, spec: str, ev: dict, name: str, keep: Path | None,
                  data_options: dict | None = None) -> dict:
    """``make(seed, n) -> (x, y, seconds, extra arrays)``; score on every protocol seed, keep
    the first seed's samples (``samples.npz`` + ``samples.png``) under ``keep``. A seed whose
    samples cannot be scored (NaN, ...) is left out and listed in ``failed_seeds``; when
    every seed fails the row cannot exist and the evaluation error is raised.
    ``data_options``: the model's image loader options (:func:`slimstep.data.loader_options`)."""
    from slimstep.data.vae import as_images
    from slimstep.eval import EvalError, evaluate
    from slimstep.files import write_npz
    from slimstep.viz import save_picture

    n = int(ev["n"] if ev["n"] is not None else default_n(spec))
    data_options = data_options or {}
    results, failed, secs = [], [], 0.0
    for i, seed in enumerate(ev["seeds"]):
        x, y, s, extra = make(int(seed), n)
        secs += s
        if i == 0 and keep is not None:  # kept before scoring: a broken model's samples are evidence too
            arrays = {"samples": x.numpy(), "seeds": list(range(seed, seed + n)), "data": spec,
                      "data_options": json.dumps(data_options, sort_keys=True)}
            if y is not None:
                arrays["labels"] = y.numpy()
            write_npz(keep / "samples.npz", **arrays, **extra)
            save_picture(as_images(x[:100], spec), keep / "samples.png", title=name)
        try:
            results.append(evaluate(x, spec, labels=y, seed=int(seed), data_options=data_options))
        except EvalError as e:
            failed.append({"seed": int(seed), "error": str(e)})
    if not results:
        raise EvalError(f"no seed could be scored ({failed[0]['error']})")
    mean, sd = _mean_metrics(results)
    first = results[0]
    floor, floor_note = first["floor"], None
    if spec.partition(":")[0] == "toy2d":  # a toy floor is one noisy draw per seed: their mean
        floor = {k: float(torch.tensor([float(r["floor"][k]) for r in results],
                                       dtype=torch.float64).mean()) for k in first["floor"]}
        floor_note = f"mean of the {len(results)} scored seeds' real/real draws"
    return {"name": name, "data": spec, "n": n, "seeds": list(ev["seeds"]), "metrics": mean,
            "metrics_sd": sd, "per_seed": [r["metrics"] for r in results], "floor": floor,
            "per_seed_floor": [r["floor"] for r in results], "floor_note": floor_note,
            "notes": first["notes"], "sample_seconds": secs,  # notes of the first scored seed
            "failed_seeds": failed,
            "files": ({"samples": str(keep / "samples.npz"), "picture": str(keep / "samples.png")}
                      if keep is not None else {})}


def score(gen, spec: str, name: str, n: int | None = None, seed: int = 0) -> dict:
    """One protocol row for a generator at one seed (the benchmark scripts' unit)."""
    from slimstep.eval import evaluate

    n = n or default_n(spec)
    tic = time.perf_counter()
    x, y = gen.generate(n, seed=seed)
    secs = time.perf_counter() - tic
    res = evaluate(x, spec, labels=y, seed=seed, data_options=_options(gen))
    res.update(name=name, nfe=gen.nfe, macs=_macs(gen), params=gen.params,
               samples_per_s=round(n / secs, 1))
    return res


def _options(gen) -> dict:
    from slimstep.data import loader_options

    return loader_options(gen.info.options)


def _speed(gen, ev: dict) -> dict:
    from slimstep.eval.speed import bench_generator

    r = bench_generator(gen, batch_size=int(ev["speed_batch"]), iters=3)
    return {"samples_per_s": r["samples_per_s"], "macs": r["macs"], "latency_s": r["latency_s"]}


def _macs(gen) -> int:
    """Multiply-accumulates of one sample of ``gen``, every network call of its sampler."""
    from slimstep.eval.speed import count_macs

    return count_macs(gen, torch.randn(1, *gen.info.shape, device=next(gen.net.parameters()).device))


def _generate(gen):
    def make(seed, n):
        tic = time.perf_counter()
        x, y = gen.generate(n, seed=seed)
        return x, y, time.perf_counter() - tic, {"nfe": gen.nfe}
    return make


def evaluate_stage(out: Path, st: Stage, by_name: dict[str, Stage], ev: dict, log=print) -> list[dict]:
    """Rows for one stage: a teacher gives its reference sampler and its Euler
    NFE curve; a student one row; screening one row. Reused when unchanged."""
    from slimstep.files import write_json
    from slimstep.generator import load

    sdir = stage_dir(out, st)
    proto = _digest({**{k: ev[k] for k in ("n", "seeds", "teacher_nfes", "speed_batch")},
                     "version": PROTOCOL_VERSION})
    cache = sdir / "result.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("hash") == st.hash and saved.get("protocol") == proto:
            log(f"[reuse] evaluation of {st.name}")
            rows = saved["rows"]
            for r in rows:  # kept files live in this stage's folder, wherever the run now is
                if r.get("files"):
                    r["files"] = {k: str(sdir / Path(v).name) for k, v in r["files"].items()}
            if st.kind == "distill" and "init_check" not in rows[0]:  # a result from before the check
                rows[0]["init_check"] = _init_check(out, st, by_name, ev, rows[0])
                write_json(cache, {**saved, "rows": rows})
            return rows
    log(f"[eval] {st.name}")
    rows = []
    if st.kind == "teacher":
        gen = load(model_dir(out, st))
        for k in ev["teacher_nfes"]:
            g = gen.with_sampling(solver="euler", steps=int(k))
            r = score_samples(_generate(g), st.spec, ev, f"{st.name} euler-{k}", sdir / f"euler-{k}", _options(gen))
            rows.append({**r, "curve": True, "nfe": g.nfe, "params": g.params, "macs": _macs(g)})
        s = gen.sampling
        r = score_samples(_generate(gen), st.spec, ev, f"{st.name} {s.solver}-{s.steps} (reference)", sdir,
                          _options(gen))
        rows.append({**r, "reference": True, "nfe": gen.nfe, "params": gen.params, **_speed(gen, ev)})
        for row in rows[:-1]:  # the curve's speed: same network, NFE-proportional
            row["samples_per_s"] = None
        one = next((row for row in rows if row.get("nfe") == 1), None)
        if one is not None:
            one.update(_speed(gen.with_sampling(solver="euler", steps=1), ev))
    elif st.kind == "distill":
        gen = load(model_dir(out, st))
        r = score_samples(_generate(gen), st.spec, ev, st.name, sdir, _options(gen))
        rows.append({**r, "nfe": gen.nfe, "params": gen.params, **_speed(gen, ev)})
        rows[0]["init_check"] = _init_check(out, st, by_name, ev, rows[0])
    elif st.kind == "screen":
        rows.append(_evaluate_screen(out, st, by_name, ev, sdir))
    for row in rows:
        row.update(stage=st.name, kind=st.kind, method=st.cfg.method.name if st.cfg else st.kind)
    write_json(cache, {"hash": st.hash, "protocol": proto, "rows": rows})
    return rows


def _init_check(out: Path, st: Stage, by_name: dict[str, Stage], ev: dict, row: dict) -> dict | None:
    """Did the student move from its initialisation? Its kept samples (first protocol seed)
    against the initialisation's one-step samples from the same seeds (:mod:`slimstep.flags`).
    None for a student trained from scratch."""
    from slimstep.files import read_samples
    from slimstep.flags import compare_to_init, initialisation
    from slimstep.generator import load

    init = initialisation(st.cfg.method.name, st.cfg.method.to_dict(), st.deps)
    if init is None or not row.get("files", {}).get("samples"):
        return None
    gen, name = load(model_dir(out, by_name[init])), init
    if isinstance(gen.sampling, VelocityRule) and gen.nfe != 1:  # its student's one-step map starts at its Euler step
        gen, name = gen.with_sampling(solver="euler", steps=1), f"{init} euler-1"
    x = torch.from_numpy(read_samples(row["files"]["samples"])["samples"])
    x0, _ = gen.generate(len(x), seed=int(ev["seeds"][0]))
    return compare_to_init(x, x0, st.spec, row["floor"], name)


def _evaluate_screen(out: Path, st: Stage, by_name: dict[str, Stage], ev: dict, sdir: Path) -> dict:
    from slimstep.generator import load
    from slimstep.realism import realism_for_stage
    from slimstep.screen import make_scorer, screen, screen_macs, screen_nfe

    p = st.params
    student_dir = model_dir(out, by_name[st.deps["student"]])
    student = load(student_dir)
    teacher = load(model_dir(out, by_name[st.deps["teacher"]])) if "teacher" in st.deps else None
    disc = (realism_for_stage(student_dir, st.spec, model_dir(out, st) / "realism", p.get("realism"))
            if p["scorer"] == "realism" else None)
    scorer = make_scorer(p["scorer"], student, teacher, disc, student_dir)
    n_c, select = int(p["candidates"]), p.get("select", "argmax")  # defaults kept out of the hash
    nfe = screen_nfe(n_c, student, scorer, p["final"], teacher)
    macs = screen_macs(student, n_c, scorer, p["final"], teacher)

    def make(seed, n):
        tic = time.perf_counter()
        x, y, info = screen(student, n, n_c, scorer, seed=seed, final=p["final"], teacher=teacher,
                            select=select, temperature=p.get("temperature"))
        secs = time.perf_counter() - tic
        return x, y, secs, {"candidate": info["candidate"].numpy(), "score": info["score"].numpy(),
                            "screen": n_c, "scorer": p["scorer"], "final": p["final"],
                            "select": select, "nfe": info["nfe"]}

    how = p["scorer"] if select == "argmax" else f"{p['scorer']} resample T={p.get('temperature', 1.0):g}"
    name = f"{st.name} ({st.deps['student']} x{n_c}, {how}, final {p['final']})"
    r = score_samples(make, st.spec, ev, name, sdir, _options(student))
    final = teacher if p["final"] == "teacher" else student
    params = student.params + (teacher.params if teacher is not None and p["final"] == "teacher" else 0)
    secs_per_sample = r["sample_seconds"] / (r["n"] * len(ev["seeds"]))
    scoring = f" + {n_c * scorer.nfe} scorer" if getattr(scorer, "nfe", 0) else ""
    return {**r, "nfe": nfe, "nfe_note": f"{n_c * student.nfe} student{scoring} + "
            f"{'1 teacher' if p['final'] == 'teacher' else '0'} calls", "params": params,
            "samples_per_s": round(1 / secs_per_sample, 1), "macs": macs, "final_params": final.params}


# ---------------------------------------------------------------- the whole run

def run(recipe: str | Path, out: str | Path, jobs: int | None = None, log=print, data: str | None = None) -> dict:
    """Train what is missing, evaluate everything with one protocol, write the
    report. Returns the results (also in ``DIR/results.json``). One run at a time
    per ``out`` (its lock); a recipe that fails to load leaves no folder. ``data``: the
    data spec of every teacher stage (:func:`load_recipe`)."""
    with output_dir(out, expect="run"):
        return _run(recipe, out, jobs, log, data)


def _run(recipe: str | Path, out: str | Path, jobs: int | None, log, data: str | None = None) -> dict:
    from slimstep.eval import EvalError
    from slimstep.files import write_json
    from slimstep.flags import row_flags
    from slimstep.report import write_reports

    tic = time.perf_counter()
    out = Path(out)
    ev, stages = load_recipe(recipe, data)
    _check_contained(out, stages)
    by_name = {s.name: s for s in stages}
    if jobs is None:
        jobs = 1 if torch.cuda.is_available() else max(1, min(2, os.cpu_count() or 1))
    if jobs < 1:
        raise RecipeError(f"--jobs must be at least 1, not {jobs}")
    log(f"{len(stages)} stages from {recipe}, {jobs} at a time -> {out}")
    status = run_stages(out, stages, jobs, log)
    rows = []
    for st in stages:
        if status[st.name]["status"] in ("failed", "skipped") or st.kind == "pairs":
            continue
        try:
            got = evaluate_stage(out, st, by_name, ev, log)
        except EvalError as e:  # no seed scored (a NaN model): the stage has no row, the rest goes on
            status[st.name].update(status="failed", error=f"evaluation: {e}")
            log(f"[failed] evaluation of {st.name}: {e}")
            continue
        for r in got:
            r["train_s"] = status[st.name]["seconds"] if st.trains and not r.get("curve") else None
            root = root_teacher(st, by_name)
            r["teacher"] = root.name if root is not None else None
            rows.append(r)
    _add_ratios(rows)
    by_row = {r["name"]: r for r in rows}
    for r in rows:
        r["flags"] = row_flags(r, len(ev["seeds"]), by_row)
        chk = r.get("init_check")
        if chk and chk["equal"] and not any(f["id"] == "equals-init" for f in r["flags"]):
            r["init_check"] = {**chk, "equal": False, "metric_moved": True}  # as the flags say
    results = {"title": ev["title"], "recipe": str(recipe), "eval": {k: ev[k] for k in EVAL_DEFAULTS},
               "stages": {s.name: {"kind": s.kind, "hash": s.hash, "spec": s.spec, "deps": s.deps,
                                   "dir": str(model_dir(out, s)), **status[s.name],
                                   "metrics_file": (str(model_dir(out, s) / "metrics.jsonl")
                                                    if s.trains else None),
                                   "params": s.params, "overrides": s.overrides,
                                   "config": s.cfg.to_dict() if s.cfg else None}
                          for s in stages},
               "rows": rows, "seconds": time.perf_counter() - tic}
    write_json(out / "results.json", results)
    paths = write_reports(out, results)
    failed = [s.name for s in stages if status[s.name]["status"] in ("failed", "skipped")]
    results.update(report=paths, failed=failed)
    return results


def _add_ratios(rows: list[dict]) -> None:
    """Each row over its root teacher's reference row: quality, size and speed."""
    from slimstep.verdict import HEADLINES

    refs = {r["stage"]: r for r in rows if r.get("reference")}
    for r in rows:
        ref = refs.get(r.get("teacher"))
        if ref is None:
            continue
        key = next(k for k in HEADLINES if k in r["metrics"])
        r["headline"] = key
        r["quality_ratio"] = r["metrics"][key] / ref["metrics"][key] if ref["metrics"][key] else None
        r["params_ratio"] = r["params"] / ref["params"] if ref.get("params") else None
        if r.get("samples_per_s") and ref.get("samples_per_s"):
            r["speedup"] = r["samples_per_s"] / ref["samples_per_s"]


def demo(out: str | Path = "runs/demo", jobs: int | None = None) -> dict:
    """``configs/demo.yaml``: every method at a small budget on digits and moons."""
    return run(CONFIGS / "demo.yaml", out, jobs=jobs)
