"""SlimFlow on digits and 2-D toys: pairs, annealing-reflow ablation, flow-guided
distillation vs the naive baseline. Writes benchmarks/results/slimflow.md (+ .json).

    python benchmarks/slimflow.py [--out runs/bench] [--quick]

Everything runs through the `slimstep` CLI on one thread per job; a rerun
reuses every finished step. --quick shrinks every budget (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Runner, finished, machine, md_table, pairs_done, score  # noqa: E402


def digits(r: Runner, out: Path, quick: bool) -> dict:
    teacher = out / "digits-teacher"
    t_over = ["train.steps=200", "train.ckpt_every=100"] if quick else []
    t_secs = r.run(["teacher", "--config", "configs/digits/teacher.yaml", "--out", str(teacher),
                    "--quiet", *t_over], finished(teacher))
    n_pairs = 2048 if quick else 16384
    pairs = out / "slimflow" / "digits-pairs"
    p_secs = r.run(["pairs", "--teacher", str(teacher), "--n", str(n_pairs), "--out", str(pairs),
                    "--solver", "dopri5", "--rtol", "1e-5", "--atol", "1e-5", "--quiet"],
                   pairs_done(pairs))
    steps = 300 if quick else 4000
    anneal = steps * 3 // 8
    rows = [score(teacher, "teacher euler-1", "digits", solver="euler", steps=1),
            score(teacher, "teacher heun-16 (reference)", "digits")]
    rows[0]["train_s"] = rows[1]["train_s"] = t_secs
    ablation = {}
    # Plain reflow is annealing with K = 0 (beta = 0 at every step): the same code path.
    for name, k, flip in (("reflow", 0, False), ("reflow+flip", 0, True),
                          ("annealing", anneal, False), ("annealing+flip", anneal, True)):
        d = out / "slimflow" / f"digits-{name}"
        over = [f"train.steps={steps}", f"method.flip={str(flip).lower()}", f"method.anneal_steps={k}"]
        secs = r.run(["distill", "--method", "annealing-reflow", "--config", "configs/digits/annealing-reflow.yaml",
                      "--teacher", str(teacher), "--pairs", str(pairs), "--out", str(d), "--quiet", *over],
                     finished(d))
        for label, sampling in (("1 step", {"solver": "euler", "steps": 1}),
                                ("ODE dopri5", {"solver": "dopri5"})):
            row = score(d, f"{name} ({label})", "digits", **sampling)
            row["train_s"] = secs
            rows.append(row)
        ablation[name] = d
    # flow-guided distillation vs naive distillation, same init, same budget
    init = ablation["annealing"]
    d_steps = 150 if quick else 1500
    for method in ("slimflow", "distill"):
        d = out / "slimflow" / f"digits-{method}"
        secs = r.run(["distill", "--method", method, "--config", f"configs/digits/{method}.yaml",
                      "--teacher", str(teacher), "--pairs", str(pairs), "--init", str(init),
                      "--out", str(d), "--quiet", f"train.steps={d_steps}"], finished(d))
        row = score(d, f"{method} (1 step, from annealing)", "digits")
        row["train_s"] = secs
        rows.append(row)
    return {"rows": rows, "pairs": {"n": n_pairs, "seconds": p_secs,
                                    "manifest": json.loads((pairs / "manifest.json").read_text())}}


def toy(r: Runner, out: Path, name: str, quick: bool) -> dict:
    spec = f"toy2d:{name}"
    base = out / "slimflow" / f"toy-{name}"
    q = ["train.steps=200", "train.ckpt_every=100"] if quick else []
    teacher = base / "teacher"
    r.run(["teacher", "--config", "configs/toy2d/teacher.yaml", "--out", str(teacher), "--quiet",
           f"data.spec={spec}", *q], finished(teacher))
    pairs = base / "pairs"
    r.run(["pairs", "--teacher", str(teacher), "--n", "8192" if not quick else "1024", "--out", str(pairs),
           "--solver", "dopri5", "--quiet"], pairs_done(pairs))
    reflow, sf = base / "annealing", base / "slimflow"
    r.run(["distill", "--method", "annealing-reflow", "--config", "configs/toy2d/annealing-reflow.yaml",
           "--teacher", str(teacher), "--pairs", str(pairs), "--out", str(reflow), "--quiet", *q],
          finished(reflow))
    r.run(["distill", "--method", "slimflow", "--config", "configs/toy2d/slimflow.yaml",
           "--teacher", str(teacher), "--pairs", str(pairs), "--init", str(reflow), "--out", str(sf),
           "--quiet", *q], finished(sf))
    return {"rows": [score(teacher, "teacher euler-1", spec, solver="euler", steps=1),
                     score(teacher, "teacher heun-16 (reference)", spec),
                     score(reflow, "annealing-reflow (1 step)", spec),
                     score(sf, "slimflow (1 step)", spec)]}


COLS_DIGITS = [("run", "name"), ("params", "params"), ("NFE", "nfe"), ("FD", "metrics.fd"),
               ("precision", "metrics.precision"), ("recall", "metrics.recall"),
               ("copy rate", "metrics.copy_rate"), ("class acc.", "metrics.accuracy_vs_labels"),
               ("train s", "train_s")]
COLS_TOY = [("run", "name"), ("params", "params"), ("NFE", "nfe"), ("W2", "metrics.w2"),
            ("MMD²", "metrics.mmd"), ("W2 floor", "floor.w2")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    r = Runner(out / "slimflow")
    res = {"machine": machine(), "digits": digits(r, out, a.quick)}
    for name in ("moons", "8gaussians"):
        res[f"toy2d:{name}"] = toy(r, out, name, a.quick)
    res["commands"] = r.commands()
    dest = Path(__file__).resolve().parent / "results"
    (dest / "slimflow.json").write_text(json.dumps(res, indent=1, default=str))
    d = res["digits"]["rows"]
    floor = d[0]["floor"]
    md = [f"# SlimFlow benchmark ({'quick' if a.quick else 'full'})", "",
          f"{res['machine']['date']}, {res['machine']['cores']} CPU cores (each job on 1 thread), "
          f"torch {res['machine']['torch']}, Python {res['machine']['python']}.", "",
          "## digits", "",
          f"Real/real floor (N = 597): FD {floor['fd']:.3g}, precision {floor['precision']:.3g}, "
          f"recall {floor['recall']:.3g}, copy rate {floor['copy_rate']:.2f}. "
          f"Pairs: {res['digits']['pairs']['n']} (dopri5, rtol = atol = 1e-5) in "
          f"{res['digits']['pairs']['seconds']:.0f} s.", "",
          md_table(d, COLS_DIGITS), ""]
    for name in ("moons", "8gaussians"):
        md += [f"## toy2d:{name}", "", md_table(res[f"toy2d:{name}"]["rows"], COLS_TOY), ""]
    md += ["## Commands", "", "```", *res["commands"], "```", ""]
    (dest / "slimflow.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
