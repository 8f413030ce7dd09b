"""``slimstep`` — the command line.

Every subcommand has ``--help``. A user mistake (bad path, bad config key,
unusable file) ends with one ``slimstep: error: ...`` line and exit code 2;
a diverged training run with exit code 1; never a traceback.

This module runs a command and turns its failure into that line and exit code
(:func:`main`); the grammar is :mod:`slimstep.cli.parser`, the commands are in
:mod:`~slimstep.cli.train`, :mod:`~slimstep.cli.sample`, :mod:`~slimstep.cli.checkpoint`,
:mod:`~slimstep.cli.convert`, :mod:`~slimstep.cli.data` and :mod:`~slimstep.cli.run`.
"""

from __future__ import annotations

import sys
import warnings

import torch

from slimstep.cli.parser import _parse, build_parser
from slimstep.errors import ENVIRONMENT_ERRNOS, SlimstepError, one_line, os_error


class RunFailed(SlimstepError, RuntimeError):
    """Some stages of a run failed; the others were reported."""

    exit_code = 1  # the recipe was usable; a stage's training was not


def out_of_memory(e: BaseException) -> str | None:
    """One line for a failed allocation (a size too large for this machine: ``net.hidden``,
    ``train.batch_size``, ``--n``, ``--batch-size``), or None when ``e`` is not one. Sizes
    are not estimated up front: what fits depends on the device, the method and the data,
    and the allocator's own refusal is immediate and exact."""
    text = str(e)
    if isinstance(e, MemoryError) or isinstance(e, torch.OutOfMemoryError) or (
            "can't allocate memory" in text or "not enough memory" in text
            or "Tried to allocate" in text):
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
        return one_line(f"out of memory ({first[:200]}): the network (net.*), the batch size or the "
                        "sample count is too large for this machine; choose smaller sizes")
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse(build_parser(), argv)
    except SystemExit as e:  # --help, --version, a usage error: its status, as from any command
        return e.code if isinstance(e.code, int) else 2
    if args.cmd == "data" and args.n is None and args.name.startswith("toy2d"):
        args.n = 2000
    try:
        with warnings.catch_warnings():
            if not sys.warnoptions:  # PIL, matplotlib, torch notes: lines that are not ours
                warnings.simplefilter("ignore")
            args.fn(args)
    except SlimstepError as e:  # every deliberate failure: one line, its exit code
        print(f"slimstep: error: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:  # anything else is a bug: keep its traceback
            raise
        err = os_error(e)
        print(f"slimstep: error: {one_line(str(err))}", file=sys.stderr)
        return err.exit_code if err.exit_code == 1 else 2
    except (MemoryError, RuntimeError) as e:
        line = out_of_memory(e)
        if line is None:  # not an allocation failure: a bug, keep its traceback
            raise
        print(f"slimstep: error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("slimstep: interrupted", file=sys.stderr)
        return 130
    return 0
