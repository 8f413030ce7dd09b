"""An output directory while a command writes it: one writer at a time, nothing left by an early error.

``with output_dir(out):`` creates ``out`` (and missing parents) and takes its
lock, ``out/.slimstep.lock``, a small JSON file naming the holder (pid, host,
command, start time). A second writer on the same directory — ``teacher``,
``distill``, ``pairs`` or ``run`` while one is running — is refused with one line
naming the holder, instead of both reporting success while one product is lost.

A lock whose holder is a dead process on this host (a run killed with ``kill -9``
or a power cut) is stale and taken over. A holder on another host cannot be
checked from here: the error names it, and whoever knows it is gone deletes the
file.

If the block raises and the directory holds nothing but the lock, the
directory (and the parents this call created) is removed again: a run that fails
on its inputs leaves no empty output folder behind.

The lock is created by ``os.link`` of a finished temp file, which fails if the
lock exists: two writers starting at the same moment cannot both get it, and a
reader never sees half a lock file.

**One writer discipline.** Every command that writes goes through this module:

* a folder written over time (``teacher``, ``distill``, ``pairs``, ``run``,
  ``screen-train``): :func:`output_dir`, which also refuses a folder that holds
  another kind of product (``expect``: a checkpoint is never turned into a pairs
  folder or a discriminator) and, for products that are not resumed
  (``screen-train``), any existing product unless ``overwrite``;
* a product that appears whole by one rename (``sample``, ``data``, ``export``,
  ``eval --out``, ``import``): :func:`output_path`, whose lock is the sibling
  ``.NAME.lock``; an existing product is refused unless ``overwrite``.

Both clean what a writer killed with SIGKILL left behind — temp files
(``.NAME.XXXX.tmp``) and partial folders (``.partial-*``) — once they hold the lock,
so no live writer can own them; and both remove, after a failure, a folder they
created that holds nothing but such debris (empty files, empty folders).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from slimstep.errors import OutputError, os_error

LOCK = ".slimstep.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _holder(lock: Path) -> dict | None:
    try:
        h = json.loads(lock.read_text())
        return h if isinstance(h, dict) else {}
    except FileNotFoundError:
        return None  # released between our attempt and this read
    except (OSError, ValueError):
        return {}


def _describe(h: dict) -> str:
    if not h:
        return "an unknown writer (unreadable lock file)"
    return f"pid {h.get('pid')} on {h.get('host')} ({h.get('command', '?')}, since {h.get('started', '?')})"


def _acquire(d: Path, lock: Path | None = None) -> Path:
    """Take ``lock`` (default ``d/.slimstep.lock``) for the output ``d``."""
    lock = lock or d / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "command": " ".join(["slimstep", *sys.argv[1:]])[:200] if sys.argv else "slimstep",
          "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    tmp = lock.with_name(f"{lock.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(me) + "\n")
        for _ in range(3):
            try:
                os.link(tmp, lock)
                return lock
            except FileExistsError:
                pass
            h = _holder(lock)
            if h is None:
                continue  # the holder just released it: try again
            stale = (h.get("host") == me["host"] and isinstance(h.get("pid"), int)
                     and h["pid"] != me["pid"] and not _alive(h["pid"]))
            if not stale:
                raise OutputError(f"{d} is being written by {_describe(h)}: wait for it, choose "
                                  f"another --out, or delete {lock} if that process is gone")
            if _holder(lock) == h:  # still the same dead holder: take it over
                lock.unlink(missing_ok=True)
        raise OutputError(f"{d}: could not take the lock {lock} (other writers keep taking it)")
    finally:
        tmp.unlink(missing_ok=True)


def _missing_parents(d: Path) -> list[Path]:
    """``d`` and its ancestors that do not exist yet, innermost first."""
    out, p = [], d.absolute()
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


#: the marker file of each kind of product a folder may hold (the first found names it)
_MARKERS = (("results.json", "run"), ("manifest.json", "pairs folder"), ("config.json", "checkpoint"))


def _kind_of(d: Path) -> str | None:
    """What product ``d`` holds: a training run, a checkpoint (realism discriminators
    and imported teachers say so in their config), pairs, a run; None when none."""
    for marker, kind in _MARKERS:
        if (d / marker).is_file():
            if kind != "checkpoint":
                return kind
            if (d / "checkpoints").is_dir():
                return "training run"
            try:
                cfg = json.loads((d / marker).read_text())
            except (OSError, ValueError):
                return kind
            if isinstance(cfg, dict) and cfg.get("kind") == "realism":
                return "realism discriminator"
            return kind
    return None


#: the names our writers give unfinished work: ``atomic_write``'s ``.NAME.XXXXXXXX.tmp``
#: (mkstemp's 8 characters), a snapshot's ``.partial-XXXXXXXX``, an import's
#: ``.NAME.partial-XXXXXXXX`` and ``.NAME.partial-old``; never a lock being taken
_TEMP = re.compile(r"\..*(\.[a-z0-9_]{8}\.tmp|\.?partial-([a-z0-9_]{8}|old))")


def _is_temp(p: Path) -> bool:
    """A writer's temporary file or partial folder (see :data:`_TEMP`)."""
    return bool(_TEMP.fullmatch(p.name)) and ".lock." not in p.name


