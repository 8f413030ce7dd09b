"""The scheduler of a run: ``jobs`` worker processes execute the stages not yet done,
each once every stage it reads has finished.

**Parallel stages.** ``jobs`` worker processes (one thread each) train
independent stages side by side — on a small CPU box two single-thread jobs beat
one two-thread job. The stage on the longest chain of training steps starts first;
a worker dies with its parent; a failed stage skips every stage that reads it.

**Evaluation as stages finish.** Given the protocol (``ev``), a worker left free by
training evaluates each stage whose models are ready, into the stage's evaluation cache
(:func:`~slimstep.run.evaluate.evaluate_stage`), the longest first (:func:`evaluation_order`);
the run's own pass then reads the cache.
Fashion-MNIST's evaluations take hours of one thread: done at the end, one at a time,
they would leave the second core idle, and an interrupted run would have scored nothing.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from slimstep.errors import SlimstepError, os_error
from slimstep.run.evaluate import evaluate_stage, is_scored
from slimstep.run.execute import execute, is_done, model_dir, stage_train_seconds
from slimstep.run.recipe import RecipeError, Stage

#: The longest the scheduler waits on its workers before it calls ``on_progress`` again.
PROGRESS_S = 60.0


def _worker_init(threads: int, parent: int) -> None:
    torch.set_num_threads(threads)
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive ``slimstep run``: killed (``kill``, a closed terminal), the
    parent runs no cleanup, and its workers would train on for minutes. On Linux the kernel
    sends SIGTERM when the parent dies (PR_SET_PDEATHSIG); elsewhere a thread polls."""
    armed = False
    if sys.platform.startswith("linux"):
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


def _quiet(*_args) -> None:
    """A worker's evaluation log: the parent says what it hands out."""


def _evaluator(out: str, st: Stage, by_name: dict[str, Stage], ev: dict, compile: bool = False) -> None:
    """Entry point of an evaluation in a worker: fills the stage's evaluation cache, never
    raises (a failure is met again, and reported, by the run's own pass)."""
    try:
        evaluate_stage(Path(out), st, by_name, ev, _quiet, speed=False,  # speed: alone, at the end
                       compile=compile)
    except Exception:  # noqa: BLE001 - the run's own pass re-evaluates and reports it
        pass


def run_stages(out: Path, stages: list[Stage], jobs: int = 1, log=print, ev: dict | None = None,
               on_progress: Callable[[dict[str, dict], set[str], set[str]], None] | None = None,
               compile: bool = False) -> dict[str, dict]:
    """Train / make every stage not yet done, ``jobs`` at a time; with the protocol ``ev``
    and more than one job, evaluate each stage in a free worker once its models are ready
    (the module docstring). Returns
    ``{stage: {"status": done|reused|failed|skipped, "seconds", "train_seconds"?, "error"?}}``
    (``seconds``: this invocation's; ``train_seconds``: the training loop's over every
    invocation that resumed it).

    ``on_progress(status, training, evaluating)``: called after every stage that ends and
    every evaluation that ends, and at least every :data:`PROGRESS_S` seconds while workers
    run (the run's interim report; it decides itself whether anything changed). ``compile``:
    the workers' evaluations draw teachers' samples compiled (``evaluate_stage``)."""
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
    evaluating: dict = {}
    unscored = evaluation_order(stages) if pool is not None and ev is not None else []
    # Longest chain first: a stage that others wait on (or a long one) starts before a leaf.
    work = _chain_work(stages)
    try:
        while pending or running or evaluating or unscored:
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
                    status[st.name] = {"status": "reused", "seconds": secs,
                                       "train_seconds": stage_train_seconds(out, st, secs)}
                    pending.remove(st)
                    log(f"[reuse] {st.name} ({model_dir(out, st)})")
                    continue
                if pool is None:
                    log(f"[run] {st.name} -> {model_dir(out, st)}")
                    secs, err = _worker(str(out), st, deps_of(st))
                    _record(status, st, secs, err, log, out)
                    pending.remove(st)
                    if on_progress is not None:
                        on_progress(status, set(), set())
                elif len(running) + len(evaluating) < jobs:
                    log(f"[run] {st.name} -> {model_dir(out, st)}")
                    running[pool.submit(_worker, str(out), st, deps_of(st))] = st
                    pending.remove(st)
            for st in list(unscored):  # training first: a free worker scores what is ready
                ready = [status.get(n, {}).get("status") for n in ([st.name] if st.kind != "screen" else [])
                         + list(st.deps.values())]
                made = all(r in ("done", "reused") for r in ready)
                if any(r in ("failed", "skipped") for r in ready) or (made and is_scored(out, st, ev)):
                    unscored.remove(st)
                elif made and len(running) + len(evaluating) < jobs:
                    log(f"[eval] {st.name} (in a worker)")
                    evaluating[pool.submit(_evaluator, str(out), st, by_name, ev, compile)] = st
                    unscored.remove(st)
            if on_progress is not None:
                on_progress(status, {s.name for s in running.values()}, {s.name for s in evaluating.values()})
            if running or evaluating:
                finished, _ = wait([*running, *evaluating], timeout=PROGRESS_S, return_when=FIRST_COMPLETED)
                for f in finished:
                    if f in evaluating:
                        evaluating.pop(f)
                        f.result()  # None: the evaluator never raises
                        continue
                    st = running.pop(f)
                    secs, err = f.result()
                    _record(status, st, secs, err, log, out)
            elif unscored and not pending:  # only evaluations left that can never start
                unscored.clear()
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


def evaluation_order(stages: list[Stage]) -> list[Stage]:
    """The stages a free worker scores, longest evaluation first: a teacher's (its NFE curve
    and its reference, ~60 calls a sample on Fashion-MNIST), a screened row's (every
    candidate), then one-step students, each kind in recipe order. Scored in recipe order,
    the teachers' hours could start last, beside a worker with nothing left to do."""
    order = {"teacher": 0, "screen": 1}
    return sorted((s for s in stages if s.kind != "pairs"), key=lambda s: order.get(s.kind, len(order)))


def _chain_work(stages: list[Stage]) -> dict[str, float]:
    """Training steps on the longest chain from each stage to a leaf (itself included)."""
    work: dict[str, float] = {}
    for st in reversed(stages):  # every reader comes after what it reads
        own = st.cfg.train.steps if st.trains else 0
        readers = [work[r.name] for r in stages if st.name in r.deps.values()]
        work[st.name] = own + max(readers, default=0)
    return work


def _record(status: dict, st: Stage, secs: float, err: str | None, log, out: Path) -> None:
    if err is None:
        train_s = stage_train_seconds(out, st, secs)
        status[st.name] = {"status": "done", "seconds": secs, "train_seconds": train_s}
        resumed = f" (its training {train_s:.0f} s over every resume)" if train_s and train_s > 1.05 * secs else ""
        log(f"[done] {st.name} in {secs:.0f} s{resumed}")
    else:
        status[st.name] = {"status": "failed", "seconds": secs, "error": err.strip().splitlines()[-1]}
        log(f"[failed] {st.name}: {err.strip()}")
