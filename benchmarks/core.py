"""The teachers' quality against NFE on the protocol: the baseline rows every
method is compared with. Writes benchmarks/results/core.md (+ .json).

    python benchmarks/core.py [--out runs/bench]

Trains (or reuses) the digits and moons teachers through the CLI, then scores
Euler at 1-32 steps and the reference sampler (Heun 16), plus speed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, Runner, finished, machine, md_table, score  # noqa: E402

COLS = {"digits": [("sampler", "name"), ("NFE", "nfe"), ("FD", "metrics.fd"), ("precision", "metrics.precision"),
                   ("recall", "metrics.recall"), ("copy rate", "metrics.copy_rate"),
                   ("class acc.", "metrics.accuracy_vs_labels"), ("samples/s", "samples_per_s")],
        "toy2d:moons": [("sampler", "name"), ("NFE", "nfe"), ("W2", "metrics.w2"), ("MMD²", "metrics.mmd"),
                        ("samples/s", "samples_per_s")]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--digits-teacher", type=Path, help="use this digits teacher instead of training one")
    a = ap.parse_args()
    out = Path(a.out)
    r = Runner(out / "core")
    teachers = {"digits": (a.digits_teacher or out / "digits-teacher", "configs/digits/teacher.yaml", []),
                "toy2d:moons": (out / "slimflow" / "toy-moons" / "teacher", "configs/toy2d/teacher.yaml",
                                ["data.spec=toy2d:moons"])}
    res = {"machine": machine(), "runs": {}}
    for spec, (ckpt, config, over) in teachers.items():
        given = spec == "digits" and a.digits_teacher
        secs = float("nan") if given else r.run(["teacher", "--config", config, "--out", str(ckpt), "--quiet", *over],
                                                finished(ckpt))
        rows = [score(ckpt, f"euler-{k}", spec, solver="euler", steps=k) for k in (1, 2, 4, 8, 16, 32)]
        rows.append(score(ckpt, "heun-16 (reference)", spec))
        from slimstep.eval.speed import bench_generator
        from slimstep.generator import load

        speed = bench_generator(load(ckpt).with_sampling(solver="euler", steps=1), batch_size=256, iters=5)
        res["runs"][spec] = {"ckpt": str(ckpt), "train_s": secs, "rows": rows, "speed_1nfe": speed,
                             "floor": rows[0]["floor"], "params": rows[0]["params"]}
    res["commands"] = r.commands()
    dest = RESULTS
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "core.json").write_text(json.dumps(res, indent=1, default=str))
    m = res["machine"]
    md = ["# Teachers: quality against NFE", "",
          f"{m['date']}, {m['cores']} CPU cores (1 thread per job), torch {m['torch']}, Python {m['python']}.", ""]
    for spec, run in res["runs"].items():
        fl = run["floor"]
        floor = ", ".join(f"{k} {fl[k]:.3g}" for k in ("fd", "precision", "recall", "w2", "mmd") if k in fl)
        md += [f"## {spec}", "", f"Teacher `{run['ckpt']}`: {run['params']:,} parameters; "
               f"real/real floor: {floor}. One network evaluation of a batch of 256: "
               f"{run['speed_1nfe']['samples_per_s']:.0f} samples/s, "
               f"{run['speed_1nfe']['macs']:,} MACs per sample.", "", md_table(run["rows"], COLS[spec]), ""]
    md += ["## Commands", "", "```", *res["commands"], "python benchmarks/core.py " + " ".join(sys.argv[1:]), "```", ""]
    (dest / "core.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
