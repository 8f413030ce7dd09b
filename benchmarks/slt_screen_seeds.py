"""Realism screening at N = 16 over 20 sample seeds, paired with the unscreened student (issue 11).

Three seeds resolve a screening ratio only to about ±0.06 (sd of the 3-seed ratio over the
1,140 triples of these 20 seeds: 0.05-0.08), because an FD at N = 597 varies by 1.1-1.8 (sd)
from seed to seed.
This script measures each realism discriminator setting on seeds 0, 1000, ..., 19000 and
reports: the mean FD ratio screened / unscreened, the paired difference with its standard
error, the ratio on the 17 seeds other than the protocol's 0 / 1000 / 2000 (where settings
are compared) and on the protocol's seeds. Arms: the old defaults (600 steps, R1 γ 0.1) at
T = 1; 3,000 steps at γ 0.1 (T = 1 and 0.5) and γ 0.01; the new defaults (3,000 steps,
γ 0.001) with three discriminator seeds. Each arm also records the discriminator's held-out
logit scale (1 = calibrated).

    python benchmarks/slt_screen_seeds.py --student S [--out runs/slt-screen-seeds] [--arms a,b]

Writes ``benchmarks/results/slt-chain-screen-seeds.{md,json}``; every command is a
``slimstep`` CLI call on one thread, reused when its output exists.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SPREAD_SEEDS, Runner, machine, md_table  # noqa: E402

SEEDS = tuple(range(0, 20000, 1000))
N_OUT, N_SCREEN = 597, 16
#: name -> (screen-train flags, temperature)
ARMS = {
    "old-defaults": (["--steps", "600", "--r1-gamma", "0.1"], 1.0),
    "g0.1-T1": (["--r1-gamma", "0.1"], 1.0),
    "g0.1-T0.5": (["--r1-gamma", "0.1"], 0.5),
    "g0.01-T1": (["--r1-gamma", "0.01"], 1.0),
    "defaults": ([], 1.0),
    "defaults-seed1": (["--seed", "1"], 1.0),
    "defaults-seed2": (["--seed", "2"], 1.0),
}


def fds(r: Runner, out: Path, name: str, student: str, extra: list[str]) -> dict[int, dict]:
    per = {}
    for seed in SEEDS:
        f, j = out / f"{name}-s{seed}.npz", out / f"{name}-s{seed}.json"
        if not j.exists():
            r.run(["sample", "--ckpt", student, "--n", str(N_OUT), "--seed", str(seed), "--out", str(f),
                   "--device", "cpu", *extra], f)
            r.run(["eval", "--samples", str(f), "--seed", str(seed), "--out", str(j)], j)
            f.unlink()  # 2 MB each; the JSON keeps the metrics
        per[seed] = json.loads(j.read_text())["metrics"]
    return per


def ratio(per: dict, base: dict, seeds) -> float:
    return sum(per[s]["fd"] for s in seeds) / sum(base[s]["fd"] for s in seeds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", required=True, help="the SLT checkpoint")
    ap.add_argument("--out", default="runs/slt-screen-seeds")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ", ".join(ARMS))
    a = ap.parse_args()
    out, r = Path(a.out), Runner(Path(a.out))
    base = fds(r, out, "unscreened", a.student, [])
    protocol = list(SPREAD_SEEDS)
    selection = [s for s in SEEDS if s not in protocol]
    rows = []
    for name in a.arms.split(","):
        flags, temp = ARMS[name]
        disc = out / f"disc-{'-'.join(flags) or 'defaults'}".replace("--", "")
        r.run(["screen-train", "--ckpt", a.student, "--data", "digits", "--out", str(disc), "--quiet",
               *flags], disc / "model.safetensors")
        cfg = json.loads((disc / "config.json").read_text())
        per = fds(r, out, name, a.student, ["--screen", str(N_SCREEN), "--scorer", "realism",
                                            "--discriminator", str(disc), "--select", "resample",
                                            "--temperature", str(temp)])
        diff = [per[s]["fd"] - base[s]["fd"] for s in SEEDS]
        triples = [ratio(per, base, t) for t in itertools.combinations(SEEDS, 3)]
        rows.append({
            "arm": name, "train": cfg["train"], "temperature": temp,
            "heldout_accuracy": cfg.get("heldout_accuracy"), "heldout_scale": cfg.get("heldout_scale"),
            "fd": statistics.fmean(per[s]["fd"] for s in SEEDS),
            "fd_unscreened": statistics.fmean(base[s]["fd"] for s in SEEDS),
            "ratio_20": ratio(per, base, SEEDS), "ratio_selection": ratio(per, base, selection),
            "ratio_protocol": ratio(per, base, protocol),
            "diff": statistics.fmean(diff), "diff_se": statistics.stdev(diff) / math.sqrt(len(diff)),
            "triple_ratio_sd": statistics.stdev(triples),
            "recall_ratio": statistics.fmean(per[s]["recall"] for s in SEEDS)
            / statistics.fmean(base[s]["recall"] for s in SEEDS),
            "copy_rate": statistics.fmean(per[s]["copy_rate"] for s in SEEDS),
            "per_seed_fd": [per[s]["fd"] for s in SEEDS]})
        x = rows[-1]
        x["diff_txt"] = f"{x['diff']:+.2f} ± {x['diff_se']:.2f}"
        x["gamma"], x["steps"], x["disc_seed"] = x["train"]["r1_gamma"], x["train"]["steps"], x["train"]["seed"]
        print(name, {k: round(v, 3) for k, v in x.items() if isinstance(v, float)}, flush=True)
    res = {"machine": machine(), "student": a.student, "seeds": SEEDS, "n": N_OUT, "candidates": N_SCREEN,
           "unscreened_per_seed_fd": [base[s]["fd"] for s in SEEDS],
           "unscreened_copy_rate": statistics.fmean(base[s]["copy_rate"] for s in SEEDS),
           "rows": rows, "commands": r.commands()}
    (RESULTS / "slt-chain-screen-seeds.json").write_text(json.dumps(res, indent=1))
    table = md_table(rows, [("arm", "arm"), ("steps", "steps"), ("R1 γ", "gamma"), ("disc seed", "disc_seed"),
                            ("T", "temperature"), ("held-out acc.", "heldout_accuracy"),
                            ("logit scale", "heldout_scale"), ("FD (20 seeds)", "fd"),
                            ("screened − unscreened", "diff_txt"), ("ratio, 20 seeds", "ratio_20"),
                            ("ratio, 17 selection seeds", "ratio_selection"),
                            ("ratio, protocol seeds", "ratio_protocol"), ("recall ratio", "recall_ratio"),
                            ("copy rate", "copy_rate")])
    m = res["machine"]
    (RESULTS / "slt-chain-screen-seeds.md").write_text(
        f"# Realism screening over 20 seeds ({m['date']}, {m['cores']} cores, 1 thread)\n\n"
        f"`python benchmarks/slt_screen_seeds.py --student {a.student}`: per arm `slimstep screen-train "
        f"--ckpt STUDENT --data digits --out D [flags]`, then for each of the 20 seeds S = 0, 1000, ..., "
        f"19000 `slimstep sample --n {N_OUT} --seed S --screen {N_SCREEN} --scorer realism "
        f"--discriminator D --select resample --temperature T` and `slimstep eval --samples --seed S`, "
        f"against the unscreened student on the same seeds (FD {res['rows'][0]['fd_unscreened']:.2f} "
        f"mean, copy rate {res['unscreened_copy_rate']:.3f}). Ratio = mean screened FD / mean unscreened "
        f"FD; the protocol seeds are {', '.join(map(str, protocol))}. The sd of a 3-seed ratio over all "
        f"triples of these seeds is {statistics.fmean(x['triple_ratio_sd'] for x in rows):.3f} "
        f"(mean over arms).\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
