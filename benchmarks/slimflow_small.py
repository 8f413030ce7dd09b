"""SlimFlow with a *small* student (<= 1/16 of the digits teacher's parameters), three
training seeds: plain reflow vs annealing reflow, then naive vs flow-guided
distillation from the annealing student. Writes benchmarks/results/slimflow-small.md (+ .json).

    python benchmarks/slimflow_small.py --teacher T --pairs P [--out runs/bench/slimflow-small] [--quick]

SlimFlow's two tricks are aimed at small students: a student much smaller than its
teacher cannot follow the teacher's pairs closely, and annealing from independent
pairs (beta = 1) to the teacher's pairs (beta = 0) eases its start; the guide term
adds online two-step targets. The main SlimFlow suite (benchmarks/slimflow.py) uses
a 248k student (24% of the teacher), where naive distillation already matches the
teacher. Here the student is the same UNet at nf 8 (63,081 parameters, 6.1%).

Digits are not mirror-symmetric (the flip trick mirrors glyphs: FD ~85 in the main
suite), so every arm here has ``flip: false``. Every command is a real ``slimstep``
call on one thread, recorded verbatim with its wall time; finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SPREAD_SEEDS, Runner, finished, machine, md_table, score_seeds  # noqa: E402

#: The student: configs/digits/annealing-reflow.yaml's UNet at nf 8 (the recipe has nf 16).
STUDENT = ["net.nf=8", "net.ch_mult=[1,2]", "net.num_res_blocks=2", "net.attn_resolutions=[]"]
METRICS = ("fd", "precision", "recall", "copy_rate", "accuracy_vs_labels")
_TEACHER_X = {}


def mse_to_teacher(ckpt: Path, teacher: Path) -> float:
    """Pixel MSE between the model's sample and the teacher's reference sample from the same
    (noise, label), sample seed 0, N = 597, both clamped to [-1, 1]: how closely it follows
    the teacher's map, which FD does not measure."""
    from slimstep.generator import load

    if teacher not in _TEACHER_X:
        _TEACHER_X[teacher] = load(teacher).generate(597, seed=0)[0].clamp(-1, 1)
    x = load(ckpt).generate(597, seed=0)[0].clamp(-1, 1)
    return float(((x - _TEACHER_X[teacher]) ** 2).mean())


