"""docs/adding-a-method.md, done: a method in one file, declared by one entry-point line, is
trained by ``slimstep run`` (in its worker processes), listed in the report and exported,
with no edit of slimstep."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import slimstep
from slimstep.cli import main
from slimstep.generator import seeded_noise

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"
TEACHER = Path(slimstep.__file__).parent / "configs" / "toy2d" / "teacher.yaml"


def method_file() -> str:
    """The page's method file: its first Python block."""
    return re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)


def plugin(folder: Path) -> Path:
    """The file and a minimal installed-package record declaring it (section 2 of the page)."""
    folder.mkdir()
    (folder / "direct_regression.py").write_text(method_file())
    info = folder / "direct_regression-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: direct-regression\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[slimstep.methods]\ndirect = direct_regression:DirectRegression\n")
    return folder


def test_a_method_in_one_file_runs_reports_and_exports(tmp_path):
    plugins = plugin(tmp_path / "plugins")
    (tmp_path / "direct.yaml").write_text(json.dumps({  # JSON is YAML
        "method": {"name": "direct"}, "net": {"name": "mlp", "hidden": 16, "depth": 2},
        "train": {"steps": 8, "batch_size": 32, "lr": 1e-3, "warmup": 0, "ckpt_every": 8},
        "sample": {"solver": "euler", "steps": 1}}))
    tiny = ["train.steps=4", "train.ckpt_every=4", "train.batch_size=32", "net.hidden=16", "net.depth=1"]
    (tmp_path / "recipe.yaml").write_text(json.dumps({
        "title": "direct regression", "eval": {"n": 100, "seeds": [0], "teacher_nfes": [1]},
        "stages": {"teacher": {"kind": "teacher", "config": str(TEACHER), "overrides": tiny},
                   "pairs": {"kind": "pairs", "teacher": "teacher", "n": 64, "solver": "euler", "steps": 2},
                   "direct": {"method": "direct", "config": "direct.yaml", "teacher": "teacher",
                              "pairs": "pairs", "overrides": ["method.huber_c=0.1"]}}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(plugins), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = tmp_path / "out"
    # --jobs 2: the stages train in spawned worker processes, which find the method on PYTHONPATH
    done = subprocess.run([sys.executable, "-m", "slimstep.cli", "run", str(tmp_path / "recipe.yaml"),
                           "--out", str(out), "--jobs", "2"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    model = next((out / "direct").glob("model-*"))
    recorded = json.loads((model / "config.json").read_text())
    assert recorded["method"] == {"name": "direct", "huber_c": 0.1}  # every option, as the run saw it
    assert recorded["generator"]["kind"] == "velocity" and recorded["generator"]["steps"] == 1
    assert "| direct |" in (out / "report.md").read_text()
    assert "<td>direct</td>" in (out / "report.html").read_text()

    # export needs no method code: the checkpoint's generator section says how to sample
    assert main(["export", "--ckpt", str(model), "--out", str(tmp_path / "direct.pt")]) == 0
    gen = slimstep.load(model)
    x, _ = gen.generate(6, seed=3)
    z, _ = seeded_noise((2,), list(range(3, 9)))
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "direct.pt"))(z), x, rtol=1e-6, atol=1e-6)


def test_the_declared_method_is_checked_like_a_built_in(tmp_path, monkeypatch):
    from slimstep.config import load_config
    from slimstep.data import DataInfo
    from slimstep.methods import MethodError, build_method, method_class, method_names, method_style
    from slimstep.spec import Named

    monkeypatch.syspath_prepend(str(plugin(tmp_path / "plugins")))
    assert "direct" in method_names(students_only=True) and "gdd" in method_names()
    assert method_style("direct") == ("#17a589", "o")
    info = DataInfo("pairs:p", "points", (2,), 0, "")
    cfg = load_config(None, {"method": {"name": "direct", "huber_c": -1}, "net": {"name": "mlp"}})
    with pytest.raises(MethodError, match=r"method.huber_c must be a number, 0 or more, not -1 \(direct\)"):
        build_method(cfg, info, torch.device("cpu"))
    cfg = cfg.replace(method=Named("direct", {"huber": 1}))
    with pytest.raises(MethodError, match="method 'direct' has no option"):
        build_method(cfg, info, torch.device("cpu"))
    assert method_class("direct").Options().huber_c == 0.0

    # a declaration that cannot be right is one line naming the entry point
    (tmp_path / "plugins" / "direct_regression-0.1.dist-info" / "entry_points.txt").write_text(
        "[slimstep.methods]\ngdd = direct_regression:DirectRegression\n"
        "other = direct_regression:DirectRegression\nmissing = direct_regression:Nothing\n")
    for name, match in [("gdd", "slimstep's own and also the entry point 'direct_regression:Direct"),
                        ("other", "whose name is 'direct': the two must agree"),
                        ("missing", "'direct_regression:Nothing' .* does not load")]:
        with pytest.raises(MethodError, match=match):
            method_class(name)
    with pytest.raises(MethodError, match=r"unknown method 'nope' \(expected one of annealing-reflow, "):
        method_class("nope")


def test_built_in_methods_are_found_with_their_declarations():
    from slimstep.methods import method_class, method_names, method_style, starts_from_teacher

    students = method_names(students_only=True)
    assert set(students) == {"annealing-reflow", "distill", "dmd2", "ect", "flowmap", "gdd", "gdd-i",
                             "meanflow", "reflow", "scd", "slimflow", "slt"}
    assert method_names() == sorted([*students, "flow_matching"])
    styles = [method_style(n) for n in students]
    assert None not in styles and len(set(styles)) == len(styles)  # one mark per student
    assert method_style("gdd") == ("#2ca02c", "P") and method_style("screen") is None
    assert {n for n in students if starts_from_teacher(n)} == {"gdd", "gdd-i", "flowmap", "dmd2", "scd", "ect"}
    assert issubclass(method_class("gdd-i").Options, method_class("gdd").Options)  # extends, not copies
