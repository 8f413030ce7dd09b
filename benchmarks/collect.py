"""Assemble BENCHMARKS.md from the per-suite results written by the benchmark scripts.

    python benchmarks/run.py            # methods.py (every method, slimstep run) + this script
    python benchmarks/run.py --suites   # and first every per-method suite below

    python benchmarks/core.py --digits-teacher runs/bench/digits-teacher-step2000
    python benchmarks/slimflow.py --digits-teacher runs/bench/digits-teacher-step2000
    python benchmarks/slimflow_small.py --teacher T --pairs P
    python benchmarks/gdd.py ...        # see each script's --help
    python benchmarks/gdd_ablate.py --teacher T
    python benchmarks/slt.py ...
    python benchmarks/meanflow.py --dit-teacher T
    python benchmarks/collect.py        # -> BENCHMARKS.md

It also writes the README's Fashion-MNIST headline (benchmarks/results/fashion/headline.md)
between the README's markers. Every number in BENCHMARKS.md is copied from benchmarks/results/*.md, which
the scripts write from their own runs; nothing here computes or edits a number.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS  # noqa: E402

from slimstep.files import write_bytes  # noqa: E402

HERE = Path(__file__).resolve().parent
SUITES = [("fashion/fashion.md", "Fashion-MNIST: every method, one protocol"),
          ("fashion/claims.md", "Fashion-MNIST: the papers' claims"),
          ("fashion/discrimination.md", "Fashion-MNIST: can the protocol tell methods apart?"),
          ("fashion/protocol.md", "Fashion-MNIST protocol"),
          ("fashion/time-error.md", "Data-prediction error along the path (fashion-mnist)"),
          ("fashion/flowmap-error.md", "A flow map against its teacher's ODE (fashion-mnist)"),
          ("methods.md", "Every method, one protocol"), ("core.md", "Teachers"),
          ("slimflow.md", "SlimFlow"), ("slimflow-small.md", "SlimFlow, small student"),
          ("meanflow.md", "MeanFlow"), ("gdd.md", "GDD / GDD-I"), ("gdd-ablate.md", "GDD-I vs GDD ablation"),
          ("slt.md", "SLT, FreeFlow / MeanFlow, screening"), ("slt-chain.md", "SLT chain, 28 layers"),
          ("slt-chain-ablation.md", "SLT student ablation, 28-layer chain"),
          ("slt-chain-cost.md", "SLT cost probe, 28-layer chain"),
          ("slt-chain-screen.md", "Screening, 28-layer chain"),
          ("slt-chain-screen-seeds.md", "Screening over 20 seeds, 28-layer chain"),
          ("slt-chain-screen-probes.md", "Screening probes, 28-layer chain"),
          ("swd.md", "SWD, the image metric without weights"), ("edm_agreement.md", "EDM import agreement"),
          ("result-changes.md", "What changed in earlier results")]

INTRO = """# Benchmarks

Measured on this project's CPU machine (2 cores, no GPU) at CPU scale: Fashion-MNIST
28×28 (the benchmark meant to separate methods: `python benchmarks/fashion.py`, protocol
in docs/evaluation.md), 8×8 digits (saturated: its teacher scores below the real/real
floor and the good methods sit within one seed spread of it) and 2-D toys. Every table below is copied verbatim from
`benchmarks/results/`, written by the script named in its section; each
section lists the exact commands. (The SLT section also carries short notes
on a few runs made by hand, each with its command.) The evaluation protocol is in
[docs/evaluation.md](docs/evaluation.md): digits FD is in the features of
slimstep's shipped classifier, against the train split, with the real/real
floor (held-out test split, N = 597) beside it.

The runs shared the 2 cores with each other (several single-thread jobs at
once), so *training times* are wall-clock on a loaded machine and only
roughly comparable, and so are samples/s: rerunning `benchmarks/core.py`
reproduced every quality number exactly while its samples/s moved by up to
4× with the load. Compare speeds within one table only.
Regenerate with `python benchmarks/run.py` (see `benchmarks/collect.py`).

