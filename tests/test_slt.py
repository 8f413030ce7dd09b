"""SLT: the shared block, the patch map, training end to end, and noise screening."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from slimstep import cli
from slimstep.config import load_config
from slimstep.generator import load, seeded_noise
from slimstep.methods.slt import gap_layer_map, layer_map
from slimstep.nets import build_net, count_params
from slimstep.nets.shared_block import patch_steps
from slimstep.screen import candidate_seeds, screen, select_candidates
from slimstep.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
SB = {"name": "shared_block", "in_shape": [1, 8, 8], "num_classes": 10, "patch_size": 2,
      "hidden_size": 32, "num_heads": 2, "patches": 2, "teacher_hidden": 48,
      "frequency_embedding_size": 32}


def test_shared_block_shares_weights():
    nets = {k: build_net({**SB, "steps": k}) for k in (2, 4, 9)}
    base = {k: count_params(n) - n.depth_embed.weight.numel() for k, n in nets.items()}
    assert len(set(base.values())) == 1  # only the depth table grows with K
    net = nets[4]
    assert not any(n.startswith("blocks") for n, _ in net.named_parameters())
    calls = []
    net.block.register_forward_hook(lambda *a: calls.append(1))
    out, feats = net(torch.randn(3, 1, 8, 8), torch.zeros(3), torch.tensor([1, 2, 10]),
                     s=torch.ones(3), return_features=True)
    assert len(calls) == 4 and out.shape == (3, 1, 8, 8)
    assert [f.shape for f in feats] == [(3, 16, 48)] * 2  # projected to the teacher width


def test_depth_gap_arm_shares_one_block():
    """The depth-gap arm: no parameter depends on K, the same weights run 1..K (and more)
    steps, one block call per step, and every n gives the fusion its P states."""
    nets = {k: build_net({**SB, "steps": k, "depth": "gap", "fusion": "concat"}) for k in (2, 4, 9)}
    assert len({count_params(n) for n in nets.values()}) == 1
    assert {tuple(n.state_dict()) for n in nets.values()} == {tuple(nets[2].state_dict())}
    nets[9].load_state_dict(nets[2].state_dict())  # K is a default, not a weight
    x, t, y, s = torch.randn(3, 1, 8, 8), torch.zeros(3), torch.tensor([1, 2, 10]), torch.ones(3)
    with torch.no_grad():  # zero-init adaLN would make every step the identity: move off it
        for p in nets[2].parameters():
            p.add_(0.05 * torch.randn_like(p))
        nets[9].load_state_dict(nets[2].state_dict())
    calls = []
    nets[2].block.register_forward_hook(lambda *a: calls.append(1))
    for n in (1, 2, 3, 5):
        calls.clear()
        out, feats = nets[2](x, t, y, s=s, return_features=True, steps=n)
        assert len(calls) == n and out.shape == x.shape and len(feats) == 2
        torch.testing.assert_close(out, nets[9](x, t, y, s=s, steps=n))
    assert not torch.allclose(nets[2](x, t, y, s=s, steps=1), nets[2](x, t, y, s=s, steps=2))
    torch.testing.assert_close(nets[2](x, t, y, s=s), nets[2](x, t, y, s=s, steps=2))  # default K
    table = build_net({**SB, "steps": 4})
    try:
        table(x, t, y, s=s, steps=2)
        raise AssertionError("a depth table ran a step count it has no rows for")
    except ValueError as e:
        assert "depth-gap" in str(e)


def test_gap_layer_map():
    assert gap_layer_map(4, 2, 28) == [(2, 14), (4, 28)]  # P | K: the table arm's map
    assert layer_map(4, 2, 28) == [(2, 14), (4, 28)]
    assert gap_layer_map(1, 2, 28) == [(1, 28), (1, 28)]  # fewer steps than patches: repeats
    assert gap_layer_map(3, 2, 28) == [(2, 19), (3, 28)]  # same depth time 2/3 on both sides
    assert patch_steps(3, 4, fewer=True) == [1, 2, 2, 3]


def test_patch_map():
    assert patch_steps(8, 4) == [2, 4, 6, 8]
    assert layer_map(4, 2, 12) == [(2, 6), (4, 12)]
    assert layer_map(6, 3, 8) == [(2, 3), (4, 5), (6, 8)]


def test_candidate_zero_is_the_plain_sample():
    seeds = candidate_seeds(5, 2, 64)
    assert seeds[0] == 7 and len(set(seeds)) == 64 and max(seeds) < 2**32
    z, _ = seeded_noise((1, 8, 8), seeds)
    assert len({tuple(v.flatten().tolist()) for v in z}) == 64  # really different noises


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_resample_limits_and_distribution():
    """T -> 0 is the argmax; T -> inf a uniform pick; T = 1 draws softmax(score) (chi-square,
    fixed seeds: 7 degrees of freedom, 24.3 is the 0.1 % critical value)."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(500, 8, generator=g) * 3
    seeds = list(range(500))
    assert torch.equal(select_candidates(scores, "resample", 1e-6, seeds), scores.argmax(1))
    assert torch.equal(select_candidates(scores, "argmax", 1.0, seeds), scores.argmax(1))
    rows = 8000
    one = torch.tensor([[4.0, -2.0, 0.5, 1.0, -1.0, 3.0, 0.0, 2.0]])
    for t, probs in ((1e9, torch.full((8,), 1 / 8)), (float("inf"), torch.full((8,), 1 / 8)),
                     (1.0, torch.softmax(one[0].double(), 0).float()), (2.0, torch.softmax(one[0] / 2, 0))):
        j = select_candidates(one.expand(rows, 8), "resample", t, list(range(10, 10 + rows)))
        counts = torch.bincount(j, minlength=8).float()
        assert _chi2(counts, probs) < 24.3, (t, counts)
    # the argmax itself is far from uniform: the test can tell the two apart
    j = select_candidates(one.expand(rows, 8), "resample", 1e-3, list(range(rows)))
    assert _chi2(torch.bincount(j, minlength=8).float(), torch.full((8,), 1 / 8)) > 1000


