"""The one training loop: exact resume, NaN guard, snapshots, EMA, per-seed sampling."""

import copy
import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import slimstep
from slimstep import checkpoint as ckpt
from slimstep.data import load_data
from slimstep.methods import flow_matching
from slimstep.paths import interpolate
from slimstep.train.ema import EMA
from slimstep.train.loop import ResumeError, TrainingDiverged, train, training_seconds


def losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows]


def test_resume_continues_the_same_loss_sequence(tmp_path, toy_cfg):
    full = train(toy_cfg, tmp_path / "full", progress=False)
    half_cfg = copy.deepcopy(toy_cfg)
    half_cfg["train"]["steps"] = 3
    train(half_cfg, tmp_path / "split", progress=False)
    assert [s for s, _ in losses(tmp_path / "split")] == [0, 1, 2]
    first = ckpt.read_config(tmp_path / "split")["train_seconds"]
    tic = time.perf_counter()
    train(toy_cfg, tmp_path / "split", resume=True, progress=False)
    # The training time counts every invocation: the first's, then the resumed one's.
    total = ckpt.read_config(tmp_path / "split")["train_seconds"]
    assert 0 < first < total <= first + time.perf_counter() - tic + 0.1
    assert losses(tmp_path / "split") == losses(full)  # bit-identical, not approximately
    a = load_file(str(full / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cfg = ckpt.read_config(full)
    assert cfg["step"] == 6 and cfg["images_seen"] == 6 * 32 and cfg["data"]["spec"] == "toy2d:moons"


def test_training_seconds_of_an_older_checkpoint_come_from_its_log(tmp_path):
    """A checkpoint from before ``train_seconds`` was recorded: each metrics row's
    images_per_s covers the steps since the row before, so 25 steps of 32 images at 400/s
    took 2 s, and the next 25 at 200/s took 4 s."""
    d = tmp_path / "old"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"step": 50, "train": {"batch_size": 32}}))
    rows = [{"step": 24, "loss": 1.0, "images_per_s": 400.0}, {"step": 49, "loss": 1.0, "images_per_s": 200.0},
            {"step": 74, "loss": 1.0, "images_per_s": 100.0}]  # past the checkpoint: a killed run's tail
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert training_seconds(d) == pytest.approx(6.0)
    assert training_seconds(d, step=25) == pytest.approx(2.0)
    # A snapshot between two rows (ckpt_every not a multiple of log_every): its steps past
    # the last row count at the next row's rate; past the log's end at the last rate.
    assert training_seconds(d, step=30) == pytest.approx(2.0 + 5 * 32 / 200)
    assert training_seconds(d, step=100) == pytest.approx(2.0 + 4.0 + 8.0 + 25 * 32 / 100)
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "lo')  # a killed run's torn line
    assert training_seconds(d) == pytest.approx(6.0)
    (d / "config.json").write_text(json.dumps({"step": 50, "train": {"batch_size": 32}, "train_seconds": 7.5}))
    assert training_seconds(d) == 7.5  # recorded: the log is not read


def test_training_beats_the_zero_velocity_baseline(tmp_path, toy_cfg):
    """On moons (unit variance per coordinate) predicting v = 0 costs E|x1 - x0|^2 / d = 2;
    a trained teacher must do clearly better on a fixed held-out batch."""
    cfg = copy.deepcopy(toy_cfg)
    cfg["net"]["hidden"] = 64
    cfg["train"].update(steps=200, log_every=50, ckpt_every=200, batch_size=256, lr=3e-3)
    gen = slimstep.load(train(cfg, tmp_path / "r", progress=False))
    g = torch.Generator().manual_seed(123)
    x1, _ = load_data("toy2d:moons").reference(4096, seed=1)
    x0, t = torch.randn(x1.shape, generator=g), torch.rand(len(x1), generator=g)
    with torch.no_grad():
        v = gen.net(interpolate(x0, x1, t), t)
    loss = (v - (x1 - x0)).pow(2).mean().item()
    baseline = (x1 - x0).pow(2).mean().item()
    assert baseline == pytest.approx(2.0, abs=0.15)
    assert loss < 0.8 * baseline


