"""The evaluation protocol against known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from slimstep.eval import EvalError, evaluate, format_table
from slimstep.eval.fd import feature_stats, frechet_distance, load_ref_features, load_stats, save_stats
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
    assert load_ref_features(tmp_path / "ref.npz") is None  # mu and sigma only: FID, no KID
    feats = np.arange(12.0).reshape(4, 3)
    save_stats(tmp_path / "withf.npz", mu, sigma, features=torch.from_numpy(feats))
    got = load_ref_features(tmp_path / "withf.npz")
    assert got.dtype == np.float32 and np.array_equal(got, feats)
    np.testing.assert_array_equal(load_stats(tmp_path / "withf.npz")[0], mu)
    np.savez(tmp_path / "badf.npz", mu=mu, sigma=sigma, features=np.zeros((4, 5)))
    with pytest.raises(EvalError, match="do not match mu"):
        load_ref_features(tmp_path / "badf.npz")
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


def test_prdc_matrix_product_path_equals_the_exact_one(monkeypatch):
    """Beyond EXACT_PAIRS the distances come from a float64 matrix product: the four numbers
    equal the exact path's, and duplicated points (zero-radius balls) still count."""
    import importlib

    P = importlib.import_module("slimstep.eval.prdc")
    g = torch.Generator().manual_seed(1)
    real = torch.randn(300, 16, generator=g) * 3 + 5  # large norms: cancellation is worst there
    fake = torch.cat([real[:40], torch.randn(260, 16, generator=g) * 3 + 5])  # 40 exact copies
    real = torch.cat([real, real[:5], real[:5], real[:5]])  # duplicated reals: zero radii at k=2
    exact = prdc(real, fake, k=2)
    monkeypatch.setattr(P, "EXACT_PAIRS", 0)
    assert prdc(real, fake, k=2) == exact
    assert torch.equal(P.knn_radii(real, 2)[:5], torch.zeros(5, dtype=torch.float64))


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
    assert any("clamped" in n["text"] for n in noise["notes"])
    assert any(n["kind"] == "clamped" and 0 < n["percent"] <= 100 for n in noise["notes"])
    small = evaluate(x[:100], "digits")
    assert any("differs from the floor" in n["text"] for n in small["notes"])
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
    assert any("below the real/real floor" in n["text"] for n in copied["notes"])
    below = next(n for n in copied["notes"] if n["kind"] == "below-floor")
    assert below["value"] == copied["metrics"]["fd"] and below["copy_rate"] == 1.0


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

def test_image_eval_without_weights_is_swd_with_its_floor(tmp_path, image_folder):
    from slimstep.data import load_data
    from slimstep.eval.features import INCEPTION_FILE
    from slimstep.eval.images import real_pools

    spec = f"folder:{image_folder(tmp_path / 'imgs')}"
    opts = {"resolution": 16}
    ds = load_data(spec, **opts)
    _, (split, held) = real_pools(ds, "folder")
    real = ds.take(held, split)  # the held-out half itself: it scores exactly the floor
    r = evaluate(real, spec, data_options=opts)
    json.dumps(r)
    assert set(r["metrics"]) == {"swd", "swd_16"} and r["metrics"] == r["floor"]
    assert r["floor_n"] == len(real) == 12 and r["reference_n"] == 12
    assert any(INCEPTION_FILE in n["text"] and "no FID" in n["text"] for n in r["notes"])
    noise = evaluate(torch.rand(12, 3, 16, 16) * 2 - 1, spec, data_options=opts)
    assert noise["metrics"]["swd"] > 2 * noise["floor"]["swd"]
    assert "swd" in format_table([noise]) and "(floor " in format_table([noise])
    more = evaluate(torch.rand(20, 3, 16, 16) * 2 - 1, spec, data_options=opts)
    assert more["floor_n"] == 12 and any("only 12 held-out" in n["text"] for n in more["notes"])
    with pytest.raises(EvalError, match=r"samples are \(3, 16, 16\).*\(3, 20, 20\)"):
        evaluate(real, spec)  # the real images at their own size: not the model's
    few = image_folder(tmp_path / "few", n=8)
    with pytest.raises(EvalError, match="needs at least 10"):
        evaluate(torch.zeros(8, 3, 20, 20), f"folder:{few}")


def test_cifar10_floor_is_the_test_split(cifar_dir):
    root, x, _ = cifar_dir
    test = torch.from_numpy(x[20:]).float() / 127.5 - 1
    r = evaluate(test, f"cifar10:{root}")
    assert r["metrics"] == r["floor"] and r["floor_n"] == 10 and set(r["metrics"]) == {"swd", "swd_32", "swd_16"}
    train = torch.from_numpy(x[:10]).float() / 127.5 - 1
    copied = evaluate(train, f"cifar10:{root}", n_ref=20)  # the whole reference pool: copies score lower
    assert copied["metrics"]["swd"] < copied["floor"]["swd"]


class FakeInception:
    """Stands in for torch-fidelity's network (not installed in tests): 12-d colour features."""

    dim = 12
    name = "fake inception"

    def __init__(self, weights_path):
        from slimstep.eval.features import INCEPTION_HINT

        if weights_path is None or not (p := __import__("pathlib").Path(weights_path)).is_file():
            raise EvalError(f"Inception weights file not found ({weights_path}): {INCEPTION_HINT}")
        self.path = p

    def features(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1) + 0.01 * x[:, 0, :12, 0]