def clean_stale(d: Path, name: str | None = None, depth: int = 3) -> None:
    """Remove what a killed writer left in ``d`` and up to ``depth`` folders below it (a run's
    ``stage/model-HASH/checkpoints``); ``name``: only the temps of the product ``d/name``.
    Call it only while holding the lock of that output."""
    import shutil

    try:
        entries = list(d.iterdir())
    except OSError:
        return
    for p in entries:
        if name is not None and not p.name.startswith(f".{name}."):
            continue
        if _is_temp(p):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        elif (name is None and depth > 0 and p.is_dir() and not p.is_symlink()
              and not (p / LOCK).exists()):  # a folder another writer holds is its to clean
            clean_stale(p, depth=depth - 1)


def _debris_only(d: Path) -> bool:
    """True when ``d`` holds nothing a user could want: empty files, temps, empty folders."""
    try:
        for p in d.rglob("*"):
            if p.is_file() and not _is_temp(p) and p.name != LOCK and p.stat().st_size > 0:
                return False
    except OSError:
        return False
    return True


@contextmanager
def output_dir(out: str | Path, lock: bool = True, *, expect: str | None = None,
               overwrite: bool | None = None) -> Iterator[Path]:
    """Create ``out``, hold its lock for the block (``lock=False``: a non-main
    rank, which writes nothing) and tidy up as the module docstring says.

    ``expect``: the kind of product this writer makes (:func:`_kind_of`'s names); a
    folder holding another kind is refused. ``overwrite``: None = the writer resumes or
    reuses what is there; False = an existing product is refused; True = replaced."""
    d = Path(out)
    check_output(d, expect, overwrite)
    created = _missing_parents(d)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fresh = not any(p.name != LOCK for p in d.iterdir())
        held = _acquire(d) if lock else None
        if held is not None:
            clean_stale(d)
    except OSError as e:
        _remove_empty(created)
        raise os_error(e, d) from None
    try:
        yield d
    except BaseException:
        if held is not None:
            held.unlink(missing_ok=True)
            held = None
        if fresh and lock and _debris_only(d):  # a failed first write: no empty folder stays
            import shutil

            shutil.rmtree(d, ignore_errors=True)
        _remove_empty(created)
        raise
    finally:
        if held is not None:
            held.unlink(missing_ok=True)


def check_output(out: str | Path, expect: str | None, overwrite: bool | None) -> None:
    """:func:`output_dir`'s refusals, checked early (before a long computation)."""
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise OutputError(f"--out {d} is a file, not a directory")
    if d.is_dir():
        _check_existing(d, expect, overwrite)


def _check_existing(d: Path, expect: str | None, overwrite: bool | None) -> None:
    kind = _kind_of(d)
    if kind is None:
        return
    if expect is not None and kind != expect and not (expect == "checkpoint" and kind == "training run"):
        raise OutputError(f"--out {d} already holds a {kind}, not a {expect}: choose another --out")
    if overwrite is False:
        raise OutputError(f"--out {d} already holds a {kind}: choose another --out, or pass "
                          "--overwrite to replace it")


def check_path(path: str | Path, overwrite: bool = False, also: tuple[Path, ...] = (),
               folder: bool = False) -> None:
    """:func:`output_path`'s refusals, checked early (before a long computation)."""
    p = Path(path)
    for q in (p, *also):
        if q.is_dir() and not folder:
            raise OutputError(f"--out {q} is a directory: name the file to write")
        if folder and q.exists() and not q.is_dir():
            raise OutputError(f"--out {q} is a file, not a directory")
        if folder and q.is_dir() and any(q.iterdir()):
            ours = _kind_of(q) == "checkpoint"  # never delete a folder that is not a checkpoint
            if not (overwrite and ours):
                raise OutputError(f"--out {q} exists and is not an empty directory: choose another "
                                  f"--out{', or pass --overwrite to replace it' if ours else ''}")
        elif q.exists() and not folder and not overwrite:
            raise OutputError(f"--out {q} already exists: choose another --out, or pass "
                              "--overwrite to replace it")


@contextmanager
def output_path(path: str | Path, overwrite: bool = False, also: tuple[Path, ...] = (),
                folder: bool = False) -> Iterator[Path]:
    """One product that appears whole by a rename (a file; ``folder``: a folder assembled
    aside, :func:`replace_folder`): lock it (``.NAME.lock`` beside it), refuse an existing
    one (or one of ``also``, written with it, e.g. a samples file's picture) unless
    ``overwrite``, clean a killed writer's temps, create missing parents — removed again
    if the block fails."""
    p = Path(path)
    check_path(p, overwrite, also, folder)
    created = _missing_parents(p.parent)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        held = _acquire(p, p.parent / f".{p.name}.lock")
        clean_stale(p.parent, p.name)
    except OSError as e:
        _remove_empty(created)
        raise os_error(e, p) from None
    try:
        yield p
    except BaseException:
        held.unlink(missing_ok=True)
        held = None
        _remove_empty(created)
        raise
    finally:
        if held is not None:
            held.unlink(missing_ok=True)


def replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` onto ``out`` (inside :func:`output_path`): an
    existing ``out`` is first moved aside, so a kill leaves the old or the new one."""
    import shutil

    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.partial-old")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_empty(created: list[Path]) -> None:
    for p in created:  # innermost first; stops at the first that holds something
        try:
            p.rmdir()
        except FileNotFoundError:
            continue  # already removed with its debris
        except OSError:
            return