def _run(tmp_path, method, teacher, overrides, name):
    recipe = "dit-teacher" if method == "flow_matching" else method
    cfg = load_config(ROOT / "configs" / "digits" / f"{recipe}.yaml",
                      overrides + ["train.batch_size=8", "train.log_every=1", "train.warmup=0"]).to_dict()
    cfg["method"]["name"] = method
    if teacher is not None:
        cfg["teacher"] = str(teacher)
    return train(cfg, tmp_path / name, teacher=load(teacher) if teacher else None, progress=False)


def test_coarse_student_tokens_map_onto_the_teacher_grid():
    """A student with patch 4 on a patch-2 teacher: 4x fewer tokens, and each token's
    projection lands on its 2 x 2 group of teacher tokens in the teacher's row-major order."""
    from slimstep.eval.speed import count_macs

    fine = build_net({**SB, "steps": 2})
    coarse = build_net({**SB, "steps": 2, "patch_size": 4, "teacher_patch_size": 2})
    x, t, y, s = torch.randn(3, 1, 8, 8), torch.zeros(3), torch.tensor([1, 2, 10]), torch.ones(3)
    out, feats = coarse(x, t, y, s=s, return_features=True)
    assert out.shape == x.shape and [f.shape for f in feats] == [(3, 16, 48)] * 2
    assert count_macs(coarse, x[:1], t[:1], y[:1], s=s[:1]) < count_macs(fine, x[:1], t[:1], y[:1], s=s[:1]) / 3
    g, r, d = coarse.grid, coarse.group, 48
    assert (g, r) == (2, 2)
    f = torch.zeros(1, g * g, r * r * d)  # student token (i, j), group slot (a, b) -> its teacher token
    for i in range(g):
        for j in range(g):
            for a in range(r):
                for b in range(r):
                    f[0, i * g + j, (a * r + b) * d:(a * r + b + 1) * d] = (i * r + a) * g * r + (j * r + b)
    mapped = coarse._teacher_tokens(f)
    torch.testing.assert_close(mapped[0, :, 0], torch.arange(16.0))
    try:
        build_net({**SB, "patch_size": 2, "teacher_patch_size": 4})
        raise AssertionError("a student finer than its teacher was built")
    except ValueError as e:
        assert "multiple" in str(e)


