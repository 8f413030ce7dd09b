"""The report a person reads: ``report.md`` and ``report.html`` with the same
content — first the verdict per data set (:mod:`slimstep.verdict`), then per data
set a table (method, flags, parameters, NFE, quality, speed, each over the
teacher's; teachers and students grouped and sorted, ↓/↑ on every metric, the
best student value in bold), the flags explained once (:mod:`slimstep.flags`),
a comparison strip (the same seeds through every model), the teachers'
quality-vs-NFE curves with every student as a labelled point, quality vs speed,
a sample grid per model, the loss curves and the evaluation's notes, each said
once. Every plot colours a method the same way (:mod:`slimstep.palette`).

Every number comes from the result rows of :func:`slimstep.run.run`;
nothing here computes a metric. Both files are built from one list of blocks
so they cannot disagree.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slimstep.files import atomic_write
from slimstep.flags import FLAGS, stage_flag
from slimstep.palette import row_style, teacher_style
from slimstep.verdict import HEADLINES, verdict_lines


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


def _teachers(rows: list[dict]) -> list[str]:
    """Teacher stages in order of appearance: what :func:`slimstep.palette.row_style` keys on."""
    return list(dict.fromkeys(r["stage"] for r in rows if r.get("kind") == "teacher"))


def _label(r: dict) -> str:
    """A point's label: the stage for a student (short), the sampler for a teacher."""
    return r["name"].replace(" (reference)", "") if r.get("kind") == "teacher" else r["stage"]


def _label_points(ax, pts: list[tuple[float, float, str, str]]) -> None:
    """Each name next to its point, in the point's colour. A label that would overlap one
    already placed moves down, with a thin leader line, so crowded points stay readable
    without a legend to decode."""
    ax.figure.canvas.draw()  # fixes the autoscaled limits, so data -> pixel is final
    placed: list[tuple[float, float, float]] = []  # (left, right, y) in pixels
    disp = [(ax.transData.transform((x, y)), x, y, text, c) for x, y, text, c in pts]
    for (px, py), x, y, text, colour in sorted(disp, key=lambda d: (-d[0][1], d[0][0])):
        left, right, ty = px + 6, px + 6 + 4.3 * len(text), py
        while any(abs(ty - qy) < 11 and left < qr and ql < right for ql, qr, qy in placed):
            ty -= 11
        placed.append((left, right, ty))
        ax.annotate(text, (x, y), xytext=(6, ty - py), textcoords="offset pixels", fontsize=7,
                    color=colour, va="center",
                    arrowprops=dict(arrowstyle="-", lw=0.5, color=colour) if ty != py else None)


def _scatter(ax, rows: list[dict], x: str, key: str, teachers: list[str]) -> dict[str, tuple[str, str]]:
    """One marker per row at (row[x], headline metric) in its palette style, labelled
    beside the point. Returns {label: (colour, marker)} as drawn."""
    drawn, pts = {}, []
    for r in rows:
        colour, marker = row_style(r, teachers)
        ax.plot([r[x]], [r["metrics"][key]], marker, color=colour, ms=8, ls="none")
        drawn[_label(r)] = (colour, marker)
        pts.append((r[x], r["metrics"][key], _label(r), colour))
    _label_points(ax, pts)
    return drawn


def _axes(ax, rows: list[dict], key: str, xbase: float, xlabel: str, title: str) -> None:
    """Log-log axes, the floor drawn and named, labels that say which way is better."""
    floor = rows[0].get("floor", {}).get(key)
    if floor is not None:
        ax.axhline(floor, color="grey", ls="--", lw=1)
        ax.text(0.01, floor, f" real/real floor ({key.upper()} {fmt(floor)})", color="grey", fontsize=7,
                va="bottom", transform=ax.get_yaxis_transform())
    ax.set_xscale("log", base=xbase)
    ax.set_yscale("log")
    ax.margins(x=0.08, y=0.08)  # points at the extremes (NFE 1) stay off the frame
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{key.upper()} ↓ (lower is better)")
    ax.set_title(title, fontsize=10)


