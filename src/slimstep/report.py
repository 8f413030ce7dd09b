"""Reports a person reads: ``report.md`` with tables, sample pictures,
the quality-vs-NFE curve and loss curves. Every number comes from the
result rows handed in (``slimstep.eval.evaluate`` plus name / nfe / params /
samples_per_s); nothing here computes a metric."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path

import torch

from slimstep.files import atomic_write


def headline(rows: list[dict]) -> str:
    m = rows[0]["metrics"]
    return next(k for k in ("fd", "fid", "w2", "mmd") if k in m)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def markdown_table(rows: list[dict]) -> str:
    key = headline(rows)
    extra = [k for k in ("precision", "recall", "class_coverage", "mmd") if k in rows[0]["metrics"]
             and k != key]
    cols = ["method", "NFE", "params", f"{key} (floor)", *extra, "samples/s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        m, f = r["metrics"], r.get("floor", {})
        cells = [r["name"], _fmt(r.get("nfe")), f"{r.get('params', 0):,}",
                 f"{_fmt(m[key])} ({_fmt(f.get(key))})", *[_fmt(m.get(k)) for k in extra],
                 _fmt(r.get("samples_per_s"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda p: fig.savefig(p, format="png", bbox_inches="tight", dpi=100))
    plt.close(fig)


def plot_nfe_curve(rows: list[dict], path: Path, title: str) -> None:
    """Headline metric against NFE (log-log) for the teacher, students as points,
    the real/real floor as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = headline(rows)
    curve = [r for r in rows if r["name"].startswith("teacher euler")]
    others = [r for r in rows if r not in curve]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["nfe"] for r in curve], [r["metrics"][key] for r in curve], "o-",
            label="teacher (Euler)")
    for r in others:
        ax.plot([r["nfe"]], [r["metrics"][key]], "s", label=r["name"])
    floor = rows[0].get("floor", {}).get(key)
    if floor is not None:
        ax.axhline(floor, color="grey", ls="--", label="real/real floor")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("NFE (network evaluations per sample)")
    ax.set_ylabel(key)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    _save_fig(fig, path)


def plot_losses(metrics_file: Path, path: Path, title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not metrics_file.is_file():
        return False
    rows = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()]
    keys = [k for k in (rows[0] if rows else {}) if k == "loss" or k.endswith("/loss")]
    if not keys:
        return False
    fig, ax = plt.subplots(figsize=(5, 3))
    for k in keys:
        ax.plot([r["step"] for r in rows], [r[k] for r in rows], label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    _save_fig(fig, path)
    return True


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")


def write_report(out: Path, sections: list[dict], title: str, seconds: float) -> Path:
    """``sections``: ``{"title", "rows", "metrics_file"?, "overrides"?, "teacher"?}``."""
    out = Path(out)
    md = [f"# {title}", "",
          f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')} · {machine()} · "
          f"{seconds / 60:.1f} min in all", "",
          "Every number is from this run. The floor is the same metric for real "
          "data against real data at the same sample count: what a perfect generator "
          "would score.", ""]
    for s in sections:
        slug = s["title"].replace(":", "-")
        md += [f"## {s['title']}", ""]
        if s.get("overrides"):
            md += [f"Teacher: `{s.get('teacher', '')}` (recipe overrides: "
                   f"`{' '.join(s['overrides'])}`).", ""]
        md += [markdown_table(s["rows"]), ""]
        plot_nfe_curve(s["rows"], out / f"{slug}-nfe.png", f"{s['title']}: quality vs NFE")
        md += [f"![quality vs NFE]({slug}-nfe.png)", ""]
        pics = [r for r in s["rows"] if r.get("files", {}).get("picture")]
        if pics:
            md += ["| " + " | ".join(r["name"] for r in pics) + " |",
                   "|" + "---|" * len(pics),
                   "| " + " | ".join(f"![{r['name']}]({os.path.relpath(r['files']['picture'], out)})"
                                     for r in pics) + " |", ""]
        if s.get("metrics_file") and plot_losses(Path(s["metrics_file"]), out / f"{slug}-loss.png",
                                                 f"{s['title']}: training loss"):
            md += [f"![training loss]({slug}-loss.png)", ""]
        notes = sorted({n for r in s["rows"] for n in r.get("notes", [])})
        md += [f"- note: {n}" for n in notes] + ([""] if notes else [])
    path = out / "report.md"
    text = "\n".join(md)
    atomic_write(path, lambda p: Path(p).write_text(text))
    return path
