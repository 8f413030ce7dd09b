"""Noise screening with the SLT student of the 28-layer chain (issue 11).

Trains the realism discriminator on the student's own samples (``slimstep
screen-train``), then for N = 1, 4, 16, 128 candidates, select argmax / resample
(T = 1) and final student / final teacher, samples 597 outputs at sample seeds
0 / 1000 / 2000 with ``slimstep sample --screen N --scorer realism`` and scores them
with ``slimstep eval --samples``. The classifier argmax at N = 16 is the old score's
row. Writes ``benchmarks/results/slt-chain-screen.{md,json}``.

    python benchmarks/slt_chain_screen.py --student S --teacher FM [--out runs/slt-chain-screen]

Every command is a ``slimstep`` CLI call on one thread (reused when its output exists).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SPREAD_SEEDS, Runner, machine, md_table  # noqa: E402

NS = (1, 4, 16, 128)
N_OUT = 597
METRICS = ("fd", "precision", "recall")


def cells() -> list[dict]:
    out = [{"scorer": "realism", "N": 1, "select": "-", "final": f} for f in ("student", "teacher")]
    out += [{"scorer": "realism", "N": n, "select": s, "final": f}
            for n in NS[1:] for s in ("argmax", "resample") for f in ("student", "teacher")]
    out += [{"scorer": "classifier", "N": 16, "select": "argmax", "final": "student"}]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", required=True, help="the SLT checkpoint")
    ap.add_argument("--teacher", required=True, help="its one-step teacher (for --final teacher)")
    ap.add_argument("--out", default="runs/slt-chain-screen")
    a = ap.parse_args()
    out = Path(a.out)
    r = Runner(out)
    disc = out / "realism"
    disc_s = r.run(["screen-train", "--ckpt", a.student, "--data", "digits", "--out", str(disc), "--quiet"],
                   disc / "model.safetensors")
    rows = []
    for c in cells():
        name = f"{c['scorer']}-N{c['N']}-{c['select']}-{c['final']}"
        per, secs, nfe = {m: [] for m in METRICS}, [], None
        for seed in SPREAD_SEEDS:
            f = out / f"{name}-s{seed}.npz"
            cmd = ["sample", "--ckpt", a.student, "--n", str(N_OUT), "--seed", str(seed),
                   "--final", c["final"], "--out", str(f), "--device", "cpu"]
            if c["N"] > 1:
                cmd += ["--screen", str(c["N"]), "--scorer", c["scorer"]]
                if c["scorer"] == "realism":
                    cmd += ["--discriminator", str(disc)]
                if c["select"] == "resample":
                    cmd += ["--select", "resample", "--temperature", "1"]
            if c["final"] == "teacher":
                cmd += ["--teacher", a.teacher]
                if c["N"] == 1:  # no screening: the teacher's own sample of the same noise
                    cmd = ["sample", "--ckpt", a.teacher, "--n", str(N_OUT), "--seed", str(seed),
                           "--out", str(f), "--device", "cpu"]
            secs.append(r.run(cmd, f))
            j = out / f"{name}-s{seed}.json"
            # the eval seed = the sample seed, as `slimstep eval --ckpt --seed` (the k-NN metrics
            # draw their reference subset from it)
            r.run(["eval", "--samples", str(f), "--seed", str(seed), "--out", str(j)], j)
            res = json.loads(j.read_text())
            nfe = res.get("nfe")
            for m in METRICS:
                per[m].append(res["metrics"][m])
        row = {**c, "name": name, "nfe": nfe, "sample_s": statistics.fmean(secs), "per_seed": per,
               "metrics": {m: statistics.fmean(v) for m, v in per.items()},
               "metrics_sd": {m: statistics.stdev(v) for m, v in per.items()}}
        rows.append(row)
        print(name, {m: round(v, 3) for m, v in row["metrics"].items()}, flush=True)
    base = next(x for x in rows if x["N"] == 1 and x["final"] == "student")
    for x in rows:
        x["fd_vs_unscreened"] = x["metrics"]["fd"] / base["metrics"]["fd"]
        x["recall_vs_unscreened"] = x["metrics"]["recall"] / base["metrics"]["recall"]
        x["fd_txt"] = f"{x['metrics']['fd']:.2f} ± {x['metrics_sd']['fd']:.2f}"
    res = {"machine": machine(), "student": a.student, "teacher": a.teacher, "disc_train_s": disc_s,
           "rows": rows, "commands": r.commands()}
    (RESULTS / "slt-chain-screen.json").write_text(json.dumps(res, indent=1))
    table = md_table(rows, [("scorer", "scorer"), ("N", "N"), ("select", "select"), ("final", "final"),
                            ("NFE", "nfe"), ("FD", "fd_txt"), ("FD / unscreened", "fd_vs_unscreened"),
                            ("precision", "metrics.precision"), ("recall", "metrics.recall"),
                            ("recall / unscreened", "recall_vs_unscreened"), ("sample s", "sample_s")])
    m = res["machine"]
    (RESULTS / "slt-chain-screen.md").write_text(
        f"# Screening with the 28-layer chain's SLT student ({m['date']}, {m['cores']} cores, 1 thread)\n\n"
        f"`python benchmarks/slt_chain_screen.py --student {a.student} --teacher {a.teacher}`: realism "
        f"discriminator from `slimstep screen-train --ckpt STUDENT --data digits` (defaults), then "
        f"`slimstep sample --n {N_OUT} --seed S --screen N --scorer realism --discriminator D "
        f"[--select resample --temperature 1] [--final teacher --teacher FM]` and `slimstep eval "
        f"--samples`, FD mean ± sd over seeds {', '.join(map(str, SPREAD_SEEDS))}. N = 1 final teacher "
        f"is the one-step teacher's own samples. Target: at N = 16, FD <= 0.9x the unscreened "
        f"student's with recall >= 0.95x.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
