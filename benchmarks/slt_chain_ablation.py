"""Ablation of the SLT student on the 28-layer chain's one-step DiT (issue 11).

Every arm is ``slimstep distill --method slt`` from ``configs/digits/slt.yaml`` with
the chain's student (width 48, K = 2, P = 2, concat fusion) and one change, trained
from a shared teacher bank (``method.bank``: the frozen teacher's targets on a fixed
set of noises, computed once and cached, so an arm costs the student's compute, not
the teacher's), then scored by the protocol at sample seeds 0 / 1000 / 2000. MACs per
sample are counted on the trained checkpoint. Writes
``benchmarks/results/slt-chain-ablation.{md,json}``.

    python benchmarks/slt_chain_ablation.py --teacher runs/slt-chain/flowmap28 \\
        [--out runs/slt-ablation] [--jobs 2] [--only base,w64]

Each arm runs on one thread; ``--jobs`` arms at a time. Arms already trained in
``--out`` are reused.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, Runner, finished, machine, md_table, score_seeds  # noqa: E402

BANK = 65536
#: The chain recipe's student (configs/digits/slt-chain.yaml, stage slt).
BASE = ["net.hidden_size=48", "net.num_heads=4", "net.steps=2", "net.patches=2"]
#: name -> (what it tests, overrides on top of BASE)
ARMS = {
    "base": ("the chain's student, from the bank (fresh-noise run: FD 31.05)", []),
    "P1": ("one patch (the final state only)", ["net.patches=1"]),
    "out-only": ("no hidden-state loss", ["method.hidden_weight=0"]),
    "hidden-0.1": ("hidden-state loss weight 0.1", ["method.hidden_weight=0.1"]),
    "gap": ("depth-gap arm, n ~ U{1, 2}", ["net.depth=gap", "method.random_steps=true"]),
    "lr3e-3": ("peak lr 3e-3", ["train.lr=3.0e-3"]),
    "steps24k": ("4x the steps (24,000)", ["train.steps=24000", "train.ckpt_every=2000"]),
    "mlp8": ("MLP ratio 8", ["net.mlp_ratio=8.0"]),
    "K4-w32": ("K = 4 at width 32", ["net.steps=4", "net.hidden_size=32"]),
    "p4-w96": ("patch 4 (4 tokens, each a 2x2 group of the teacher's), width 96",
               ["net.patch_size=4", "net.hidden_size=96"]),
    "p4-w80": ("patch 4, width 80", ["net.patch_size=4", "net.hidden_size=80"]),
    "p4-w64-K4": ("patch 4, width 64, K = 4", ["net.patch_size=4", "net.hidden_size=64", "net.steps=4"]),
    "p4-w128-K1": ("patch 4, width 128, K = 1, P = 1",
                   ["net.patch_size=4", "net.hidden_size=128", "net.steps=1", "net.patches=1"]),
    # combinations of the two levers found above (lr, coarse tokens) and the budget
    "lr1e-2": ("peak lr 1e-2", ["train.lr=1.0e-2"]),
    "lr3e-3-24k": ("peak lr 3e-3, 24,000 steps", ["train.lr=3.0e-3", "train.steps=24000",
                                                  "train.ckpt_every=2000"]),
    "p4-w80-lr3e-3": ("patch 4, width 80, peak lr 3e-3",
                      ["net.patch_size=4", "net.hidden_size=80", "train.lr=3.0e-3"]),
    "p4-w64-K4-lr3e-3": ("patch 4, width 64, K = 4, peak lr 3e-3",
                         ["net.patch_size=4", "net.hidden_size=64", "net.steps=4", "train.lr=3.0e-3"]),
    "p4-w80-lr3e-3-24k": ("patch 4, width 80, peak lr 3e-3, 24,000 steps",
                          ["net.patch_size=4", "net.hidden_size=80", "train.lr=3.0e-3",
                           "train.steps=24000", "train.ckpt_every=2000"]),
    "w64": ("width 64 (over the MACs budget: a capacity probe)", ["net.hidden_size=64"]),
    "w96": ("width 96 (over the MACs budget: a capacity probe)", ["net.hidden_size=96"]),
}
METRICS = ("fd", "precision", "recall")


def macs(ckpt: Path) -> tuple[int, int]:
    from slimstep.eval.speed import count_macs
    from slimstep.generator import load
    from slimstep.nets import count_params

    g = load(ckpt)
    z = torch.randn(1, *g.info.shape)
    y = torch.zeros(1, dtype=torch.long) if g.num_classes else None
    return count_macs(g, z, y), count_params(g.net)


HELDOUT_N, HELDOUT_SEED = 2048, 10**6  # fresh noises, none of them in the bank


def heldout(ckpts: list[Path], teacher: Path) -> list[float]:
    """Output MSE against the teacher on fresh noise (sample seeds HELDOUT_SEED + i): the
    regression error the bank's finite sample cannot hide."""
    from slimstep.generator import load

    x_t, _ = load(teacher).generate(HELDOUT_N, seed=HELDOUT_SEED)
    return [float((load(c).generate(HELDOUT_N, seed=HELDOUT_SEED)[0] - x_t).pow(2).mean()) for c in ckpts]


