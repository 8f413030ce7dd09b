"""docs/api.md's examples run as written (in order, one namespace, a temporary directory)."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_api_doc_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{DOC.name} block {i + 1}", "exec"), ns)  # noqa: S102 - our own docs


def test_save_refuses_a_checkpoint_and_a_stage_folder_with_two_models(tmp_path):
    import pytest

    import slimstep
    from slimstep.checkpoint import CheckpointError
    from slimstep.config import load_config
    from slimstep.train.loop import train

    cfg = load_config("toy2d/teacher", ["train.steps=2", "train.ckpt_every=2", "net.hidden=8"])
    gen = slimstep.load(train(cfg, tmp_path / "t", progress=False))
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        slimstep.save(gen, tmp_path / "t")
    for h in ("a", "b"):
        slimstep.save(gen, tmp_path / "stage" / f"model-{h}")
    with pytest.raises(CheckpointError, match="2 models"):
        slimstep.load(tmp_path / "stage")


def test_screen_train_takes_a_stage_folder_and_fails_before_training(tmp_path):
    """The realism scorer reads its student like every other command (a run's stage folder
    too); a student without weights is refused before any training step, not after."""
    import shutil

    import pytest

    from slimstep.config import load_config
    from slimstep.realism import RealismError, train_realism
    from slimstep.train.loop import train

    cfg = load_config("toy2d/teacher", ["train.steps=2", "train.ckpt_every=2", "net.hidden=8",
                                        "sample.solver=euler", "sample.steps=1"])
    ckpt = train(cfg, tmp_path / "t", progress=False)
    shutil.copytree(ckpt, tmp_path / "stage" / "model-0123456789")
    out = train_realism(tmp_path / "stage", "toy2d:moons", tmp_path / "disc", log=lambda *_: None,
                        steps=2, batch_size=8)
    assert (out / "model.safetensors").is_file()
    (tmp_path / "bare").mkdir()
    shutil.copy(ckpt / "config.json", tmp_path / "bare" / "config.json")
    with pytest.raises(RealismError, match="no model.safetensors"):
        train_realism(tmp_path / "bare", "toy2d:moons", tmp_path / "disc2", log=lambda *_: None, steps=2)
    assert not (tmp_path / "disc2").exists()