def plot_nfe(rows: list[dict], path: Path, title: str) -> dict[str, tuple[str, str]]:
    """Quality against NFE (log-log): each teacher's Euler curve and reference
    sampler, every other model as a labelled point, the real/real floor as a line.
    Returns {label: (colour, marker)} of the points, as drawn."""
    key = headline(rows[0])
    teachers = _teachers(rows)
    fig, ax = _plt().subplots(figsize=(6.5, 4.2))
    _axes(ax, rows, key, 2, "NFE (network evaluations per sample)", title)
    for i, teacher in enumerate(teachers):
        curve = [r for r in rows if r.get("curve") and r["stage"] == teacher]
        if curve:
            colour, marker = teacher_style(i, reference=False)
            ax.plot([r["nfe"] for r in curve], [r["metrics"][key] for r in curve], marker + "-", color=colour,
                    ms=4, lw=1, label=f"{teacher} (Euler, 1..{curve[-1]['nfe']} steps)")
    drawn = _scatter(ax, [r for r in rows if not r.get("curve")], "nfe", key, teachers)
    if teachers:
        ax.legend(fontsize=7, loc="upper right")
    _save(fig, path)
    return drawn


def plot_speed(rows: list[dict], path: Path, title: str) -> dict[str, tuple[str, str]]:
    """Quality against samples/s (log-log), one labelled point per measured model.
    Returns {label: (colour, marker)} as drawn (empty: nothing measured, no file)."""
    pts = [r for r in rows if r.get("samples_per_s")]
    if not pts:
        return {}
    key = headline(rows[0])
    fig, ax = _plt().subplots(figsize=(6.5, 4.2))
    _axes(ax, rows, key, 10, "samples / s ↑ (batch 256, this machine)", title)
    drawn = _scatter(ax, pts, "samples_per_s", key, _teachers(rows))
    _save(fig, path)
    return drawn


def plot_strip(rows: list[dict], path: Path, title: str, k: int = 8) -> bool:
    """The comparison strip: the first ``k`` protocol seeds through every model, one
    row (images) or panel (2-D points, the ``k`` seeds in the same colours in every
    panel) per model, labelled with the model and its headline metric."""
    from slimstep.files import read_samples

    items = [(r, read_samples(r["files"]["samples"])) for r in rows
             if r.get("files", {}).get("samples") and Path(r["files"]["samples"]).is_file()]
    if not items:
        return False
    key = headline(items[0][0])
    teachers = _teachers(rows)
    plt = _plt()
    if items[0][1]["samples"].ndim == 4:  # images: a row of k per model
        fig, axes = plt.subplots(len(items), k, figsize=(0.8 * k + 3.2, 0.82 * len(items) + 0.4), squeeze=False)
        for i, (r, d) in enumerate(items):
            x = d["samples"][:k]
            for j, ax in enumerate(axes[i]):
                ax.set_xticks([])
                ax.set_yticks([])
                if j < len(x):
                    img = ((x[j].transpose(1, 2, 0) + 1) / 2).clip(0, 1)
                    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                              interpolation="nearest")
                if i == 0 and j < len(d["seeds"]):
                    ax.set_title(f"seed {int(d['seeds'][j])}", fontsize=7)
            axes[i][0].text(-0.12, 0.5, f"{_label(r)}  {key.upper()} {fmt(r['metrics'][key])}", fontsize=8,
                            ha="right", va="center", transform=axes[i][0].transAxes,
                            color=row_style(r, teachers)[0])
    else:  # 2-D points: every sample faint, the k seeds marked
        cols = min(5, len(items))
        nrows = (len(items) + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.7 * nrows), squeeze=False)
        allx = np.concatenate([d["samples"] for _, d in items])
        lo, hi = np.percentile(allx, 0.5, 0), np.percentile(allx, 99.5, 0)
        pad = 0.08 * (hi - lo)
        seed_colours = [plt.get_cmap("tab10")(i % 10) for i in range(k)]
        for ax, (r, d) in zip(axes.flat, items, strict=False):
            x = d["samples"]
            ax.scatter(x[:, 0], x[:, 1], s=1, color="#bbbbbb")
            ax.scatter(x[:k, 0], x[:k, 1], s=28, color=seed_colours[:len(x[:k])], edgecolors="black", lw=0.5)
            ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
            ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{_label(r)}\n{key.upper()} {fmt(r['metrics'][key])}", fontsize=8,
                         color=row_style(r, teachers)[0])
        for ax in list(axes.flat)[len(items):]:
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
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
            ax.plot([r["step"] for r in recs], [r[k] for r in recs], ".-" if len(recs) < 20 else "-", label=k)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("training loss", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(keys) > 1:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return True


# ---------------------------------------------------------------- tables

@dataclass(frozen=True)
class Cell:
    """A table cell that is more than text: bold (the best in its column) or badges
    (``(flag id, badge text)`` pairs)."""

    text: str = ""
    bold: bool = False
    badges: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Group:
    """A row that names the group of rows below it (teachers, students)."""

    label: str


def _text(c) -> str:
    if isinstance(c, Cell):
        return " ".join([c.text, *(f"[{b}]" for _, b in c.badges)]).strip()
    return c


def _badges(flags: list[dict]) -> Cell:
    return Cell(badges=tuple((f["id"], f["badge"]) for f in flags))


def _macs(v) -> str:
    """Multiply-accumulates in engineering units (1.2M, 3.4G); "" when not measured."""
    if v is None:
        return ""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g}{unit}"
    return str(int(v))