def run_arm(name: str, teacher: str, out: str) -> dict:
    torch.set_num_threads(1)
    what, over = ARMS[name]
    ckpt = Path(out) / name
    runner = Runner(Path(out))
    args = ["distill", "--method", "slt", "--config", "configs/digits/slt.yaml",
            "--teacher", teacher, "--out", str(ckpt), *BASE, f"method.bank={BANK}", *over]
    secs = runner.run(args, done=finished(ckpt))
    res = score_seeds(ckpt, name, "digits", METRICS)
    m, p = macs(ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    return {"arm": name, "what": what, "overrides": over, "command": "slimstep " + " ".join(args),
            "train_s": secs, "macs": m, "params": p, "steps": cfg["train"]["steps"], **res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="runs/slt-chain/flowmap28", help="the one-step DiT (flowmap28)")
    ap.add_argument("--out", default="runs/slt-ablation")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", help="comma-separated arm names")
    a = ap.parse_args()
    from slimstep.generator import resolve_checkpoint

    teacher = str(resolve_checkpoint(ROOT / a.teacher if not Path(a.teacher).is_absolute() else a.teacher))
    names = a.only.split(",") if a.only else list(ARMS)
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    t_macs, t_params = macs(Path(teacher))
    t_fd = score_seeds(Path(teacher), "one-step teacher", "digits", METRICS)
    with ProcessPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(run_arm, names, [teacher] * len(names), [a.out] * len(names)))
    for r in rows:
        r["macs_ratio"] = t_macs / r["macs"]
        r["params_ratio"] = t_params / r["params"]
        r["fd_over_teacher"] = r["metrics"]["fd"] / t_fd["metrics"]["fd"]
    res = {"machine": machine(), "teacher": teacher, "teacher_macs": t_macs, "teacher_params": t_params,
           "teacher_scores": t_fd, "bank": BANK, "base_overrides": BASE, "arms": rows}
    path = RESULTS / "slt-chain-ablation.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    keep = {r["arm"]: r for r in old.get("arms", []) if r["arm"] not in names}
    res["arms"] = [*keep.values(), *rows]
    todo = [r for r in res["arms"] if "heldout_mse" not in r]
    for r, v in zip(todo, heldout([Path(a.out) / r["arm"] for r in todo], Path(teacher)), strict=True):
        r["heldout_mse"] = v
    path.write_text(json.dumps(res, indent=1))
    for r in res["arms"]:
        r["fd_txt"] = f"{r['metrics']['fd']:.2f} ± {r['metrics_sd']['fd']:.2f}"
    table = md_table(res["arms"], [("arm", "arm"), ("change", "what"), ("steps", "steps"),
                                   ("MACs", "macs"), ("MACs ratio", "macs_ratio"),
                                   ("params ratio", "params_ratio"), ("FD", "fd_txt"),
                                   ("FD / teacher", "fd_over_teacher"),
                                   ("held-out MSE", "heldout_mse"),
                                   ("precision", "metrics.precision"), ("recall", "metrics.recall"),
                                   ("train s", "train_s")])
    m = res["machine"]
    (RESULTS / "slt-chain-ablation.md").write_text(
        f"# SLT student ablation on the 28-layer one-step DiT ({m['date']}, {m['cores']} cores, "
        f"1 thread per arm)\n\n"
        f"`python benchmarks/slt_chain_ablation.py --teacher {a.teacher}`; every arm: "
        f"`slimstep distill --method slt --config configs/digits/slt.yaml --teacher T "
        f"{' '.join(BASE)} method.bank={BANK}` + its change; FD mean ± sd over sample seeds "
        f"0 / 1000 / 2000 (N = 597); held-out MSE: the student's output against the teacher's on "
        f"{HELDOUT_N} fresh noises (sample seeds from {HELDOUT_SEED}). "
        f"One-step teacher: FD {t_fd['metrics']['fd']:.2f} ± "
        f"{t_fd['metrics_sd']['fd']:.2f}, {t_macs:,} MACs, {t_params:,} parameters. "
        f"Targets: MACs ratio >= 64, params ratio >= 32, FD / teacher <= 1.5.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
