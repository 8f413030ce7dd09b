import pytest

from slimstep.config import ConfigError, load_config, parse_overrides


def test_overrides_are_yaml_values_on_dotted_keys():
    ov = parse_overrides(["train.steps=10", "net.ch_mult=[1,2]", "train.lr=1e-4", "x.y=true"])
    assert ov == {"train": {"steps": 10, "lr": 1e-4}, "net": {"ch_mult": [1, 2]}, "x": {"y": True}}


def test_file_then_overrides_over_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: toy2d:moons\nnet: {name: mlp, hidden: 8}\ntrain: {steps: 5}\n")
    cfg = load_config(p, ["train.steps=7", "net.depth=1"])
    assert cfg.data.spec == "toy2d:moons"
    assert cfg.net.to_dict() == {"name": "mlp", "hidden": 8, "depth": 1}
    assert cfg.train.steps == 7 and cfg.train.batch_size == 128  # default kept


@pytest.mark.parametrize("bad,msg", [(["train.stepz=1"], "unknown config key 'train.stepz'"),
                                     (["nope=1"], "unknown config key 'nope'"),
                                     (["train.steps"], "not key=value")])
def test_bad_keys_are_one_clear_error(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(None, bad)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_shipped_configs_load():
    for name in ("configs/toy2d/teacher.yaml", "configs/digits/teacher.yaml"):
        cfg = load_config(name)
        assert cfg.method.name == "flow_matching"
    for res in (16, 32, 64):  # the generic image teachers: sized by their resolution, data to be named
        cfg = load_config(f"images/teacher-{res}", [f"data.spec=folder:/data/x{res}"])
        assert cfg.data.to_dict() == {"spec": f"folder:/data/x{res}",
                               "options": {"resolution": res, "center_crop": True, "flip": True}}
        assert cfg.net.options["attn_resolutions"] == [8 if res == 16 else 16]