def test_teacher_flowmap_slt_and_screening(tmp_path, capsys, monkeypatch):
    small = ["net.hidden_size=32", "net.depth=2", "net.num_heads=2", "train.steps=2"]
    t = _run(tmp_path, "flow_matching", None, small, "teacher")
    fm = _run(tmp_path, "flowmap", t, ["train.steps=2"], "flowmap")
    slt = _run(tmp_path, "slt", fm, ["net.hidden_size=16", "net.steps=3", "net.patches=2",
                                     "net.num_heads=2", "train.steps=2"], "slt")
    student, teacher = load(slt), load(fm)
    assert count_params(student.net) < count_params(teacher.net)
    assert student.config["generator"]["layer_map"] == [[2, 1], [3, 2]]
    x, y = student.generate(5, seed=3)
    z, y2 = seeded_noise((1, 8, 8), list(range(3, 8)), 10)
    torch.testing.assert_close(x, z + student.net(z, torch.zeros(5), y2, s=torch.ones(5)))

    # screening keeps the argmax of the score; N = 1 is plain sampling; per-seed
    def score(xc, yc, zc):
        return xc.flatten(1).mean(1)
    xs, ys, info = screen(student, 5, 4, score, seed=3)
    torch.testing.assert_close(ys, y)
    for i in range(5):
        zc, _ = seeded_noise((1, 8, 8), candidate_seeds(3, i, 4))
        xc = student.sample_from(zc, y[i:i + 1].repeat(4))
        j = int(score(xc, None, zc).argmax())
        assert int(info["candidate"][i]) == j
        torch.testing.assert_close(xs[i], xc[j])
    x1, _, _ = screen(student, 5, 1, score, seed=3)
    torch.testing.assert_close(x1, x)
    x_part, _, _ = screen(student, 2, 4, score, seed=6, chunk=1)
    torch.testing.assert_close(x_part, xs[3:])
    xt, _, _ = screen(student, 5, 4, score, seed=3, final="teacher", teacher=teacher)
    torch.testing.assert_close(xt, teacher.sample_from(
        torch.stack([seeded_noise((1, 8, 8), candidate_seeds(3, i, 4))[0][int(j)]
                     for i, j in enumerate(info["candidate"])]), y))

    # resampling is per seed too: any n, chunking, batch size give the same outputs
    xr, _, info_r = screen(student, 5, 4, score, seed=3, select="resample", temperature=0.01)
    xr_part, _, info_p = screen(student, 2, 4, score, seed=6, chunk=1, batch_size=3,
                                select="resample", temperature=0.01)
    torch.testing.assert_close(xr_part, xr[3:])
    assert torch.equal(info_p["candidate"], info_r["candidate"][3:]) and info_r["nfe"] == 4

    out = tmp_path / "s.npz"
    rc = cli.main(["sample", "--ckpt", str(slt), "--n", "4", "--out", str(out), "--overwrite", "--screen", "3",
                   "--scorer", "classifier", "--final", "teacher", "--teacher", str(fm),
                   "--device", "cpu"])
    assert rc == 0
    d = np.load(out)
    assert d["samples"].shape == (4, 1, 8, 8) and d["candidate"].max() < 3
    assert int(d["nfe"]) == 3 + 1  # 3 candidates x 1 student call + the teacher's final call
    big = tmp_path / "s8.npz"
    assert cli.main(["sample", "--ckpt", str(slt), "--n", "8", "--out", str(big), "--screen", "3",
                     "--device", "cpu"]) == 0
    assert cli.main(["eval", "--samples", str(big), "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["nfe"] == 3  # eval reads the same rule

    # the realism score: a discriminator trained on this student's samples vs the train split
    disc = tmp_path / "disc"
    assert cli.main(["screen-train", "--ckpt", str(slt), "--data", "digits", "--out", str(disc),
                     "--steps", "3", "--batch-size", "8", "--r1-gamma", "0.01", "--quiet"]) == 0
    rec = json.loads((disc / "config.json").read_text())
    assert rec["kind"] == "realism" and rec["train"]["r1_gamma"] == 0.01 and rec["train"]["steps"] == 3
    assert 0 <= rec["heldout_accuracy"] <= 1 and "heldout_scale" in rec
    capsys.readouterr()
    assert cli.main(["screen-train", "--ckpt", str(slt), "--data", "digits", "--out", str(tmp_path / "d2"),
                     "--r1-gamma", "nan", "--quiet"]) == 2
    assert "r1_gamma" in capsys.readouterr().err and not (tmp_path / "d2").exists()
    rc = cli.main(["sample", "--ckpt", str(slt), "--n", "3", "--out", str(out), "--overwrite", "--screen", "4",
                   "--scorer", "realism", "--discriminator", str(disc), "--select", "resample",
                   "--temperature", "0.5", "--device", "cpu"])
    assert rc == 0
    d = np.load(out)
    assert int(d["nfe"]) == 4 and str(d["select"]) == "resample" and float(d["temperature"]) == 0.5
    rc = cli.main(["sample", "--ckpt", str(slt), "--n", "2", "--out", str(out), "--overwrite", "--screen", "2",
                   "--scorer", "teacher", "--teacher", str(fm), "--device", "cpu"])
    assert rc == 0 and int(np.load(out)["nfe"]) == 2 * (1 + 1)  # each candidate: student + teacher
    capsys.readouterr()
    for bad, why in ((["--select", "resample", "--temperature", "0"], "--temperature must be > 0"),
                     (["--temperature", "2"], "goes with --select resample")):
        assert cli.main(["sample", "--ckpt", str(slt), "--n", "2", "--out", str(out), "--overwrite", "--screen", "2",
                         "--device", "cpu", *bad]) == 2
        assert why in capsys.readouterr().err
    assert cli.main(["sample", "--ckpt", str(slt), "--n", "2", "--out", str(out), "--overwrite", "--screen", "2",
                     "--scorer", "discriminator", "--device", "cpu"]) == 2
    assert "--discriminator" in capsys.readouterr().err

    # the depth-gap arm trains with a random step count and samples with --steps n <= K
    gap = _run(tmp_path, "slt", fm, ["net.hidden_size=16", "net.steps=3", "net.patches=2",
                                     "net.num_heads=2", "net.depth=gap", "method.random_steps=true",
                                     "train.steps=3"], "slt-gap")
    g = load(gap)
    assert g.config["generator"]["layer_map"] == [[2, 1], [3, 2]]
    assert count_params(g.net) == count_params(build_net({**g.config["net"], "steps": 7}))
    assert cli.main(["sample", "--ckpt", str(gap), "--n", "3", "--seed", "1", "--steps", "1",
                     "--out", str(out), "--overwrite", "--device", "cpu"]) == 0
    z, y3 = seeded_noise((1, 8, 8), [1, 2, 3], 10)
    torch.testing.assert_close(torch.from_numpy(np.load(out)["samples"]),
                               z + g.net(z, torch.zeros(3), y3, s=torch.ones(3), steps=1))
    assert cli.main(["sample", "--ckpt", str(slt), "--n", "2", "--steps", "2", "--out", str(out), "--overwrite",
                     "--device", "cpu"]) == 2
    assert "depth-gap" in capsys.readouterr().err
    # a realism discriminator judges the student it was trained against, no other
    assert cli.main(["sample", "--ckpt", str(gap), "--n", "2", "--out", str(out), "--overwrite", "--screen", "2",
                     "--scorer", "realism", "--discriminator", str(disc), "--device", "cpu"]) == 2
    assert "another student" in capsys.readouterr().err

    # a teacher bank: targets computed once, cached, the same as the teacher's own call
    monkeypatch.setenv("SLIMSTEP_CACHE", str(tmp_path / "cache"))
    over = ["net.hidden_size=16", "net.steps=3", "net.patches=2", "net.num_heads=2",
            "net.patch_size=4", "method.bank=40"]
    banked = _run(tmp_path, "slt", fm, [*over, "train.steps=2"], "slt-bank")
    files = list((tmp_path / "cache" / "slt-bank").glob("*.safetensors"))
    assert len(files) == 1 and load(banked).net.grid == 2
    from safetensors.torch import load_file

    b = load_file(str(files[0]))
    assert len(b["z"]) == 40 and sorted(k for k in b if k.startswith("h")) == ["h1", "h2"]
    out_t, feats = teacher.net(b["z"], torch.zeros(40), b["y"], s=torch.ones(40), return_features=True)
    torch.testing.assert_close(b["out"], out_t)
    torch.testing.assert_close(b["h2"], feats[1])
    stamp = files[0].stat().st_mtime_ns
    _run(tmp_path, "slt", fm, [*over, "train.steps=1"], "slt-bank2")  # reads the cache
    assert files[0].stat().st_mtime_ns == stamp
    try:  # the token grid and width of the features are the teacher's, not options
        _run(tmp_path, "slt", fm, [*over, "net.teacher_patch_size=1"], "slt-bad")
        raise AssertionError("a teacher_patch_size unlike the teacher's was accepted")
    except ValueError as e:
        assert "teacher's (2)" in str(e)

    # a run snapshotted before net.teacher_patch_size and method.bank were recorded resumes
    from slimstep import checkpoint as ckpt

    old = ["net.hidden_size=16", "net.steps=3", "net.patches=2", "net.num_heads=2",
           "train.ckpt_every=1"]
    _run(tmp_path, "slt", fm, [*old, "train.steps=1"], "slt-old")
    snap = ckpt.list_snapshots(tmp_path / "slt-old")[-1] / "config.json"
    c = json.loads(snap.read_text())
    del c["net"]["teacher_patch_size"], c["method"]["bank"]
    snap.write_text(json.dumps(c))
    cfg = load_config(ROOT / "configs" / "digits" / "slt.yaml",
                      [*old, "train.steps=2", "train.batch_size=8", "train.log_every=1", "train.warmup=0"]).to_dict()
    cfg["teacher"] = str(fm)
    train(cfg, tmp_path / "slt-old", teacher=load(fm), resume=True, progress=False)
    assert json.loads((tmp_path / "slt-old" / "config.json").read_text())["step"] == 2


def test_recipe_screen_stage_with_realism_resampling(tmp_path):
    """A screen stage with scorer realism trains its discriminator against the stage's student
    (reused on a rerun), resamples, and its row counts NFE by the one rule."""
    from test_recipes import moons_stages, recipe

    from slimstep.run import run

    stages = {k: v for k, v in moons_stages().items() if k in ("t", "p", "reflow")}
    stages["scr"] = {"kind": "screen", "student": "reflow", "candidates": 3, "scorer": "realism",
                     "select": "resample", "temperature": 2.0, "realism": {"steps": 3, "batch_size": 16}}
    r = recipe(tmp_path, stages)
    res = run(r, tmp_path / "out", jobs=1, log=lambda *_: None)
    row = next(x for x in res["rows"] if x["stage"] == "scr")
    assert row["nfe"] == 3 and "realism resample T=2" in row["name"]
    disc = next((tmp_path / "out" / "scr").glob("screen-*/realism/model.safetensors"))
    before = disc.stat().st_mtime_ns
    (tmp_path / "out" / "scr" / "result.json").unlink()  # force the evaluation to run again
    run(r, tmp_path / "out", jobs=1, log=lambda *_: None)
    assert disc.stat().st_mtime_ns == before  # same student, same options: not retrained


def test_realism_screen_stage_is_keyed_by_the_discriminator_settings(tmp_path, monkeypatch):
    """A screen stage's reusable rows belong to the discriminator it trains: a change of
    screen-train's defaults (or of the stage's realism options) changes the stage's hash,
    and nothing upstream."""
    from test_recipes import moons_stages, recipe

    from slimstep import realism
    from slimstep.run import load_recipe

    stages = {k: v for k, v in moons_stages().items() if k in ("t", "p", "reflow")}
    stages["scr"] = {"kind": "screen", "student": "reflow", "scorer": "realism", "select": "resample"}
    stages["cls"] = {"kind": "screen", "student": "reflow", "teacher": "t", "scorer": "teacher"}

    def hashes():
        return {s.name: s.hash for s in load_recipe(recipe(tmp_path, stages))[1]}

    before = hashes()
    monkeypatch.setitem(realism.DEFAULTS, "r1_gamma", 0.5)
    after = hashes()
    assert after["scr"] != before["scr"]
    assert all(after[k] == before[k] for k in ("t", "p", "reflow", "cls"))
    stages["scr"]["realism"] = {"steps": 7}
    assert hashes()["scr"] not in (before["scr"], after["scr"])


def test_chain_recipe_meets_its_cost_targets():
    """configs/digits/slt-chain.yaml, built with random weights by the cost probe: the SLT
    student has <= 1/64 of the one-step teacher's MACs and <= 1/32 of its parameters."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from slt import cost_probe

    res = cost_probe(ROOT / "configs" / "digits" / "slt-chain.yaml", candidates=8, repeats=1)
    assert res["teacher"] == "flowmap28" and res["teacher_params"] > 8e6
    assert res["macs_ratio"] >= 64 and res["params_ratio"] >= 32
    assert res["time_ratio"] > 0 and res["score_macs"] < res["student_macs"] / 10


def test_realism_judges_images_as_the_evaluation_sees_them():
    """Out-of-range pixels are clamped before the realism discriminator judges them (the
    evaluation clamps them too), so its logit cannot key on what the metric never sees;
    latents are judged as they are."""
    from slimstep.realism import DEFAULTS, build_realism_disc, disc_score

    torch.manual_seed(0)
    disc = build_realism_disc(DEFAULTS["disc"], (1, 8, 8), 10, DEFAULTS["disc_options"]).eval()
    x, y = 3 * torch.randn(6, 1, 8, 8), torch.arange(6)
    image, latent = disc_score(disc, 10, "image"), disc_score(disc, 10, "latent")
    torch.testing.assert_close(image(x, y, None), image(x.clamp(-1, 1), y, None))
    assert not torch.allclose(latent(x, y, None), latent(x.clamp(-1, 1), y, None))


def test_platt_scale_recovers_the_slope_of_a_logistic_model():
    """Scores whose true log-odds are 2 s (labels drawn from sigmoid(2 s)) give a = 2; the
    fit weighs the two classes alike, so their counts do not move the slope; scaling the
    scores by c divides it by c (a flat logit reads as a > 1)."""
    from slimstep.realism import platt_scale

    g = torch.Generator().manual_seed(0)
    s = 2 * torch.randn(40000, generator=g)
    real = torch.rand(40000, generator=g) < torch.sigmoid(2 * s + 1.0)  # more reals than fakes
    assert abs(platt_scale(s[real], s[~real]) - 2.0) < 0.08
    assert abs(platt_scale(s[real] / 4, s[~real] / 4) - 8.0) < 0.32
    # no finite slope: constant scores, or scores that separate the two sets completely
    assert math.isnan(platt_scale(torch.zeros(5), torch.zeros(5)))
    assert math.isnan(platt_scale(torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 0.5])))
    assert platt_scale(-s[real], -s[~real]) < 0  # a discriminator that has it backwards


def test_realism_options_are_checked_in_one_place(tmp_path):
    """screen-train options from the CLI, the API and a recipe all pass realism.settings:
    bad names, kinds and ranges are one clear RealismError, None means the default, and
    a recipe stage with a bad value is refused when the recipe loads."""
    from test_recipes import moons_stages, recipe

    from slimstep.realism import DEFAULTS, RealismError, settings
    from slimstep.run import RecipeError, load_recipe

    assert settings({"r1_gamma": None}) == settings(None) == {**DEFAULTS}
    assert settings({"lr": "2e-4", "steps": 10.0})["lr"] == 2e-4  # YAML 1.1 reads 2e-4 as text
    for bad in ({"r1_gamma": "abc"}, {"r1_gamma": float("inf")}, {"r1_gamma": -1}, {"lr": 0},
                {"steps": 0}, {"steps": 2.5}, {"betas": [0.5]}, {"disc_options": 3}, {"nope": 1},
                [1, 2]):
        with pytest.raises(RealismError):
            settings(bad)
    stages = {k: v for k, v in moons_stages().items() if k in ("t", "p", "reflow")}
    stages["scr"] = {"kind": "screen", "student": "reflow", "scorer": "realism",
                     "realism": {"r1_gamma": "abc"}}
    with pytest.raises(RecipeError, match="scr.*r1_gamma"):
        load_recipe(recipe(tmp_path, stages))
