"""The command line end to end on a tiny run; user mistakes give one error line."""

import json

import numpy as np
import pytest

from slimstep.cli import main

TINY = ["train.steps=4", "train.batch_size=16", "train.ckpt_every=2", "net.hidden=16",
        "net.depth=1", "sample.solver=euler", "sample.steps=2"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "teacher"
    assert main(["teacher", "--config", "configs/toy2d/teacher.yaml", "--out", str(out),
                 "--quiet", *TINY]) == 0
    return out


def test_sample_writes_npz_and_png(teacher, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["sample", "--ckpt", str(teacher), "--n", "7", "--seed", "3", "--out", str(out),
                 "--batch-size", "2"]) == 0
    z = np.load(out, allow_pickle=False)
    assert z["samples"].shape == (7, 2) and z["samples"].dtype == np.float32
    assert z["seeds"].tolist() == list(range(3, 10)) and int(z["nfe"]) == 2
    assert str(z["data"]) == "toy2d:moons"
    assert out.with_suffix(".png").stat().st_size > 0
    # the same seeds at another batch size give the same samples
    main(["sample", "--ckpt", str(teacher), "--n", "7", "--seed", "3", "--out",
          str(tmp_path / "t.npz"), "--batch-size", "7"])
    np.testing.assert_allclose(np.load(tmp_path / "t.npz")["samples"], z["samples"], atol=1e-6)


def test_eval_from_samples_and_from_ckpt(teacher, tmp_path, capsys):
    main(["sample", "--ckpt", str(teacher), "--n", "50", "--out", str(tmp_path / "s.npz")])
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--out",
                 str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["data"] == "toy2d:moons" and res["n"] == 50 and "w2" in res["metrics"]
    assert "w2" in res["floor"]
    assert main(["eval", "--ckpt", str(teacher), "--n", "40", "--steps", "1"]) == 0
    assert "w2" in capsys.readouterr().out


def test_eval_images_without_weights_reports_swd(tmp_path, capsys, image_folder):
    """No Inception weights: the image protocol scores SWD and says that FID needs the file;
    FID asked for without a usable file is one error line naming torch-fidelity's file."""
    from slimstep.eval.features import INCEPTION_FILE

    spec = f"folder:{image_folder(tmp_path / 'imgs', size=16)}"
    assert main(["data", spec, "--n", "12", "--out", str(tmp_path / "real.npz")]) == 0
    assert main(["eval", "--samples", str(tmp_path / "real.npz"), "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "swd" in out and "(floor " in out and "note: no FID or KID: they need Inception weights" in out
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["metrics"]["swd"] >= 0 and "swd_16" in res["floor"] and "fid" not in res["metrics"]
    for extra in (["--ref-stats", str(tmp_path / "ref.npz")], ["--inception-weights", str(tmp_path / "no.pth")]):
        assert main(["eval", "--samples", str(tmp_path / "real.npz"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("slimstep: error:") and INCEPTION_FILE in err and "\n" not in err


def test_a_teacher_trains_on_latents_and_eval_refuses_them(tmp_path, capsys):
    z = (np.random.default_rng(0).normal(size=(16, 4, 8, 8)) * 3).astype(np.float32)
    np.savez(tmp_path / "lat.npz", x=z)
    spec = f"latents:{tmp_path / 'lat.npz'}"
    assert main(["teacher", "--config", "digits/teacher", "--out", str(tmp_path / "t"), "--quiet",
                 f"data.spec={spec}", "net.nf=8", "net.ch_mult=[1]", "net.num_res_blocks=1",
                 "net.attn_resolutions=[]", "train.steps=2", "train.batch_size=4", "train.warmup=0"]) == 0
    assert main(["sample", "--ckpt", str(tmp_path / "t"), "--n", "4", "--out", str(tmp_path / "s.npz")]) == 0
    s = np.load(tmp_path / "s.npz")
    assert s["samples"].shape == (4, 4, 8, 8) and str(s["data"]) == spec
    assert (tmp_path / "s.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["eval", "--samples", str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimstep: error:") and "holds latents, not images" in err and "\n" not in err


def test_data_bench_info(teacher, tmp_path, capsys):
    assert main(["data", "digits", "--out", str(tmp_path / "real.npz")]) == 0
    z = np.load(tmp_path / "real.npz")
    assert z["samples"].shape == (597, 1, 8, 8) and z["labels"].shape == (597,)
    assert main(["data", "toy2d:moons", "--n", "11", "--out", str(tmp_path / "m.npz")]) == 0
    assert np.load(tmp_path / "m.npz")["samples"].shape == (11, 2)
    assert main(["info", "--ckpt", str(teacher)]) == 0
    assert main(["bench", "--ckpt", str(teacher), "--batch-size", "8", "--iters", "2"]) == 0
    out = capsys.readouterr().out
    assert "samples_per_s" in out and "macs" in out and "parameters" in out


@pytest.mark.parametrize("argv,msg", [
    (["sample", "--ckpt", "/nonexistent", "--n", "2", "--out", "x.npz"], "not a slimstep checkpoint"),
    (["teacher", "--config", "configs/toy2d/teacher.yaml", "--out", "{tmp}/r", "train.stepz=3"],
     "unknown config key 'train.stepz'"),
    (["teacher", "--config", "configs/toy2d/teacher.yaml", "--out", "{tmp}/r", "data.spec=toy2d:nope"],
     "unknown toy2d"),
    (["eval", "--samples", "{tmp}/missing.npz"], "samples file not found"),
    (["teacher", "--config", "configs/toy2d/teacher.yaml", "--out", "{tmp}/r", "train.accum=3"],
     "must divide by"),
    (["teacher", "--config", "configs/toy2d/teacher.yaml", "--out", "{tmp}/r", "train.optimizer=sgd"],
     "adam or adamw"),
    (["teacher", "--config", "configs/toy2d/teacher.yaml", "--out", "{tmp}/r", "method.flavour=1"],
     "has no option"),
])
def test_user_mistakes_are_one_line_and_exit_2(argv, msg, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimstep: error:") and msg in err and "\n" not in err
    assert "Traceback" not in err


def test_every_subcommand_has_help(capsys):
    for cmd in ("teacher", "pairs", "distill", "sample", "eval", "bench", "data", "info", "demo"):
        assert main([cmd, "--help"]) == 0  # argparse's exit status, returned like any command's


def test_overrides_may_be_split_by_options(tmp_path):
    """argparse fills a `*` positional from its first run only: `key=value` after another
    option was 'unrecognized'. Every override counts, wherever it stands."""
    out = tmp_path / "t"
    assert main(["teacher", "--config", "toy2d/teacher", *TINY[:2], "--out", str(out), "--quiet",
                 *TINY[2:]]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["ckpt_every"] == 2 and cfg["net"]["hidden"] == 16 and cfg["step"] == 4
    assert main(["teacher", "--config", "toy2d/teacher", "--out", str(tmp_path / "u"), "--bogus"]) == 2
