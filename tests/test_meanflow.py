"""MeanFlow and FreeFlow (flowmap): JVP targets, time conventions, DDP gradient sync."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from slimstep.config import load_config
from slimstep.data import DataInfo
from slimstep.generator import Generator
from slimstep.methods.flowmap import FlowMap
from slimstep.methods.meanflow import meanflow_loss, meanflow_target, u_meanflow
from slimstep.nets import build_net
from slimstep.train.dist import allreduce_grads

INFO = DataInfo("digits", "image", (1, 8, 8), 10)
SPEC = {"name": "dit", "in_shape": [1, 8, 8], "num_classes": 10, "patch_size": 2,
        "hidden_size": 32, "depth": 2, "num_heads": 2}


def tiny_teacher(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    net = build_net(SPEC)
    for p in net.parameters():  # adaLN-Zero starts at exactly 0: perturb it
        p.data.add_(0.05 * torch.randn_like(p))
    return Generator(net, INFO, {"kind": "velocity", "solver": "euler", "steps": 1},
                     {"net": SPEC})


def two_time_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = build_net({**SPEC, "extra_time_embeds": 1})
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return net


class Gaussian(nn.Module):
    """Exact fields of the linear path with data N(mu, s^2 I), noise N(0, I), our time.

    sigma_t = sqrt(t^2 s^2 + (1-t)^2); the flow maps x_a to
    x_b = b mu + (sigma_b / sigma_a)(x_a - a mu). ``forward(x, t=a, s=h)`` is the
    average velocity (x_{a+h} - x_a) / h (h = 0: the velocity), in our direction.
    """

    def __init__(self, mu: float = 0.7, s: float = 0.5):
        super().__init__()
        self.mu, self.s = mu, s

    def sigma(self, t):
        return torch.sqrt(t**2 * self.s**2 + (1 - t) ** 2)

    def velocity(self, x, t):
        t = t.view(-1, 1, 1, 1)
        dsig = (t * self.s**2 - (1 - t)) / self.sigma(t)
        return self.mu + dsig / self.sigma(t) * (x - t * self.mu)

    def forward(self, x, t, y=None, s=None):
        if s is None:
            return self.velocity(x, t)
        a, h = t.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)
        b = a + h
        xb = b * self.mu + self.sigma(b) / self.sigma(a) * (x - a * self.mu)
        safe = torch.where(h.abs() > 1e-9, h, torch.ones_like(h))
        return torch.where(h.abs() > 1e-9, (xb - x) / safe, self.velocity(x, t))


def test_meanflow_jvp_target_equals_finite_difference():
    net = two_time_net().double()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    v = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0.9, 0.6, 0.5, 0.3], dtype=torch.float64)
    r = torch.tensor([0.2, 0.6, 0.1, 0.05], dtype=torch.float64)
    y = torch.tensor([1, 2, 10, 4])
    e = 1e-5
    for k in (1.0, 1e-3):  # s_scale
        u, target = meanflow_target(net, z, r, t, v, y, k)
        dudt = (u_meanflow(net, z + e * v, r, t + e, y, k)
                - u_meanflow(net, z - e * v, r, t - e, y, k)) / (2 * e)
        fd = v - (t - r).view(-1, 1, 1, 1) * dudt
        torch.testing.assert_close(u, u_meanflow(net, z, r, t, y, k))
        torch.testing.assert_close(target, fd, atol=1e-4, rtol=1e-4)


def test_meanflow_conventions_on_the_gaussian_path():
    """The exact average velocity satisfies the MeanFlow identity after our conversion,
    and the one-step sample z + net(z, 0, s=1) is the exact flow map."""
    f = Gaussian().double()
    z = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([0.8, 0.5, 1.0], dtype=torch.float64)  # MeanFlow time, 1 = noise
    r = torch.tensor([0.1, 0.5, 0.0], dtype=torch.float64)
    v_mf = -f.velocity(z, 1 - t)  # MeanFlow velocity eps - x = minus ours
    u, target = meanflow_target(f, z, r, t, v_mf, None)
    torch.testing.assert_close(u, target, atol=1e-8, rtol=1e-6)
    one = z + f(z, torch.zeros(3, dtype=torch.float64), s=torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(one, f.mu + f.s * z)  # N(0,1) noise -> N(mu, s^2) data


def _flowmap(teacher, **opts) -> FlowMap:
    cfg = load_config(None, {"method": {"name": "flowmap", **opts}, "net": {"name": "dit"}})
    return FlowMap(cfg, INFO, device=torch.device("cpu"), teacher=teacher)


def test_flowmap_at_small_delta_is_the_teacher_velocity():
    teacher = tiny_teacher()
    m = _flowmap(teacher)
    m.net.double()
    z = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 3, 7, 10])
    v = teacher.net.double()(z, torch.zeros(4, dtype=torch.float64), y)
    for d in (1e-4, 1e-2):
        delta = torch.full((4,), d, dtype=torch.float64)
        f = z + d * m.F(z, delta, y)  # f(z, δ) = z + δ F(z, δ)
        torch.testing.assert_close((f - z) / d, v, atol=1e-4, rtol=1e-4)


def test_flowmap_prediction_target_is_exact_for_the_true_flow_map():
    """For the exact flow map of a Gaussian teacher the residual vanishes (JVP and FD)."""
    for derivative in ("jvp", "fd"):
        # s_scale 1: the exact map below takes the raw gap δ as its s input
        m = _flowmap(tiny_teacher(), derivative=derivative, fd_eps=1e-4, s_scale=1.0)
        m.net, m.teacher_net = Gaussian().double(), Gaussian().double()
        z = torch.randn(6, 1, 8, 8, dtype=torch.float64)
        delta = torch.tensor([0.05, 0.2, 0.5, 0.7, 0.9, 1.0], dtype=torch.float64)
        _, mse = m.prediction_loss(z, delta, None)
        assert float(mse) < 1e-8, (derivative, float(mse))


def test_flowmap_loss_runs_with_correction():
    m = _flowmap(tiny_teacher(), correction=True)
    assert m.phases == ("fake", "main")
    batch = (torch.randn(8, 1, 8, 8), torch.randint(10, (8,)))
    for phase in m.phases:
        out = m.loss(batch, 0, phase)
        out["loss"].backward()
        assert torch.isfinite(out["loss"])
    assert m.export().kind == "flowmap"


# ------------------------------------------------------------------ data parallel



def _inputs():
    g = torch.Generator().manual_seed(3)
    x, eps = torch.randn(8, 1, 8, 8, generator=g), torch.randn(8, 1, 8, 8, generator=g)
    t = torch.rand(8, generator=g) * 0.8 + 0.2
    r = t * torch.tensor([1, 0.5, 1, 0.2, 1, 1, 0.7, 1.0])
    return x, eps, t, r, torch.randint(11, (8,), generator=g)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    net = two_time_net()
    parts = [a.chunk(2)[rank] for a in _inputs()]
    meanflow_loss(net, *parts)[0].backward()
    allreduce_grads(list(net.parameters()), world=2)
    if rank == 0:
        torch.save({k: p.grad for k, p in net.named_parameters() if p.grad is not None}, out)
    dist.barrier()  # no rank tears gloo down while the other still works (seen: SIGABRT)
    dist.destroy_process_group()


def test_meanflow_two_gloo_processes_give_the_single_process_gradient(tmp_path, free_port):
    out = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(free_port, out), nprocs=2, join=True)
    synced = torch.load(out, weights_only=True)
    net = two_time_net()
    meanflow_loss(net, *_inputs())[0].backward()
    ref = {k: p.grad for k, p in net.named_parameters() if p.grad is not None}
    assert synced.keys() == ref.keys() and len(ref) > 10
    for k in ref:
        torch.testing.assert_close(synced[k], ref[k], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- smooth time


def _shipped_net(path: str, **extra) -> nn.Module:
    """The network of a shipped recipe with a second time embedding, every weight perturbed
    (adaLN-Zero and zeroed embeddings would make du/dt vanish trivially)."""
    import yaml

    from slimstep.config import find_config

    spec = dict(yaml.safe_load(find_config(path).read_text())["net"])
    shape = [1, 8, 8] if spec["name"] == "dit" else [2]
    spec.update(in_shape=shape, num_classes=10 if spec["name"] == "dit" else 0,
                extra_time_embeds=1, **extra)
    torch.manual_seed(0)
    net = build_net(spec).double()
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return net


def _dudt_error(net: nn.Module) -> float:
    """|JVP of u along t (tangent 1 on t only) - central difference of step 1e-2| / |JVP|."""
    shape = (16, *net.in_shape)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(16, generator=g, dtype=torch.float64) * 0.8 + 0.1
    r = t * torch.rand(16, generator=g, dtype=torch.float64)
    y = torch.arange(16) % 10 if getattr(net, "num_classes", 0) else None
    from slimstep.nets.dit import math_attention

    with math_attention():
        _, dudt = torch.func.jvp(lambda t_: u_meanflow(net, z, r, t_, y), (t,),
                                 (torch.ones_like(t),))
    h = 1e-2
    fd = (u_meanflow(net, z, r, t + h, y) - u_meanflow(net, z, r, t - h, y)) / (2 * h)
    return float((dudt - fd).norm() / dudt.norm())


def test_jvp_along_t_follows_the_function_on_the_shipped_nets():
    """The check that would have caught MeanFlow's frozen one-step map: on the DiT teacher
    and the toy MLP as shipped, du/dt by JVP equals a central difference of step 1e-2
    within 5 %. With DiT's old time_scale 1000 the JVP follows the embedding instead."""
    for path in ("digits/dit-teacher.yaml", "toy2d/teacher.yaml", "toy2d/meanflow.yaml"):
        err = _dudt_error(_shipped_net(path))
        assert err < 0.05, (path, err)
    sharp = _dudt_error(_shipped_net("digits/dit-teacher.yaml", time_scale=1000.0))
    assert sharp > 0.5, sharp


