"""`slimstep run`: a recipe's stages train once, are reused by hash, every model is
scored with one protocol, and the report holds every method."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slimstep import checkpoint as ckpt
from slimstep.cli import main
from slimstep.files import read_samples
from slimstep.run import RecipeError, load_recipe, run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["train.steps=6", "train.ckpt_every=3", "train.batch_size=32"]


def recipe(tmp_path: Path, stages: dict, name: str = "r.yaml", **ev) -> Path:
    body = {"title": "tiny", "eval": {"n": 200, "seeds": [0, 1], "teacher_nfes": [1, 2], **ev},
            "stages": stages}
    p = tmp_path / name
    p.write_text(json.dumps(body))  # JSON is YAML
    return p


def moons_stages(teacher_steps: int = 6) -> dict:
    t = str(CONFIGS / "toy2d")
    return {
        "t": {"kind": "teacher", "config": f"{t}/teacher.yaml",
              "overrides": [f"train.steps={teacher_steps}", "train.ckpt_every=3", "net.hidden=32"]},
        "p": {"kind": "pairs", "teacher": "t", "n": 64, "solver": "euler", "steps": 4},
        "reflow": {"method": "annealing-reflow", "config": f"{t}/annealing-reflow.yaml", "teacher": "t",
                   "pairs": "p", "overrides": [*TINY, "method.anneal_steps=3", "net.hidden=16"]},
        "sf": {"method": "slimflow", "config": f"{t}/slimflow.yaml", "teacher": "t", "pairs": "p",
               "init": "reflow", "overrides": TINY},
        "gan": {"method": "gdd", "config": f"{t}/gdd.yaml", "teacher": "t", "overrides": TINY},
    }


def mtimes(out: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}


def test_run_trains_scores_reports_and_reuses(tmp_path):
    r = recipe(tmp_path, moons_stages())
    out = tmp_path / "out"
    res = run(r, out, jobs=1, log=lambda *_: None)
    assert res["failed"] == []
    names = [row["name"] for row in res["rows"]]
    assert names[:3] == ["t euler-1", "t euler-2", "t heun-16 (reference)"]
    assert {"reflow", "sf", "gan"} <= set(names)
    ref = next(row for row in res["rows"] if row.get("reference"))
    for row in res["rows"]:
        assert row["data"] == "toy2d:moons" and row["n"] == 200 and row["seeds"] == [0, 1]
        assert len(row["per_seed"]) == 2
        # the mean is the mean of the seeds
        assert row["metrics"]["w2"] == pytest.approx(np.mean([m["w2"] for m in row["per_seed"]]))
        assert row["teacher"] == "t"
        assert row["quality_ratio"] == pytest.approx(row["metrics"]["w2"] / ref["metrics"]["w2"])
    for stage in ("reflow", "sf", "gan"):
        d = read_samples(out / stage / "samples.npz")
        assert d["samples"].shape == (200, 2) and list(d["seeds"][:3]) == [0, 1, 2] and int(d["nfe"]) == 1
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for stage in ("t heun-16 (reference)", "reflow", "sf", "gan"):
        assert f"<td>{stage}</td>" in html and f"| {stage} |" in md
    for png in ("toy2d-moons-nfe.png", "toy2d-moons-speed.png", "toy2d-moons-loss.png", "sf/samples.png"):
        assert (out / png).is_file() and f"src='{png}'" in html

    # A row's training seconds: its training loop's, as its checkpoint records them.
    sf = next(row for row in res["rows"] if row["stage"] == "sf")
    recorded = ckpt.read_config(Path(res["stages"]["sf"]["dir"]))["train_seconds"]
    assert sf["train_s"] == res["stages"]["sf"]["train_seconds"] == recorded > 0

    # Rerun: nothing trains again, the same numbers come back.
    before = mtimes(out)
    res2 = run(r, out, jobs=1, log=lambda *_: None)
    assert mtimes(out) == before
    assert res2["stages"]["sf"]["train_seconds"] == recorded
    assert {n: s["status"] for n, s in res2["stages"].items()} == {n: "reused" for n in res2["stages"]}
    assert [row["metrics"] for row in res2["rows"]] == [row["metrics"] for row in res["rows"]]

    # A changed upstream stage retrains it and everything that reads it, not the rest.
    stages = moons_stages()
    stages["reflow"]["overrides"] = [*stages["reflow"]["overrides"], "train.lr=5e-4"]
    res3 = run(recipe(tmp_path, stages, "r2.yaml"), out, jobs=1, log=lambda *_: None)
    status = {n: s["status"] for n, s in res3["stages"].items()}
    assert status == {"t": "reused", "p": "reused", "reflow": "done", "sf": "done", "gan": "reused"}


def interim_snapshots(monkeypatch) -> list[tuple[dict, str]]:
    """Every interim ``results.json`` a run writes, with its ``report.md`` (no gap between them)."""
    from slimstep.run import results as run_results

    monkeypatch.setattr(run_results, "INTERIM_GAP_S", 0.0)
    seen: list[tuple[dict, str]] = []
    real = run_results.write_reports

    def spy(out, res):
        paths = real(out, res)
        if res.get("interim"):
            seen.append((json.loads(json.dumps(res)), Path(paths["md"]).read_text()))
        return paths

    monkeypatch.setattr(run_results, "write_reports", spy)
    return seen


def test_an_interim_report_shows_what_is_scored_while_the_run_goes_on(tmp_path, monkeypatch):
    seen = interim_snapshots(monkeypatch)
    stages = {k: v for k, v in moons_stages().items() if k in ("t", "gan")}
    out = tmp_path / "out"
    res = run(recipe(tmp_path, stages), out, jobs=1, log=lambda *_: None)
    # First: the teacher trained, nothing scored, the student still waiting.
    first, md = seen[0]
    assert first["rows"] == [] and first["stages"]["gan"]["status"] == "waiting"
    assert md.startswith("# tiny (interim)") and "waiting: gan" in md and "not yet scored: t" in md
    assert "No model has been scored yet." in md
    # While the final pass scores: the teacher's rows, not the student's.
    part = next((r, m) for r, m in seen if r["rows"] and all(row["stage"] == "t" for row in r["rows"]))
    assert "| t heun-16 (reference) |" in part[1] and "not yet scored: gan" in part[1]
    # The end: the final report replaces the interim one.
    saved = json.loads((out / "results.json").read_text())
    assert "interim" not in saved and len(saved["rows"]) == len(res["rows"])
    assert "(interim)" not in (out / "report.md").read_text()


def test_a_failing_interim_report_does_not_stop_the_run(tmp_path, monkeypatch):
    from slimstep.run import results as run_results

    monkeypatch.setattr(run_results, "INTERIM_GAP_S", 0.0)
    real = run_results.write_reports

    def broken(out, res):
        if res.get("interim"):
            raise RuntimeError("a report bug")
        return real(out, res)

    monkeypatch.setattr(run_results, "write_reports", broken)
    said: list[str] = []
    res = run(recipe(tmp_path, {"t": moons_stages()["t"]}), tmp_path / "out", jobs=1, log=said.append)
    assert "[report] interim report not written: RuntimeError: a report bug" in said
    assert res["failed"] == [] and (tmp_path / "out" / "report.md").is_file()


def test_a_failed_speed_measurement_keeps_the_rows_and_is_tried_again(tmp_path, monkeypatch):
    from slimstep.run import evaluate as run_evaluate

    def broken(*_a):
        raise RuntimeError("no timer")

    monkeypatch.setattr(run_evaluate, "measure_speed", broken)
    said: list[str] = []
    r, out = recipe(tmp_path, {"t": moons_stages()["t"]}), tmp_path / "out"
    res = run(r, out, jobs=1, log=said.append)
    assert "[speed] t: not measured (RuntimeError: no timer)" in said
    assert res["failed"] == [] and all(row["metrics"]["w2"] > 0 for row in res["rows"])
    assert not any(row.get("samples_per_s") for row in res["rows"])
    assert json.loads((out / "t" / "result.json").read_text())["speed_alone"] is False
    monkeypatch.undo()
    res2 = run(r, out, jobs=1, log=said.append)  # the next run times it, and scores nothing again
    assert said.count("[eval] t") == 1 and "[speed] t" in said
    assert res2["rows"][-1]["samples_per_s"] > 0
    assert [row["metrics"] for row in res2["rows"]] == [row["metrics"] for row in res["rows"]]


def test_parallel_jobs_give_the_same_models(tmp_path, monkeypatch):
    stages = {k: v for k, v in moons_stages().items() if k in ("t", "gan")}
    a = run(recipe(tmp_path, stages), tmp_path / "a", jobs=1, log=lambda *_: None)
    said: list[str] = []
    seen = interim_snapshots(monkeypatch)
    b = run(recipe(tmp_path, stages), tmp_path / "b", jobs=2, log=said.append)
    # The interim report names what is training while it trains.
    assert any(r["stages"]["t"]["status"] == "training" for r, _ in seen)
    # With two jobs each stage is scored in a worker as soon as it is trained (the teacher
    # while the student trains); the run's own pass then reads the evaluation cache.
    for s in ("t", "gan"):
        assert f"[eval] {s} (in a worker)" in said and f"[reuse] evaluation of {s}" in said
        # ...but its speed is measured alone, after all training, by the run's own pass.
        assert said.index(f"[speed] {s}") > max(i for i, line in enumerate(said) if line.startswith("[done]"))
        assert json.loads((tmp_path / "b" / s / "result.json").read_text())["speed_alone"] is True
    assert all(row["samples_per_s"] for row in b["rows"] if not row.get("curve"))
    # The report's header sums the training loops' time (two side by side count twice).
    secs = sum(b["stages"][s]["train_seconds"] for s in ("t", "gan"))
    header = f"The 2 trained stages' training loops took together {secs / 60:.1f} min"
    assert header in (tmp_path / "b" / "report.md").read_text()
    done_gan = next(i for i, line in enumerate(said) if line.startswith("[done] gan"))
    assert said.index("[eval] t (in a worker)") < done_gan
    # Workers and the parent may take different float paths: equal to rounding.
    for ra, rb in zip(a["rows"], b["rows"], strict=True):
        assert ra["metrics"] == pytest.approx(rb["metrics"], rel=1e-6)
    for s in ("t", "gan"):
        xa = read_samples(tmp_path / "a" / s / "samples.npz")["samples"]
        xb = read_samples(tmp_path / "b" / s / "samples.npz")["samples"]
        np.testing.assert_allclose(xa, xb, rtol=1e-5, atol=1e-6)


def test_a_failed_stage_skips_its_dependents_and_the_rest_goes_on(tmp_path, capsys):
    stages = moons_stages()
    del stages["reflow"]["pairs"]  # annealing-reflow without pairs cannot train
    del stages["sf"]
    stages["after"] = {"method": "slimflow", "config": str(CONFIGS / "toy2d/slimflow.yaml"), "teacher": "t",
                       "pairs": "p", "init": "reflow", "overrides": TINY}
    stages["scr"] = {"kind": "screen", "student": "reflow", "candidates": 2, "scorer": "realism"}
    r = recipe(tmp_path, stages)
    assert main(["run", str(r), "--out", str(tmp_path / "out"), "--jobs", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("slimstep: error: stage(s) reflow, after, scr failed")
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["stages"]["reflow"]["status"] == "failed"
    assert res["stages"]["after"]["status"] == res["stages"]["scr"]["status"] == "skipped"
    assert res["stages"]["gan"]["status"] == "done"
    assert "failed" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize("stages, message", [
    ({"a": {"method": "slimflow", "config": "x.yaml", "init": "nope"}}, "init 'nope' is not a stage above it"),
    ({"a": {"kind": "bake"}}, "kind must be one of"),
    ({"a": {"kind": "teacher"}}, "needs 'config'"),
    ({"a": {"kind": "teacher", "config": str(CONFIGS / "toy2d/teacher.yaml"), "colour": 1}}, "unknown key(s) colour"),
    ({"a": {"kind": "teacher", "config": str(CONFIGS / "toy2d/gdd.yaml")}}, "a teacher trains flow_matching"),
    ({"a": {"kind": "teacher", "config": str(CONFIGS / "toy2d/teacher.yaml"), "overrides": ["train.nope=1"]}},
     "train.nope"),
])
def test_recipe_errors_are_one_line(tmp_path, capsys, stages, message):
    r = recipe(tmp_path, stages)
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(r)
    assert main(["run", str(r), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("slimstep: error:")
    assert not (tmp_path / "o").exists()


def test_jobs_must_be_positive(tmp_path, capsys):
    r = recipe(tmp_path, {k: v for k, v in moons_stages().items() if k == "t"})
    assert main(["run", str(r), "--out", str(tmp_path / "o"), "--jobs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "slimstep: error: --jobs must be at least 1, not 0"


def test_shipped_recipes_resolve():
    for name in ("demo.yaml", "digits/all.yaml", "toy2d/all.yaml"):
        ev, stages = load_recipe(CONFIGS / name)
        kinds = {s.cfg.method.name for s in stages if s.cfg}
        papers = {"flow_matching", "annealing-reflow", "slimflow", "distill", "gdd", "gdd-i", "flowmap",
                  "meanflow", "slt"}
        if name == "demo.yaml":  # the demo holds every method of the papers
            assert kinds == papers
        elif name == "digits/all.yaml":  # ... and the benchmark the baselines a user would pick instead
            assert kinds == papers | {"dmd2", "ect", "scd"}
        assert len({s.hash for s in stages}) == len(stages)


def test_a_student_that_did_not_move_is_flagged(tmp_path, capsys):
    """GDD at learning rate 1e-12 (0 is refused) keeps the teacher's weights: its one-step map is the teacher's
    Euler-1 step, so its row equals that row and carries the badge, in the report and in
    `slimstep run`'s summary. (A student that moves is not flagged: tests/test_report.py.)"""
    stages = {"t": moons_stages(teacher_steps=60)["t"]}
    stages["frozen"] = {"method": "gdd", "config": str(CONFIGS / "toy2d/gdd.yaml"), "teacher": "t",
                        "overrides": [*TINY, "train.lr=1e-12"]}
    out = tmp_path / "out"
    assert main(["run", str(recipe(tmp_path, stages)), "--out", str(out), "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    frozen, euler1 = rows["frozen"], rows["t euler-1"]
    assert frozen["metrics"] == pytest.approx(euler1["metrics"], rel=1e-5)
    assert frozen["init_check"]["init"] == "t euler-1" and frozen["init_check"]["shift"] < 1e-5
    assert [f["id"] for f in frozen["flags"]] == ["equals-init"]
    assert "frozen" in printed and "[equals its init]" in printed and "Best one-step model:" in printed
    html = (out / "report.html").read_text()
    assert "<span class='badge equals-init'>equals its init</span>" in html


def _children(pid: int) -> set[int]:
    kids = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        f = task / "children"
        if f.is_file():
            kids |= {int(x) for x in f.read_text().split()}
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_killed_run_takes_its_workers_with_it(tmp_path, sig):
    """`kill` on `slimstep run --jobs 2` (the parent runs no cleanup) or Ctrl-C (one line,
    exit 130): its two training workers must stop too, not train on for minutes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    t = str(CONFIGS / "toy2d/teacher.yaml")
    long = ["train.steps=200000", "train.ckpt_every=100000", "net.hidden=16"]
    r = recipe(tmp_path, {"a": {"kind": "teacher", "config": t, "overrides": long},
                          "b": {"kind": "teacher", "config": t, "overrides": [*long, "train.seed=1"]}})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "slimstep.cli", "run", str(r), "--out",
                             str(tmp_path / "out"), "--jobs", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / "out" / s).is_dir() for s in "ab"):  # both stages started
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        workers |= _children(proc.pid)
        assert len(workers) >= 2
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=30)
        if sig == "SIGINT":
            assert proc.returncode == 130 and err.strip().splitlines()[-1] == "slimstep: interrupted"
        deadline = time.monotonic() + 15
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [w for w in workers if _alive(w)]
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in workers:  # a failed run of this test must not leave trainers behind
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def test_a_moved_run_folder_is_reused(tmp_path, monkeypatch):
    """Kept sample files were recorded by the path the run was given (relative to where it
    ran); a run folder moved elsewhere then failed its rerun ('samples file not found')."""
    import shutil

    monkeypatch.chdir(tmp_path)
    stages = {k: v for k, v in moons_stages().items() if k in ("t", "gan")}
    r = recipe(tmp_path, stages)
    run(r, "out", jobs=1, log=lambda *_: None)
    shutil.move("out", "moved")
    logs = []
    res = run(r, "moved", jobs=1, log=logs.append)
    assert res["failed"] == [] and "[reuse] evaluation of gan" in logs
    assert all(Path(row["files"]["samples"]).is_file() for row in res["rows"] if row.get("files"))


def test_generic_image_recipe_runs_on_a_small_folder(tmp_path, image_folder, capsys):
    """images/run-16 as shipped (its stages and configs), at a budget of two steps, on 24
    PNGs of 20 x 20 in two class folders: the teacher and GDD train at 16 x 16, every row
    is scored by SWD beside its floor, and the kept samples re-evaluate to the same SWD."""
    import yaml

    from slimstep.config import find_config

    shipped = find_config("images/run-16")
    body = yaml.safe_load(shipped.read_text())
    tiny = ["train.steps=2", "train.batch_size=8", "train.ckpt_every=2", "train.warmup=0"]
    for st in body["stages"].values():
        st["config"] = str(shipped.parent / st["config"])
        st["overrides"] = tiny + (["net.nf=8", "net.attn_resolutions=[]"] if st.get("kind") == "teacher" else [])
    body["eval"] = {**body["eval"], "n": 12, "seeds": [0], "teacher_nfes": [1], "speed_batch": 4}
    r = tmp_path / "run-16.yaml"
    r.write_text(yaml.safe_dump(body, sort_keys=False))
    folder = image_folder(tmp_path / "imgs", n=24, size=20)
    out = tmp_path / "out"
    assert main(["run", str(r), "--out", str(out), "--data", f"folder:{folder}", "--jobs", "1"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [row["stage"] for row in res["rows"]] == ["teacher", "teacher", "gdd"]
    for row in res["rows"]:
        assert row["data"] == f"folder:{folder}" and {"swd", "swd_16"} <= set(row["metrics"])
        assert row["floor"]["swd"] > 0 and row["headline"] == "swd"
    gdd = res["stages"]["gdd"]["config"]["data"]
    assert gdd["options"]["resolution"] == 16 and gdd["options"]["center_crop"] is True  # the teacher's
    kept = read_samples(out / "gdd" / "samples.npz")
    assert kept["samples"].shape == (12, 3, 16, 16)
    assert json.loads(str(kept["data_options"])) == {"center_crop": True, "resolution": 16}
    assert main(["eval", "--samples", str(out / "gdd" / "samples.npz"), "--out", str(tmp_path / "e.json")]) == 0
    again = json.loads((tmp_path / "e.json").read_text())
    gdd_row = next(row for row in res["rows"] if row["stage"] == "gdd")
    assert again["metrics"]["swd"] == pytest.approx(gdd_row["metrics"]["swd"], rel=1e-9)
    assert (out / "report.html").is_file() and "SWD" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["run", "images/run-16", "--out", str(tmp_path / "o2")]) == 2  # no --data: before training
    err = capsys.readouterr().err
    assert "folder:PATH does not exist" in err and "--data SPEC" in err and not (tmp_path / "o2").exists()


def test_workers_score_the_longest_evaluations_first():
    from slimstep.run.recipe import Stage
    from slimstep.run.schedule import evaluation_order

    stages = [Stage("t", "teacher", {}), Stage("p", "pairs", {}), Stage("gan", "distill", {}),
              Stage("t2", "teacher", {}), Stage("scr", "screen", {}), Stage("sf", "distill", {})]
    assert [s.name for s in evaluation_order(stages)] == ["t", "t2", "scr", "gan", "sf"]


def test_compile_draws_the_teachers_samples_compiled_and_scores_them_alike(tmp_path, monkeypatch):
    """--compile: a teacher's curve and reference samples come through the compiled network
    (here a counting stand-in for torch.compile: the real one costs minutes); the rows, MACs
    and speed are the plain run's, the protocol key is unchanged (a plain run's scores are
    reused), and a network that fails to compile is drawn plain, said in the log."""
    import torch
    from torch._dynamo.exc import TorchDynamoException

    made: list = []

    class Counting(torch.nn.Module):
        fail = False

        def __init__(self, net):
            super().__init__()
            self.inner, self.calls = net, 0
            made.append(self)

        def forward(self, *a, **kw):
            if Counting.fail and isinstance(self.inner, torch.nn.Module):  # the start-up probe builds
                raise TorchDynamoException("inductor: no kernel for this op")
            self.calls += 1
            return self.inner(*a, **kw)

    def calls() -> int:  # not compile_problem's probe (a lambda)
        return sum(m.calls for m in made if isinstance(m.inner, torch.nn.Module))

    stages = {k: v for k, v in moons_stages().items() if k == "t"}
    quiet = lambda *_: None  # noqa: E731
    plain = run(recipe(tmp_path, stages), tmp_path / "plain", jobs=1, log=quiet)
    monkeypatch.setattr(torch, "compile", lambda net, **kw: Counting(net))
    res = run(recipe(tmp_path, stages), tmp_path / "compiled", jobs=1, log=quiet, compile=True)
    # euler-1 + euler-2 + heun-16 calls, one batch per seed, two seeds: every draw went through it
    assert calls() == 2 * (1 + 2 + 32)
    key = ("name", "metrics", "per_seed", "nfe", "macs", "params")
    assert [{k: r[k] for k in key} for r in res["rows"]] == [{k: r[k] for k in key} for r in plain["rows"]]

    before = calls()
    again = run(recipe(tmp_path, stages), tmp_path / "plain", jobs=1, log=quiet, compile=True)
    assert calls() == before and again["rows"][0]["metrics"] == plain["rows"][0]["metrics"]

    Counting.fail = True
    log: list[str] = []
    fell = run(recipe(tmp_path, stages), tmp_path / "fallback", jobs=1, log=log.append, compile=True)
    assert [line for line in log if "torch.compile failed" in line] == [
        "[eval] t: torch.compile failed (inductor: no kernel for this op); drawing plain"]
    assert [r["metrics"] for r in fell["rows"]] == [r["metrics"] for r in plain["rows"]]


def test_compile_where_it_cannot_build_is_one_line_and_makes_nothing(tmp_path, capsys, monkeypatch):
    import slimstep.run.results as results

    monkeypatch.setattr(results, "compile_problem", lambda: "CppCompileError: no C++ compiler")
    r = recipe(tmp_path, {k: v for k, v in moons_stages().items() if k == "t"})
    assert main(["run", str(r), "--out", str(tmp_path / "o"), "--compile"]) == 2
    assert capsys.readouterr().err.strip() == ("slimstep: error: --compile: torch.compile cannot build kernels "
                                               "here (CppCompileError: no C++ compiler)")
    assert not (tmp_path / "o").exists()