def test_image_fid_beside_swd_with_weights(tmp_path, monkeypatch, image_folder):
    import slimstep.eval.features as features

    monkeypatch.setattr(features, "InceptionFeatures", FakeInception)
    spec = f"folder:{image_folder(tmp_path / 'imgs', n=30)}"
    weights = tmp_path / features.INCEPTION_FILE
    weights.write_bytes(b"stand-in")
    x = torch.rand(15, 3, 20, 20) * 2 - 1
    stats = tmp_path / "ref.npz"
    r = evaluate(x, spec, inception_weights=weights, ref_stats=stats)
    json.dumps(r)
    assert list(r["metrics"])[:4] == ["fid", "kid", "kid_std", "swd"]
    assert {"fid", "kid", "kid_std", "swd"} <= set(r["floor"])
    assert r["floor"]["fid"] < r["metrics"]["fid"] and stats.is_file()
    assert not any("no FID" in n["text"] or "no KID" in n["text"] for n in r["notes"])
    assert "kid" in format_table([r]) and "kid_subset_size" not in format_table([r])
    again = evaluate(x, spec, inception_weights=weights, ref_stats=stats)  # read back, same numbers
    assert again["metrics"] == r["metrics"] and again["floor"] == r["floor"]
    with pytest.raises(EvalError, match="reference stats are Inception statistics"):
        evaluate(x, spec, ref_stats=stats)


def test_image_kid_uses_the_reference_features_at_one_subset_size(tmp_path, monkeypatch, image_folder):
    """KID of the stand-in network's features: samples and held-out images against all
    reference images, one subset size min(1000, sizes) for both, recorded in the result."""
    import slimstep.eval.features as features
    from slimstep.data import load_data
    from slimstep.eval.fd import load_ref_features
    from slimstep.eval.images import real_pools
    from slimstep.eval.kid import KID_SUBSETS, kid

    monkeypatch.setattr(features, "InceptionFeatures", FakeInception)
    spec = f"folder:{image_folder(tmp_path / 'imgs', n=30)}"
    weights = tmp_path / features.INCEPTION_FILE
    weights.write_bytes(b"stand-in")
    x = torch.rand(12, 3, 20, 20) * 0.2 + 0.7  # too bright: far from the real images in the stand-in's features
    stats = tmp_path / "ref.npz"
    r = evaluate(x, spec, inception_weights=weights, ref_stats=stats)
    assert r["metrics"]["kid"] > 10 * max(r["floor"]["kid"], r["floor"]["kid_std"])
    ds = load_data(spec)
    (ref_split, ref_idx), (held_split, held_idx) = real_pools(ds, "folder")
    net = FakeInception(weights)
    ref_f = net.features(ds.take(ref_idx, ref_split))  # all 15 reference images (FID's reference)
    held = ds.take(held_idx[:12], held_split)
    assert r["kid_subset_size"] == 12 and r["kid_subsets"] == KID_SUBSETS  # N = 12 < 15 held-out, 15 reference
    assert r["metrics"]["kid"] == pytest.approx(kid(net.features(x), ref_f, subset_size=12)["kid"], rel=1e-9)
    assert r["floor"]["kid"] == pytest.approx(kid(net.features(held), ref_f, subset_size=12)["kid"], rel=1e-9)
    assert any("KID subsets of 12, not torch-fidelity's 1000" in n["text"] for n in r["notes"])
    np.testing.assert_allclose(load_ref_features(stats), ref_f.numpy(), rtol=1e-6)  # stored beside mu, sigma

    # A stats file with mu and sigma only (EDM's, pytorch-fid's, slimstep's before KID): FID, no KID.
    with np.load(stats) as z:
        np.savez(tmp_path / "old.npz", mu=z["mu"], sigma=z["sigma"])
    old = evaluate(x, spec, inception_weights=weights, ref_stats=tmp_path / "old.npz")
    assert old["metrics"]["fid"] == r["metrics"]["fid"] and old["floor"]["fid"] == r["floor"]["fid"]
    assert "kid" not in old["metrics"] and "kid" not in old["floor"] and "kid_subset_size" not in old
    assert any(n["text"].startswith("no KID: reference stats") and "features" in n["text"] for n in old["notes"])


def test_latents_have_no_image_protocol(tmp_path):
    np.savez(tmp_path / "lat.npz", x=np.zeros((10, 4, 8, 8), np.float32))
    with pytest.raises(EvalError, match="holds latents, not images"):
        evaluate(torch.zeros(10, 4, 8, 8), f"latents:{tmp_path / 'lat.npz'}")


def test_missing_inception_weights_names_torch_fidelitys_file(tmp_path):
    from slimstep.eval.features import INCEPTION_FILE, InceptionFeatures

    with pytest.raises(EvalError, match="--inception-weights") as e:
        InceptionFeatures(tmp_path / "nope.pth")
    assert INCEPTION_FILE == "weights-inception-2015-12-05-6726825d.pth" and INCEPTION_FILE in str(e.value)
    with pytest.raises(EvalError, match=INCEPTION_FILE):  # before any data is read
        evaluate(torch.zeros(8, 3, 8, 8), "npz:" + str(tmp_path / "x.npz"), inception_weights=tmp_path / "no")


def test_docs_name_the_inception_file_torch_fidelity_loads():
    """The README once named pytorch-fid's pt_inception-2015-12-05.pth, which torch-fidelity's
    network does not load, while the error named torch-fidelity's own file."""
    from pathlib import Path

    from slimstep.eval.features import INCEPTION_FILE

    root = Path(__file__).resolve().parent.parent
    for doc in ("README.md", "docs/evaluation.md"):
        text = (root / doc).read_text()
        assert INCEPTION_FILE in text and "pt_inception" not in text, doc