def test_two_time_student_starts_as_its_teacher_for_both_mlp_embedders():
    """The second time embedding's last layer is zeroed whichever embedder the MLP uses
    (Linear-SiLU-Linear or one Linear), so net(x, t, s) = teacher(x, t) for every s."""
    from slimstep.methods.flowmap import two_time_student

    for kind in ("mlp", "linear"):
        spec = {"name": "mlp", "in_shape": [2], "hidden": 32, "depth": 2, "time_scale": 1.0,
                "time_embed": kind}
        torch.manual_seed(0)
        teacher = Generator(build_net(spec), DataInfo("toy2d:moons", "points", (2,)),
                            {"kind": "velocity", "solver": "euler", "steps": 1}, {"net": spec})
        net, got = two_time_student(teacher, "flowmap")
        assert got["time_embed"] == kind and got["extra_time_embeds"] == 1
        x, t = torch.randn(8, 2), torch.rand(8)
        want = teacher.net(x, t)
        for s in (torch.zeros(8), torch.rand(8)):
            torch.testing.assert_close(net(x, t, s=s), want)
    with pytest.raises(ValueError, match="time_embed"):  # a ConfigError: one line from the CLI
        build_net({"name": "mlp", "in_shape": [2], "time_embed": "fourier"})


def test_meanflow_refuses_a_sharp_time_embedding():
    import pytest

    from slimstep.methods.base import MethodError
    from slimstep.methods.meanflow import MeanFlow

    cfg = load_config(None, {"method": {"name": "meanflow", "init": "teacher"}, "net": {"name": "dit"}})
    with pytest.raises(MethodError, match="time_scale 1000"):
        MeanFlow(cfg, INFO, device=torch.device("cpu"), teacher=tiny_teacher())  # DiT default