def _group_rows(rows: list[dict], key: str) -> tuple[list[dict], list[dict]]:
    """(teacher rows, student rows) of a table, each sorted by the headline metric."""
    shown = [r for r in rows if not r.get("curve") or r.get("nfe") == 1]  # the curve is in the plot
    order = sorted(shown, key=lambda r: r["metrics"][key])
    return [r for r in order if r.get("kind") == "teacher"], [r for r in order if r.get("kind") != "teacher"]


def _bold_best(body: list[list], student_rows: list[int], cols: dict[int, str]) -> None:
    """Bold the best student value of every column in ``cols`` (index -> "min"/"max")
    when the students do not all tie."""
    for j, way in cols.items():
        vals = {i: body[i][j][1] for i in student_rows if body[i][j][1] is not None}
        if len(set(vals.values())) < 2:
            continue
        best = (min if way == "min" else max)(vals.values())
        for i, v in vals.items():
            if v == best:
                body[i][j] = (Cell(body[i][j][0], bold=True), v)


def summary_table(rows: list[dict], failed: list[tuple[str, str, dict]] = ()) -> tuple[list[str], list]:
    """The data set's table: teachers then students, each sorted by the headline metric,
    ↓/↑ on every metric, the best student value per column in bold, then a row per
    stage with no model (``failed``: (name, kind, flag)). Rows are lists of cells (str or
    :class:`Cell`); :class:`Group` items head the groups."""
    key = headline(rows[0])
    extra = [k for k in ("precision", "recall") if k in rows[0]["metrics"]]
    seeds = max(len(r.get("per_seed") or [None]) for r in rows)
    spread = f"mean ± sd, {seeds} seeds" if seeds > 1 else "1 seed"
    K = key.upper()
    head = ["method", "flags", "teacher", "params ↓", "params / teacher ↓", "NFE ↓", "MACs / sample ↓",
            f"{K} ↓ ({spread})", f"{K} / teacher ↓", *[f"{k} ↑" for k in extra], "samples/s ↑",
            "speed-up ↑", "train s"]
    # NFE is left unbolded: every one-step student ties on it; MACs (every block pass and
    # scorer call of a sample, counted) is what separates them
    ways = {3: "min", 4: "min", 6: "min", 7: "min", 8: "min", **{9 + i: "max" for i in range(len(extra))},
            9 + len(extra): "max", 10 + len(extra): "max"}
    teachers, students = _group_rows(rows, key)
    body: list = []
    student_idx: list[int] = []

    def cells(r):  # (text, value) pairs, so the best can be found before formatting is final
        sd = r.get("metrics_sd", {}).get(key)
        q = fmt(r["metrics"][key]) + (f" ± {fmt(sd, 2)}" if seeds > 1 and sd is not None else "")
        return [(r["name"], None), (_badges(r.get("flags", [])), None), (r.get("teacher") or "", None),
                (fmt(r.get("params")), r.get("params")), (_ratio(r.get("params_ratio")), r.get("params_ratio")),
                (fmt(r.get("nfe")), r.get("nfe")), (_macs(r.get("macs")), r.get("macs")),
                (q, r["metrics"][key]),
                (_ratio(r.get("quality_ratio")), r.get("quality_ratio")),
                *[(fmt(r["metrics"].get(k)), r["metrics"].get(k)) for k in extra],
                (fmt(r.get("samples_per_s")), r.get("samples_per_s")), (_ratio(r.get("speedup")), r.get("speedup")),
                (fmt(r.get("train_s")), None)]

    for label, group in (("teachers", teachers), ("students", students)):
        failed_here = [f for f in failed if (f[1] == "teacher") == (label == "teachers")]
        if not group and not failed_here:
            continue
        body.append(Group(label))
        for r in group:
            if label == "students":
                student_idx.append(len(body))
            body.append(cells(r))
        for name, _, fl in failed_here:
            body.append([(name, None), (_badges([fl]), None)] + [("", None)] * (len(head) - 2))
    _bold_best(body, student_idx, ways)
    return head, [b if isinstance(b, Group) else [c for c, _ in b] for b in body]


