"""The report's plots: quality against NFE and against speed (every model a labelled
point in its palette colour, :mod:`slimstep.palette`), the comparison strip (the same
seeds through every model) and the training-loss panels. Each writes one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slimstep.files import atomic_write, read_samples
from slimstep.numbers import fmt
from slimstep.palette import row_style, teacher_style
from slimstep.report.notes import metrics_rows
from slimstep.spec.results import Row


def _plt():
    # why here: matplotlib is heavy and only the plots need it (a console summary does not)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, format="png", bbox_inches="tight", dpi=100))
    _plt().close(fig)


def teacher_stages(rows: list[Row]) -> list[str]:
    """Teacher stages in order of appearance: what :func:`slimstep.palette.row_style` keys on."""
    return list(dict.fromkeys(r.stage for r in rows if r.kind == "teacher"))


def label(r: Row) -> str:
    """A point's label: the stage for a student (short), the sampler for a teacher."""
    return r.name.replace(" (reference)", "") if r.kind == "teacher" else r.stage


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


def _scatter(ax, rows: list[Row], x: str, key: str, teachers: list[str]) -> dict[str, tuple[str, str]]:
    """One marker per row at (the row's ``x`` field, headline metric) in its palette style,
    labelled beside the point. Returns {label: (colour, marker)} as drawn."""
    drawn, pts = {}, []
    for r in rows:
        colour, marker = row_style(r, teachers)
        ax.plot([getattr(r, x)], [r.metrics[key]], marker, color=colour, ms=8, ls="none")
        drawn[label(r)] = (colour, marker)
        pts.append((getattr(r, x), r.metrics[key], label(r), colour))
    _label_points(ax, pts)
    return drawn


def _axes(ax, rows: list[Row], key: str, xbase: float, xlabel: str, title: str) -> None:
    """Log-log axes, the floor drawn and named, labels that say which way is better."""
    floor = rows[0].floor.get(key)
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


def plot_nfe(rows: list, path: Path, title: str) -> dict[str, tuple[str, str]]:
    """Quality against NFE (log-log): each teacher's Euler curve and reference
    sampler, every other model as a labelled point, the real/real floor as a line.
    ``rows``: row dicts or records. Returns {label: (colour, marker)} of the points, as drawn."""
    rows = [Row.of(r) for r in rows]
    key = rows[0].headline_key
    teachers = teacher_stages(rows)
    fig, ax = _plt().subplots(figsize=(6.5, 4.2))
    _axes(ax, rows, key, 2, "NFE (network evaluations per sample)", title)
    for i, teacher in enumerate(teachers):
        curve = [r for r in rows if r.curve and r.stage == teacher]
        if curve:
            colour, marker = teacher_style(i, reference=False)
            ax.plot([r.nfe for r in curve], [r.metrics[key] for r in curve], marker + "-", color=colour,
                    ms=4, lw=1, label=f"{teacher} (Euler, 1..{curve[-1].nfe} steps)")
    drawn = _scatter(ax, [r for r in rows if not r.curve], "nfe", key, teachers)
    if teachers:
        ax.legend(fontsize=7, loc="upper right")
    _save(fig, path)
    return drawn


def plot_speed(rows: list, path: Path, title: str) -> dict[str, tuple[str, str]]:
    """Quality against samples/s (log-log), one labelled point per measured model.
    Returns {label: (colour, marker)} as drawn (empty: nothing measured, no file)."""
    rows = [Row.of(r) for r in rows]
    pts = [r for r in rows if r.samples_per_s]
    if not pts:
        return {}
    key = rows[0].headline_key
    fig, ax = _plt().subplots(figsize=(6.5, 4.2))
    _axes(ax, rows, key, 10, "samples / s ↑ (batch 256, this machine)", title)
    drawn = _scatter(ax, pts, "samples_per_s", key, teacher_stages(rows))
    _save(fig, path)
    return drawn


def plot_strip(rows: list, path: Path, title: str, k: int = 8) -> bool:
    """The comparison strip: the first ``k`` protocol seeds through every model, one
    row (images) or panel (2-D points, the ``k`` seeds in the same colours in every
    panel) per model, labelled with the model and its headline metric."""
    rows = [Row.of(r) for r in rows]
    items = [(r, read_samples(r.files["samples"])) for r in rows
             if r.files.get("samples") and Path(r.files["samples"]).is_file()]
    if not items:
        return False
    key = items[0][0].headline_key
    teachers = teacher_stages(rows)
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
            axes[i][0].text(-0.12, 0.5, f"{label(r)}  {key.upper()} {fmt(r.metrics[key])}", fontsize=8,
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
            ax.set_title(f"{label(r)}\n{key.upper()} {fmt(r.metrics[key])}", fontsize=8,
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
        recs = metrics_rows(f)
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