def test_gap_scale_is_derived_from_the_time_scale():
    """s = δ / time_scale: the gap reaches the sinusoid unscaled whatever the teacher."""
    sharp = _flowmap(tiny_teacher())  # DiT default time_scale 1000
    assert sharp.s_scale == 1e-3 and sharp.export().s == 1e-3
    spec = {**SPEC, "time_scale": 1.0}
    smooth = Generator(build_net(spec), INFO, {"kind": "velocity", "solver": "euler", "steps": 1},
                       {"net": spec})
    assert _flowmap(smooth).s_scale == 1.0
    assert _flowmap(smooth, s_scale=0.5).s_scale == 0.5  # an explicit value wins


def test_meanflow_one_step_map_moves_away_from_the_teachers_euler_step(tmp_path, toy_cfg):
    """A short MeanFlow fine-tune of a smooth moons teacher: its one-step samples must leave
    the teacher's own Euler-1 samples (what the init gives) and get closer to the data."""
    import copy

    import slimstep
    from slimstep.data import load_data
    from slimstep.eval.toy import w2
    from slimstep.train.loop import train

    cfg = copy.deepcopy(toy_cfg)
    cfg["net"].update(hidden=64, time_scale=1.0)
    cfg["train"].update(steps=300, batch_size=256, lr=3e-3, log_every=100, ckpt_every=300)
    teacher = slimstep.load(train(cfg, tmp_path / "teacher", progress=False))
    mf = copy.deepcopy(cfg)
    mf["method"] = {"name": "meanflow", "init": "teacher", "velocity": "teacher",
                    "weight_power": 0.0, "r_neq_t": 0.75, "logit_mean": -0.6, "logit_std": 1.6,
                    "r_logit_mean": -4.0, "r_logit_std": 1.6}
    mf["train"].update(steps=300, lr=1e-3)
    student = slimstep.load(train(mf, tmp_path / "mf", teacher=teacher, progress=False))
    euler1, _ = teacher.with_sampling(solver="euler", steps=1).generate(1000, seed=0)
    one, _ = student.generate(1000, seed=0)
    data, _ = load_data("toy2d:moons").reference(1000, seed=5)
    moved = float((one - euler1).norm(dim=1).mean())
    assert moved > 0.2, moved
    assert w2(one, data) < 0.7 * w2(euler1, data), (w2(one, data), w2(euler1, data))


