"""Why is GDD-I worse than GDD on digits? A short ablation: frozen fraction (GDD = nothing
frozen, GDD-I freeze_level 1 and 2), generator lr, and budget (FD of every snapshot).
Writes benchmarks/results/gdd-ablate.md (+ .json).

    python benchmarks/gdd_ablate.py --teacher T [--out runs/bench/gdd-ablate] [--steps 1000] [--quick]

Every arm is configs/digits/gdd.yaml or gdd-i.yaml (conv discriminator, lr_d 2e-3, R1
γ 0.1, batch 64) cut to ``--steps`` with a snapshot every quarter; only the named
setting changes. One training seed (0). The final checkpoint is scored at the three
sample seeds the suites use; the snapshots at sample seed 0 (the curve).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SPREAD_SEEDS, Runner, finished, machine, md_table, score, score_seeds  # noqa: E402

#: name -> (method, config, overrides, what it tests)
ARMS = {
    "gdd": ("gdd", "configs/digits/gdd.yaml", [], "nothing frozen (the GDD recipe)"),
    "gdd-i L1": ("gdd-i", "configs/digits/gdd-i.yaml", ["method.freeze_level=1"],
                 "3x3 convs + attention out-proj frozen (the GDD-I recipe)"),
    "gdd-i L2": ("gdd-i", "configs/digits/gdd-i.yaml", ["method.freeze_level=2"], "level 1 + qkv frozen"),
    "gdd-i L1, lr_g 1e-3": ("gdd-i", "configs/digits/gdd-i.yaml",
                            ["method.freeze_level=1", "method.lr_g=1e-3"], "5x the generator lr"),
    "gdd, lr_g 1e-3": ("gdd", "configs/digits/gdd.yaml", ["method.lr_g=1e-3"],
                       "the same lr on the full network (control)"),
}
METRICS = ("fd", "precision", "recall", "copy_rate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/gdd-ablate"))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), help="a subset of the arms")
    ap.add_argument("--quick", action="store_true", help="40 steps per arm (a smoke run)")
    a = ap.parse_args()
    steps = 40 if a.quick else a.steps
    r = Runner(a.out)
    teacher = str(a.teacher)

    def protocol(ckpt: Path, name: str, **sampling) -> dict:
        return score_seeds(ckpt, name, "digits", METRICS, **sampling)

    t_ref = protocol(a.teacher, "teacher heun-16 (reference)")
    t_one = protocol(a.teacher, "teacher euler-1", solver="euler", steps=1)
    ref_fd = t_ref["metrics"]["fd"]
    rows, curves = [t_ref, t_one], {}
    for name in a.arms:
        method, config, over, what = ARMS[name]
        run = a.out / name.replace(" ", "").replace(",", "-")
        args = ["distill", "--method", method, "--config", config, "--teacher", teacher, "--out", str(run),
                "--quiet", f"train.steps={steps}", f"train.ckpt_every={max(1, steps // 4)}", "train.keep=4",
                "train.seed=0", *over]
        secs = r.run(args, finished(run))
        cfg = json.loads((run / "config.json").read_text())
        p = cfg["params"]
        row = protocol(run, name)
        lr_g = cfg["method"].get("lr_g") or cfg["train"]["lr"]
        row.update(what=what, train_s=round(secs), frozen=f"{100 * p['frozen'] / p['total']:.1f}%",
                   trainable=p["trainable"], lr_g=lr_g, steps=cfg["step"])
        rows.append(row)
        pts = []
        for snap in sorted((run / "checkpoints").glob("step-*"), key=lambda s: int(s.name[5:])):
            k = int(snap.name[5:])
            if k == cfg["step"]:
                continue  # the final row above
            s = score(snap, f"{name} @{k}", "digits", seed=0)
            pts.append({"step": k, **{m: s["metrics"][m] for m in METRICS}})
        pts.append({"step": cfg["step"], **{m: row["per_seed"]["fd"][0] if m == "fd" else None
                                           for m in METRICS}})
        curves[name] = pts
    for row in rows:
        row["ratio"] = f"{row['metrics']['fd'] / ref_fd:.2f}x"

    # the curve table: one column per arm, FD at sample seed 0 per snapshot step
    all_steps = sorted({p["step"] for pts in curves.values() for p in pts})
    curve_rows = [{"step": k, **{n: next((p["fd"] for p in pts if p["step"] == k), None)
                                 for n, pts in curves.items()}} for k in all_steps]
    res = {"machine": machine(), "teacher": teacher, "steps": steps, "rows": rows, "curves": curves,
           "commands": r.commands()}
    dest = a.out / "report" if a.quick else RESULTS
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "gdd-ablate.json").write_text(json.dumps(res, indent=1, default=str))
    m = res["machine"]
    floor = t_ref["floor"]
    cols = [("run", "name"), ("what", "what"), ("frozen", "frozen"), ("trainable", "trainable"),
            ("lr_g", "lr_g"), ("steps", "steps"), ("FD", "metrics.fd"), ("FD / teacher ref", "ratio"),
            ("precision", "metrics.precision"), ("recall", "metrics.recall"),
            ("copy rate", "metrics.copy_rate"), ("train s", "train_s")]
    md = [f"# GDD-I vs GDD: a short ablation ({'quick smoke run, not a result' if a.quick else 'full'})", "",
          f"{m['date']}, {m['cpu']}, {m['cores']} CPU cores shared with other jobs (each run on 1 thread), "
          f"torch {m['torch']}, Python {m['python']}. Script: `benchmarks/gdd_ablate.py`.", "",
          f"Teacher `{teacher}` ({t_ref['params']:,} parameters). Each arm: the digits recipe "
          f"(configs/digits/gdd.yaml / gdd-i.yaml: conv discriminator, lr_d 2e-3, R1 γ 0.1, batch 64, "
          f"EMA half-life 6,400 images) cut to {steps:,} steps, training seed 0; only the named setting "
          f"changes. FD: digits classifier features, N = 597, mean over sample seeds "
          f"{', '.join(map(str, SPREAD_SEEDS))}. Floor: FD {floor['fd']:.3g}.", "",
          md_table(rows, cols), "",
          f"FD along training (sample seed 0 only; snapshot every {max(1, steps // 4)} steps, EMA weights):", "",
          md_table(curve_rows, [("step", "step"), *[(n, n) for n in curves]]), "",
          "## Commands", "", "```", *res["commands"],
          "python benchmarks/gdd_ablate.py " + " ".join(sys.argv[1:]), "```", ""]
    (dest / "gdd-ablate.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
