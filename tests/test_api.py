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
    from slimstep.config import load_config
    from slimstep.train.checkpoint import CheckpointError
    from slimstep.train.loop import train

    cfg = load_config("toy2d/teacher", ["train.steps=2", "train.ckpt_every=2", "net.hidden=8"])
    gen = slimstep.load(train(cfg, tmp_path / "t", progress=False))
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        slimstep.save(gen, tmp_path / "t")
    for h in ("a", "b"):
        slimstep.save(gen, tmp_path / "stage" / f"model-{h}")
    with pytest.raises(CheckpointError, match="2 models"):
        slimstep.load(tmp_path / "stage")