def test_flowmap_correction_balance_scales_to_the_prediction_residual():
    """λ = α E‖Δ_pred‖ / E‖Δ_corr‖: the balanced correction direction λ·Δ_corr has mean
    norm α times the prediction residual's, whatever the fake net's error size."""
    from slimstep.methods.flowmap import correction_lambda

    g = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    pred = torch.tensor(0.3, dtype=torch.float64)
    for scale in (1e-3, 1.0, 50.0):
        lam = correction_lambda(0.5, True, pred, scale * g)
        got = (lam * scale * g).flatten(1).norm(dim=1).mean()
        torch.testing.assert_close(got.double(), 0.5 * pred, rtol=1e-5, atol=0)
    assert float(correction_lambda(0.5, False, pred, g)) == 0.5  # fixed weight


def test_flowmap_balanced_correction_reaches_the_loss():
    """The loop's main phase logs the λ it used: the fixed weight when balance is off,
    a batch-dependent value when it is on."""
    batch = (torch.zeros(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))
    fixed = _flowmap(tiny_teacher(), correction=True, correction_weight=0.1).loss(batch, 0, "main")
    assert float(fixed["corr_lambda"]) == pytest.approx(0.1)
    torch.manual_seed(0)
    out = _flowmap(tiny_teacher(), correction=True, correction_balance=True,
                   correction_weight=0.1).loss(batch, 0, "main")
    assert torch.isfinite(out["loss"]) and float(out["corr_lambda"]) > 0
    assert float(out["corr_lambda"]) != pytest.approx(0.1)


# ----------------------------------------------------------------------------- guided target


def _meanflow(**opts):
    from slimstep.methods.meanflow import MeanFlow

    spec = {**SPEC, "time_scale": 1.0}
    torch.manual_seed(0)
    net = build_net(spec)
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    teacher = Generator(net, INFO, {"kind": "velocity", "solver": "euler", "steps": 1}, {"net": spec})
    cfg = load_config(None, {"method": {"name": "meanflow", "init": "teacher", **opts}})
    m = MeanFlow(cfg, INFO, device=torch.device("cpu"), teacher=teacher)
    with torch.no_grad():  # the s-embedding starts at zero: perturb it so u depends on the gap
        for p in m.net.s_embedder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_guided_velocity_is_the_hand_formula():
    """ṽ = ω v + κ u_c + (1 - ω - κ) u_∅ where the mask is on, v elsewhere; the method's own
    u_c / u_∅ are the network's u at r = t with the label and with the null class."""
    from slimstep.methods.meanflow import guided_velocity

    torch.manual_seed(0)
    v, uc, uu = (torch.randn(4, 1, 8, 8) for _ in range(3))
    on = torch.tensor([True, False, True, True])
    got = guided_velocity(v, uc, uu, 0.2, 0.92, on)
    want = 0.2 * v + 0.92 * uc + (1 - 0.2 - 0.92) * uu
    torch.testing.assert_close(got[on], want[on])
    torch.testing.assert_close(got[~on], v[~on])

    m = _meanflow(guidance_omega=0.2, guidance_kappa=0.92, guidance_t_min=0.1, guidance_t_max=0.8)
    z = torch.randn(4, 1, 8, 8)
    t = torch.tensor([0.5, 0.9, 0.3, 0.6])  # 0.9 lies outside the interval
    y = torch.tensor([1, 2, 3, 10])  # 10 = the null class: a dropped label is not guided
    with torch.no_grad():
        net = m.net.eval()
        u_c = -net(z, 1 - t, y, s=torch.zeros(4))
        u_u = -net(z, 1 - t, torch.full_like(y, 10), s=torch.zeros(4))
    mixed = m._guided(z, t, y, v)
    for i, guided in enumerate([True, False, True, False]):
        want = 0.2 * v[i] + 0.92 * u_c[i] + (1 - 0.2 - 0.92) * u_u[i] if guided else v[i]
        torch.testing.assert_close(mixed[i], want, rtol=1e-5, atol=1e-6)


