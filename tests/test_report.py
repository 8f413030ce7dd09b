"""The report answers "which method?" at a glance: the verdict picks the right model,
tables read (arrows, bold best, groups, ± only with seeds), flags show as badges with
one note each, every plot colours a method the same way, and the flag "equals its
init" fires exactly when a student's samples did not move from its initialisation's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slimstep.eval import EvalError
from slimstep.files import write_npz
from slimstep.flags import compare_to_init, initialisation, row_flags
from slimstep.palette import method_style
from slimstep.report import console_table, write_reports
from slimstep.report.notes import collapse_notes, spike_notes
from slimstep.report.plots import plot_losses, plot_nfe, plot_speed
from slimstep.report.tables import summary_table
from slimstep.run import score_samples
from slimstep.spec.results import Note
from slimstep.verdict import verdict, verdict_lines

FLOOR = {"w2": 0.1, "mmd": 0.001}
CLAMP = "{}% of sample values were outside [-1, 1] and were clamped"  # a note before records: text only


def row(name, w2, sd=0.0, *, kind="distill", method=None, nfe=1, params=1000, seeds=2, samples=None, **kw):
    """One result row as recipes.run writes it (teacher 't', reference W2 0.2, 1000 params)."""
    r = {"name": name, "stage": kw.pop("stage", name), "kind": kind, "method": method or name, "data": "toy2d:moons",
         "n": 200, "seeds": list(range(seeds)), "nfe": nfe, "params": params, "teacher": "t",
         "metrics": {"w2": w2, "mmd": w2 / 100}, "metrics_sd": {"w2": sd, "mmd": 0.0},
         "per_seed": [{"w2": w2}] * seeds, "floor": FLOOR, "notes": kw.pop("notes", []),
         "quality_ratio": w2 / 0.2, "params_ratio": params / 1000, "samples_per_s": kw.pop("sps", 1e5),
         "speedup": kw.pop("sps", 1e5) / 1e3, "files": {}, "flags": [], **kw}
    if samples is not None:
        r["files"] = {"samples": str(samples)}
    return r


def fixed_results(tmp_path, seeds=2):
    """Teacher t (Euler 1, 2 and a reference), five students, a failed stage."""
    g = torch.Generator().manual_seed(0)
    paths = {}
    for name in ("t-e1", "t-ref", "a", "b", "small", "frozen", "worse"):
        paths[name] = tmp_path / name / "samples.npz"
        write_npz(paths[name], samples=torch.randn(200, 2, generator=g).numpy(), seeds=list(range(200)))
    frozen = row("frozen", 0.9, 0.02, method="gdd", seeds=seeds, samples=paths["frozen"])
    frozen["init_check"] = {"init": "t euler-1", "shift": 0.0, "metric": "w2", "distance": 0.0,
                            "floor": 0.1, "equal": True}
    rows = [
        row("t euler-1", 0.9, 0.02, kind="teacher", stage="t", curve=True, seeds=seeds, samples=paths["t-e1"]),
        row("t euler-2", 0.5, 0.02, kind="teacher", stage="t", curve=True, nfe=2, seeds=seeds, sps=None),
        row("t heun-8 (reference)", 0.2, 0.01, kind="teacher", stage="t", reference=True, nfe=16, seeds=seeds,
            samples=paths["t-ref"], sps=1e3),
        row("worse", 0.6, 0.01, method="distill", seeds=seeds, samples=paths["worse"],
            notes=[Note.clamped(0.025).to_dict()]),
        row("b", 0.31, 0.02, method="slimflow", seeds=seeds, samples=paths["b"], notes=[Note.clamped(0.005).to_dict()]),
        row("a", 0.30, 0.01, method="gdd-i", seeds=seeds, samples=paths["a"]),
        row("small", 0.45, 0.01, method="annealing-reflow", params=200, seeds=seeds, samples=paths["small"]),
        frozen,
        row("copycat", 0.05, 0.0, method="reflow", seeds=seeds),
    ]
    for r in rows:
        r["flags"] = row_flags(r, seeds)
    stages = {"t": {"kind": "teacher", "spec": "toy2d:moons", "status": "done", "seconds": 1.0,
                    "dir": str(tmp_path / "t"), "metrics_file": None},
              "boom": {"kind": "distill", "spec": "toy2d:moons", "status": "failed", "seconds": 0.0,
                       "error": "training diverged: loss is nan at step 3", "dir": str(tmp_path / "boom"),
                       "metrics_file": None}}
    return {"title": "fixed", "eval": {"seeds": list(range(seeds)), "n": 200}, "stages": stages,
            "rows": rows, "seconds": 60.0}


def test_verdict_picks_the_best_one_step_student_and_its_ties(tmp_path):
    rows = fixed_results(tmp_path)["rows"]
    v = verdict(rows)
    # copycat scores lowest (below the floor, flagged) and is still the lowest one-step student
    assert v.best.name == "copycat"
    rest = [r for r in rows if r["name"] != "copycat"]
    v = verdict(rest)
    assert v.best.name == "a" and [r.name for r in v.within] == ["b"]  # 0.31 - 0.30 <= 0.01 + 0.02
    assert v.small.name == "small" and v.small_within == ()
    lines = verdict_lines(rest)
    assert lines[0].startswith("Best one-step model: a: W2 0.3, 1.5x its teacher's (t heun-8 (reference): 0.2)")
    assert "within the seed spread of it: b." in lines[0]
    assert lines[1].startswith("Best small model (at most 1/4 of its teacher's parameters): small: W2 0.45")
    # One seed: no spread, so no ties are claimed and the line says why.
    one = [r for r in fixed_results(tmp_path, seeds=1)["rows"] if r["name"] != "copycat"]
    assert verdict(one).within == () and "one seed: no spread" in verdict_lines(one)[0]


def test_report_reads_at_a_glance(tmp_path):
    res = fixed_results(tmp_path)
    paths = write_reports(tmp_path, res)
    html = open(paths["html"]).read()
    md = open(paths["md"]).read()
    # The verdict comes before any table, on both pages.
    assert html.index("class='verdict'") < html.index("<table>")
    assert md.index("Best one-step model: copycat") < md.index("| method |")
    head, body = summary_table(res["rows"], [("boom", "distill", {"id": "diverged", "badge": "diverged"})])
    assert "W2 ↓ (mean ± sd, 2 seeds)" in head and "samples/s ↑" in head and "W2 / teacher ↓" in head
    assert head[5:7] == ["NFE ↓", "MACs / sample ↓"]  # cost in compute beside cost in calls
    names = [r[0] if isinstance(r, list) else r.label for r in body]
    # grouped and sorted by W2 inside each group; the curve's 2-step point is in the plot only
    assert names == ["teachers", "t heun-8 (reference)", "t euler-1",
                     "students", "copycat", "a", "b", "small", "worse", "frozen", "boom"]
    assert "<b>0.05 ± 0</b>" in html  # the best student W2, bold
    assert "<b>0.2x</b>" in html  # the smallest params ratio
    for badge in ("equals its init", "below floor", "diverged"):
        assert f">{badge}</span>" in html and f"`{badge}`" in md
    # each flag explained once, naming its models
    assert html.count("the one-step map did not move") == 1 and "frozen (W2 0 from t euler-1" in html
    # repeated clamping notes: one line, every model with its share
    clamped = ["sample values outside [-1, 1] were clamped before scoring, as when saved as images: "
               "worse 2.50 %, b 0.50 %"]
    assert collapse_notes(res["rows"]) == clamped
    # a results.json from before the records (notes as the text eval wrote) reads the same
    old = [{**r, "notes": [CLAMP.format(f"{n['percent']:.2f}") for n in r["notes"]]} for r in res["rows"]]
    assert collapse_notes(old) == clamped
    for png in ("toy2d-moons-strip.png", "toy2d-moons-nfe.png", "toy2d-moons-speed.png"):
        assert (tmp_path / png).is_file() and f"src='{png}'" in html
    text = console_table(res)
    assert "Best one-step model: copycat" in text and "[equals its init]" in text and "[diverged]" in text
    # one seed: no "±" anywhere in the table
    one = fixed_results(tmp_path, seeds=1)
    head, body = summary_table(one["rows"])
    assert "W2 ↓ (1 seed)" in head and not any("±" in str(c) for r in body if isinstance(r, list) for c in r)


def test_one_palette_in_both_plots(tmp_path):
    rows = fixed_results(tmp_path)["rows"]
    nfe = plot_nfe(rows, tmp_path / "nfe.png", "nfe")
    speed = plot_speed(rows, tmp_path / "speed.png", "speed")
    both = set(nfe) & set(speed)
    assert {"a", "b", "small", "frozen", "t heun-8"} <= both
    assert all(nfe[k] == speed[k] for k in both)
    assert nfe["a"] == method_style("gdd-i") and nfe["b"] == method_style("slimflow")
    assert len({nfe[k] for k in both}) == len(both)  # no two methods share a mark here


def test_loss_plot_skips_a_torn_metrics_line(tmp_path):
    """A stage still training (an interim report) or killed mid-write leaves a half line."""
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    assert plot_losses([("s", f)], tmp_path / "loss.png", "t")
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_equals_init_is_no_move_within_the_floor():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(500, 2, generator=g)
    same = compare_to_init(x0.clone(), x0, "toy2d:moons", FLOOR, "t euler-1")
    assert same["equal"] and same["shift"] == 0 and same["distance"] == pytest.approx(0, abs=1e-9)
    nudged = compare_to_init(x0 + 0.01, x0, "toy2d:moons", FLOOR, "t euler-1")  # W2 0.014 < floor 0.1
    assert nudged["equal"] and nudged["distance"] < FLOOR["w2"]
    moved = compare_to_init(x0 * 0.5 + 1.0, x0, "toy2d:moons", FLOOR, "t euler-1")
    assert not moved["equal"] and moved["distance"] > FLOOR["w2"]
    # no protocol distance (an imported teacher's data "none"): only paired equality counts
    assert not compare_to_init(x0 + 0.01, x0, "none", {}, "i")["equal"]
    assert compare_to_init(x0 + 1e-6, x0, "none", {}, "i")["equal"]


def test_equals_init_on_images_is_swd_within_the_floor():
    g = torch.Generator().manual_seed(2)
    x0 = torch.nn.functional.interpolate(torch.rand(40, 3, 4, 4, generator=g), size=16, mode="bilinear") * 2 - 1
    floor = {"swd": 0.1}
    nudged = compare_to_init(x0 + 0.002 * torch.randn(x0.shape, generator=g), x0, "folder:x", floor, "t euler-1")
    assert nudged["metric"] == "swd" and nudged["equal"] and nudged["distance"] < floor["swd"]
    moved = compare_to_init(torch.rand(x0.shape, generator=g) * 2 - 1, x0, "folder:x", floor, "t euler-1")
    assert not moved["equal"] and moved["distance"] > floor["swd"]


def test_what_a_student_starts_from():
    deps = {"teacher": "t", "init": "r"}
    assert [initialisation(m, {}, deps) for m in ("gdd", "gdd-i", "flowmap", "meanflow")] == ["t"] * 4
    assert initialisation("meanflow", {"init": "scratch"}, deps) is None
    assert [initialisation(m, {}, deps) for m in ("slimflow", "distill", "reflow")] == ["r"] * 3
    assert initialisation("annealing-reflow", {}, {"teacher": "t"}) is None  # from scratch
    assert initialisation("slt", {}, {"teacher": "t"}) is None


def test_a_seed_that_cannot_be_scored_is_flagged_not_fatal():
    ev = {"n": 100, "seeds": [0, 1]}

    def make(seed, n):
        x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
        if seed == 1:
            x[0, 0] = float("nan")
        return x, None, 0.0, {}

    r = score_samples(make, "toy2d:moons", ev, "half", None)
    assert len(r["per_seed"]) == 1 and r["failed_seeds"][0]["seed"] == 1
    assert [f["id"] for f in row_flags({**r, "flags": []}, 2)] == ["fewer-seeds"]
    with pytest.raises(EvalError, match="no seed could be scored"):
        score_samples(lambda s, n: (torch.full((n, 2), float("nan")), None, 0.0, {}),
                      "toy2d:moons", ev, "none", None)
    assert np.isfinite(r["metrics"]["w2"])


def test_a_student_close_to_its_init_but_scoring_apart_is_not_flagged():
    """Samples closer to the init's than the real/real floor, but a paired-seed metric that
    moved beyond the seed spread (moons slimflow from annealing reflow: W2 0.133 -> 0.116,
    sd 0.0017): the student moved. Within the spread it is still flagged."""
    chk = {"init": "init", "shift": 0.047, "metric": "w2", "distance": 0.061, "floor": 0.0945, "equal": True}
    init = {"name": "init", "metrics": {"w2": 0.133}, "metrics_sd": {"w2": 0.0017}}
    moved = {"name": "s", "metrics": {"w2": 0.116}, "metrics_sd": {"w2": 0.0007}, "init_check": chk,
             "per_seed": [{}, {}, {}]}
    assert [f["id"] for f in row_flags(moved, 3, {"init": init})] == []
    same = {**moved, "metrics": {"w2": 0.132}}
    assert [f["id"] for f in row_flags(same, 3, {"init": init})] == ["equals-init"]
    assert [f["id"] for f in row_flags(moved, 3)] == ["equals-init"]  # without the rows: as before
    one = {"name": "init", "metrics": {"fd": 12.2}, "metrics_sd": {"fd": 0.0}}  # one seed: 5 %
    d = {**moved, "metrics": {"fd": 10.1}, "metrics_sd": {"fd": 0.0}, "per_seed": [{}],
         "init_check": {**chk, "metric": "fd"}}
    assert row_flags(d, 1, {"init": one}) == []
    assert [f["id"] for f in row_flags({**d, "metrics": {"fd": 12.0}}, 1, {"init": one})] == ["equals-init"]


def test_rows_flags_and_notes_are_records_that_give_their_json_back(tmp_path):
    """results.json is read through records (slimstep.spec.results): to_dict gives each stored
    row back, key for key; a note from before the records (a string) still reads as its kind."""
    from slimstep.spec.results import Flag, Row

    for r in fixed_results(tmp_path)["rows"]:
        rec = Row.from_dict(r)
        assert rec.to_dict() == r and list(rec.to_dict()) == list(r)
        assert all(isinstance(f, Flag) for f in rec.flags)
    frozen = Row.from_dict(next(r for r in fixed_results(tmp_path)["rows"] if r["name"] == "frozen"))
    assert frozen.init_check.equal and [f.id for f in frozen.flags] == ["equals-init"]
    assert Note.from_dict(CLAMP.format("2.50")) == Note.clamped(0.025)
    assert Note.from_dict("N = 200 < 2,000: W2 and MMD are noisy").kind == Note.TEXT
    built = Row(name="x", metrics={"w2": 0.1}, notes=(Note.clamped(0.01),))
    assert built.to_dict() == {"name": "x", "metrics": {"w2": 0.1}, "metrics_sd": {}, "floor": {},
                               "notes": [Note.clamped(0.01).to_dict()], "files": {}, "flags": []}
    assert Row.from_dict(built.to_dict()) == built


def test_scored_seeds_are_kept_so_an_added_seed_scores_only_itself(tmp_path):
    """A killed evaluation resumes at its seed, and a protocol with more seeds scores only
    the new ones: each seed's result is kept under the model's key."""
    drawn = []

    def make(seed, n):
        drawn.append(seed)
        return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)), None, 0.5, {}

    first = score_samples(make, "toy2d:moons", {"n": 200, "seeds": [0, 1]}, "m", tmp_path, model="hash-a")
    assert drawn == [0, 1] and sorted(p.name for p in (tmp_path / "seeds").iterdir()) == ["0.json", "1.json"]
    more = score_samples(make, "toy2d:moons", {"n": 200, "seeds": [0, 1, 2]}, "m", tmp_path, model="hash-a")
    assert drawn == [0, 1, 2]  # seeds 0 and 1 reused, with their scores and sampling seconds
    assert more["per_seed"][:2] == first["per_seed"] and more["sample_seconds"] == 1.5
    (tmp_path / "samples.npz").unlink()  # the kept samples are redrawn, the score reused
    again = score_samples(make, "toy2d:moons", {"n": 200, "seeds": [0, 1, 2]}, "m", tmp_path, model="hash-a")
    assert drawn == [0, 1, 2, 0] and again["per_seed"] == more["per_seed"] and (tmp_path / "samples.npz").is_file()
    score_samples(make, "toy2d:moons", {"n": 200, "seeds": [1, 2]}, "m", tmp_path, model="hash-a")
    assert drawn[4:] == [1]  # the kept samples are seed 0's: the new first seed's are drawn to keep
    score_samples(make, "toy2d:moons", {"n": 300, "seeds": [1]}, "m", tmp_path, model="hash-a")
    score_samples(make, "toy2d:moons", {"n": 300, "seeds": [1]}, "m", tmp_path, model="hash-b")
    assert drawn[5:] == [1, 1]  # another N, another model: scored again
    (tmp_path / "seeds" / "2.json").write_text("{torn")  # not ours: scored again, replaced
    score_samples(make, "toy2d:moons", {"n": 200, "seeds": [0, 2]}, "m", tmp_path, model="hash-a")
    assert drawn[7:] == [0, 2] and json.loads((tmp_path / "seeds" / "2.json").read_text())["result"]
    # Another model of the stage (a retrained stage, a killed evaluation) drew seed 0 at this N
    # into the shared folder: hash-a's seed-0 score is reused, its samples drawn again to keep.
    score_samples(make, "toy2d:moons", {"n": 200, "seeds": [0]}, "m", tmp_path, model="hash-c")
    score_samples(make, "toy2d:moons", {"n": 200, "seeds": [0]}, "m", tmp_path, model="hash-a")
    assert drawn[9:] == [0, 0]


def test_a_seed_that_cannot_be_scored_is_kept_as_failed_and_not_drawn_again(tmp_path):
    drawn = []

    def make(seed, n):
        drawn.append(seed)
        x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
        if seed == 1:
            x[0, 0] = float("nan")
        return x, None, 0.5, {}

    ev = {"n": 200, "seeds": [0, 1]}
    a = score_samples(make, "toy2d:moons", ev, "m", tmp_path, model="hash-a")
    b = score_samples(make, "toy2d:moons", ev, "m", tmp_path, model="hash-a")
    assert drawn == [0, 1] and a["failed_seeds"] == b["failed_seeds"] and b["failed_seeds"][0]["seed"] == 1
    assert b["per_seed"] == a["per_seed"] and b["sample_seconds"] == 1.0


def test_a_gradient_spike_is_noted_with_whether_it_was_clipped(tmp_path):
    """The report notes a run whose logged gradient norm (before clipping) spiked: how GDD's
    unclipped Fashion-MNIST runs blew up. Steady runs, and torn lines, give no note."""

    def run(name, norms, torn=False):
        f = tmp_path / f"{name}.jsonl"
        lines = [json.dumps({"step": 50 * i + 49, "gen/grad_norm": g, "disc/grad_norm": 0.3, "loss": 1.0})
                 for i, g in enumerate(norms)]
        f.write_text("\n".join(lines) + ("\n{\"step\": 9" if torn else "\n"))
        return f

    spiky = run("gan", [0.5, 0.4, 0.6, 27490.0, 0.5, 0.4], torn=True)
    steady = run("ok", [2.0, 1.5, 1.0, 0.8, 0.9, 1.1])
    small = run("small", [0.01, 0.01, 0.01, 5.0, 0.01])  # 500x the median, but under SPIKE_MIN
    notes = spike_notes([("gdd", spiky, 0.0), ("teacher", steady, 0.0), ("tiny", small, 0.0),
                         ("gone", tmp_path / "missing.jsonl", 0.0)])
    assert len(notes) == 1 and notes[0].startswith("gdd: gen/grad_norm reached 2.75e+04 at step 200, 54980x its "
                                                   "median 0.5, not clipped")
    clipped = spike_notes([("gdd", spiky, 1.0)])
    assert clipped == ["gdd: gen/grad_norm reached 2.75e+04 at step 200, 54980x its median 0.5, "
                       "clipped to 1 before each step"]
