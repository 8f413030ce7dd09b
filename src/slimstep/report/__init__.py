"""The report a person reads: ``report.md`` and ``report.html`` with the same
content — first the verdict per data set (:mod:`slimstep.verdict`), then per data
set a table (method, flags, parameters, NFE, quality, speed, each over the
teacher's; teachers and students grouped and sorted, ↓/↑ on every metric, the
best student value in bold), the flags explained once (:mod:`slimstep.flags`),
a comparison strip (the same seeds through every model), the teachers'
quality-vs-NFE curves with every student as a labelled point, quality vs speed,
a sample grid per model, the loss curves and the evaluation's notes, each said
once. Every plot colours a method the same way (:mod:`slimstep.palette`).

Every number comes from the result rows of :func:`slimstep.run.run`
(:class:`slimstep.spec.results.Row`); nothing here computes a metric. One module
per job:

* :mod:`~slimstep.report.tables` — the summary table of a data set;
* :mod:`~slimstep.report.notes` — the flags explained, the evaluation's notes collapsed;
* :mod:`~slimstep.report.plots` — the plots (matplotlib, loaded when drawing);
* :mod:`~slimstep.report.blocks` — what the report says, in order, as one list of blocks;
* :mod:`~slimstep.report.render` — that list as Markdown and as HTML, so they cannot disagree;
* :mod:`~slimstep.report.write` — the two files, and ``slimstep run``'s console summary.
"""

from slimstep.report.write import console_table, write_reports

__all__ = ["console_table", "write_reports"]