# ---------------------------------------------------------------- notes

_CLAMP = re.compile(r"^([\d.]+)% of sample values were outside \[-1, 1\] and were clamped$")
_BELOW = re.compile(r"^(FD|FID) \S+ is below the real/real floor")


def flag_notes(rows: list[dict], failed: list[tuple[str, str, dict]] = ()) -> list[str]:
    """One line per flag present: its badge, what it means, and every model that has it."""
    by_flag: dict[str, list[str]] = {}
    for name, fl in [(r["name"], f) for r in rows for f in r.get("flags", [])] + [(n, f) for n, _, f in failed]:
        by_flag.setdefault(fl["id"], []).append(name + (f" ({fl['detail']})" if fl.get("detail") else ""))
    return [f"[{FLAGS[fid][0]}] {FLAGS[fid][1]}: {'; '.join(who)}" for fid, who in by_flag.items()]


def collapse_notes(rows: list[dict]) -> list[str]:
    """The evaluation's notes with each repeated note said once with the list of its
    models. The clamping note becomes one line of percentages; the below-floor note is
    dropped (the badge says it, with the copy rate)."""
    groups: dict[str, list[tuple[str, str | None]]] = {}
    for r in rows:
        for n in r.get("notes", []):
            if _BELOW.match(n):
                continue
            m = _CLAMP.match(n)
            groups.setdefault("clamp" if m else n, []).append((r["name"], m.group(1) if m else None))
    out = []
    for note, who in groups.items():
        if note == "clamp":
            out.append("sample values outside [-1, 1] were clamped before scoring, as when saved as images: "
                       + ", ".join(f"{n} {p} %" for n, p in who))
        elif len(who) == 1:
            out.append(f"{who[0][0]}: {note}")
        else:
            out.append(f"{note} ({', '.join(n for n, _ in who)})")
    return out


# ---------------------------------------------------------------- blocks

def _failed_stages(results: dict, spec: str) -> list[tuple[str, str, dict]]:
    """(name, kind, flag) of every model stage of ``spec`` with no row: failed, diverged, skipped."""
    out = []
    for name, s in results["stages"].items():
        fl = stage_flag(s)
        if fl is not None and s["spec"] == spec and s["kind"] != "pairs":
            out.append((name, s["kind"], fl))
    return out


