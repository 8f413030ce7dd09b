"""Nothing escapes, nothing is clobbered, nothing half-written (issue 22).

Every writing command: a recipe stays inside its ``--out``; an existing product is
replaced only with ``--overwrite`` (and a checkpoint never becomes another kind of
product); a killed writer's temps are cleaned by the next one; a full disk is one line
naming the file, exit 1, the previous snapshot intact. The full disk is real: the
write goes to ``/dev/full`` (the kernel's ENOSPC) through the temp file the writer
creates, or to a small tmpfs where the test may mount one.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import one_line

import slimstep
from slimstep.cli import main
from slimstep.config import CONFIGS
from slimstep.errors import ConfigError, EnvironmentFailure

TINY = ["train.steps=2", "train.batch_size=16", "train.ckpt_every=2", "net.hidden=16",
        "net.depth=1", "sample.solver=euler", "sample.steps=2"]
TEACHER = ["teacher", "--config", "toy2d/teacher", "--quiet"]
TEACHER_YAML = CONFIGS / "toy2d" / "teacher.yaml"
GDD_YAML = CONFIGS / "toy2d" / "gdd.yaml"



def files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def leftovers(d: Path) -> list[str]:
    """Temps, partial folders and locks anywhere under ``d``."""
    return [str(p) for p in d.rglob("*") if p.name.endswith((".tmp", ".lock")) or ".partial-" in p.name]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("writers")
    t, g = root / "teacher", root / "gdd"
    assert main([*TEACHER, "--out", str(t), *TINY]) == 0
    assert main(["distill", "--method", "gdd", "--config", "toy2d/gdd", "--teacher", str(t), "--out", str(g),
                 "--quiet", *TINY[:3]]) == 0
    return t, g


def _full_disk_for(monkeypatch, prefix: str) -> None:
    """Temp files whose name starts with ``prefix`` are ``/dev/full``: every write to
    them fails in the kernel with ENOSPC, as on a full disk."""
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*a, **k):
        fd, path = real(*a, **k)
        if Path(path).name.startswith(prefix):
            os.close(fd)
            os.unlink(path)
            os.symlink("/dev/full", path)
            fd = os.open(path, os.O_WRONLY)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


# ---------------------------------------------------------------- nothing is clobbered

@pytest.mark.parametrize("extra", [[], ["--overwrite"]])
def test_screen_train_never_replaces_a_teacher_checkpoint(extra, models, tmp_path, capsys):
    t, g = models
    victim = tmp_path / "teacher"
    shutil.copytree(t, victim)
    before = files(victim)
    assert main(["screen-train", "--ckpt", str(g), "--data", "toy2d:moons", "--out", str(victim),
                 "--steps", "2", "--quiet", *extra]) == 2
    one_line(capsys, f"--out {victim} already holds a training run, not a realism discriminator")
    assert files(victim) == before


def test_screen_train_replaces_a_discriminator_only_when_asked(models, tmp_path, capsys):
    _, g = models
    out = tmp_path / "disc"
    argv = ["screen-train", "--ckpt", str(g), "--data", "toy2d:moons", "--out", str(out), "--steps", "2", "--quiet"]
    assert main(argv) == 0
    before = files(out)
    capsys.readouterr()
    assert main([*argv, "--seed", "3"]) == 2
    one_line(capsys, "already holds a realism discriminator", "--overwrite")
    assert files(out) == before
    assert main([*argv, "--seed", "3", "--overwrite"]) == 0
    assert files(out)["model.safetensors"] != before["model.safetensors"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("cmd", ["sample", "data", "export", "eval"])
def test_file_products_are_replaced_only_with_overwrite(cmd, models, tmp_path, capsys):
    t, g = models
    name = {"sample": "s.npz", "data": "d.npz", "export": "g.pt", "eval": "r.json"}[cmd]
    out = tmp_path / name
    argv = {"sample": ["sample", "--ckpt", str(t), "--n", "4"],
            "data": ["data", "toy2d:moons", "--n", "8"],
            "export": ["export", "--ckpt", str(g)],
            "eval": ["eval", "--ckpt", str(g), "--n", "16"]}[cmd] + ["--out", str(out)]
    assert main(argv) == 0
    before = files(tmp_path)
    capsys.readouterr()
    assert main([*argv, "--seed", "5"] if cmd in ("sample", "data") else argv) == 2
    one_line(capsys, f"--out {out} already exists", "--overwrite")
    assert files(tmp_path) == before
    assert main([*argv, "--overwrite"]) == 0
    assert leftovers(tmp_path) == []


def test_sample_refuses_its_picture_path_before_writing_the_samples(models, tmp_path, capsys):
    t, _ = models
    out = tmp_path / "s.npz"
    out.write_bytes(b"the user's earlier samples")
    (tmp_path / "s.png").mkdir()
    assert main(["sample", "--ckpt", str(t), "--n", "4", "--out", str(out), "--overwrite"]) == 2
    one_line(capsys, f"{tmp_path / 's.png'} is a directory")
    assert out.read_bytes() == b"the user's earlier samples"


def test_teacher_never_trains_into_an_imported_or_other_product(models, tmp_path, capsys):
    t, g = models
    disc = tmp_path / "disc"
    assert main(["screen-train", "--ckpt", str(g), "--data", "toy2d:moons", "--out", str(disc),
                 "--steps", "2", "--quiet"]) == 0
    before = files(disc)
    capsys.readouterr()
    assert main([*TEACHER, "--out", str(disc), *TINY]) == 2
    one_line(capsys, "already holds a realism discriminator, not a checkpoint")
    single = tmp_path / "copy"  # a checkpoint without a training run (slimstep.save, import)
    slimstep.save(slimstep.load(t), single)
    assert main([*TEACHER, "--out", str(single), *TINY]) == 2
    one_line(capsys, "already holds a checkpoint (not a training run to resume)")
    assert main(["pairs", "--teacher", str(t), "--n", "4", "--out", str(single), "--quiet"]) == 2
    one_line(capsys, "already holds a checkpoint, not a pairs folder")
    assert files(disc) == before and "checkpoints" not in os.listdir(single)


def test_a_killed_writers_temps_are_cleaned_by_the_next_writer(models, tmp_path):
    t, _ = models
    stale = tmp_path / ".s.npz.k1ll3d00.tmp"  # what atomic_write leaves when SIGKILLed
    stale.write_bytes(b"half a file")
    assert main(["sample", "--ckpt", str(t), "--n", "4", "--out", str(tmp_path / "s.npz")]) == 0
    assert not stale.exists()
    run = tmp_path / "run"
    shutil.copytree(t, run)
    (run / "checkpoints" / ".partial-k1ll3d00").mkdir()
    (run / "checkpoints" / ".partial-k1ll3d00" / "model.safetensors").write_bytes(b"half")
    (run / ".model.safetensors.k1ll3d00.tmp").write_bytes(b"half")
    assert main([*TEACHER, "--out", str(run), "--resume", *TINY[1:], "train.steps=4"]) == 0
    assert leftovers(tmp_path) == []
    assert "step-00000004" in os.listdir(run / "checkpoints")


# ---------------------------------------------------------------- a full disk

def test_full_disk_while_writing_the_training_state(models, tmp_path, capsys, monkeypatch):
    t, _ = models
    run = tmp_path / "run"
    shutil.copytree(t, run)
    before = files(run / "checkpoints")
    _full_disk_for(monkeypatch, ".training_state.pt.")  # torch.save's own writer hid ENOSPC
    assert main([*TEACHER, "--out", str(run), "--resume", *TINY[1:], "train.steps=4"]) == 1
    one_line(capsys, f"{run}/checkpoints/step-00000004/training_state.pt: no space left on device")
    assert files(run / "checkpoints") == before  # the previous snapshot, byte for byte
    assert leftovers(run) == []


def test_full_disk_on_the_first_write_leaves_no_folder(models, tmp_path, capsys, monkeypatch):
    _, g = models
    out = tmp_path / "new" / "disc"
    _full_disk_for(monkeypatch, ".model.safetensors.")
    assert main(["screen-train", "--ckpt", str(g), "--data", "toy2d:moons", "--out", str(out),
                 "--steps", "2", "--quiet"]) == 1
    one_line(capsys, f"{out}/model.safetensors: no space left on device")
    assert os.listdir(tmp_path) == []


def test_full_disk_while_writing_samples_is_exit_1(models, tmp_path, capsys, monkeypatch):
    t, _ = models
    out = tmp_path / "s.npz"
    _full_disk_for(monkeypatch, ".s.npz.")
    assert main(["sample", "--ckpt", str(t), "--n", "2", "--out", str(out)]) == 1
    one_line(capsys, f"{out}: no space left on device")
    assert os.listdir(tmp_path) == []


def test_full_disk_while_appending_metrics_names_the_file(tmp_path):
    from slimstep.train.loop import Logger

    log = Logger(tmp_path, True, 0)
    os.symlink("/dev/full", tmp_path / "metrics.jsonl")
    with pytest.raises(EnvironmentFailure, match=f"{tmp_path / 'metrics.jsonl'}: no space left on device"):
        log.log(0, {"loss": 1.0})


_FULL_DISK_MAIN = """
import os, sys, tempfile
real = tempfile.mkstemp
def mkstemp(*a, **k):
    fd, path = real(*a, **k)
    os.close(fd); os.unlink(path); os.symlink("/dev/full", path)
    return os.open(path, os.O_WRONLY), path
