"""SLT: the shared block, the patch map, training end to end, and noise screening."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from slimstep import cli
from slimstep.config import load_config
from slimstep.generator import load, seeded_noise
from slimstep.methods.slt import gap_layer_map, layer_map
from slimstep.nets import build_net, count_params
from slimstep.nets.shared_block import patch_steps
from slimstep.screen import candidate_seeds, screen
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


def _run(tmp_path, method, teacher, overrides, name):
    recipe = "dit-teacher" if method == "flow_matching" else method
    cfg = load_config(ROOT / "configs" / "digits" / f"{recipe}.yaml",
                      overrides + ["train.batch_size=8", "train.log_every=1", "train.warmup=0"])
    cfg["method"]["name"] = method
    if teacher is not None:
        cfg["teacher"] = str(teacher)
    return train(cfg, tmp_path / name, teacher=load(teacher) if teacher else None, progress=False)


def test_teacher_flowmap_slt_and_screening(tmp_path, capsys):
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

    out = tmp_path / "s.npz"
    rc = cli.main(["sample", "--ckpt", str(slt), "--n", "4", "--out", str(out), "--screen", "3",
                   "--scorer", "classifier", "--final", "teacher", "--teacher", str(fm),
                   "--device", "cpu"])
    assert rc == 0
    d = np.load(out)
    assert d["samples"].shape == (4, 1, 8, 8) and d["candidate"].max() < 3
    assert cli.main(["sample", "--ckpt", str(slt), "--n", "2", "--out", str(out), "--screen", "2",
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
                     "--out", str(out), "--device", "cpu"]) == 0
    z, y3 = seeded_noise((1, 8, 8), [1, 2, 3], 10)
    torch.testing.assert_close(torch.from_numpy(np.load(out)["samples"]),
                               z + g.net(z, torch.zeros(3), y3, s=torch.ones(3), steps=1))
    assert cli.main(["sample", "--ckpt", str(slt), "--n", "2", "--steps", "2", "--out", str(out),
                     "--device", "cpu"]) == 2
    assert "depth-gap" in capsys.readouterr().err
