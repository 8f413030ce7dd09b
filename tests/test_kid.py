"""KID (slimstep.eval.kid): the estimate against its definition written out pair by pair,
the subset draws and size rule, and torch-fidelity's own function where it imports."""

import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from slimstep.eval import EvalError
from slimstep.eval.kid import KID_SEED, KID_SUBSET_SIZE, KID_SUBSETS, kid, kid_subset_size


def _direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (a·b/d + 1)³, one pair at a time."""
    m, d = x.shape

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2.0 * xy


def test_kid_is_the_unbiased_polynomial_mmd_averaged_over_subsets():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(14, 5, generator=g), torch.rand(11, 5, generator=g) + 0.3
    m, subsets = 7, 6
    rng = np.random.RandomState(KID_SEED)  # the draws: the samples' indices, then the reference's
    values = []
    for _ in range(subsets):
        i, j = rng.choice(14, m, replace=False), rng.choice(11, m, replace=False)
        values.append(_direct_mmd2(a.double().numpy()[i], b.double().numpy()[j]))
    out = kid(a, b, subset_size=m, subsets=subsets)
    assert out["kid"] == pytest.approx(np.mean(values), rel=1e-10, abs=1e-14)
    assert out["kid_std"] == pytest.approx(np.std(values), rel=1e-8, abs=1e-14)
    assert out["kid"] > 0


def test_kid_of_whole_sets_is_one_number_and_near_zero_for_one_distribution():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)
    out = kid(a, b)  # subset size 9 = both sizes: every draw holds all points
    assert out["kid"] == pytest.approx(_direct_mmd2(a.double().numpy(), b.double().numpy()), rel=1e-10)
    assert out["kid_std"] < 1e-12
    same = kid(torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g), subset_size=100, subsets=20)
    shifted = kid(torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g) + 0.5, subset_size=100,
                  subsets=20)
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3 and shifted["kid"] > 10 * abs(same["kid"])


def test_large_sets_take_the_per_subset_path_with_the_same_numbers(monkeypatch):
    import slimstep.eval.kid as kid_module

    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(60, 6, generator=g), torch.rand(50, 6, generator=g)
    whole = kid(a, b, subset_size=20, subsets=30)
    monkeypatch.setattr(kid_module, "_GRAM_BYTES", 0)  # forbid the one Gram matrix of both sets
    per_subset = kid(a, b, subset_size=20, subsets=30)
    assert per_subset["kid"] == pytest.approx(whole["kid"], rel=1e-12)
    assert per_subset["kid_std"] == pytest.approx(whole["kid_std"], rel=1e-9)


def test_subset_size_is_torch_fidelitys_1000_or_the_smallest_set():
    assert (KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED) == (100, 1000, 2020)
    assert kid_subset_size(50_000, 10_000) == 1000
    assert kid_subset_size(600, 597, 1200) == 597
    assert kid_subset_size(5, 2000) == 5
    with pytest.raises(EvalError, match="at least 2"):
        kid_subset_size(1, 10)
    with pytest.raises(EvalError, match=r"subset size 30 must be in \[2, 20\]"):
        kid(torch.rand(20, 3), torch.rand(40, 3), subset_size=30)
    with pytest.raises(EvalError, match="3 and 4 dims"):
        kid(torch.rand(20, 3), torch.rand(20, 4))
    with pytest.raises(EvalError, match="NaN"):
        kid(torch.full((5, 3), float("nan")), torch.rand(5, 3))


def _torch_fidelity_kid():
    """torch-fidelity's ``kid_features_to_metric``, or None where torch-fidelity is not
    installed. Without torchvision its package ``__init__`` and ``utils`` fail to import,
    so then ``metric_kid`` is imported under a bare package and a stand-in ``utils``
    (``kid_features_to_metric`` uses neither). The caller restores ``sys.modules``."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        return None
    if importlib.util.find_spec("torchvision") is None:
        pkg = types.ModuleType("torch_fidelity")
        pkg.__path__ = list(spec.submodule_search_locations)
        utils = types.ModuleType("torch_fidelity.utils")
        for name in ("create_feature_extractor", "extract_featuresdict_from_input_id_cached",
                     "resolve_feature_extractor", "resolve_feature_layer_for_metric", "get_cacheable_input_name"):
            setattr(utils, name, None)
        sys.modules.update({"torch_fidelity": pkg, "torch_fidelity.utils": utils})
    return importlib.import_module("torch_fidelity.metric_kid").kid_features_to_metric


def test_kid_matches_torch_fidelitys_function(monkeypatch):
    for name in [m for m in sys.modules if m == "torch_fidelity" or m.startswith("torch_fidelity.")]:
        monkeypatch.delitem(sys.modules, name)
    before = set(sys.modules)
    try:
        reference = _torch_fidelity_kid()
        if reference is None:
            pytest.skip("torch-fidelity is not installed (pip install --no-deps torch-fidelity)")
        g = torch.Generator().manual_seed(3)
        for n1, n2, d, m in ((40, 60, 16, 30), (120, 80, 2048, 50), (25, 25, 8, 25)):
            a, b = torch.rand(n1, d, generator=g).double(), 1.1 * torch.rand(n2, d, generator=g).double()
            tf = reference(a, b, kid_subsets=20, kid_subset_size=m, verbose=False)
            ours = kid(a, b, subset_size=m, subsets=20)
            assert ours["kid"] == pytest.approx(tf["kernel_inception_distance_mean"], rel=1e-9, abs=1e-15)
            assert ours["kid_std"] == pytest.approx(tf["kernel_inception_distance_std"], rel=1e-6, abs=1e-12)
    finally:
        for name in set(sys.modules) - before:
            if name == "torch_fidelity" or name.startswith("torch_fidelity."):
                del sys.modules[name]