def test_snapshots_keep_the_last_k_and_ignore_partial_dirs(tmp_path, toy_cfg):
    cfg = copy.deepcopy(toy_cfg)
    cfg["train"].update(ckpt_every=1, keep=2)
    out = train(cfg, tmp_path / "r", progress=False)
    (out / "checkpoints" / ".partial-xyz").mkdir()  # what a kill mid-save leaves
    names = [p.name for p in ckpt.list_snapshots(out)]
    assert names == ["step-00000005", "step-00000006"]
    import os
    mask = os.umask(0)
    os.umask(mask)
    for p in (out / "checkpoints" / "step-00000006", out / "model.safetensors"):
        assert p.stat().st_mode & 0o777 == (0o777 if p.is_dir() else 0o666) & ~mask  # not mkstemp's 0600
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def test_existing_run_is_not_overwritten_without_resume(tmp_path, toy_cfg):
    train(toy_cfg, tmp_path / "r", progress=False)
    with pytest.raises(ResumeError, match="--resume"):
        train(toy_cfg, tmp_path / "r", progress=False)
    with pytest.raises(ResumeError, match="no checkpoint"):
        train(toy_cfg, tmp_path / "empty", resume=True, progress=False)


def test_resume_refuses_a_different_network(tmp_path, toy_cfg):
    train(toy_cfg, tmp_path / "r", progress=False)
    other = copy.deepcopy(toy_cfg)
    other["net"]["hidden"] = 16
    other["train"]["steps"] = 9
    with pytest.raises(ResumeError, match="net section differs"):
        train(other, tmp_path / "r", resume=True, progress=False)


def test_resume_refuses_changed_training_settings_but_may_run_longer(tmp_path, toy_cfg):
    """A resumed run restores the optimizer, scheduler and EMA, so a changed lr would be
    recorded in config.json but never used: refused, naming the key. Length may change."""
    short = copy.deepcopy(toy_cfg)
    short["train"]["steps"] = 3
    train(short, tmp_path / "r", progress=False)
    for key, value in (("lr", 5e-3), ("batch_size", 16), ("seed", 7)):
        other = copy.deepcopy(toy_cfg)
        other["train"][key] = value
        with pytest.raises(ResumeError, match=f"train.{key} .* -> {value}"):
            train(other, tmp_path / "r", resume=True, progress=False)
    longer = copy.deepcopy(toy_cfg)
    longer["train"].update(log_every=2)
    train(longer, tmp_path / "r", resume=True, progress=False)
    assert ckpt.read_config(tmp_path / "r")["step"] == toy_cfg["train"]["steps"]


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, toy_cfg, monkeypatch):
    real_loss = flow_matching.FlowMatching.loss

    def poisoned(self, batch, step, phase):
        out = real_loss(self, batch, step, phase)
        if step == 4:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(flow_matching.FlowMatching, "loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 4.*last good checkpoint: .*step-00000003"):
        train(toy_cfg, tmp_path / "r", progress=False)
    snaps = ckpt.list_snapshots(tmp_path / "r")
    assert [p.name for p in snaps] == ["step-00000003"]
    assert ckpt.read_config(tmp_path / "r")["step"] == 3
    state = ckpt.load_training_state(snaps[-1])
    assert all(torch.isfinite(v).all() for v in state["modules"]["net"].values())


def test_ema_half_life_in_images():
    net = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(net, half_life_images=100, warmup=False)
    assert ema.beta(step=0, images_per_step=100) == pytest.approx(0.5)
    ramped = EMA(net, half_life_images=1e6, rampup=0.5)  # EDM ramp-up: h = 0.5 * images seen
    assert ramped.beta(step=1, images_per_step=100) == pytest.approx(0.5 ** (100 / 100))
    assert EMA(net, decay=0.999).beta(step=0, images_per_step=1) == pytest.approx(0.1)
    with torch.no_grad():
        net.weight.fill_(0.0)
        ema.net.weight.fill_(1.0)
    ema.update(net, step=0, images_per_step=100)
    assert float(ema.net.weight) == pytest.approx(0.5)
    assert EMA(net, decay=0.9, start=10).beta(step=3, images_per_step=1) == 0.0
    assert EMA(net, decay=0.9, warmup=False).beta(step=3, images_per_step=1) == 0.9


