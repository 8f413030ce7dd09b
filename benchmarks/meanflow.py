"""MeanFlow's one-step map, on moons (from scratch and fine-tuned) and on digits (fine-tuned
from the smooth DiT teacher). Writes benchmarks/results/meanflow.md (+ .json).

    python benchmarks/meanflow.py --dit-teacher T [--out runs/bench/meanflow] [--threads 2] [--quick]

Issue 10's targets: moons from scratch 1-step W2 <= 1.75x the data/data floor in under
3 minutes on 2 cores; fine-tuned from the moons teacher <= 1.5x; digits fine-tuned from
the DiT teacher, 1-step FD <= 1.5x the teacher's FD at its reference sampler (Heun-16).
Every command is a real ``slimstep`` call, recorded verbatim with its wall time; finished
runs are reused (then their time is the one logged when they ran, or nan).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SPREAD_SEEDS, Runner, finished, machine, md_table, score_seeds  # noqa: E402

ONE = {"solver": "euler", "steps": 1}


def protocol(ckpt: Path, name: str, spec: str, key: str, **sampling) -> dict:
    """The headline metric at the three sample seeds: its values, mean, sd and floor."""
    r = score_seeds(ckpt, name, spec, (key,), **sampling)
    return {"name": name, "params": r["params"], "nfe": r["nfe"], "per_seed": r["per_seed"][key],
            "mean": r["metrics"][key], "sd": r["metrics_sd"][key], "floor": r["floor"].get(key),
            "ckpt": r["ckpt"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dit-teacher", type=Path, required=True,
                    help="a DiT flow-matching teacher with time_scale 1 (configs/digits/dit-teacher.yaml)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/meanflow"))
    ap.add_argument("--threads", type=int, default=2, help="threads per training command")
    ap.add_argument("--quick", action="store_true", help="tiny budgets (a smoke run, not a result)")
    a = ap.parse_args()
    quick = ["train.steps=40", "train.ckpt_every=40"] if a.quick else []
    r = Runner(a.out, threads=a.threads)
    rows, times, made = [], {}, []
    run = r.run

    def logged(args, done):  # every product's command, run now or reused, for the Commands list
        secs = run(args, done)
        made.append(("slimstep " + " ".join(args), secs))
        return secs

    r.run = logged

    # ---------------------------------------------------------------- moons
    mt = a.out / "moons-teacher"
    times["moons teacher"] = r.run(["teacher", "--config", "configs/toy2d/teacher.yaml", "--out", str(mt),
                                    "--quiet", *quick], finished(mt))
    scratch, ft = a.out / "moons-meanflow", a.out / "moons-meanflow-ft"
    times["moons scratch"] = r.run(["distill", "--method", "meanflow", "--config", "configs/toy2d/meanflow.yaml",
                                    "--out", str(scratch), "--quiet", *quick], finished(scratch))
    # py-meanflow's own loss on the same net and sampler: adaptive weight p = 0.75, at the
    # budget the issue measured the official code at (20,000 steps at batch 256: 1.61x)
    official = a.out / "moons-meanflow-p075"
    times["moons p075"] = r.run(["distill", "--method", "meanflow", "--config", "configs/toy2d/meanflow.yaml",
                                 "--out", str(official), "--quiet", "method.weight_power=0.75",
                                 *(quick or ["train.steps=20000"])], finished(official))
    times["moons ft"] = r.run(["distill", "--method", "meanflow", "--config", "configs/toy2d/meanflow-ft.yaml",
                               "--teacher", str(mt), "--out", str(ft), "--quiet", *quick], finished(ft))
    moons = "toy2d:moons"
    m_ref = protocol(mt, "moons teacher heun-16 (reference)", moons, "w2")
    m_one = protocol(mt, "moons teacher euler-1", moons, "w2", **ONE)
    m_scr = protocol(scratch, "MeanFlow from scratch (the recipe, p = 0), 1 step", moons, "w2")
    m_off = protocol(official, "MeanFlow from scratch, py-meanflow's p = 0.75, 20k steps, 1 step", moons, "w2")
    m_ft = protocol(ft, "MeanFlow fine-tuned from the teacher, 1 step", moons, "w2")
    floor_w2 = m_ref["floor"]
    for row, t in ((m_ref, times["moons teacher"]), (m_one, None), (m_scr, times["moons scratch"]),
                   (m_off, times["moons p075"]), (m_ft, times["moons ft"])):
        rows.append({**row, "data": moons, "over_floor": f"{row['mean'] / floor_w2:.2f}x",
                     "over_ref": f"{row['mean'] / m_ref['mean']:.2f}x", "train_s": t})

    # ---------------------------------------------------------------- digits
    dmf = a.out / "digits-meanflow"
    times["digits"] = r.run(["distill", "--method", "meanflow", "--config", "configs/digits/meanflow.yaml",
                             "--teacher", str(a.dit_teacher), "--out", str(dmf), "--quiet", *quick],
                            finished(dmf))
    d_ref = protocol(a.dit_teacher, "DiT teacher heun-16 (reference)", "digits", "fd")
    d_one = protocol(a.dit_teacher, "DiT teacher euler-1", "digits", "fd", **ONE)
    d_mf = protocol(dmf, "MeanFlow fine-tuned from the DiT teacher, 1 step", "digits", "fd")
    floor_fd = d_ref["floor"]
    for row, t in ((d_ref, None), (d_one, None), (d_mf, times["digits"])):
        rows.append({**row, "data": "digits", "over_floor": f"{row['mean'] / floor_fd:.2f}x",
                     "over_ref": f"{row['mean'] / d_ref['mean']:.2f}x", "train_s": t})
    for row in rows:
        row["metric"] = f"{row['mean']:.3g} ± {row['sd']:.2g}"
        row["seeds"] = ", ".join(f"{v:.3g}" for v in row["per_seed"])

    def verdict(name: str, value: float, limit: float, what: str) -> str:
        return f"* {name}: {value:.2f}x {what} (target <= {limit}x): " + (
            "**met**." if value <= limit else "**not met**.")

    lines = [
        verdict("moons, from scratch", m_scr["mean"] / floor_w2, 1.75, "the data/data floor")
        + f" Trained in {times['moons scratch']:.0f} s ({a.threads} thread(s) of the 2-core machine; target < 180 s).",
        f"* moons, py-meanflow's loss (p = 0.75) on our net, 20,000 steps: {m_off['mean'] / floor_w2:.2f}x "
        "the floor (the issue measured the official code at 1.61x on this budget).",
        verdict("moons, fine-tuned", m_ft["mean"] / floor_w2, 1.5, "the data/data floor"),
        verdict("digits, fine-tuned", d_mf["mean"] / d_ref["mean"], 1.5, "the teacher's reference FD")
        + f" (the teacher's own 1-step Euler: {d_one['mean'] / d_ref['mean']:.2f}x).",
    ]
    res = {"machine": machine(), "dit_teacher": str(a.dit_teacher), "rows": rows, "times": times,
           "commands": [c for c, _ in made]}
    dest = a.out / "report" if a.quick else RESULTS
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "meanflow.json").write_text(json.dumps(res, indent=1, default=str))
    m = res["machine"]
    cols = [("model", "name"), ("data", "data"), ("params", "params"), ("NFE", "nfe"),
            ("W2 / FD (mean ± sd of 3 seeds)", "metric"), ("per sample seed", "seeds"),
            ("/ floor", "over_floor"), ("/ teacher ref", "over_ref"), ("train s", "train_s")]
    md = [f"# MeanFlow ({'quick smoke run, not a result' if a.quick else 'full'})", "",
          f"{m['date']}, {m['cpu']}, {m['cores']} CPU cores, training commands on {a.threads} "
          f"thread(s), torch {m['torch']}, Python {m['python']}. Script: `benchmarks/meanflow.py`.", "",
          "Recipes: `configs/toy2d/meanflow.yaml` (3x256 MLP from scratch, `time_embed: linear`, "
          "py-meanflow's CIFAR (t, r) sampler, plain L2 (p = 0), no clipping, 10,000 steps at "
          "batch 256; the p = 0.75 row is the same with py-meanflow's adaptive weight, 20,000 steps), "
          "`configs/toy2d/meanflow-ft.yaml` (from the moons teacher, teacher velocity, p = 0, "
          "3,000 steps), `configs/digits/meanflow.yaml` (from the DiT teacher, teacher velocity, "
          "p = 0, r != t for 75 %, 2,000 steps). Sample seeds "
          f"{', '.join(map(str, SPREAD_SEEDS))}; moons N = 2,000 (W2, floor {floor_w2:.3g}), digits "
          f"N = 597 (FD, floor {floor_fd:.3g}).", "",
          md_table(rows, cols), "", *lines, "",
          "`train s`: wall seconds of the command (nan: made before this script's log; the "
          "teachers' own rows give their training time where this script trained them).", "",
          "## Commands", "", "Each product's command and its wall seconds (nan: the product was made "
          "before this script ran, by the same command, and reused).", "", "```",
          *[f"{c}    # {t:.0f} s" for c, t in made],
          "python benchmarks/meanflow.py " + " ".join(sys.argv[1:]), "```", ""]
    (dest / "meanflow.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