The first sections are Fashion-MNIST: *every method, one protocol* (`slimstep run
fashion/all`, N = 10,000 per seed, three sample seeds, the real/real floor beside it), *the
papers' claims* (`fashion/claims`, three training seeds per compared arm, paired
differences), whether the protocol can tell methods apart (the UNet teacher alone, at its
reference sampler and at one step: `python benchmarks/fashion.py --discrimination`), the
protocol's own numbers, and two diagnostics of its teachers and flow map
(error along the path, a flow map against its teacher's ODE). The digits section *Every method, one protocol*
is `slimstep run` on the digits and moons recipes (`configs/digits/all.yaml`,
`configs/toy2d/all.yaml`): every method trained from its teacher with the recipe's budget and
scored on the same seeds (three of them, mean and spread shown) and the same N. The
sections after it are the per-method suites with their ablations, run
earlier against their own teachers; where a number differs between a suite and
the digits *Every method* section, that section's is the newer run of the current recipes
(SLT's recipe changed in between: concat fusion and 6,000 steps with a cosine
decay, against the suite's sum fusion and 1,200 constant-rate steps).

**Digits teachers.** The digits *Every method* was retrained from scratch on 2026-12-06/07 with the
current recipes: the UNet teacher (`configs/digits/teacher.yaml`, Heun-16 FD 6.46) and
the DiT teacher with the smooth time embedding (`configs/digits/dit-teacher.yaml`,
`time_scale: 1`, Heun-16 FD 6.46). The sections run on 2026-12-01 (*SlimFlow, small
student*, *MeanFlow*, *GDD-I vs GDD*) use the same recipes' teachers as that day's
`slimstep run configs/digits/all.yaml` trained them (Heun-16 FD 6.36 and 6.48); each
names its checkpoint. **The digits teacher** of the older suites (*Teachers*, *SlimFlow*, *GDD /
GDD-I*, *SLT*) is `runs/bench/digits-teacher-step2000`:
the step-2,000 snapshot of
`slimstep teacher --config configs/digits/teacher.yaml --out runs/bench/digits-teacher`
(run with `train.steps: 4000`, stopped after 2,000 because the methods' runs
needed the cores; the recipe now says 2,000 steps). A snapshot is a complete
checkpoint, and with a constant learning rate after warm-up and randomness
indexed by step, a 2,000-step run follows the same trajectory (up to float
summation order across thread counts). Its 2,000 steps took 24.6 min of wall
time: the first 1,000 in 4.6 min with the machine to itself, the rest beside
other jobs.
"""


#: The README's Fashion-MNIST headline lives between these lines (benchmarks/results/fashion/headline.md).
HEADLINE = ("<!-- fashion-headline: written by benchmarks/collect.py -->", "<!-- /fashion-headline -->")


def fill_headline(readme: str, results: Path) -> str:
    """``readme`` with the text between the :data:`HEADLINE` markers replaced by the Fashion-MNIST
    headline, or by a line saying it is not measured yet; a README without them is refused."""
    start, end = HEADLINE
    if readme.count(start) != 1 or readme.count(end) != 1 or readme.index(start) > readme.index(end):
        raise SystemExit(f"README.md must hold the lines {start} and {end} once each, in that order")
    f = results / "fashion" / "headline.md"
    body = (f.read_text().strip() if f.exists() else
            "The Fashion-MNIST benchmark has not finished yet: no numbers here until it has "
            "(`benchmarks/results/fashion/headline.md` is missing).")
    head, _, rest = readme.partition(start)
    _, _, tail = rest.partition(end)
    return f"{head}{start}\n{body}\n{end}{tail}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="the suites' results folder")
    ap.add_argument("--out", type=Path, default=HERE.parent / "BENCHMARKS.md")
    ap.add_argument("--readme", type=Path, default=HERE.parent / "README.md", help="whose headline to fill")
    a = ap.parse_args()
    parts = [INTRO]
    for name, title in SUITES:
        f = a.results / name
        if not f.exists():
            parts.append(f"## {title}\n\nNot run yet (`benchmarks/results/{name}` is missing).\n")
            continue
        # image links in a results file are relative to benchmarks/results/
        rel = os.path.relpath(a.results, a.out.parent)
        text = re.sub(r"!\[([^\]]*)\]\((?!https?:|/)", rf"![\1]({rel}/", f.read_text())
        body = text.strip().splitlines()
        if body and body[0].startswith("# "):
            body[0] = "#" + body[0]
        parts.append("\n".join(line if not line.startswith("## ") or line is body[0] else "#" + line
                               for line in body) + "\n")
    write_bytes(a.out, "\n".join(parts).encode())  # atomic: a killed run leaves the old file
    print(f"wrote {a.out}")
    write_bytes(a.readme, fill_headline(a.readme.read_text(), a.results).encode())
    print(f"wrote {a.readme} (its Fashion-MNIST headline)")


if __name__ == "__main__":
    main()