def test_sampling_is_per_seed(tmp_path, toy_cfg):
    out = train(toy_cfg, tmp_path / "r", progress=False)
    gen = slimstep.load(out)
    a, _ = gen.generate(10, seed=0, batch_size=3)
    b, _ = gen.generate(10, seed=0, batch_size=10)
    c, _ = gen.generate(5, seed=5, batch_size=2)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(a[5:], c, rtol=0, atol=1e-6)
    assert gen.nfe == 4  # euler, 4 steps, from the recipe
    one = gen.with_sampling(solver="euler", steps=1)
    z = torch.stack([torch.randn(2, generator=torch.Generator().manual_seed(s)) for s in range(3)])
    with torch.no_grad():
        expect = z + gen.net(z, torch.zeros(3))
    torch.testing.assert_close(one.generate(3, seed=0)[0], expect)


class _Regression(flow_matching.FlowMatching):
    """A deterministic loss (no noise, no time draw), so micro-batching can be
    compared with one full batch exactly."""

    name = "flow_matching"

    def loss(self, batch, step, phase):
        x1 = batch[0]
        return {"loss": (self.net(x1, torch.full((len(x1),), 0.5)) - x1.flip(-1)).pow(2).mean()}


def test_gradient_accumulation_equals_the_full_batch(tmp_path, toy_cfg, monkeypatch):
    from slimstep import methods

    monkeypatch.setattr(methods, "method_class", lambda name: _Regression)
    monkeypatch.setattr("slimstep.train.loop.method_class", lambda name: _Regression)
    monkeypatch.setattr("slimstep.train.loop.build_method",
                        lambda cfg, info, device, teacher=None: _Regression(cfg, info, device=device))
    outs, norms = {}, {}
    for accum in (1, 4):
        cfg = copy.deepcopy(toy_cfg)
        cfg["train"].update(accum=accum, steps=3, ema={"decay": 0.0, "warmup": False})
        out = train(cfg, tmp_path / f"a{accum}", progress=False)
        outs[accum] = load_file(str(out / "model.safetensors"))
        norms[accum] = [json.loads(x)["grad_norm"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    # Adam hides a wrong gradient scale in the weights; the norm does not.
    assert norms[1] == pytest.approx(norms[4], rel=1e-5)
    for k in outs[1]:
        torch.testing.assert_close(outs[1][k], outs[4][k], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_path_trains(tmp_path, toy_cfg):
    cfg = copy.deepcopy(toy_cfg)
    cfg["train"]["precision"] = "bf16"  # CPU autocast here; the same code path as CUDA
    out = train(cfg, tmp_path / "bf16", progress=False)
    assert all(torch.isfinite(torch.tensor(v)) for _, v in losses(out))
    assert load_file(str(out / "model.safetensors"))  # weights stay float32 on disk


def test_cosine_schedule_warms_up_then_decays_to_its_floor():
    from slimstep.spec import TrainConfig
    from slimstep.train.loop import lr_factor

    t = TrainConfig(warmup=10, steps=110, schedule="cosine", min_lr=0.1)
    assert lr_factor(0, t) == pytest.approx(0.1)  # warm-up: (step + 1) / warmup
    assert lr_factor(9, t) == pytest.approx(1.0)
    assert lr_factor(60, t) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert lr_factor(110, t) == pytest.approx(0.1)
    assert lr_factor(500, t) == pytest.approx(0.1)  # never below the floor
    assert lr_factor(60, TrainConfig(warmup=10, steps=110, schedule="constant")) == 1.0
