"""Every bad input is one line, exit 2, and nothing written; faults are survived.

One test per class of defect: a bad config value, a bad command-line count or
scale, a damaged file handed in, a busy or full output, a recipe that repeats a
name. Each checks the message, the exit code and that no output appeared.
"""

import errno
import importlib
import inspect
import json
import os
import pkgutil
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from cli_checks import one_line

import slimstep
from slimstep.cli import main
from slimstep.errors import OutputError, SlimstepError
from slimstep.files import atomic_write
from slimstep.outdir import LOCK

TINY = ["train.steps=2", "train.batch_size=16", "train.ckpt_every=2", "net.hidden=16",
        "net.depth=1", "sample.solver=euler", "sample.steps=2"]
TEACHER = ["teacher", "--config", "toy2d/teacher", "--quiet"]



@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("errors") / "teacher"
    assert main([*TEACHER, "--out", str(out), *TINY]) == 0
    return out


def test_every_exception_class_derives_from_the_base():
    found = []
    for mod in pkgutil.walk_packages(slimstep.__path__, "slimstep."):
        if mod.name.endswith("train_classifier"):
            continue  # a script: importing it is fine, but it defines no errors
        m = importlib.import_module(mod.name)
        for _, cls in inspect.getmembers(m, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == m.__name__:
                found.append(cls)
    assert len(found) >= 14
    assert [c for c in found if not issubclass(c, SlimstepError)] == []


@pytest.mark.parametrize("override,message", [
    ("net.bogus=1", "unknown option 'net.bogus' (valid: in_shape, num_classes, hidden"),
    ("net.name=transformer", "unknown network net.name='transformer' (valid: mlp, unet"),
    ("net.hidden=abc", "net.hidden must be an integer, not 'abc'"),
    ("net.hidden=0", "net.hidden must be an integer >= 1, not 0 (net 'mlp')"),
    ("net.depth=-2", "net.depth must be an integer >= 1, not -2"),
    ("net.in_shape=[3]", "net.in_shape=[3] but the data toy2d:moons has samples of shape [2]"),
    ("net.time_embed=fourier", "net 'mlp': time_embed must be 'mlp' or 'linear', got 'fourier'"),
    ("method.label_dropout=2", "method.label_dropout must be a number from 0 to 1, not 2"),
    ("method.logit_std=0", "method.logit_std must be a positive number, not 0"),
    ("method.logit_mean=abc", "method.logit_mean must be a finite number, not 'abc'"),
    ("train.steps=abc", "train.steps must be an integer, not 'abc'"),
    ("train.steps=0", "train.steps must be at least 1, not 0"),
    ("train.lr=-1", "train.lr must be positive, not -1"),
    ("train.batch_size=0", "train.batch_size must be at least 1, not 0"),
    ("train=5", "'train' is a section (a mapping of keys), not 5"),
    ("train.precision=fp16", "train.precision must be fp32 or bf16, not 'fp16'"),
    ("train.ema.decay=2", "train.ema.decay must be between 0 and 1, not 2"),
    ("train.device=bogus", "train.device must be auto, cpu, cuda, cuda:N or mps"),
    ("sample.cfg_scale=.nan", "sample.cfg_scale must be a finite number, not nan"),
    ("sample.solver=rk4", "sample.solver must be euler or heun or dopri5"),
])
def test_bad_config_values_are_one_line_before_anything_is_written(override, message, tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert main([*TEACHER, "--out", str(out), *TINY, override]) == 2
    one_line(capsys, message)
    assert not (tmp_path / "new").exists()  # not even the parent it would have made


def test_data_shorthand_then_its_options(tmp_path, capsys):
    (tmp_path / "X").mkdir()
    assert main([*TEACHER, "--out", str(tmp_path / "r"), *TINY, f"data=folder:{tmp_path / 'X'}",
                 "data.options.resolution=16"]) == 2
    one_line(capsys, "no PNG/JPEG images under")  # the override parsed; the folder is empty
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv,message", [
    (["sample", "--ckpt", "{t}", "--n", "0", "--out", "{o}/s.npz"], "argument --n: must be at least 1"),
    (["sample", "--ckpt", "{t}", "--n", "2", "--steps", "0", "--out", "{o}/s.npz"], "--steps: must be at least 1"),
    (["sample", "--ckpt", "{t}", "--n", "2", "--batch-size", "0", "--out", "{o}/s.npz"], "--batch-size"),
    (["sample", "--ckpt", "{t}", "--n", "2", "--device", "bogus", "--out", "{o}/s.npz"], "--device"),
    (["sample", "--ckpt", "{t}", "--n", "2", "--cfg-scale", "nan", "--out", "{o}/s.npz"], "finite"),
    (["sample", "--ckpt", "{t}", "--n", "2", "--out", "{o}"], "is a directory"),
    (["pairs", "--teacher", "{t}", "--n", "4", "--shard-size", "0", "--out", "{o}/p"], "--shard-size"),
    (["pairs", "--teacher", "{t}", "--n", "0", "--out", "{o}/p"], "--n: must be at least 1"),
    (["eval", "--ckpt", "{t}", "--n", "-5"], "--n: must be at least 1, got -5"),
    (["eval", "--ckpt", "{t}", "--n", "4", "--ref-stats", "/nonexistent.npz"], "--ref-stats is for image FID"),
    (["info", "--ckpt", "{t}/nope"], "not a slimstep checkpoint"),
    (["sample", "--ckpt", "{t}", "--n", "2", "--labels", "3", "--out", "{o}/s.npz"], "the model is unconditional"),
    (["sample", "--ckpt", "{t}", "--n", "2", "--labels", "bogus", "--out", "{o}/s.npz"], "--labels takes random"),
    (["sample", "--ckpt", "{t}", "--n", "2", "--out", "{o}/s.txt"], "samples are written as .npz"),
    (["eval", "--ckpt", "{t}", "--n", "4", "--inception-weights", "/nope.pth"], "--inception-weights is for image"),
    (["export", "--ckpt", "{t}", "--format", "torchscript", "--out", "{o}/g.onnx"], "name the file for its format"),
    (["export", "--ckpt", "{t}", "--format", "onnx", "--out", "{o}/g.pt"], "name the file for its format"),
    (["screen-train", "--ckpt", "{t}", "--data", "toy2d:moons", "--out", "{o}/d", "--seed", "-1"],
     "screen-train's seed must be an integer >= 0, not -1"),
    (["screen-train", "--ckpt", "{t}", "--data", "toy2d:moons", "--out", "{o}/d", "--steps", "0"],
     "screen-train needs steps >= 1"),
])
def test_bad_command_line_values(argv, message, teacher, tmp_path, capsys):
    argv = [a.replace("{t}", str(teacher)).replace("{o}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    one_line(capsys, message)
    assert sorted(os.listdir(tmp_path)) == []


def test_eval_refuses_more_samples_than_the_file_holds(teacher, tmp_path, capsys):
    assert main(["sample", "--ckpt", str(teacher), "--n", "5", "--out", str(tmp_path / "s.npz")]) == 0
    capsys.readouterr()
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--n", "9"]) == 2
    one_line(capsys, "--n 9", "holds 5 samples")


def _copy(teacher, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(teacher, d)
    return d, json.loads((d / "config.json").read_text())


@pytest.mark.parametrize("edit,message", [
    (lambda c: 5, "must hold a JSON object, not int"),
    (lambda c: {**c, "data": {k: v for k, v in c["data"].items() if k != "shape"}}, "'data' lacks shape"),
    (lambda c: {**c, "format": "slimstep-checkpoint/99"}, "format 'slimstep-checkpoint/99'"),
    (lambda c: {**c, "net": {**c["net"], "hidden": 24}}, "weights of another shape"),
    (lambda c: {**c, "net": {**c["net"], "bogus": 1}}, "unknown option 'net.bogus'"),
    (lambda c: {**c, "generator": None}, "no 'generator' section"),
    (lambda c: {**c, "generator": {"kind": "bogus"}}, "unknown generator kind 'bogus'"),
    (lambda c: {**c, "generator": {**c["generator"], "t": "x"}}, "has no key 't'"),
    (lambda c: {**c, "generator": {**c["generator"], "steps": 0}}, "generator.steps must be an integer >= 1"),
    (lambda c: {**c, "data": {**c["data"], "shape": [3]}}, "data.shape [3] contradicts the network's in_shape [2]"),
])
def test_damaged_checkpoints_are_one_line(edit, message, teacher, tmp_path, capsys):
    d, cfg = _copy(teacher, tmp_path)
    (d / "config.json").write_text(json.dumps(edit(cfg)))
    for cmd in (["info", "--ckpt", str(d)],
                ["sample", "--ckpt", str(d), "--n", "2", "--out", str(tmp_path / "s.npz")]):
        assert main(cmd) == 2
        one_line(capsys, message)
    assert not (tmp_path / "s.npz").exists()


def test_corrupt_manifest_and_torn_metrics(teacher, tmp_path, capsys):
    p = tmp_path / "p"
    p.mkdir()
    (p / "manifest.json").write_text("{not json")
    assert main(["pairs", "--teacher", str(teacher), "--n", "4", "--out", str(p), "--quiet"]) == 2
    one_line(capsys, "manifest.json: not valid JSON")
    assert main(["distill", "--method", "annealing-reflow", "--config", "toy2d/annealing-reflow", "--teacher",
                 str(teacher), "--pairs", str(p), "--out", str(tmp_path / "s"), "--quiet", *TINY[:3]]) == 2
    one_line(capsys, "manifest.json: not valid JSON")
    assert not (tmp_path / "s").exists()
    # a run killed while appending leaves a torn last line: resume drops it and goes on
    r = tmp_path / "r"
    assert main([*TEACHER, "--out", str(r), *TINY, "train.log_every=1"]) == 0
    with open(r / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')
    assert main([*TEACHER, "--out", str(r), "--resume", *TINY, "train.steps=4", "train.log_every=1"]) == 0
    rows = [json.loads(ln) for ln in (r / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2, 3]


def test_a_failed_pairs_run_does_not_block_the_corrected_rerun(teacher, tmp_path, monkeypatch):
    import slimstep.pairs as pairs

    out = tmp_path / "p"
    real = pairs.seeded_noise
    monkeypatch.setattr(pairs, "seeded_noise", lambda *a, **k: (_ for _ in ()).throw(OutputError("boom")))
    with pytest.raises(OutputError):
        pairs.generate_pairs(teacher, out, 4, solver="euler", steps=2, progress=False)
    monkeypatch.setattr(pairs, "seeded_noise", real)
    pairs.generate_pairs(teacher, out, 4, solver="euler", steps=3, progress=False)  # other args: fine
    assert json.loads((out / "manifest.json").read_text())["complete"]


def test_duplicate_stage_names_are_refused(tmp_path, capsys):
    r = tmp_path / "r.yaml"
    r.write_text("stages:\n  t: {kind: teacher, config: toy2d/teacher.yaml}\n"
                 "  t: {kind: teacher, config: toy2d/teacher.yaml}\n")
    assert main(["run", str(r), "--out", str(tmp_path / "o")]) == 2
    one_line(capsys, "key 't' appears twice (line 3)")
    assert not (tmp_path / "o").exists()


def test_a_recipe_with_bad_pairs_values_fails_before_training(tmp_path, capsys):
    r = tmp_path / "r.yaml"
    r.write_text("stages:\n  t: {kind: teacher, config: " + str(slimstep.config.CONFIGS / "toy2d/teacher.yaml")
                 + "}\n  p: {kind: pairs, teacher: t, n: 0}\n")
    assert main(["run", str(r), "--out", str(tmp_path / "o")]) == 2
    one_line(capsys, "stage 'p'", "p.n must be at least 1, not 0")
    assert not (tmp_path / "o").exists()


def test_full_disk_is_one_line_naming_the_file(tmp_path):
    target = tmp_path / "model.safetensors"

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    with pytest.raises(OutputError, match=f"{target}: no space left on device"):
        atomic_write(target, full)

    def rust_full(path):  # safetensors' own error type, errno only in its text
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, ... }) (os error 28)")

    with pytest.raises(OutputError, match="no space left"):
        atomic_write(target, rust_full)
    assert os.listdir(tmp_path) == []  # no temp file left behind


def test_full_disk_through_the_cli(teacher, tmp_path, capsys, monkeypatch):
    import slimstep.files as files

    def full(path, mode="r", *a, **k):  # the write of our own file object fails
        if "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return open(path, mode, *a, **k)

    monkeypatch.setattr(files, "open", full, raising=False)
    out = tmp_path / "s.npz"
    assert main(["sample", "--ckpt", str(teacher), "--n", "2", "--out", str(out)]) == 1  # the machine's state
    one_line(capsys, f"{out}: no space left on device")
    assert os.listdir(tmp_path) == []


def _write_lock(d, pid, host=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / LOCK).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                      "command": "slimstep teacher", "started": "earlier"}))


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "r"
        _write_lock(out, holder.pid)
        for argv in ([*TEACHER, "--out", str(out), *TINY],
                     ["run", "toy2d/all", "--out", str(out)]):
            assert main(argv) == 2
            one_line(capsys, f"is being written by pid {holder.pid} on {socket.gethostname()}")
        assert sorted(os.listdir(out)) == [LOCK]  # nothing of ours written beside it
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "r"
    _write_lock(out, dead.pid)
    assert main([*TEACHER, "--out", str(out), *TINY]) == 0
    assert not (out / LOCK).exists() and (out / "model.safetensors").is_file()


def test_configs_resolve_by_short_name_from_anywhere(tmp_path, monkeypatch):
    from slimstep.config import find_config, load_config
    from slimstep.run import load_recipe

    monkeypatch.chdir(tmp_path)
    assert load_config("digits/teacher").net.name == "unet"
    assert find_config("configs/digits/teacher.yaml") == find_config("digits/teacher.yaml")
    assert {s.name for s in load_recipe("digits/all")[1]} >= {"teacher", "pairs", "slimflow"}
    with pytest.raises(SlimstepError, match="not found: digits/nope"):
        load_config("digits/nope")


def test_samples_write_refuses_a_directory(tmp_path):
    from slimstep.files import write_npz

    with pytest.raises(OutputError, match="is a directory"):
        write_npz(tmp_path, samples=np.zeros((1, 2), np.float32))