def protocol(ckpt: Path, name: str, **sampling) -> dict:
    return score_seeds(ckpt, name, "digits", METRICS, **sampling)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--pairs", type=Path, required=True, help="a complete `slimstep pairs` directory")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/slimflow-small"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed values")
    ap.add_argument("--reflow-steps", type=int, default=4000)
    ap.add_argument("--distill-steps", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="tiny budgets, one seed (a smoke run)")
    a = ap.parse_args()
    if a.quick:
        a.reflow_steps, a.distill_steps, a.seeds = 80, 40, a.seeds[:1]
    anneal = a.reflow_steps * 3 // 8  # the paper's 300k of 800k
    r = Runner(a.out)
    t = str(a.teacher)
    pairs = str(a.pairs)

    teacher_ref = protocol(a.teacher, "teacher heun-16 (reference)")
    teacher_one = protocol(a.teacher, "teacher euler-1", solver="euler", steps=1)
    ref_fd = teacher_ref["metrics"]["fd"]
    arms = {"reflow": [], "annealing": [], "distill": [], "slimflow": []}
    one = {"solver": "euler", "steps": 1}
    for seed in a.seeds:
        base = a.out / f"seed{seed}"
        common = ["--quiet", f"train.seed={seed}"]
        for arm, k in (("reflow", 0), ("annealing", anneal)):
            d = base / arm
            args = ["distill", "--method", "annealing-reflow", "--config", "configs/digits/annealing-reflow.yaml",
                    "--teacher", t, "--pairs", pairs, "--out", str(d), *common, *STUDENT,
                    f"train.steps={a.reflow_steps}", f"method.anneal_steps={k}",
                    "method.beta_schedule=linear", "method.flip=false"]
            secs = r.run(args, finished(d))
            row = protocol(d, f"{arm} (1 step)", **one)
            row["metrics"]["mse_teacher"] = mse_to_teacher(d, a.teacher)
            row.update(seed=seed, train_s=secs, ckpt=str(d))
            arms[arm].append(row)
        init = base / "annealing"
        for arm in ("distill", "slimflow"):
            d = base / arm
            args = ["distill", "--method", arm, "--config", f"configs/digits/{arm}.yaml", "--teacher", t,
                    "--pairs", pairs, "--init", str(init), "--out", str(d), *common,
                    f"train.steps={a.distill_steps}", "method.flip=false"]
            secs = r.run(args, finished(d))
            row = protocol(d, f"{arm} (1 step, from annealing)")
            row["metrics"]["mse_teacher"] = mse_to_teacher(d, a.teacher)
            row.update(seed=seed, train_s=secs, ckpt=str(d))
            arms[arm].append(row)

    def summary(name: str, rows: list[dict]) -> dict:
        out = {"name": name, "params": rows[0]["params"], "nfe": rows[0]["nfe"], "seeds": len(rows),
               "train_s": statistics.fmean(x["train_s"] for x in rows)}
        for m in (*METRICS, "mse_teacher"):
            vals = [x["metrics"][m] for x in rows]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            out[m] = f"{statistics.fmean(vals):.3g} ± {sd:.2g}"
            out[m + "_mean"], out[m + "_sd"] = statistics.fmean(vals), sd
        out["ratio"] = f"{out['fd_mean'] / ref_fd:.2f}x"
        return out

    table = []
    for row in (teacher_ref, teacher_one):
        table.append({"name": row["name"], "params": row["params"], "nfe": row["nfe"], "seeds": "-",
                      **{m: f"{row['metrics'][m]:.3g}" for m in METRICS},
                      "ratio": f"{row['metrics']['fd'] / ref_fd:.2f}x"})
    labels = {"reflow": "reflow (beta 0), 1 step", "annealing": "annealing reflow (linear), 1 step",
              "distill": "annealing -> naive distill (l2), 1 step",
              "slimflow": "annealing -> slimflow (l2, flow-guided), 1 step"}
    sums = {arm: summary(labels[arm], rows) for arm, rows in arms.items()}
    table += list(sums.values())
    per_seed = [{"arm": arm, "seed": x["seed"], "fd": x["metrics"]["fd"],
                 **{f"fd @{s}": v for s, v in zip(SPREAD_SEEDS, x["per_seed"]["fd"], strict=True)},
                 "precision": x["metrics"]["precision"], "recall": x["metrics"]["recall"],
                 "mse": x["metrics"]["mse_teacher"], "train_s": x["train_s"]}
                for arm, rows in arms.items() for x in rows]

    # ------------------------------------------------------------------ verdicts
    sf, di, an, rf = (sums[k] for k in ("slimflow", "distill", "annealing", "reflow"))
    ratio_params = sf["params"] / teacher_ref["params"]
    paired = {}
    for x, y in (("annealing", "reflow"), ("slimflow", "distill")):
        for m in ("fd", "mse_teacher"):
            d = [p["metrics"][m] - q["metrics"][m] for p, q in zip(arms[x], arms[y], strict=True)]
            paired[f"{x} - {y}" + ("" if m == "fd" else " (MSE to teacher)")] = d
    fmt = ", ".join

    def diff_line(k: str) -> str:
        d = paired[k]
        sd = statistics.stdev(d) if len(d) > 1 else 0.0
        e = paired[k + " (MSE to teacher)"]
        return (f"FD({k}) per training seed: {fmt(f'{v:+.2f}' for v in d)} "
                f"(mean {statistics.fmean(d):+.2f} ± {sd:.2f}); MSE to the teacher's samples "
                f"{fmt(f'{v:+.4f}' for v in e)}")

    verdict = [
        f"* Student {sf['params']:,} parameters = 1/{1 / ratio_params:.1f} of the teacher's "
        f"{teacher_ref['params']:,}. Teacher reference FD (Heun-16, 32 NFE) {ref_fd:.3g}; the target is "
        f"1-step FD <= 1.5x = {1.5 * ref_fd:.3g}.",
        f"* SlimFlow student, 1 step: FD {sf['fd']} = {sf['ratio']} the reference: "
        + ("**target met**." if sf["fd_mean"] <= 1.5 * ref_fd else "**target not met**."),
        f"* Annealing vs plain reflow: {diff_line('annealing - reflow')}.",
        f"* Flow-guided vs naive distillation (same init, same budget): {diff_line('slimflow - distill')}.",
        "* At N = 597 one FD moves by about 1 between sample seeds; each FD here is already the mean "
        "over the three sample seeds, and the ± is the spread over the three training seeds.",
    ]

    res = {"machine": machine(), "teacher": t, "pairs": pairs, "student": STUDENT,
           "budgets": {"reflow_steps": a.reflow_steps, "anneal_steps": anneal,
                       "distill_steps": a.distill_steps, "seeds": a.seeds},
           "teacher_rows": [teacher_ref, teacher_one], "arms": arms, "table": table,
           "paired_differences": paired, "commands": r.commands()}
    dest = a.out / "report" if a.quick else RESULTS
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "slimflow-small.json").write_text(json.dumps(res, indent=1, default=str))
    m = res["machine"]
    floor = teacher_ref["floor"]
    cols = [("run", "name"), ("params", "params"), ("NFE", "nfe"), ("train seeds", "seeds"),
            ("FD", "fd"), ("FD / teacher ref", "ratio"), ("precision", "precision"),
            ("recall", "recall"), ("copy rate", "copy_rate"), ("class acc.", "accuracy_vs_labels"),
            ("MSE to teacher", "mse_teacher"), ("train s (mean)", "train_s")]
    md = [f"# SlimFlow, small student ({'quick smoke run, not a result' if a.quick else 'full'})", "",
          f"{m['date']}, {m['cpu']}, {m['cores']} CPU cores shared with other jobs (each run on 1 "
          f"thread), torch {m['torch']}, Python {m['python']}. Script: `benchmarks/slimflow_small.py`.", "",
          f"Teacher `{t}` ({teacher_ref['params']:,} parameters, configs/digits/teacher.yaml); pairs "
          f"`{pairs}` (8,192, Heun-16, the teacher's reference sampler). Student: "
          f"configs/digits/annealing-reflow.yaml's UNet at nf 8 (`{' '.join(STUDENT)}`), "
          f"{sf['params']:,} parameters. Budgets: reflow / annealing reflow {a.reflow_steps:,} steps at "
          f"batch 128 (annealing: linear beta over the first {anneal:,}, 3/8 as in the paper), "
          f"then {a.distill_steps:,} distillation steps from the annealing student (recipes "
          f"configs/digits/distill.yaml and slimflow.yaml, distance l2). Flip off in every arm: "
          f"digits are not mirror-symmetric. Training seeds {', '.join(map(str, a.seeds))} "
          f"(`train.seed`: initial weights and every batch).", "",
          "Every model scored by the protocol (digits classifier features, N = 597) at the sample "
          f"seeds {', '.join(map(str, SPREAD_SEEDS))}, metrics averaged over them; students: mean ± sd over "
          f"the training seeds. Real/real floor (N = 597): FD {floor['fd']:.3g}, precision "
          f"{floor['precision']:.3g}, recall {floor['recall']:.3g}.", "",
          md_table(table, cols), "", *verdict, "",
          "Per training seed (FD = mean over the three sample seeds):", "",
          md_table(per_seed, [("arm", "arm"), ("train seed", "seed"), ("FD", "fd"),
                              *[(f"FD @ sample seed {s}", f"fd @{s}") for s in SPREAD_SEEDS],
                              ("precision", "precision"), ("recall", "recall"), ("MSE to teacher", "mse"),
                              ("train s", "train_s")]),
          "", "`MSE to teacher`: pixel mean squared difference between the model's sample and the "
          "teacher's Heun-16 sample from the same noise and label (sample seed 0, N = 597, clamped "
          "to [-1, 1]): how closely the student follows the teacher's map, which FD does not see. "
          "`train s`: wall seconds of the `slimstep distill` command on one thread of a 2-core "
          "machine shared with other training jobs.", "",
          "## Commands", "", "```", *res["commands"],
          "python benchmarks/slimflow_small.py " + " ".join(sys.argv[1:]), "```", ""]
    (dest / "slimflow-small.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
