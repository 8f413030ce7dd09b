"""The evaluation protocol against known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from slimstep.eval import EvalError, evaluate, format_table
from slimstep.eval.fd import feature_stats, frechet_distance, load_stats, save_stats
from slimstep.eval.prdc import prdc
from slimstep.eval.speed import count_macs, count_params, measure_latency, measure_throughput
from slimstep.eval.toy import mmd, w2

# ----------------------------------------------------------------------------- FD

def test_fd_matches_independent_scipy_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 6))
    b = rng.normal(size=(250, 6)) @ rng.normal(size=(6, 6)) * 0.5 + 0.3
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    m, s = feature_stats(torch.from_numpy(a))
    np.testing.assert_allclose(m, mu1)
    np.testing.assert_allclose(s, s1)  # unbiased (N - 1) covariance
    got = frechet_distance(*feature_stats(a), *feature_stats(b))
    assert got == pytest.approx(ref, rel=1e-9)
    assert frechet_distance(*feature_stats(a), *feature_stats(a)) == pytest.approx(0, abs=1e-9)


def test_fd_closed_form_diagonal_gaussians():
    # FD(N(m1, diag v1), N(m2, diag v2)) = |m1 - m2|² + Σ (sqrt v1 − sqrt v2)²
    m1, m2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    want = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(want, rel=1e-12)


def test_fd_singular_covariances_use_eps_fallback():
    rng = np.random.default_rng(1)
    a, b = np.zeros((50, 4)), np.zeros((50, 4))
    a[:, :2], b[:, :2] = rng.normal(size=(50, 2)), rng.normal(size=(50, 2))  # 2 dead units
    got = frechet_distance(*feature_stats(a), *feature_stats(b))
    want = frechet_distance(*feature_stats(a[:, :2]), *feature_stats(b[:, :2]))
    assert got == pytest.approx(want, abs=1e-4)


def test_stats_round_trip_and_bad_files(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3) * 2
    save_stats(tmp_path / "ref.npz", mu, sigma)
    m2, s2 = load_stats(tmp_path / "ref.npz")
    np.testing.assert_array_equal(m2, mu)
    np.testing.assert_array_equal(s2, sigma)
    np.savez(tmp_path / "nokey.npz", mu=mu)
    with pytest.raises(EvalError, match="sigma"):
        load_stats(tmp_path / "nokey.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(EvalError, match="cannot read"):
        load_stats(tmp_path / "junk.npz")
    np.savez(tmp_path / "pickled.npz", mu=np.array([object()]), sigma=sigma)
    with pytest.raises(EvalError):  # object arrays need pickle: refused
        load_stats(tmp_path / "pickled.npz")
    with pytest.raises(EvalError, match="not found"):
        load_stats(tmp_path / "missing.npz")


# ----------------------------------------------------------------------------- toy metrics

def test_w2_translate_and_1d_sorted_coupling():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 2, generator=g)
    c = torch.tensor([0.3, -0.4])
    assert w2(a, a + c) == pytest.approx(0.5, rel=1e-6)  # W2 of a translate = |c|
    x, y = torch.randn(200, generator=g), 2 * torch.rand(200, generator=g)
    want = torch.sqrt(((x.sort().values - y.sort().values) ** 2).mean()).item()
    assert w2(x[:, None], y[:, None]) == pytest.approx(want, rel=1e-6)


def test_mmd_zero_for_same_distribution_positive_for_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(600, 2, generator=g), torch.randn(600, 2, generator=g)
    same = mmd(a, b)
    assert abs(same) < 5e-3
    assert mmd(a, b + torch.tensor([1.0, 0.0])) > 50 * max(abs(same), 1e-3)


# ----------------------------------------------------------------------------- PRDC

def test_prdc_identical_and_far_apart():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    m = prdc(x, x.clone(), k=3)
    assert m["precision"] == 1 and m["recall"] == 1 and m["coverage"] == 1
    assert m["density"] == pytest.approx(1 + 1 / 3)  # each point also sits in its own ball
    far = prdc(x, x + 100.0, k=3)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


# ----------------------------------------------------------------------------- digits

def test_shipped_digits_classifier():
    from slimstep.data.digits import load_digits_split
    from slimstep.eval.features import DigitsClassifier

    clf = DigitsClassifier.load()
    assert DigitsClassifier.load() is clf  # cached
    x, y = load_digits_split("test")
    acc = (clf.logits(x).argmax(1) == y).double().mean().item()
    assert acc >= 0.97
    assert acc == pytest.approx(clf.info["test_accuracy"], abs=1e-4)
    assert clf.features(x[:5]).shape == (5, 128)


def test_digits_evaluate_floor_and_noise():
    from slimstep.data.digits import load_digits_split

    x, y = load_digits_split("test")
    real = evaluate(x, "digits", labels=y)
    json.dumps(real)  # plain JSON
    assert real["n"] == real["floor_n"] == 597 and real["notes"] == []
    assert real["metrics"] == real["floor"]  # the floor *is* the real test split
    assert real["metrics"]["accuracy_vs_labels"] >= 0.97
    assert real["metrics"]["class_coverage"] == 1.0
    assert real["floor"]["precision"] > 0.8 and real["floor"]["recall"] > 0.8
    noise = evaluate(torch.randn(597, 1, 8, 8, generator=torch.Generator().manual_seed(0)), "digits")
    assert noise["metrics"]["fd"] > 10 * noise["floor"]["fd"]
    assert noise["metrics"]["precision"] < 0.5 * noise["floor"]["precision"]
    assert any("clamped" in n for n in noise["notes"])
    small = evaluate(x[:100], "digits")
    assert any("differs from the floor" in n for n in small["notes"])
    table = format_table([{**real, "name": "real"}, {**noise, "name": "noise"}])
    assert "(floor " in table and "noise" in table.splitlines()[-1]


def test_copying_the_training_set_is_flagged():
    """A generator that returns its training images beats the FD floor; the protocol
    must say that this is copying, not quality."""
    from slimstep.data.digits import load_digits_split

    xt, _ = load_digits_split("test")
    xr, _ = load_digits_split("train")
    real = evaluate(xt, "digits")
    assert abs(real["floor"]["copy_rate"] - 0.05) < 0.01  # the radius is the floor's 5th percentile
    copied = evaluate(xr[:597], "digits")
    assert copied["metrics"]["fd"] < copied["floor"]["fd"]
    assert copied["metrics"]["copy_rate"] == 1.0
    assert any("below the real/real floor" in n for n in copied["notes"])


# ----------------------------------------------------------------------------- toy2d

def test_toy_evaluate_real_data_near_floor():
    from slimstep.data import load_data

    ds = load_data("toy2d:moons")
    x, _ = ds.reference(1000, split="train", seed=7)  # real, independent of the reference
    r = evaluate(x, "toy2d:moons")
    json.dumps(r)
    f, m = r["floor"], r["metrics"]
    assert r["floor_n"] == 1000
    # unbiased MMD² of two real draws of 1,000 scatters by ~0.003 around 0
    assert m["w2"] < 1.5 * f["w2"] and abs(m["mmd"]) < 0.01 and abs(f["mmd"]) < 0.01
    shifted = evaluate(x + torch.tensor([0.5, 0.0]), "toy2d:moons")["metrics"]
    assert shifted["w2"] > 3 * f["w2"] and shifted["mmd"] > 0.05


# ----------------------------------------------------------------------------- speed

def test_macs_params_and_timers():
    a, b, n = 7, 5, 3
    lin = torch.nn.Linear(a, b)
    assert count_macs(lin, torch.randn(n, a)) == n * a * b
    assert count_params(lin) == a * b + b
    assert measure_throughput(lin, lambda bs: torch.randn(bs, a), batch_size=8, warmup=1, iters=3) > 0
    assert measure_latency(lin, lambda bs: torch.randn(bs, a), warmup=1, repeats=3) > 0


# ----------------------------------------------------------------------------- images

def test_missing_inception_weights(tmp_path):
    from slimstep.eval.features import InceptionFeatures

    with pytest.raises(EvalError, match="--inception-weights"):
        InceptionFeatures(tmp_path / "nope.pth")
    with pytest.raises(EvalError, match="--inception-weights"):
        evaluate(torch.zeros(8, 3, 8, 8), "npz:" + str(tmp_path / "x.npz"), inception_weights=None)
