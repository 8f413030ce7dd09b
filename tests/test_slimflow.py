"""SlimFlow: pairs, annealing reflow, flow-guided distillation, the distill baseline."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import slimstep
from slimstep import pairs as pairs_mod
from slimstep.cli import main
from slimstep.config import load_config
from slimstep.data import load_data
from slimstep.losses import LPIPS, Distance
from slimstep.methods import build_method
from slimstep.methods.reflow import beta_schedule, flip_pair, renoise
from slimstep.pairs import PairsError, generate_pairs
from slimstep.spec import Named
from slimstep.train.loop import train

TINY_NET = {"name": "mlp", "hidden": 16, "depth": 1, "time_dim": 8}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    cfg = load_config(None, {"data": {"spec": "toy2d:moons"}, "net": TINY_NET,
                             "train": {"steps": 20, "batch_size": 32, "lr": 3e-3, "ckpt_every": 20},
                             "sample": {"solver": "euler", "steps": 3}})
    return train(cfg, tmp_path_factory.mktemp("sf") / "teacher", progress=False)


@pytest.fixture(scope="module")
def pairs(teacher, tmp_path_factory):
    return generate_pairs(teacher, tmp_path_factory.mktemp("sf") / "pairs", 40, solver="euler",
                          steps=3, shard_size=16, progress=False)


def _cfg(method, pairs_dir, init=None, **method_opts):
    return load_config(None, {
        "data": {"spec": "toy2d:moons"}, "net": TINY_NET, "pairs": str(pairs_dir),
        "init": str(init) if init else None, "method": {"name": method, **method_opts},
        "train": {"steps": 4, "batch_size": 8, "ckpt_every": 4, "log_every": 1},
        "sample": {"solver": "euler", "steps": 1}})


# ------------------------------------------------------------------ beta schedules

def test_beta_schedules_at_known_steps():
    K = 100
    assert [beta_schedule(k, K, "linear") for k in (0, 25, 50, 100, 500)] == [1.0, 0.75, 0.5, 0.0, 0.0]
    # the official SlimFlow code's cos (1 + cos(pi u)) / 2 and exp e^(-k/K), k/K unclipped
    cos = [beta_schedule(k, K, "cos") for k in (0, 25, 50, 75, 100, 500)]
    assert cos == pytest.approx([1.0, (2 + math.sqrt(2)) / 4, 0.5, (2 - math.sqrt(2)) / 4, 0.0, 0.0],
                                abs=1e-15)
    exp = [beta_schedule(k, K, "exp") for k in (0, 50, 100, 300)]
    assert exp == pytest.approx([1.0, math.exp(-0.5), math.exp(-1), math.exp(-3)], rel=1e-15)
    assert exp[2] == pytest.approx(0.36788, abs=1e-5)  # not 0 at K: the re-noising goes on
    # slimstep's earlier schedules, kept under their own names
    assert beta_schedule(50, K, "cos-half") == pytest.approx(math.sqrt(0.5))
    assert beta_schedule(0, K, "cos-half") == 1.0 and beta_schedule(100, K, "cos-half") == 0.0
    exp5 = [beta_schedule(k, K, "exp5") for k in range(0, 101, 10)]
    assert exp5[0] == pytest.approx(1.0) and exp5[-1] == pytest.approx(0.0, abs=1e-12)
    assert exp5[5] == pytest.approx((math.exp(-2.5) - math.exp(-5)) / (1 - math.exp(-5)))
    assert all(a > b for a, b in zip(exp5, exp5[1:], strict=False))
    assert beta_schedule(20, K, "exp5") < beta_schedule(20, K, "linear")  # decays faster early
    assert all(beta_schedule(5, 0, kind) == 0.0 for kind in ("cos", "exp", "exp5"))
    assert beta_schedule(5, 0, "linear") == 0.0  # K = 0: plain reflow
    with pytest.raises(ValueError, match="beta_schedule"):
        beta_schedule(0, K, "step")


def test_renoise_keeps_unit_variance_and_is_identity_at_beta_zero():
    z = torch.randn(200_000)
    torch.manual_seed(0)
    zp = renoise(z, 0.6)
    assert zp.std().item() == pytest.approx(1.0, abs=0.01)
    assert torch.corrcoef(torch.stack([z, zp]))[0, 1].item() == pytest.approx(0.8, abs=0.01)
    assert renoise(z, 0.0) is z


def test_flip_mirrors_image_and_noise_together(monkeypatch):
    x, z = torch.arange(8.0).view(1, 1, 2, 4), -torch.arange(8.0).view(1, 1, 2, 4)
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor(0.1))  # heads
    fx, fz = flip_pair(x, z)
    assert torch.equal(fx, x.flip(-1)) and torch.equal(fz, z.flip(-1))
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor(0.9))  # tails
    fx, fz = flip_pair(x, z)
    assert torch.equal(fx, x) and torch.equal(fz, z)
    pts = torch.randn(4, 2)
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor(0.1))
    assert flip_pair(pts, pts)[0] is pts  # never for 2-D points


def test_annealing_reflow_loss_uses_renoised_start(teacher, pairs):
    cfg = _cfg("annealing-reflow", pairs, anneal_steps=10)
    data = load_data(f"pairs:{pairs}")
    m = build_method(cfg, data.info, torch.device("cpu"))
    x1, y, z = data.draw(8, torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    out = m.loss((x1, y, z), step=5, phase="main")
    assert out["beta"].item() == 0.5
    torch.manual_seed(1)  # same draws, by hand: eps, then t
    zp = math.sqrt(1 - 0.25) * z + 0.5 * torch.randn_like(z)
    t = torch.rand(8)
    xt = t[:, None] * x1 + (1 - t[:, None]) * zp
    ref = (m.net(xt, t) - (x1 - zp)).pow(2).mean()
    torch.testing.assert_close(out["loss"], ref)


# ------------------------------------------------------------------ pairs

def test_pairs_hold_the_teacher_ode_of_per_seed_noise(teacher, pairs):
    man = json.loads((pairs / "manifest.json").read_text())
    assert man["complete"] and man["shards"] == 3 and man["data"]["spec"] == "toy2d:moons"
    data = load_data(f"pairs:{pairs}")
    assert len(data) == 40 and data.info.spec == "toy2d:moons"
    gen = slimstep.load(teacher).with_sampling(solver="euler", steps=3)
    seed = man["args"]["seed"]
    assert seed == 10**6  # the default: pairs never share a seed with the evaluation
    x, _ = gen.generate(40, seed=seed)
    torch.testing.assert_close(data.x, x)
    s = load_file(str(pairs / "shard-00002.safetensors"))
    assert s["seeds"].tolist() == list(range(seed + 32, seed + 40))


def test_killed_pair_generation_resumes_to_the_uninterrupted_result(teacher, tmp_path, monkeypatch):
    full = generate_pairs(teacher, tmp_path / "full", 40, solver="euler", steps=3, shard_size=16,
                          batch_size=5, progress=False)
    from slimstep.files import atomic_write

    real_write, calls = pairs_mod.write_bytes, {"n": 0}

    def dying_write(path, data):
        calls["n"] += 1
        if calls["n"] == 2:  # killed halfway through writing the second shard
            def torn(tmp):
                Path(tmp).write_bytes(bytes(data)[: len(data) // 2])
                raise KeyboardInterrupt

            atomic_write(path, torn)
        real_write(path, data)

    monkeypatch.setattr(pairs_mod, "write_bytes", dying_write)
    with pytest.raises(KeyboardInterrupt):
        generate_pairs(teacher, tmp_path / "split", 40, solver="euler", steps=3, shard_size=16,
                       batch_size=7, progress=False)
    leftovers = sorted(p.name for p in (tmp_path / "split").iterdir())
    assert leftovers == ["manifest.json", "shard-00000.safetensors"]  # no half-written shard
    with pytest.raises(Exception, match="did not finish"):
        load_data(f"pairs:{tmp_path / 'split'}")
    monkeypatch.setattr(pairs_mod, "write_bytes", real_write)
    generate_pairs(teacher, tmp_path / "split", 40, solver="euler", steps=3, shard_size=16,
                   batch_size=7, progress=False)
    for i in range(3):
        a = load_file(str(full / f"shard-{i:05d}.safetensors"))
        b = load_file(str(tmp_path / "split" / f"shard-{i:05d}.safetensors"))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(PairsError, match="other arguments"):
        generate_pairs(teacher, tmp_path / "split", 40, solver="euler", steps=4, shard_size=16,
                       progress=False)


# ------------------------------------------------------------------ flow-guided distillation

@pytest.fixture(scope="module")
def reflowed(pairs, tmp_path_factory):
    cfg = _cfg("annealing-reflow", pairs, anneal_steps=2)
    return train(cfg, tmp_path_factory.mktemp("sf") / "reflow", progress=False)


def test_flow_guided_loss_equals_hand_computation(pairs, reflowed):
    cfg = _cfg("slimflow", pairs, init=reflowed, pair_weight=0.7, guide_weight=0.3)
    data = load_data(f"pairs:{pairs}")
    m = build_method(cfg, data.info, torch.device("cpu"))
    student, _ = slimstep.generator.load_net(reflowed, "raw")
    guide, _ = slimstep.generator.load_net(reflowed, "ema")
    for mine, ref in ((m.net, student), (m.guide, guide)):
        a, b = mine.state_dict(), ref.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x1, y, z = data.draw(6, torch.Generator().manual_seed(3))
    torch.manual_seed(7)
    out = m.loss((x1, y, z), step=0, phase="main")
    torch.manual_seed(7)  # same draws by hand: n, then tau
    n = torch.randn_like(z)
    tau = torch.empty(6).uniform_(0.2, 0.8)
    zero = torch.zeros(6)
    with torch.no_grad():
        pair = ((z + student(z, zero)) - x1).pow(2).mean(1).mean()
        x_tau = n + tau[:, None] * student(n, zero)
        target = x_tau + (1 - tau[:, None]) * guide(x_tau, tau)
        g = ((n + student(n, zero)) - target).pow(2).mean(1).mean()
    torch.testing.assert_close(out["pair"], pair)
    torch.testing.assert_close(out["guide"], g)
    torch.testing.assert_close(out["loss"], 0.7 * pair + 0.3 * g)
    # the guide gets no gradient; the student does
    out["loss"].backward()
    assert all(p.grad is None for p in m.guide.parameters())
    assert all(p.grad is not None for p in m.net.parameters())


def test_distill_is_slimflow_without_the_guide(pairs, reflowed):
    data = load_data(f"pairs:{pairs}")
    sf = build_method(_cfg("slimflow", pairs, init=reflowed, guide_weight=0.0), data.info, torch.device("cpu"))
    nd = build_method(_cfg("distill", pairs, init=reflowed), data.info, torch.device("cpu"))
    batch = data.draw(6, torch.Generator().manual_seed(3))
    torch.testing.assert_close(sf.loss(batch, 0, "main")["loss"], nd.loss(batch, 0, "main")["loss"])
    with pytest.raises(Exception, match="has no option"):
        build_method(_cfg("distill", pairs, guide_weight=1.0), data.info, torch.device("cpu"))
    with pytest.raises(Exception, match="--init"):
        build_method(_cfg("slimflow", pairs), data.info, torch.device("cpu"))


def test_one_step_checkpoint_samples_z_plus_v0(pairs, reflowed, tmp_path):
    out = train(_cfg("slimflow", pairs, init=reflowed), tmp_path / "sf", progress=False)
    gen = slimstep.load(out)
    assert gen.nfe == 1 and gen.sampling.steps == 1
    x, _ = gen.generate(5, seed=11)
    z = torch.stack([torch.randn(2, generator=torch.Generator().manual_seed(s)) for s in range(11, 16)])
    with torch.no_grad():
        torch.testing.assert_close(x, z + gen.net(z, torch.zeros(5)))


# ------------------------------------------------------------------ distances

def test_pseudo_huber_and_l2():
    a, b = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    assert Distance("l2")(a, b).tolist() == [1.0, 1.0]
    c = 0.00054 * 4
    assert Distance("pseudo-huber")(a, b)[0].item() == pytest.approx(math.sqrt(16 + c * c) - c)
    assert Distance("pseudo-huber")(a, a)[0].item() == pytest.approx(0.0, abs=1e-7)


def test_lpips_from_a_local_file_in_the_official_layout(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    sd, c = {}, 3
    idx = 0
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]:
        if v == "M":
            idx += 1
            continue
        sd[f"features.{idx}.weight"] = torch.randn(v, c, 3, 3, generator=g) * 0.05
        sd[f"features.{idx}.bias"] = torch.zeros(v)
        c, idx = v, idx + 2
    for k, ch in enumerate((64, 128, 256, 512, 512)):
        sd[f"lin{k}.model.1.weight"] = torch.rand(1, ch, 1, 1, generator=g)
    save_file(sd, str(tmp_path / "lpips.safetensors"))
    d = Distance("lpips", str(tmp_path / "lpips.safetensors"))
    a = torch.rand(2, 1, 8, 8) * 2 - 1
    b = a.clone().requires_grad_(True)
    assert d(a, a).abs().max().item() < 1e-6
    far = d(a, -b)
    assert (far > 0).all()
    far.sum().backward()
    assert b.grad is not None and b.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="not found"):
        LPIPS(tmp_path / "missing.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="not an LPIPS-VGG weights file"):
        LPIPS(tmp_path / "bad.safetensors")


# ------------------------------------------------------------------ CLI end to end

def test_cli_pairs_reflow_slimflow_sample(teacher, tmp_path):
    p, r, s = tmp_path / "pairs", tmp_path / "reflow", tmp_path / "sf"
    assert main(["pairs", "--teacher", str(teacher), "--n", "24", "--out", str(p), "--solver", "heun",
                 "--steps", "2", "--shard-size", "10", "--quiet"]) == 0
    tiny = ["train.steps=3", "train.batch_size=8", "train.ckpt_every=3", "net.hidden=8"]
    assert main(["distill", "--method", "annealing-reflow", "--config", "configs/toy2d/annealing-reflow.yaml",
                 "--teacher", str(teacher), "--pairs", str(p), "--out", str(r), "--quiet", *tiny]) == 0
    assert main(["distill", "--method", "slimflow", "--config", "configs/toy2d/slimflow.yaml",
                 "--teacher", str(teacher), "--pairs", str(p), "--init", str(r), "--out", str(s),
                 "--quiet", *tiny]) == 0
    cfg = json.loads((s / "config.json").read_text())
    assert cfg["method"]["name"] == "slimflow" and cfg["init"] == str(r.resolve())
    assert main(["sample", "--ckpt", str(s), "--n", "5", "--out", str(tmp_path / "x.npz")]) == 0
    assert main(["distill", "--method", "slimflow", "--config", "configs/toy2d/annealing-reflow.yaml",
                 "--pairs", str(p), "--init", str(r), "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert main(["distill", "--method", "reflow", "--config", "configs/toy2d/teacher.yaml",
                 "--out", str(tmp_path / "bad2"), "--quiet"]) == 2


def test_student_gets_conditional_from_pairs_labels(tmp_path):
    """Pairs of a class-conditional teacher carry labels; the reflow student is conditional."""
    cfg = load_config(None, {"data": {"spec": "digits"},
                             "net": {"name": "unet", "nf": 8, "ch_mult": [1], "num_res_blocks": 1,
                                     "attn_resolutions": []},
                             "train": {"steps": 1, "batch_size": 4, "ckpt_every": 1}})
    t = train(cfg, tmp_path / "t", progress=False)
    p = generate_pairs(t, tmp_path / "p", 6, solver="euler", steps=1, progress=False)
    data = load_data(f"pairs:{p}")
    assert data.y is not None and data.y.dtype == torch.long
    c = cfg.replace(pairs=str(p), method=Named("reflow", {"flip": True}))
    m = build_method(c, data.info, torch.device("cpu"))
    assert m.net.num_classes == 10 and m.conditional


def test_pairs_from_another_teacher_are_refused(teacher, pairs, tmp_path):
    """The manifest records the teacher's weights digest: a student trained on pairs with
    another --teacher (same data, same shape) would learn one teacher's map while its
    guide term follows the other's. Another data set is refused by its spec and shape."""
    from slimstep.data import DataError

    assert json.loads((pairs / "manifest.json").read_text())["teacher_sha"]
    cfg = load_config(None, {"data": {"spec": "toy2d:moons"}, "net": TINY_NET,
                             "train": {"steps": 20, "batch_size": 32, "lr": 3e-3, "ckpt_every": 20,
                                       "seed": 1}})
    other = train(cfg, tmp_path / "other", progress=False)
    with pytest.raises(DataError, match="made by another teacher"):
        train(_cfg("reflow", pairs), tmp_path / "s", teacher=slimstep.load(other), progress=False)
    assert not (tmp_path / "s").exists()
    train(_cfg("reflow", pairs), tmp_path / "ok", teacher=slimstep.load(teacher), progress=False)
    gauss = load_config(None, {"data": {"spec": "toy2d:8gaussians"}, "train": {"steps": 1},
                               "net": {"name": "mlp", "hidden": 8, "depth": 1}})
    gauss_teacher = slimstep.load(train(gauss, tmp_path / "gauss", progress=False))
    with pytest.raises(DataError, match="pairs in .* are toy2d:moons"):
        train(_cfg("reflow", pairs), tmp_path / "s2", teacher=gauss_teacher, progress=False)
