"""SLT on digits (issue 5): DiT teacher -> one-step DiT (flowmap / meanflow) -> SLT,
a K / P / fusion ablation, noise screening and a speed table.
Writes benchmarks/results/slt.md (+ slt.json).

    python benchmarks/slt.py [--out runs/bench/slt] [--quick] [--meanflow]
    python benchmarks/slt.py --cost [--recipe configs/digits/slt-chain.yaml]

``--cost`` trains nothing: it builds a recipe's one-step teacher and SLT student with
random weights and prints their cost as the JSON object on its last line (see
:func:`cost_probe`).

Every training and sampling step is a `slimstep` CLI command on one thread, reused
when its output already holds a finished run. Quality is the digits protocol
(N = 597, FD in the digits-classifier features vs the train split).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, Runner, finished, machine, md_table, score  # noqa: E402

ABLATION = [  # (K, P, fusion, width)
    (2, 2, "sum", 96), (4, 4, "sum", 96), (8, 1, "sum", 96), (8, 4, "sum", 96),
    (8, 4, "last", 96), (8, 4, "concat", 96), (2, 2, "sum", 32),
]
TINY = "K2-P2-sum-w32"  # the screening-speed student (timed beside the main SLT)
SCREEN_N = (1, 4, 16, 128)


def _eval_npz(path: Path, name: str) -> dict:
    from slimstep.eval import evaluate
    from slimstep.files import read_samples

    d = read_samples(path)
    x = torch.from_numpy(d["samples"]).float()
    y = torch.from_numpy(d["labels"]) if "labels" in d else None
    res = evaluate(x, "digits", labels=y, seed=0)
    res["name"] = name
    return res


def _median_time(fn, repeats: int = 5) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - tic)
    return statistics.median(ts)


def screening_timing(students: list[tuple[str, Path]], onestep: Path) -> list[dict]:
    """One run: screen 128 noises with each SLT student (student + score) vs the one-step
    teacher making 2 samples (two sequential samplings, and one batch of 2)."""
    from slimstep.generator import load
    from slimstep.screen import classifier_scorer, density_scorer, screen

    torch.set_num_threads(1)
    teacher = load(onestep)
    clf, dens = classifier_scorer(), density_scorer()
    two = _median_time(lambda: [teacher.generate(1, seed=s) for s in (0, 1)])
    batch2 = _median_time(lambda: teacher.generate(2, seed=0, batch_size=2))
    rows = []
    for name, ck in students:
        student = load(ck)
        row = {
            "name": name, "params": sum(p.numel() for p in student.net.parameters()),
            "screen128_classifier_ms": 1e3 * _median_time(lambda s=student: screen(s, 1, 128, clf, seed=0)),
            "screen128_density_ms": 1e3 * _median_time(lambda s=student: screen(s, 1, 128, dens, seed=0)),
            "student128_only_ms": 1e3 * _median_time(
                lambda s=student: s.generate(128, seed=0, batch_size=128)),
            "teacher_2_samplings_ms": 1e3 * two, "teacher_batch2_ms": 1e3 * batch2,
        }
        row["ratio"] = row["screen128_classifier_ms"] / row["teacher_2_samplings_ms"]
        rows.append(row)
    return rows


def _built(stage, info, teacher=None):
    """A stage's network as a Generator, built by its method with random weights (no training)."""
    from slimstep.generator import Generator
    from slimstep.methods import build_method

    m = build_method(stage.cfg, info, "cpu", teacher=teacher)
    return Generator(m.net, info, m.export(), {"net": m.spec})


