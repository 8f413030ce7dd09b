"""Cost per sample in MACs: the counter against hand counts, every SLT block pass, and a
screened output's candidates, scorer and final call (issue 24)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimstep.data import DataInfo
from slimstep.eval.speed import count_macs
from slimstep.generator import Generator
from slimstep.methods.slt import layer_map
from slimstep.nets import build_net
from slimstep.screen import screen_macs, screen_nfe, teacher_scorer

INFO = DataInfo("digits", "image", (1, 8, 8), 10)


def test_count_macs_is_the_hand_count_for_a_small_net():
    """Linear 16 -> 8 -> 3 on a flattened 1x4x4 input after a 3x3 conv 1 -> 1 (padding 1):
    conv 1·1·9 per output pixel x 16 pixels = 144, linears 16·8 + 8·3 = 152 per sample."""
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(),
                        nn.Linear(8, 3))
    assert count_macs(net, torch.randn(1, 1, 4, 4)) == 144 + 152
    assert count_macs(net, torch.randn(5, 1, 4, 4)) == 5 * (144 + 152)  # per batch, linear in B


def _slt(steps: int) -> nn.Module:
    return build_net({"name": "shared_block", "in_shape": [1, 8, 8], "num_classes": 10,
                      "patch_size": 2, "hidden_size": 32, "num_heads": 2, "steps": steps,
                      "patches": 2, "extra_time_embeds": 1})


def test_slt_student_macs_count_every_block_pass():
    """One SLT call is 1 NFE but K block passes: K = 4 costs two more DiT blocks than K = 2.
    A block on T tokens of width D (mlp ratio 4) is, by hand, adaLN 6D² + qkv 3TD² +
    attention 2T²D + projection TD² + MLP 8TD²."""
    z, t, y, s = torch.randn(1, 1, 8, 8), torch.zeros(1), torch.tensor([3]), torch.ones(1)
    d, tokens = 32, 16
    block = 6 * d * d + 3 * tokens * d * d + 2 * tokens * tokens * d + tokens * d * d + 8 * tokens * d * d
    two, four = (count_macs(_slt(k), z, t, y, s=s) for k in (2, 4))
    assert four - two == 2 * block


def _generator(seed: int, kind: dict) -> Generator:
    torch.manual_seed(seed)
    spec = {"name": "dit", "in_shape": [1, 8, 8], "num_classes": 10, "patch_size": 2,
            "hidden_size": 16 * (seed + 1), "depth": 1 + seed, "num_heads": 2}
    return Generator(build_net(spec), INFO, kind, {"net": spec})


@pytest.mark.parametrize("final", ["student", "teacher"])
def test_screen_macs_add_candidates_scorer_and_final(final):
    """A screened output costs N student samples, the scorer on all N (here the one-step
    teacher) and the final call: N·S + N·T + (T if final is the teacher)."""
    euler1 = {"kind": "velocity", "solver": "euler", "steps": 1}
    student, teacher = _generator(0, euler1), _generator(1, euler1)
    z = torch.randn(1, 1, 8, 8)
    m_s, m_t = count_macs(student, z), count_macs(teacher, z)
    assert m_t > m_s > 0
    scorer = teacher_scorer(teacher)
    want = 3 * m_s + 3 * m_t + (m_t if final == "teacher" else 0)
    assert screen_macs(student, 3, scorer, final, teacher) == want
    assert screen_nfe(3, student, scorer, final, teacher) == 3 + 3 + (final == "teacher")


def test_slt_depth_patches_are_evenly_spaced():
    """Halves round up (Python's round() rounded them to even: layers 4 7 10 14 18 21 24 28)."""
    layers = [lj for _, lj in layer_map(8, 8, 28)]
    assert layers == [4, 7, 11, 14, 18, 21, 25, 28]
    assert [b - a for a, b in zip([0] + layers[:-1], layers, strict=True)] == [4, 3, 4, 3, 4, 3, 4, 3]
    assert layer_map(8, 4, 28) == [(2, 7), (4, 14), (6, 21), (8, 28)]  # no halves: unchanged


def test_cli_sample_eval_and_bench_report_macs(tmp_path, capsys):
    """`slimstep sample` writes MACs per sample into the .npz, `eval` carries it into its
    JSON, `bench --screen N` adds the screened output's NFE and MACs."""
    import json

    import numpy as np

    from slimstep import checkpoint as ckpt
    from slimstep.cli import main
    from slimstep.train.loop import FORMAT

    gen = _generator(0, {"kind": "velocity", "solver": "euler", "steps": 1})
    d = tmp_path / "ckpt"
    ckpt.save_model(d, gen.net, {"format": FORMAT, "net": gen.config["net"],
                                 "method": {"name": "flow_matching"},
                                 "generator": {"kind": "velocity", "solver": "euler", "steps": 1,
                                               "cfg_scale": 1.0},
                                 "data": INFO.to_dict(), "train": {}, "sample": {}, "step": 0})
    one = count_macs(gen, torch.randn(1, 1, 8, 8))
    assert main(["sample", "--ckpt", str(d), "--n", "16", "--out", str(tmp_path / "s.npz")]) in (0, None)
    assert int(np.load(tmp_path / "s.npz")["macs"]) == one
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--out", str(tmp_path / "e.json")]) in (0, None)
    assert json.loads((tmp_path / "e.json").read_text())["macs"] == one
    capsys.readouterr()
    assert main(["bench", "--ckpt", str(d), "--iters", "1", "--batch-size", "4", "--screen", "3"]) in (0, None)
    out = {k.strip(): v for k, v in (line.split(":", 1) for line in capsys.readouterr().out.splitlines()
                                     if ":" in line)}
    assert int(out["macs"]) == one and int(out["screen_nfe"]) == 3
    assert int(out["screen_macs"]) > 3 * one  # the classifier's calls are counted too


def test_toy_floor_is_the_mean_of_the_seeds_draws():
    """A toy row's floor is the mean of its scored seeds' real/real draws (one draw is
    noisy: moons W2 at N = 2,000 has sd ~0.02 around ~0.09), stated in the row."""
    from slimstep.data import load_data
    from slimstep.eval.toy import w2
    from slimstep.run import score_samples

    ds = load_data("toy2d:moons")

    def make(seed, n):
        x, _ = ds.reference(n, split="train", seed=seed + 7)
        return x, None, 0.0, {}

    ev = {"n": 200, "seeds": [0, 1000]}
    row = score_samples(make, "toy2d:moons", ev, "real", None)
    draws = []
    for seed in ev["seeds"]:
        ref, _ = ds.reference(200, split="test", seed=seed)
        real, _ = ds.reference(200, split="train", seed=seed)
        draws.append(w2(real, ref))
    assert row["floor"]["w2"] == pytest.approx(sum(draws) / 2, rel=1e-9)
    assert [f["w2"] for f in row["per_seed_floor"]] == pytest.approx(draws)
    assert "mean of the 2 scored seeds" in row["floor_note"]


def test_benchmark_tables_show_macs_per_sample():
    """BENCHMARKS.md's method tables (benchmarks/methods.py) carry MACs beside NFE, written
    as the report writes them."""
    import sys
    from pathlib import Path

    from slimstep.numbers import fmt_macs

    assert [fmt_macs(v) for v in (None, 512, 2_500, 1_234_567, 3.4e9)] == ["", "512", "2.5k", "1.23M", "3.4G"]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from methods import headline_table

    row = {"name": "s", "teacher": "t", "nfe": 1, "macs": 1_234_567, "metrics": {"fd": 5.0},
           "metrics_sd": {"fd": 0.5}, "params": 10, "headline": "fd"}
    head, _, line = headline_table([row])
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[head.strip("|").split("|").index(" MACs / sample ")] == "1.23M"
