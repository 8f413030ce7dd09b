"""The commands that run a recipe: ``slimstep run`` and ``slimstep demo`` (every stage,
one evaluation protocol, a report); a failed stage makes the exit code 1."""

from __future__ import annotations

from slimstep.cli import RunFailed
from slimstep.report import console_table
from slimstep.run import demo, run


def _finish_run(res: dict) -> None:
    """Print a run's tables and report path; a failed stage makes the exit code 1."""
    print(console_table(res))
    print(f"report: {res['report']['html']} (and report.md)")
    if res["failed"]:
        raise RunFailed(f"stage(s) {', '.join(res['failed'])} failed or were skipped: "
                        "see the log above and the report's stage table")


def cmd_run(a) -> None:
    _finish_run(run(a.recipe, a.out, jobs=a.jobs, data=a.data, compile=a.compile))


def cmd_demo(a) -> None:
    _finish_run(demo(a.out, jobs=a.jobs))
