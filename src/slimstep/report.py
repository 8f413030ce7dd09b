"""The report a person reads: ``report.md`` and ``report.html`` with the same
content — per data set a table (method, parameters, NFE, quality, speed, each
over the teacher's), the teachers' quality-vs-NFE curves with every student as a
point, quality vs speed, a sample grid per model and the loss curves.

Every number comes from the result rows of :func:`slimstep.recipes.run`;
nothing here computes a metric. Both files are built from one list of blocks
so they cannot disagree.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import platform
from pathlib import Path

import torch

from slimstep.files import atomic_write

HEADLINES = ("fd", "fid", "w2", "mmd")


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")


def headline(row: dict) -> str:
    return next(k for k in HEADLINES if k in row["metrics"])


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:  # nan
            return ""
        return f"{v:,.0f}" if abs(v) >= 10 ** digits else f"{v:.{digits}g}"
    return str(v)


def _ratio(v) -> str:
    return "" if v is None else f"{v:.3g}x"


# ---------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, format="png", bbox_inches="tight", dpi=100))
    _plt().close(fig)


def _scatter(ax, rows: list[dict], x: str, key: str, markers: str) -> None:
    """One marker per row at (row[x], headline metric)."""
    for i, r in enumerate(rows):
        ax.plot([r[x]], [r["metrics"][key]], markers[i % len(markers)], ms=8, label=r["name"])


def _finish(fig, ax, rows: list[dict], key: str, xbase: float, xlabel: str, title: str, path: Path) -> None:
    """The floor line, log-log axes, labels and an outside legend; save."""
    floor = rows[0].get("floor", {}).get(key)
    if floor is not None:
        ax.axhline(floor, color="grey", ls="--", label="real/real floor")
    ax.set_xscale("log", base=xbase)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(key)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)


def plot_nfe(rows: list[dict], path: Path, title: str) -> None:
    """Quality against NFE (log-log): each teacher's Euler curve and reference
    sampler, every other model as a point, the real/real floor as a line."""
    key = headline(rows[0])
    fig, ax = _plt().subplots(figsize=(6, 4))
    for teacher in sorted({r["stage"] for r in rows if r.get("curve")}):
        curve = [r for r in rows if r.get("curve") and r["stage"] == teacher]
        ax.plot([r["nfe"] for r in curve], [r["metrics"][key] for r in curve], "o-",
                label=f"{teacher} (Euler)")
    _scatter(ax, [r for r in rows if not r.get("curve")], "nfe", key, "s^vD<>pPX*h")
    _finish(fig, ax, rows, key, 2, "NFE (network evaluations per sample)", title, path)


def plot_speed(rows: list[dict], path: Path, title: str) -> bool:
    """Quality against samples/s (log-log), one point per measured model."""
    pts = [r for r in rows if r.get("samples_per_s")]
    if not pts:
        return False
    key = headline(rows[0])
    fig, ax = _plt().subplots(figsize=(6, 4))
    _scatter(ax, pts, "samples_per_s", key, "os^vD<>pPX*h")
    _finish(fig, ax, rows, key, 10, "samples / s (batch 256, this machine)", title, path)
    return True


def plot_losses(runs: list[tuple[str, Path]], path: Path, title: str) -> bool:
    """One panel per training run: every logged loss against the step."""
    series = []
    for name, f in runs:
        if not f.is_file():
            continue
        recs = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        keys = [k for k in (recs[0] if recs else {}) if k == "loss" or k.endswith("/loss")]
        if keys:
            series.append((name, recs, keys))
    if not series:
        return False
    plt = _plt()
    cols = min(3, len(series))
    nrows = (len(series) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.6 * nrows), squeeze=False)
    for ax, (name, recs, keys) in zip(axes.flat, series, strict=False):
        for k in keys:
            ax.plot([r["step"] for r in recs], [r[k] for r in recs], label=k)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(keys) > 1:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return True


# ---------------------------------------------------------------- blocks

def summary_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    key = headline(rows[0])
    extra = [k for k in ("precision", "recall") if k in rows[0]["metrics"]]
    head = ["method", "teacher", "params", "params / teacher", "NFE", f"{key} (± sd over seeds)",
            f"{key} / teacher", *extra, "samples/s", "speed-up", "train s"]
    body = []
    for r in rows:
        if r.get("curve") and r.get("nfe") != 1:
            continue  # the curve is in the plot; its 1-step point stays as a baseline
        sd = r.get("metrics_sd", {}).get(key)
        q = fmt(r["metrics"][key]) + (f" ± {fmt(sd, 2)}" if sd else "")
        body.append([r["name"], r.get("teacher") or "", fmt(r.get("params")), _ratio(r.get("params_ratio")),
                     fmt(r.get("nfe")), q, _ratio(r.get("quality_ratio")),
                     *[fmt(r["metrics"].get(k)) for k in extra], fmt(r.get("samples_per_s")),
                     _ratio(r.get("speedup")), fmt(r.get("train_s"))])
    return head, body


def blocks_for(out: Path, results: dict) -> list[tuple]:
    ev = results["eval"]
    b: list[tuple] = [
        ("h1", results["title"]),
        ("p", f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')} · {machine()} · "
              f"{results['seconds'] / 60:.1f} min in all (training reused from earlier runs is not counted)"),
        ("p", f"One protocol for every row: samples from seeds {', '.join(str(s) for s in ev['seeds'])} "
              f"(N per seed: {ev['n'] or 'the data set default'}), scored by `slimstep eval`'s metrics; "
              "the table shows the mean over seeds. The floor is the same metric for real data against "
              "real data at the same N: what a perfect generator would score. Ratios are over the "
              "row's teacher at its reference sampler. Speed: batch 256 on this machine, one model "
              "at a time."),
    ]
    stages = results["stages"]
    for spec in dict.fromkeys(r["data"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["data"] == spec]
        slug = spec.replace(":", "-").replace("/", "-")
        key = headline(rows[0])
        floor = rows[0].get("floor", {})
        b += [("h2", spec), ("p", f"Floor: {key} {fmt(floor.get(key))}"
                                  + "".join(f", {k} {fmt(floor[k])}" for k in ("precision", "recall")
                                            if k in floor) + ".")]
        head, body = summary_table(rows)
        b.append(("table", head, body))
        plot_nfe(rows, out / f"{slug}-nfe.png", f"{spec}: quality vs NFE")
        b.append(("img", f"{slug}-nfe.png", "quality vs NFE"))
        if plot_speed(rows, out / f"{slug}-speed.png", f"{spec}: quality vs speed"):
            b.append(("img", f"{slug}-speed.png", "quality vs speed"))
        pics = [(os.path.relpath(r["files"]["picture"], out), f"{r['name']} (NFE {r['nfe']})")
                for r in rows if r.get("files", {}).get("picture") and (not r.get("curve") or r["nfe"] == 1)]
        if pics:
            b += [("h3", "samples (first 100 of seed " + str(ev["seeds"][0]) + ")"), ("gallery", pics)]
        runs = [(n, Path(s["metrics_file"])) for n, s in stages.items()
                if s.get("metrics_file") and s["spec"] == spec]
        if plot_losses(runs, out / f"{slug}-loss.png", f"{spec}: training losses"):
            b += [("h3", "training losses"), ("img", f"{slug}-loss.png", "training losses")]
        notes = [f"{r['name']}: {n}" for r in rows for n in r.get("notes", [])]
        if notes:
            b.append(("list", notes))
    b.append(("h2", "stages"))
    b.append(("table", ["stage", "kind", "data", "status", "seconds", "directory", "overrides"],
              [[n, s["kind"], s["spec"], s["status"] + (f": {s['error']}" if s.get("error") else ""),
                fmt(s.get("seconds")), os.path.relpath(s["dir"], out), " ".join(s.get("overrides") or [])]
               for n, s in stages.items()]))
    return b


def to_markdown(blocks: list[tuple]) -> str:
    md = []
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2", "h3"):
            md += ["#" * int(kind[1]) + " " + blk[1], ""]
        elif kind == "p":
            md += [blk[1], ""]
        elif kind == "list":
            md += [f"- {x}" for x in blk[1]] + [""]
        elif kind == "table":
            head, body = blk[1], blk[2]
            md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            md += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body] + [""]
        elif kind == "img":
            md += [f"![{blk[2]}]({blk[1]})", ""]
        elif kind == "gallery":
            pics = blk[1]
            for i in range(0, len(pics), 4):
                part = pics[i:i + 4]
                md += ["| " + " | ".join(c for _, c in part) + " |", "|" + "---|" * len(part),
                       "| " + " | ".join(f"![{c}]({p})" for p, c in part) + " |", ""]
    return "\n".join(md)


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.gallery figure{margin:0;text-align:center;font-size:12px}
.gallery img{width:220px;image-rendering:pixelated;border:1px solid #ddd}img.plot{max-width:100%}"""