def blocks_for(out: Path, results: dict) -> list[tuple]:
    ev = results["eval"]
    specs = list(dict.fromkeys(r["data"] for r in results["rows"]))
    by_spec = {spec: [r for r in results["rows"] if r["data"] == spec] for spec in specs}
    b: list[tuple] = [
        ("h1", results["title"]),
        ("p", f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')} · {machine()} · "
              f"{results['seconds'] / 60:.1f} min in all (training reused from earlier runs is not counted)"),
        ("h2", "verdict"),
        *[("verdict", spec, verdict_lines(by_spec[spec])) for spec in specs],
        ("p", f"One protocol for every row: samples from seeds {', '.join(str(s) for s in ev['seeds'])} "
              "(N per seed stated with each data set), scored by `slimstep eval`'s metrics; "
              "the table shows the mean over seeds. The floor is the same metric for real data against "
              "real data at the same N: what a perfect generator would score. Ratios are over the "
              "row's teacher at its reference sampler. Speed: batch 256 on this machine, one model "
              "at a time. MACs / sample: multiply-accumulates of one sample, counted by torch's FLOP "
              "counter (matmuls, convolutions, attention) over every network call of it — an SLT "
              "student's K block passes, a screened row's N candidates, its scorer and its final "
              "call; NFE counts calls only. ↓: lower is better, ↑: higher is better; bold: the best "
              "student in that column."),
    ]
    stages = results["stages"]
    for spec in specs:
        rows = by_spec[spec]
        failed = _failed_stages(results, spec)
        slug = spec.replace(":", "-").replace("/", "-")
        key = headline(rows[0])
        floor = rows[0].get("floor", {})
        n = rows[0]["n"]
        how = rows[0].get("floor_note")
        b += [("h2", spec), ("p", f"N = {n:,} samples per seed, {len(ev['seeds'])} seed(s). "
                                  f"Floor (real vs real at this N"
                                  + (f"; the {how}, one draw being noisy" if how else "")
                                  + f"): {key.upper()} {fmt(floor.get(key))}"
                                  + "".join(f", {k} {fmt(floor[k])}" for k in ("precision", "recall")
                                            if k in floor) + "."
                                  + (" Ratios to the floor are against that mean." if how else ""))]
        head, body = summary_table(rows, failed)
        b.append(("table", head, body))
        notes = flag_notes(rows, failed)
        if notes:
            b.append(("flags", notes))
        teachers, students = _group_rows(rows, key)
        strip = [r for r in teachers if r.get("nfe") == 1] + [r for r in teachers if r.get("reference")] + students
        if plot_strip(strip, out / f"{slug}-strip.png", f"{spec}: the same {8} seeds through every model"):
            b += [("h3", "comparison: the same seeds through every model"),
                  ("img", f"{slug}-strip.png", "the same seeds through every model")]
        plot_nfe(rows, out / f"{slug}-nfe.png", f"{spec}: quality vs NFE")
        b.append(("img", f"{slug}-nfe.png", "quality vs NFE"))
        if plot_speed(rows, out / f"{slug}-speed.png", f"{spec}: quality vs speed"):
            b.append(("img", f"{slug}-speed.png", "quality vs speed"))
        pics = [(os.path.relpath(r["files"]["picture"], out), f"{r['name']} (NFE {r['nfe']})")
                for r in teachers + students if r.get("files", {}).get("picture")]
        if pics:
            b += [("h3", "samples (first 100 of seed " + str(ev["seeds"][0]) + ")"), ("gallery", pics)]
        runs = [(n, Path(s["metrics_file"])) for n, s in stages.items()
                if s.get("metrics_file") and s["spec"] == spec]
        if plot_losses(runs, out / f"{slug}-loss.png", f"{spec}: training losses"):
            b += [("h3", "training losses"), ("img", f"{slug}-loss.png", "training losses")]
        notes = collapse_notes(rows)
        if notes:
            b += [("h3", "notes"), ("list", notes)]
    b.append(("h2", "stages"))
    b.append(("table", ["stage", "kind", "data", "status", "seconds", "directory", "overrides"],
              [[n, s["kind"], s["spec"], s["status"] + (f": {s['error']}" if s.get("error") else ""),
                fmt(s.get("seconds")), os.path.relpath(s["dir"], out), " ".join(s.get("overrides") or [])]
               for n, s in stages.items()]))
    return b


def _md_cell(c) -> str:
    if isinstance(c, Cell):
        text = f"**{c.text}**" if c.bold and c.text else c.text
        return " ".join([text, *(f"`{b}`" for _, b in c.badges)]).strip()
    return c.replace("|", "\\|")