def cost_probe(recipe: Path, candidates: int = 128, repeats: int = 7) -> dict:
    """MACs, parameters and screening time of the recipe's SLT student against its one-step
    teacher, both with random weights (cost does not depend on the values).

    time_ratio = (screening ``candidates`` noises of one output with the student in one
    batch, the realism score included) / (the teacher making 2 samples: the cheaper of one
    batch-2 call and two batch-1 calls); medians of ``repeats`` runs, one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the protocol: one process, one thread
    try:
        return _cost(recipe, candidates, repeats)
    finally:
        torch.set_num_threads(threads)


def _cost(recipe: Path, candidates: int, repeats: int) -> dict:
    from slimstep.data import load_data
    from slimstep.eval.speed import count_macs
    from slimstep.nets import count_params
    from slimstep.realism import build_realism_disc, disc_score, settings
    from slimstep.run import load_recipe
    from slimstep.screen import screen

    _, stages = load_recipe(recipe)
    by = {s.name: s for s in stages}
    slt = next((s for s in stages if s.cfg and s.cfg.method.name == "slt"), None)
    if slt is None or "teacher" not in slt.deps:
        raise SystemExit(f"{recipe}: no slt stage with a teacher")
    one = by[slt.deps["teacher"]]
    base = by[one.deps["teacher"]]
    info = load_data(base.spec).info
    torch.manual_seed(0)
    teacher = _built(one, info, _built(base, info))
    student = _built(slt, info, teacher)
    k = student.num_classes
    # the realism discriminator the recipe's screen stage trains (screen-train's defaults if none)
    screen_st = next((s for s in stages if s.kind == "screen" and s.params.get("scorer") == "realism"
                      and s.params.get("student") == slt.name), None)
    ro = settings(screen_st.params.get("realism") if screen_st else None)
    score = disc_score(build_realism_disc(ro["disc"], info.shape, k, ro["disc_options"]).eval(), k)
    z1 = torch.randn(1, *info.shape)
    y1 = torch.zeros(1, dtype=torch.long) if k else None
    res = {"recipe": str(recipe), "teacher": one.name, "student": slt.name,
           "teacher_macs": count_macs(teacher, z1, y1), "student_macs": count_macs(student, z1, y1),
           "teacher_params": count_params(teacher.net), "student_params": count_params(student.net),
           "scorer": f"realism {ro['disc']} {ro['disc_options'] or ''}".strip(),
           "score_macs": count_macs(lambda x: score(x, y1, None), z1)}
    res["macs_ratio"] = res["teacher_macs"] / res["student_macs"]
    res["params_ratio"] = res["teacher_params"] / res["student_params"]
    batch2 = _median_time(lambda: teacher.generate(2, seed=0, batch_size=2), repeats)
    two_calls = _median_time(lambda: [teacher.generate(1, seed=s) for s in (0, 1)], repeats)
    shot = _median_time(lambda: screen(student, 1, candidates, score, seed=0, batch_size=candidates),
                        repeats)
    bare = _median_time(lambda: screen(student, 1, candidates, lambda x, y, z: x.new_zeros(len(x)),
                                       seed=0, batch_size=candidates), repeats)
    res.update(teacher_2_samples_s=min(batch2, two_calls), teacher_batch2_s=batch2,
               teacher_two_calls_s=two_calls, screen_s=shot, screen_unscored_s=bare,
               candidates=candidates, repeats=repeats, threads=torch.get_num_threads(),
               omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
    res["time_ratio"] = shot / res["teacher_2_samples_s"]
    return res


def write_cost(res: dict, recipe: str) -> None:
    """The cost probe's result as a BENCHMARKS section (one run; the time depends on the load),
    in ``results/<recipe stem>-cost.{md,json}``."""
    m, stem = machine(), Path(recipe).stem
    (RESULTS / f"{stem}-cost.json").write_text(json.dumps({"machine": m, **res}, indent=1))
    rows = [{"quantity": k, "value": (f"{res[k]:,.4g}" if isinstance(res[k], float) else f"{res[k]:,}")}
            for k in ("teacher_macs", "student_macs", "macs_ratio", "score_macs", "teacher_params",
                      "student_params", "params_ratio", "teacher_2_samples_s", "screen_s",
                      "screen_unscored_s", "time_ratio")]
    (RESULTS / f"{stem}-cost.md").write_text(
        f"# SLT cost probe ({m['date']}, {m['cores']} cores, {res['threads']} thread(s), random weights)\n\n"
        f"`OMP_NUM_THREADS=1 python benchmarks/slt.py --cost --recipe {recipe} --write`: the recipe's "
        f"one-step teacher `{res['teacher']}` and SLT student `{res['student']}` built by their methods "
        f"(nothing trained). time_ratio = screening {res['candidates']} candidates of one output in one "
        f"batch with the recipe's realism score ({res['scorer']}) / the teacher making 2 samples (the "
        f"cheaper of one batch-2 call and two batch-1 calls), medians of {res['repeats']} runs; wall "
        f"times move with the machine's load. Targets: macs_ratio >= 64, params_ratio >= 32, "
        f"time_ratio <= 1.\n\n{md_table(rows, [('quantity', 'quantity'), ('value', 'value')])}\n")


def speed_rows(ckpts: list[tuple[str, Path, dict]]) -> list[dict]:
    from slimstep.eval.speed import bench_generator
    from slimstep.generator import load

    torch.set_num_threads(1)
    rows = []
    for name, ck, sampling in ckpts:
        gen = load(ck).with_sampling(**sampling)
        r = bench_generator(gen, batch_size=256, iters=3)
        rows.append({"name": name, **r})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench/slt")
    ap.add_argument("--quick", action="store_true", help="tiny budgets (a smoke run)")
    ap.add_argument("--meanflow", action="store_true", help="also train the meanflow one-step DiT")
    ap.add_argument("--skip-ablation", action="store_true")
    ap.add_argument("--cost", action="store_true",
                    help="train nothing: the recipe's teacher / SLT cost with random weights, as JSON")
    ap.add_argument("--recipe", default="configs/digits/slt-chain.yaml", help="with --cost")
    ap.add_argument("--write", action="store_true",
                    help="with --cost: also write benchmarks/results/<recipe stem>-cost.{md,json}")
    a = ap.parse_args()
    if a.cost:
        res = cost_probe(ROOT / a.recipe if not Path(a.recipe).is_absolute() else Path(a.recipe))
        for key in ("teacher_macs", "student_macs", "macs_ratio", "teacher_params", "student_params",
                    "params_ratio", "time_ratio"):
            print(f"{key:>15}: {res[key]:,.4g}" if isinstance(res[key], float) else f"{key:>15}: {res[key]:,}")
        print(json.dumps(res))
        if a.write:
            write_cost(res, a.recipe)
        return
    out = Path(a.out)
    rel = out if not out.is_absolute() else out.relative_to(ROOT)
    r = Runner(out)
    q = (lambda n: [f"train.steps={n}", f"train.ckpt_every={n}"]) if a.quick else (lambda n: [])
    res: dict = {"machine": machine()}

    teacher = rel / "dit-teacher"
    t_s = r.run(["teacher", "--config", "configs/digits/dit-teacher.yaml", "--out", str(teacher),
                 "--quiet", *q(40)], finished(ROOT / teacher))
    fm = rel / "flowmap"
    fm_s = r.run(["distill", "--method", "flowmap", "--config", "configs/digits/flowmap.yaml",
                  "--teacher", str(teacher), "--out", str(fm), "--quiet", *q(10)], finished(ROOT / fm))
    rows = [score(ROOT / teacher, "DiT teacher heun-16 (reference)", "digits"),
            score(ROOT / teacher, "DiT teacher euler-1", "digits", solver="euler", steps=1),
            score(ROOT / teacher, "DiT teacher euler-4", "digits", solver="euler", steps=4),
            score(ROOT / fm, "flowmap one-step DiT", "digits")]
    rows[0]["train_s"], rows[3]["train_s"] = t_s, fm_s
    slt = rel / "slt"
    slt_s = r.run(["distill", "--method", "slt", "--config", "configs/digits/slt.yaml",
                   "--teacher", str(fm), "--out", str(slt), "--quiet", *q(10)], finished(ROOT / slt))
    rows.append({**score(ROOT / slt, "SLT K=8 P=4 sum w96 (from flowmap)", "digits"),
                 "train_s": slt_s})
    res["rows"] = rows

    screening = []
    sdir = rel / "screen"
    n = 64 if a.quick else 597
    grid = [("classifier", final, N) for final in ("student", "teacher") for N in SCREEN_N]
    grid += [("density", "student", N) for N in SCREEN_N[1:]]  # N = 1: plain sampling
    grid += [("teacher", "student", N) for N in (4, 16)]  # one teacher call per candidate
    for scorer, final, N in grid:
        f = sdir / f"{scorer}-N{N}-{final}.npz"
        cmd = ["sample", "--ckpt", str(slt), "--n", str(n), "--seed", "0", "--screen", str(N),
               "--scorer", scorer, "--final", final, "--out", str(f), "--device", "cpu"]
        if final == "teacher" or scorer == "teacher":
            cmd += ["--teacher", str(fm)]
        secs = r.run(cmd, ROOT / f)
        row = _eval_npz(ROOT / f, f"{scorer} N={N} final={final}")
        row.update(scorer=scorer, N=N, final=final, sample_s=secs)
        screening.append(row)
    res["screening"] = screening
    students = [("SLT K=8 P=4 w96", ROOT / slt)]
    speed = [("DiT teacher heun-16", teacher, {}),
             ("DiT teacher euler-1", teacher, {"solver": "euler", "steps": 1}),
             ("flowmap one-step DiT", fm, {})]
    if (ROOT / rel / "meanflow" / "config.json").exists():
        speed.append(("meanflow one-step DiT", rel / "meanflow", {}))
    speed.append(("SLT (K=8, P=4, w96)", slt, {}))
    res["speed"] = speed_rows([(nm, ROOT / c, s) for nm, c, s in speed])
    ablation = []
    if not a.skip_ablation:
        steps = 10 if a.quick else 250
        for k, p, fusion, w in ABLATION:
            d = rel / "ablation" / f"K{k}-P{p}-{fusion}-w{w}"
            secs = r.run(["distill", "--method", "slt", "--config", "configs/digits/slt.yaml",
                          "--teacher", str(fm), "--out", str(d), "--quiet", f"train.steps={steps}",
                          f"train.ckpt_every={steps}", f"net.steps={k}", f"net.patches={p}",
                          f"net.fusion={fusion}", f"net.hidden_size={w}"], finished(ROOT / d))
            row = score(ROOT / d, f"K={k} P={p} {fusion} w{w}", "digits")
            row.update(K=k, P=p, fusion=fusion, train_s=secs)
            ablation.append(row)
    res["ablation"] = ablation
    if (ROOT / rel / "ablation" / TINY / "config.json").exists():
        students.append(("SLT K=2 P=2 w32 (ablation run)", ROOT / rel / "ablation" / TINY))
    res["timing"] = screening_timing(students, ROOT / fm)

    mf = rel / "meanflow"
    if a.meanflow or (ROOT / mf / "config.json").exists():
        mf_s = r.run(["distill", "--method", "meanflow", "--config", "configs/digits/meanflow.yaml",
                      "--teacher", str(teacher), "--out", str(mf), "--quiet", *q(10)],
                     finished(ROOT / mf))
        rows.append({**score(ROOT / mf, "meanflow one-step DiT", "digits"), "train_s": mf_s})
    res["commands"] = r.commands()
    res["command_seconds"] = dict(r.times)
    write(res, a.quick)


COLS = [("run", "name"), ("params", "params"), ("NFE", "nfe"), ("FD", "metrics.fd"),
        ("precision", "metrics.precision"), ("recall", "metrics.recall"),
        ("copy rate", "metrics.copy_rate"), ("class acc.", "metrics.accuracy_vs_labels"),
        ("train s", "train_s")]


def plot_screening(rows: list[dict], dest: Path) -> None:
    """FD and precision against N for every (scorer, final)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dest.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    base = {r["final"]: r for r in rows if r["N"] == 1}
    for key in sorted({(r["scorer"], r["final"]) for r in rows}):
        pts = sorted([r for r in rows if (r["scorer"], r["final"]) == key and r["N"] > 1],
                     key=lambda r: r["N"])
        pts = ([base[key[1]]] if key[1] in base else []) + pts
        for ax, metric in zip(axes, ("fd", "precision"), strict=True):
            ax.plot([r["N"] for r in pts], [r["metrics"][metric] for r in pts], "o-",
                    label=f"{key[0]}, final={key[1]}")
    for ax, metric in zip(axes, ("FD", "precision"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("candidates N")
        ax.set_ylabel(metric)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dest / "screening.png", dpi=110)
    plt.close(fig)


def write(res: dict, quick: bool) -> None:
    dest = RESULTS
    dest.mkdir(parents=True, exist_ok=True)
    dest.mkdir(exist_ok=True)
    (dest / "slt.json").write_text(json.dumps(res, indent=1, default=str))
    m, rows = res["machine"], res["rows"]
    floor = rows[0]["floor"]
    ref = rows[0]["metrics"]["fd"]
    fm = next(x for x in rows if x["name"].startswith("flowmap"))
    slt = next(x for x in rows if x["name"].startswith("SLT"))
    tm = res["timing"]
    md = [f"# SLT benchmark ({'quick' if quick else 'full'})", "",
          f"{m['date']}, {m['cores']} CPU cores ({m['cpu']}), every job on 1 thread, "
          f"torch {m['torch']}, Python {m['python']}. Reproduce: `python benchmarks/slt.py`.", "",
          "## Quality (digits, N = 597, seeds 0..596)", "",
          f"Real/real floor: FD {floor['fd']:.3g}, precision {floor['precision']:.3g}, "
          f"recall {floor['recall']:.3g}, copy rate {floor['copy_rate']:.2f}.", "",
          md_table(rows, COLS), "",
          f"- one-step DiT (flowmap) FD / teacher reference FD = {fm['metrics']['fd'] / ref:.2f} "
          f"(target <= 2).",
          f"- SLT params / one-step DiT params = {slt['params'] / fm['params']:.3f} (target <= 1/8), "
          f"SLT FD / one-step DiT FD = {slt['metrics']['fd'] / fm['metrics']['fd']:.2f} "
          f"(target <= 1.5).", ""]
    if res["ablation"]:
        md += ["## SLT ablation (equal short budgets, teacher = flowmap)", "",
               md_table(res["ablation"], [("K", "K"), ("P", "P"), ("fusion", "fusion"),
                                          ("params", "params")] + COLS[3:]), ""]
    md += ["## Noise screening (SLT student, 597 outputs)", "",
           md_table(res["screening"], [("scorer", "scorer"), ("N", "N"), ("final", "final"),
                                       ("FD", "metrics.fd"), ("precision", "metrics.precision"),
                                       ("recall", "metrics.recall"),
                                       ("class acc.", "metrics.accuracy_vs_labels"),
                                       ("wall s", "sample_s")]), "",
           "The classifier and density scores use the same digits-classifier features as the FD "
           "and precision metrics: gains under those scorers are partly the metric being optimised. "
           "The teacher scorer is independent of the metric but costs one teacher call per candidate.",
           "", "## Screening time (one run, one thread, median of 5; target ratio <= 1)", "",
           "128 candidates of one output through the student in one batch + the score, against "
           "the one-step deep teacher (flowmap) making 2 samples as two calls of batch 1.", "",
           md_table(tm, [("student", "name"), ("params", "params"),
                         ("screen 128 + classifier ms", "screen128_classifier_ms"),
                         ("screen 128 + density ms", "screen128_density_ms"),
                         ("student 128 only ms", "student128_only_ms"),
                         ("teacher 2 samplings ms", "teacher_2_samplings_ms"),
                         ("teacher batch of 2 ms", "teacher_batch2_ms"),
                         ("ratio", "ratio")]), "",
           "## Cost (batch 256, one thread)", "",
           md_table(res["speed"], [("model", "name"), ("params", "parameters"), ("NFE", "nfe"),
                                   ("MACs / sample", "macs"), ("samples/s", "samples_per_s"),
                                   ("latency s", "latency_s")]), "",
           "![screening](slt/screening.png)", "",
           "## Commands (wall seconds; nan = made outside this benchmark run)", ""]
    plot_screening(res["screening"], dest / "slt")
    secs = res.get("command_seconds", {})
    md += [f"    {c}    # {secs.get(c, float('nan')):.0f} s" for c in res["commands"]]
    md += [""]
    (dest / "slt.md").write_text("\n".join(md))
    print(f"-> {dest / 'slt.md'}")


if __name__ == "__main__":
    main()