def _inline(text: str) -> str:
    """Escaped text with `code` spans as <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html(blocks: list[tuple]) -> str:
    e = html.escape
    title = next((b[1] for b in blocks if b[0] == "h1"), "slimstep report")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{CSS}</style></head><body>"]
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{e(blk[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(blk[1])}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in blk[1]) + "</ul>")
        elif kind == "table":
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in blk[1]) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                                   for row in blk[2]) + "</table>")
        elif kind == "img":
            parts.append(f"<p><img class='plot' src='{e(blk[1])}' alt='{e(blk[2])}'></p>")
        elif kind == "gallery":
            parts.append("<div class='gallery'>" + "".join(
                f"<figure><img src='{e(p)}' alt='{e(c)}'><figcaption>{e(c)}</figcaption></figure>"
                for p, c in blk[1]) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


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


def console_table(results: dict) -> str:
    """The summary tables as plain text for the terminal."""
    lines = []
    for spec in dict.fromkeys(r["data"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["data"] == spec]
        head, body = summary_table(rows)
        drop = {"teacher", "params / teacher"}
        keep = [i for i, h in enumerate(head) if h not in drop]
        table = [[head[i] for i in keep]] + [[row[i] for i in keep] for row in body]
        widths = [max(len(r[i]) for r in table) for i in range(len(keep))]
        lines.append(f"== {spec}")
        for j, r in enumerate(table):
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(r, widths, strict=True))))
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
