"""The report's two outputs: the files ``report.md`` and ``report.html`` in a run's
folder (:func:`write_reports`), and ``slimstep run``'s console summary
(:func:`console_table`: per data set the verdict, the table, the flags explained)."""

from __future__ import annotations

from pathlib import Path

from slimstep.files import atomic_write
from slimstep.report.blocks import blocks_for, failed_stages, rows_by_spec
from slimstep.report.notes import flag_notes
from slimstep.report.render import to_html, to_markdown
from slimstep.report.tables import Group, cell_text, summary_table
from slimstep.verdict import verdict_lines


def write_reports(out: Path, results: dict) -> dict[str, str]:
    """``report.md`` and ``report.html`` in ``out``; returns their paths."""
    out = Path(out)
    blocks = blocks_for(out, results)
    paths = {}
    for name, text in (("md", to_markdown(blocks)), ("html", to_html(blocks))):
        path = out / f"report.{name}"
        atomic_write(path, lambda p, t=text: Path(p).write_text(t))
        paths[name] = str(path)
    return paths


def _console_line(cells: list[str], widths: list[int]) -> str:
    """Method and flags left-aligned, numbers right-aligned."""
    return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def console_table(results: dict) -> str:
    """``slimstep run``'s summary: per data set the verdict, the table (grouped and
    sorted as in the report, flags as [badges]) and what each flag means."""
    lines = []
    for spec, rows in rows_by_spec(results).items():
        failed = failed_stages(results, spec)
        head, body = summary_table(rows, failed)
        drop = {"teacher", "params / teacher ↓"}
        keep = [i for i, h in enumerate(head) if h not in drop]
        table = [[head[i] for i in keep]] + [[cell_text(row[i]) for i in keep] for row in body
                                             if not isinstance(row, Group)]
        widths = [max(len(r[i]) for r in table) for i in range(len(keep))]
        lines.append(f"== {spec}")
        lines += [f"  {x}" for x in verdict_lines(rows)]

        lines += [_console_line(table[0], widths), "  ".join("-" * w for w in widths)]
        k = 1
        for row in body:
            if isinstance(row, Group):
                lines.append(f"[{row.label}]")
            else:
                lines.append(_console_line(table[k], widths))
                k += 1
        lines += [f"  {x}" for x in flag_notes(rows, failed)]
    return "\n".join(lines)
