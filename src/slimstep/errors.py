"""The one error base of slimstep, at the ground floor (imports nothing of slimstep's).

Every exception slimstep raises on purpose derives from :class:`SlimstepError`:
the CLI turns any of them into one ``slimstep: error: ...`` line and the exit
code the class carries (2, a usage error, unless a class says otherwise), so no
module needs a broad ``except ValueError``. An exception that is *not* a
``SlimstepError`` is a bug and keeps its traceback.

The user-input errors also derive from ``ValueError``: code written against the
older classes (``except ValueError``) keeps working.
"""

from __future__ import annotations

import errno
import re


class SlimstepError(Exception):
    """A failure slimstep explains in one line (the CLI's ``slimstep: error: ...``)."""

    #: the CLI's exit status for this error: 2 = the input was unusable
    exit_code = 2


class ConfigError(SlimstepError, ValueError):
    """A config file or override a user handed in is unusable."""


class OutputError(SlimstepError):
    """An output location cannot be written: busy (locked), a directory, or the disk is full."""


class EnvironmentFailure(OutputError):
    """The machine, not the input, stopped a write: the disk or a quota is full, a file
    size limit was met. Exit 1: the same command succeeds once there is room."""

    exit_code = 1


#: OSErrors that are the machine's state, not a bug: the CLI reports them in one line.
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)
#: of those, the ones that say "no room": an environment failure (exit 1), not a usage error
NO_ROOM = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
           errno.EFBIG: "file too large (a file size limit was reached)"}


def os_error(e: OSError, path=None) -> SlimstepError:
    """One line for an ``OSError`` met while writing ``path``: no space left, no
    permission, read-only file system... naming ``path`` (else the file the OS
    names: for an atomic write that would be the temp file)."""
    where = path or e.filename or "?"
    if e.errno in NO_ROOM:
        return EnvironmentFailure(f"{where}: {NO_ROOM[e.errno]} (the previous files are kept)")
    reason = e.strerror or str(e)
    return OutputError(f"{where}: {reason}")


def one_line(text: str) -> str:
    """``text`` as one line: a newline or carriage return (in a path a user named, or in a
    library's message) is written as ``\\n`` / ``\\r``, so an error stays one line."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def load_refusal(e: BaseException) -> str:
    """Why a safe loader (``torch.load(weights_only=True)``, ``np.load(allow_pickle=False)``)
    refused a file, in one line that names what it refused (the pickled global or type).
    The loaders' own text runs to six lines and advises loading the file unsafely; slimstep
    never does, so that advice is never passed on."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (f"it holds a pickled {found.group(1)}, which slimstep never loads "
                "(only tensors and plain containers are read)")
    if "contains pickled" in text:  # numpy: neither .npy nor .npz, i.e. a pickle (or not numpy's)
        return "not an .npz or .npy file (numpy would unpickle it, which slimstep never does)"
    if "Object arrays cannot be loaded" in text:
        return "it holds an array of pickled Python objects, which slimstep never loads"
    unpickler = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    if unpickler:
        return f"it holds pickled data slimstep does not load ({unpickler.group(1).strip()[:160]})"
    if "Weights only load failed" in text:
        return "it holds pickled objects, which slimstep never loads"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
    return first[:200]
