"""Every method side by side: `slimstep run` on the digits and moons recipes, one
protocol. Writes benchmarks/results/methods.md (+ methods.json, plots in methods/).

    python benchmarks/methods.py            # configs/digits/all.yaml + configs/toy2d/all.yaml
    python benchmarks/methods.py --quick    # configs/demo.yaml (the demo's budget)
    python benchmarks/methods.py --recipe digits/slt-chain --out runs --tag slt-chain
                                            # one other recipe -> results/slt-chain.md

`slimstep run` reuses every stage that finished (by config hash), so a killed
benchmark reruns only what is missing; the training seconds in the table are each
stage's training loop, summed over every invocation that resumed it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, Runner, machine  # noqa: E402

from slimstep.numbers import fmt, fmt_macs  # noqa: E402

RECIPES = {"full": [("configs/digits/all.yaml", "digits"), ("configs/toy2d/all.yaml", "toy2d")],
           "quick": [("configs/demo.yaml", "demo")]}


def headline_table(rows: list[dict]) -> list[str]:
    key = rows[0]["headline"] if "headline" in rows[0] else "fd"
    cols = ["method", "teacher", "NFE", "MACs / sample", f"{key} (mean of seeds)", "± sd", f"{key} / teacher's",
            "params", "params / teacher's", "samples/s", "samples/s / teacher's", "train s"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if r.get("curve") and r["nfe"] != 1:
            continue
        m = r["metrics"]

        def ratio(k, r=r):
            return f"{r[k]:.3g}x" if r.get(k) is not None else ""

        out.append("| " + " | ".join([
            r["name"], r.get("teacher") or "", str(r["nfe"]), fmt_macs(r.get("macs")), fmt(m[key]),
            fmt(r["metrics_sd"].get(key), 2),
            ratio("quality_ratio"), fmt(r["params"]), ratio("params_ratio"), fmt(r.get("samples_per_s")),
            ratio("speedup"), fmt(r.get("train_s"))]) + " |")
    return out


def parent_lines(rows: list[dict], stages: dict) -> list[str]:
    """Students of a one-step student (SLT of flowmap, screening): the ratios over that
    direct teacher, which the issue's targets are stated against."""
    by_stage = {r["stage"]: r for r in rows if not r.get("curve")}
    out = []
    for r in rows:
        deps = stages[r["stage"]]["deps"]
        parent = by_stage.get(deps.get("student") or deps.get("teacher"))
        if parent is None or parent.get("reference") or stages[parent["stage"]]["kind"] == "teacher":
            continue
        key = r.get("headline", "fd")
        role = "the student it screens with" if deps.get("student") else "its own (one-step) teacher"
        out.append(f"- {r['name']} over {role}, `{parent['name']}`: {key} "
                   f"{r['metrics'][key] / parent['metrics'][key]:.3g}x, parameters "
                   f"{r['params'] / parent['params']:.3g}x, samples/s "
                   f"{(r.get('samples_per_s') or 0) / parent['samples_per_s']:.3g}x.")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench/all")
    ap.add_argument("--quick", action="store_true", help="the demo recipe (configs/demo.yaml)")
    ap.add_argument("--jobs", type=int, default=2, help="stages trained at once")
    ap.add_argument("--note", default="", help="how the runs came about (written under the title)")
    ap.add_argument("--recipe", action="append", help="another recipe (repeatable) instead of the set")
    ap.add_argument("--tag", default="methods", help="results file stem (default methods)")
    a = ap.parse_args()
    out = Path(a.out)
    r = Runner(out)
    dest = RESULTS
    plots = dest / a.tag
    plots.mkdir(parents=True, exist_ok=True)
    runs = []
    recipes = ([(rc, Path(rc).stem) for rc in a.recipe] if a.recipe
               else RECIPES["quick" if a.quick else "full"])
    for recipe, name in recipes:
        d = out / name
        # slimstep run decides what to reuse itself: always invoke it.
        secs = r.run(["run", recipe, "--out", str(d), "--jobs", str(a.jobs)])
        res = json.loads((d / "results.json").read_text())
        runs.append((recipe, d, secs, res))
    m = machine()
    jobs = "one stage trained at a time" if a.jobs == 1 else f"{a.jobs} stages trained at once"
    # the command without --note (prose, not a setting), shell-quoted
    argv = [x for i, x in enumerate(sys.argv[1:])
            if x != "--note" and sys.argv[i] != "--note" and not x.startswith("--note=")]
    # the set of recipes is "every method"; one recipe given by name is titled by itself
    title = (runs[0][3]["title"] if a.recipe and len(runs) == 1 and runs[0][3].get("title")
             else "Every method, one protocol")
    md = [f"# {title} (`slimstep run`)", "",
          f"{m['date']}, {m['cores']} CPU cores ({jobs}, one thread each), "
          f"torch {m['torch']}, Python {m['python']}. Reproduce: `python benchmarks/methods.py "
          f"{shlex.join(argv)}`.", "",
          "Each row's ratios are over its teacher at the teacher's reference sampler (Heun, 16 steps = "
          "32 NFE): quality (FD on digits, W2 on moons; lower is better), parameters, and samples/s "
          "at batch 256 (measured after training, one model at a time). Every model is sampled "
          "from the same seeds; the table shows the mean over the recipe's seeds and their standard "
          f"deviation. Training seconds are wall-clock ({jobs}).", "",
          *([a.note, ""] if a.note else [])]
    for recipe, d, secs, res in runs:
        ev = res["eval"]
        md += [f"## `{recipe}`", "",
               f"`slimstep run {recipe} --out {d}`: {secs / 60:.1f} min for this invocation "
               f"({res['seconds'] / 60:.1f} min inside `slimstep run`); seeds {ev['seeds']}, "
               f"N = {ev['n'] or 'default'} per seed. The full report: `{d}/report.html`.", ""]
        for spec in dict.fromkeys(row["data"] for row in res["rows"]):
            rows = [row for row in res["rows"] if row["data"] == spec]
            fl = rows[0]["floor"]
            md += [f"### {spec}", "", "Real/real floor: " + ", ".join(
                f"{k} {fmt(fl[k])}" for k in ("fd", "precision", "recall", "w2", "mmd") if k in fl) + ".", "",
                *headline_table(rows), "", *parent_lines(rows, res["stages"]), ""]
            slug = spec.replace(":", "-")
            for kind, alt in (("nfe", "quality vs NFE"), ("speed", "quality vs speed")):
                src = d / f"{slug}-{kind}.png"
                if src.is_file():
                    shutil.copyfile(src, plots / f"{slug}-{kind}.png")
                    md += [f"![{spec}: {alt}]({a.tag}/{slug}-{kind}.png)", ""]
        failed = [n for n, s in res["stages"].items() if s["status"] in ("failed", "skipped")]
        if failed:
            md += [f"Failed or skipped stages: {', '.join(failed)} (see the report's stage table).", ""]
        md += ["Stages (seconds: the invocation that last ran each, reused = trained earlier; training s: "
               "the training loop's wall time summed over every invocation that resumed it):", "",
               "| stage | kind | status | seconds | training s | overrides |", "|---|---|---|---|---|---|",
               *[f"| {n} | {s['kind']} | {s['status']} | {fmt(s.get('seconds'))} | {fmt(s.get('train_seconds'))} | "
                 f"{' '.join(s.get('overrides') or [])} |" for n, s in res["stages"].items()], ""]
    md += ["## Commands (wall seconds)", "", "```",
           *[f"{c}    # {r.times[c]:.0f} s" for c in r.commands()],
           "python benchmarks/methods.py " + shlex.join(argv), "```", ""]
    (dest / f"{a.tag}.json").write_text(json.dumps({"machine": m, "runs": [
        {"recipe": rc, "dir": str(d), "seconds": s, "results": res} for rc, d, s, res in runs]},
        indent=1, default=str))
    (dest / f"{a.tag}.md").write_text("\n".join(md))
    print(f"-> {dest / f'{a.tag}.md'}")


if __name__ == "__main__":
    main()
