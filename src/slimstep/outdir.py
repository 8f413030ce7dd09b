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
"""

from __future__ import annotations

import json
import os
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


def _acquire(d: Path) -> Path:
    lock = d / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "command": " ".join(["slimstep", *sys.argv[1:]])[:200] if sys.argv else "slimstep",
          "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    tmp = d / f".slimstep.lock.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(me) + "\n")
    try:
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


@contextmanager
def output_dir(out: str | Path, lock: bool = True) -> Iterator[Path]:
    """Create ``out``, hold its lock for the block (``lock=False``: a non-main
    rank, which writes nothing) and tidy up as the module docstring says."""
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise OutputError(f"--out {d} is a file, not a directory")
    created = _missing_parents(d)
    try:
        d.mkdir(parents=True, exist_ok=True)
        held = _acquire(d) if lock else None
    except OSError as e:
        _remove_empty(created)
        raise os_error(e, d) from None
    try:
        yield d
    except BaseException:
        if held is not None:
            held.unlink(missing_ok=True)
            held = None
        _remove_empty(created)
        raise
    finally:
        if held is not None:
            held.unlink(missing_ok=True)


def _remove_empty(created: list[Path]) -> None:
    for p in created:  # innermost first; stops at the first that holds something
        try:
            p.rmdir()
        except OSError:
            return