def test_guided_target_at_omega_one_is_the_unguided_target():
    """ω = 1, κ = 0: ṽ = v, so tangent and target are MeanFlow's unguided ones."""
    m = _meanflow(guidance_omega=1.0, guidance_kappa=0.0)
    assert not m.guided
    torch.manual_seed(1)
    x, eps = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t, r = torch.tensor([0.9, 0.6, 0.4, 0.7]), torch.tensor([0.2, 0.6, 0.1, 0.5])
    y = torch.tensor([0, 1, 2, 3])
    z = (1 - t.view(-1, 1, 1, 1)) * x + t.view(-1, 1, 1, 1) * eps
    v = m._guided(z, t, y, eps - x)
    torch.testing.assert_close(v, eps - x)
    _, plain = meanflow_target(m.net, z, r, t, eps - x, y, m.s_scale)
    _, guided = meanflow_target(m.net, z, r, t, v, y, m.s_scale)
    torch.testing.assert_close(guided, plain)


def test_guided_meanflow_options_are_checked():
    from slimstep.methods.base import MethodError

    with pytest.raises(MethodError, match="guidance_kappa"):
        _meanflow(guidance_kappa=1.0)
    with pytest.raises(MethodError, match="guidance_t_min"):
        _meanflow(guidance_t_min=0.8, guidance_t_max=0.2)
    with pytest.raises(MethodError, match="tr_sampler"):
        _meanflow(tr_sampler="v2")


def test_guided_meanflow_trains_on_class_conditional_digits(tmp_path):
    """A tiny class-conditional digits MeanFlow run with the ImageNet preset's guidance:
    the guided target is on (ṽ moved off v), every logged loss is finite, samples load."""
    import json

    import slimstep
    from slimstep.config import load_config
    from slimstep.train.loop import train

    cfg = load_config(None, {
        "data": {"spec": "digits"},
        "net": {"name": "dit", "patch_size": 2, "hidden_size": 32, "depth": 2, "num_heads": 2,
                "time_scale": 1.0},
        "method": {"name": "meanflow", "init": "scratch", "guidance_omega": 0.2,
                   "guidance_kappa": 0.92, "guidance_t_max": 0.75},
        "train": {"steps": 3, "batch_size": 8, "lr": 1e-3, "log_every": 1, "ckpt_every": 3,
                  "warmup": 0},
    })
    out = train(cfg, tmp_path / "mf", progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert len(rows) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert max(r["v_shift"] for r in rows) > 0
    x, _ = slimstep.load(out).generate(8, seed=0)
    assert x.shape == (8, 1, 8, 8) and torch.isfinite(x).all()


def test_v1_sampler_keeps_t_and_takes_r_below_it():
    """py-meanflow's v1: mask first, then r = min(t, r); t keeps its own draw. The sorted
    sampler (the default, unchanged) differs only where r was drawn above t."""
    from slimstep.methods.meanflow import sample_t_r

    torch.manual_seed(3)
    t1, r1 = sample_t_r(20000, -0.6, 1.6, 0.75, "cpu", -4.0, 1.6, "v1")
    torch.manual_seed(3)
    a = torch.sigmoid(-0.6 + 1.6 * torch.randn(20000))
    b = torch.sigmoid(-4.0 + 1.6 * torch.randn(20000))
    neq = torch.rand(20000) < 0.75
    assert torch.equal(t1, a) and torch.equal(r1, torch.where(neq, torch.minimum(a, b), a))
    torch.manual_seed(3)
    t0, r0 = sample_t_r(20000, -0.6, 1.6, 0.75, "cpu", -4.0, 1.6)
    assert torch.equal(t0, torch.maximum(a, b))
    assert torch.equal(r0, torch.where(neq, torch.minimum(a, b), torch.maximum(a, b)))
    differ = float(((t0 != t1) | (r0 != r1)).float().mean())
    assert 0.02 < differ < 0.1, differ  # the pairs with r drawn above t