tempfile.mkstemp = mkstemp
from slimstep.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_full_disk_during_export_is_one_line_not_an_abort(models, tmp_path):
    _, g = models  # torch.jit.save onto a path aborted the process (SIGABRT) here
    out = tmp_path / "g.pt"
    p = subprocess.run([sys.executable, "-c", _FULL_DISK_MAIN, "export", "--ckpt", str(g), "--out", str(out)],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 1, p.stderr[-2000:]
    assert p.stderr.strip() == f"slimstep: error: {out}: no space left on device (the previous files are kept)"
    assert os.listdir(tmp_path) == []


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs (root only; skipped where it cannot be mounted)."""
    d = tmp_path / "fs"
    d.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def _fill(d: Path) -> None:
    with open(d / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_full_disk_on_a_real_small_file_system(small_fs, capsys):
    run = small_fs / "run"
    assert main([*TEACHER, "--out", str(run), *TINY, "train.log_every=1"]) == 0
    before = files(run / "checkpoints")
    _fill(small_fs)
    capsys.readouterr()
    assert main([*TEACHER, "--out", str(run), "--resume", *TINY[1:], "train.steps=4", "train.log_every=1"]) == 1
    line = one_line(capsys, "no space left on device", str(run))
    assert "?" not in line.split(":")[2]
    assert files(run / "checkpoints") == before
    assert main(["sample", "--ckpt", str(run), "--n", "4", "--out", str(small_fs / "s.npz")]) == 1
    one_line(capsys, f"{small_fs / 's.npz'}: no space left on device")
    assert leftovers(small_fs) == [] and not (small_fs / "s.npz").exists()


# ---------------------------------------------------------------- sizes that cannot fit

@pytest.mark.parametrize("override", ["net.hidden=1000000000000", "train.batch_size=1099511627776"])
def test_sizes_too_large_for_memory_are_one_line(override, tmp_path, capsys):
    out = tmp_path / "r"
    assert main([*TEACHER, "--out", str(out), *TINY, override]) == 1
    one_line(capsys, "out of memory", "too large for this machine")
    assert not out.exists()


# ---------------------------------------------------------------- nothing escapes --out

def _recipe(tmp_path, stages: str, head: str = "") -> Path:
    r = tmp_path / "r.yaml"
    r.write_text(head + "stages:\n" + stages)
    return r


def _teacher_stage(name="t") -> str:
    return (f"  {name}:\n    kind: teacher\n    config: {TEACHER_YAML}\n    overrides: "
            f"{json.dumps(TINY)}\n")


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", "..", ".", ".hidden", "a\\\\b", "x" * 101])
def test_stage_names_are_plain_folder_names(name, tmp_path, capsys):
    r = _recipe(tmp_path, _teacher_stage(json.dumps(name)))
    assert main(["run", str(r), "--out", str(tmp_path / "w" / "o")]) == 2
    one_line(capsys, "is not a plain folder name")
    assert not (tmp_path / "w").exists() and not (tmp_path / "escape").exists()


def test_a_stage_folder_that_links_elsewhere_is_refused(tmp_path, capsys):
    r = _recipe(tmp_path, _teacher_stage())
    out, elsewhere = tmp_path / "o", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "t")
    assert main(["run", str(r), "--out", str(out)]) == 2
    one_line(capsys, f"{out / 't'}", "symbolic link or leads outside")
    assert os.listdir(elsewhere) == [] and sorted(os.listdir(out)) == ["t"]


# ---------------------------------------------------------------- recipes checked whole

_BY_TEACHER = "  s: {kind: screen, student: g, teacher: t, scorer: teacher, "
_STUDENT = f"  g:\n    method: gdd\n    config: {GDD_YAML}\n    teacher: t\n    overrides: {json.dumps(TINY[:3])}\n"


@pytest.mark.parametrize("stages,head,message", [
    (_STUDENT + "  s: {kind: screen, student: g, candidates: 0}\n", "", "candidates must be an integer >= 1, not 0"),
    (_STUDENT + "  s: {kind: screen, student: g, scorer: bogus}\n", "", "scorer must be one of"),
    (_STUDENT + _BY_TEACHER + "final: bogus}\n", "", "final must be student"),
    (_STUDENT + _BY_TEACHER + "select: top}\n", "", "select must be one of"),
    (_STUDENT + _BY_TEACHER + "temperature: -1}\n", "",
     "temperature is a positive finite number"),
    (_STUDENT + "  s: {kind: screen, student: g}\n", "",
     "scorer 'classifier' uses the evaluation classifier of digits or fashion-mnist"),
    (f"  g:\n    method: bogus\n    config: {GDD_YAML}\n    teacher: t\n", "", "unknown method 'bogus'"),
    ("", "eval: {seeds: 5}\n", "eval.seeds must be a non-empty list of integers >= 0, not 5"),
    ("", "eval: {n: 0}\n", "eval.n must be an integer >= 1"),
    ("", "eval: {teacher_nfes: [0]}\n", "eval.teacher_nfes must be"),
    (f"  g:\n    method: gdd\n    config: {GDD_YAML}\n    teacher: t\n    overrides: train.steps=3\n", "",
     "overrides is a list of key=value strings"),
])
def test_a_recipe_is_checked_whole_before_anything_trains(stages, head, message, tmp_path, capsys):
    r = _recipe(tmp_path, _teacher_stage() + stages, head)
    assert main(["run", str(r), "--out", str(tmp_path / "o")]) == 2
    one_line(capsys, message)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- messages

class _Runs:
    def __reduce__(self):
        return (os.system, ("true",))


def test_a_refused_unsafe_file_names_what_it_refused(models, tmp_path, capsys):
    t, _ = models
    run = tmp_path / "run"
    shutil.copytree(t, run)
    torch.save({"step": 2, "x": _Runs()}, run / "checkpoints" / "step-00000002" / "training_state.pt")
    assert main([*TEACHER, "--out", str(run), "--resume", *TINY[1:], "train.steps=4"]) == 2
    line = one_line(capsys, "training_state.pt", "a pickled posix.system, which slimstep never loads")
    assert "weights_only" not in line and "False" not in line
    evil = tmp_path / "sit.pt"
    torch.save({"w": torch.ones(2), "x": _Runs()}, evil)
    assert main(["import", "--format", "sit", str(evil), "--out", str(tmp_path / "imp")]) == 2
    line = one_line(capsys, "posix.system")
    assert "set to `False`" not in line and not (tmp_path / "imp").exists()
    obj = tmp_path / "obj.npz"
    with open(obj, "wb") as f:
        np.savez(f, samples=np.array([{"a": 1}, [2]], dtype=object))
    assert main(["eval", "--samples", str(obj)]) == 2
    line = one_line(capsys, "an array of pickled Python objects, which slimstep never loads")
    assert "allow_pickle" not in line
    (tmp_path / "notes.npz").write_text("not numpy's")  # numpy: "load it unsafely using allow_pickle="
    assert main(["eval", "--samples", str(tmp_path / "notes.npz")]) == 2
    line = one_line(capsys, "not an .npz or .npy file")
    assert "allow_pickle" not in line and "unsafely" not in line


def test_newlines_in_paths_are_escaped_and_no_doubled_prefix(tmp_path, capsys):
    assert main(["info", "--ckpt", str(tmp_path / "two\nlines")]) == 2
    one_line(capsys, "two\\nlines")
    assert main(["bogus"]) == 2
    err = one_line(capsys, "invalid choice: 'bogus'")
    assert "slimstep: error: slimstep" not in err


def test_import_refuses_a_guidance_scale_no_reader_accepts(tmp_path, capsys):
    from test_import import official_state_dict

    src = tmp_path / "sit.pt"
    torch.save(official_state_dict(), src)
    out = tmp_path / "imp"
    assert main(["import", "--format", "sit", str(src), "--out", str(out), "num_heads=4", "cfg_scale=nan"]) == 2
    one_line(capsys, "cfg_scale must be a finite number, not nan")
    assert os.listdir(tmp_path) == ["sit.pt"]
    assert main(["import", "--format", "sit", str(src), "--out", str(out), "num_heads=4"]) == 0
    before = files(out)
    capsys.readouterr()
    assert main(["import", "--format", "sit", str(src), "--out", str(out), "num_heads=4", "steps=3"]) == 2
    one_line(capsys, "exists and is not an empty directory", "--overwrite")
    assert main(["import", "--format", "sit", str(src), "--out", str(out), "num_heads=4", "steps=3",
                 "--overwrite"]) == 0
    assert files(out) != before and json.loads((out / "config.json").read_text())["generator"]["steps"] == 3
    assert sorted(os.listdir(tmp_path)) == ["imp", "sit.pt"]


# ---------------------------------------------------------------- the Python API

def test_overrides_given_as_one_string_are_refused():
    from slimstep.config import load_config

    with pytest.raises(ConfigError, match="overrides are a list of key=value strings"):
        load_config("toy2d/teacher", "train.steps=3")  # was read character by character: 't'
    assert load_config("toy2d/teacher", ("train.steps=3",)).train.steps == 3


def test_the_api_raises_the_clis_errors(models, capsys):
    t, _ = models
    gen = slimstep.load(t)
    for call, text in [(lambda: gen.generate(0), "n: must be at least 1, got 0"),
                       (lambda: gen.generate(-3), "n: must be at least 1, got -3"),
                       (lambda: gen.generate(2, seed=-1), "seed: must be at least 0, got -1"),
                       (lambda: gen.generate(2, batch_size=0), "batch_size: must be at least 1, got 0"),
                       (lambda: gen.generate(2, y=torch.zeros(3, dtype=torch.long)), "y has 3 labels for 2"),
                       (lambda: gen.with_sampling(steps=0), "steps: must be an integer >= 1, got 0"),
                       (lambda: gen.with_sampling(solver="rk4"), "solver: must be euler, heun or dopri5")]:
        with pytest.raises(ConfigError) as e:
            call()
        assert text in str(e.value)
    assert main(["sample", "--ckpt", str(t), "--n", "0", "--out", "unused.npz"]) == 2
    one_line(capsys, "--n: must be at least 1, got 0")  # the same words on the command line


def test_third_party_warnings_add_no_lines(models, tmp_path, capsys, monkeypatch):
    import warnings

    import slimstep.viz as viz

    t, _ = models
    real = viz.save_picture

    def chatty(*a, **k):  # what PIL or matplotlib print while a picture is written
        warnings.warn("a third-party library's note", UserWarning, stacklevel=1)
        return real(*a, **k)

    monkeypatch.setattr(viz, "save_picture", chatty)
    with warnings.catch_warnings(record=True) as shown:  # what would reach stderr
        warnings.simplefilter("always")
        assert main(["sample", "--ckpt", str(t), "--n", "4", "--out", str(tmp_path / "s.npz")]) == 0
    assert [str(w.message) for w in shown] == [] and capsys.readouterr().err == ""