def to_markdown(blocks: list[tuple]) -> str:
    md = []
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2", "h3"):
            md += ["#" * int(kind[1]) + " " + blk[1], ""]
        elif kind == "p":
            md += [blk[1], ""]
        elif kind == "verdict":
            md += [f"> **{blk[1]}** — " + " ".join(blk[2]), ""]
        elif kind in ("list", "flags"):
            md += [f"- {x}" for x in blk[1]] + [""]
        elif kind == "table":
            head, body = blk[1], blk[2]
            md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for row in body:
                cells = [f"**{row.label}**", *[""] * (len(head) - 1)] if isinstance(row, Group) else row
                md.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
            md.append("")
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
text-align:right;white-space:nowrap}th{background:#f3f3f3;white-space:normal}
td:first-child,th:first-child{text-align:left;white-space:normal}td:nth-child(2),th:nth-child(2){text-align:left}
tr.group td{background:#fafafa;font-weight:600;text-align:left;color:#555}
.verdict{border-left:4px solid #2a7;background:#f2fbf6;padding:.5em 1em;margin:.6em 0}
.verdict p{margin:.3em 0}.badge{display:inline-block;font-size:11px;padding:1px 6px;border-radius:8px;
background:#eee;color:#333;margin:1px 2px;white-space:nowrap}.badge.equals-init,.badge.failed,
.badge.diverged{background:#fde2e1;color:#a01010}.badge.below-floor,.badge.fewer-seeds,.badge.skipped
{background:#fff1cc;color:#7a5200}ul.flags li{margin:.3em 0}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.gallery figure{margin:0;text-align:center;font-size:12px}
.gallery img{width:220px;image-rendering:pixelated;border:1px solid #ddd}img.plot{max-width:100%}"""


def _inline(text: str) -> str:
    """Escaped text with `code` spans as <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _badge_html(fid: str, text: str) -> str:
    return f"<span class='badge {html.escape(fid)}'>{html.escape(text)}</span>"


def _html_cell(c) -> str:
    if isinstance(c, Cell):
        text = f"<b>{html.escape(c.text)}</b>" if c.bold and c.text else html.escape(c.text)
        return f"<td>{text}{''.join(_badge_html(f, b) for f, b in c.badges)}</td>"
    return f"<td>{html.escape(c)}</td>"


def _flag_item(line: str) -> str:
    """A flag note ``[badge] text`` with its badge drawn as in the table."""
    badge, _, rest = line[1:].partition("] ")
    fid = next((k for k, (b, _) in FLAGS.items() if b == badge), "")
    return f"<li>{_badge_html(fid, badge)} {_inline(rest)}</li>"


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
        elif kind == "verdict":
            parts.append(f"<div class='verdict' data-spec='{e(blk[1])}'><b>{e(blk[1])}</b>"
                         + "".join(f"<p>{_inline(x)}</p>" for x in blk[2]) + "</div>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in blk[1]) + "</ul>")
        elif kind == "flags":
            parts.append("<ul class='flags'>" + "".join(_flag_item(x) for x in blk[1]) + "</ul>")
        elif kind == "table":
            n = len(blk[1])
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in blk[1]) + "</tr>"
                         + "".join(f"<tr class='group'><td colspan='{n}'>{e(row.label)}</td></tr>"
                                   if isinstance(row, Group) else
                                   "<tr>" + "".join(_html_cell(c) for c in row) + "</tr>"
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


def _console_line(cells: list[str], widths: list[int]) -> str:
    """Method and flags left-aligned, numbers right-aligned."""
    return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def console_table(results: dict) -> str:
    """``slimstep run``'s summary: per data set the verdict, the table (grouped and
    sorted as in the report, flags as [badges]) and what each flag means."""
    lines = []
    for spec in dict.fromkeys(r["data"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["data"] == spec]
        failed = _failed_stages(results, spec)
        head, body = summary_table(rows, failed)
        drop = {"teacher", "params / teacher ↓"}
        keep = [i for i, h in enumerate(head) if h not in drop]
        table = [[head[i] for i in keep]] + [[_text(row[i]) for i in keep] for row in body
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
