"""DMD2, sCD and ECT: signs and scales of their gradients on Gaussians whose answer is
known, the consistency targets against finite differences, short toy runs, options."""

from __future__ import annotations

import math

import pytest
import torch

import slimstep
from slimstep.config import load_config
from slimstep.data import load_data
from slimstep.eval.toy import w2
from slimstep.methods import MethodError, build_method
from slimstep.methods.consistency import (
    consistency_fn,
    ect_loss,
    ect_partner,
    scd_tangent,
    scd_target,
)
from slimstep.methods.dmd2 import dm_gradient, dm_loss, x1_prediction
from slimstep.nets import build_net
from slimstep.train.loop import train

MU, S = torch.tensor([1.0, -0.5], dtype=torch.float64), 1.5  # data N(MU, S^2 I)


def gaussian_velocity(x, t, m, s):
    """The exact velocity of the linear path (our time) for data N(m, s^2 I):
    v = m + (t s^2 - (1 - t)) / var_t (x - t m), var_t = t^2 s^2 + (1 - t)^2."""
    t = t[:, None]
    var = t**2 * s**2 + (1 - t) ** 2
    return m + (t * s**2 - (1 - t)) / var * (x - t * m)


def test_x1_prediction_is_the_posterior_mean_of_the_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.96 + 0.02
    var = t[:, None] ** 2 * S**2 + (1 - t[:, None]) ** 2
    want = MU + t[:, None] * S**2 / var * (x - t[:, None] * MU)  # E[x1 | x_t]
    got = x1_prediction(x, t, gaussian_velocity(x, t, MU, S))
    assert torch.allclose(got, want, atol=1e-12)


def _dm_grads(a0: float, b0: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the DM loss in (a, b) for the generator G(z) = a z + b, with the exact
    real (data N(MU, S^2 I)) and fake (generator N(b, a^2 I)) velocities."""
    a = torch.tensor(a0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(16384, 2, generator=g, dtype=torch.float64)
    t = 0.02 + 0.96 * torch.rand(16384, generator=g, dtype=torch.float64)
    x = a * z + b
    n = torch.randn(16384, 2, generator=g, dtype=torch.float64)
    xt = t[:, None] * x.detach() + (1 - t[:, None]) * n
    v_real = gaussian_velocity(xt, t, MU, S)
    v_fake = gaussian_velocity(xt, t, b.detach(), abs(a0))
    dm_loss(x, dm_gradient(x.detach(), xt, t, v_real, v_fake).double()).backward()
    return a.grad, b.grad


@pytest.mark.parametrize("a0, b0", [(0.5, (0.0, 0.0)), (2.5, (2.0, 0.5))])
def test_one_dmd2_generator_step_moves_mean_and_spread_toward_the_data(a0, b0):
    """G(z) = a z + b on a 2-D Gaussian, where the optimum a = S, b = MU is known: a gradient
    step on the DM loss moves b toward MU and a toward S, from below and from above, and the
    gradient vanishes at the optimum (a sign or scale error in the score conversion fails)."""
    ga, gb = _dm_grads(a0, b0)
    lr = 0.1 * abs(a0 - S) / float(ga.abs())  # a step a tenth of the way, by a's gradient
    a1, b1 = a0 - lr * ga, torch.tensor(b0, dtype=torch.float64) - lr * gb
    assert abs(a1 - S) < abs(a0 - S)
    assert (b1 - MU).norm() < (torch.tensor(b0, dtype=torch.float64) - MU).norm()
    ga_opt, gb_opt = _dm_grads(S, tuple(MU.tolist()))
    assert float(ga_opt.abs()) < 0.05 * float(ga.abs()) and float(gb_opt.norm()) < 0.05 * float(gb.norm())


def _mlp(seed=0):
    torch.manual_seed(seed)
    net = build_net({"name": "mlp", "in_shape": [2], "hidden": 32, "depth": 2, "time_dim": 16,
                     "time_scale": 1.0}).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def test_scd_tangent_and_target_equal_finite_differences_of_the_consistency_condition():
    """df/dt along the teacher's flow by JVP = a central difference of f along (v, 1); the
    target's move F- -> F- + k g is along the discrete consistency target
    (f(x_{t+h}, t+h) - x_t) / (1 - t) - F-, i.e. the same direction and sign."""
    net = _mlp()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 2, generator=g, dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, 16, dtype=torch.float64)
    v = gaussian_velocity(x, t, MU, S)
    F, dfdt = scd_tangent(net, x, t, v, None)
    h = 1e-4
    with torch.no_grad():
        fd = (consistency_fn(net, x + h * v, t + h, None)
              - consistency_fn(net, x - h * v, t - h, None)) / (2 * h)
    assert (dfdt - fd).norm() <= 0.05 * fd.norm()
    assert torch.allclose(dfdt, fd, rtol=0.05, atol=1e-6)
    k, ghat = scd_target(F, dfdt, t, 0.5, 0.1)
    move = k * ghat  # target - F-
    with torch.no_grad():  # the discrete consistency target of F at a small step along the ODE
        e = 1e-3
        f_next = consistency_fn(net, x + e * v, t + e, None)
        disc = (f_next - x) / (1 - t[:, None]) - F.detach()
    cos = torch.nn.functional.cosine_similarity(move, disc, dim=1)
    assert (cos > 0.95).all(), cos
    # the normalised tangent in trig units has norm ||g|| / (||g|| + c) < 1
    assert (ghat.norm(dim=1) < 1).all()


def test_ect_target_equals_a_finite_difference_of_the_consistency_condition():
    """At a late stage (small Δt) ECT's loss compares f at t and at its partner r on the
    same noise path: (f(x_r, r) - f(x_t, t)) / (r - t) = df/dt along (x1 - z, 1) (JVP), 5 %."""
    net = _mlp(3)
    g = torch.Generator().manual_seed(4)
    x1 = torch.randn(16, 2, generator=g, dtype=torch.float64)
    z = torch.randn(16, 2, generator=g, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 16, dtype=torch.float64)
    r = ect_partner(t, stage=14, q=2.0, k=8.0, b=1.0)
    assert (r > t).all() and ((r - t) < 1e-3).all()
    xt, xr = t[:, None] * x1 + (1 - t[:, None]) * z, r[:, None] * x1 + (1 - r[:, None]) * z
    with torch.no_grad():
        fd = (consistency_fn(net, xr, r, None) - consistency_fn(net, xt, t, None)) / (r - t)[:, None]
    _, dfdt = torch.func.jvp(lambda x_, t_: consistency_fn(net, x_, t_, None), (xt, t),
                             (x1 - z, torch.ones_like(t)))
    assert (fd - dfdt).norm() <= 0.05 * dfdt.norm()
    # the loss is ||Δ|| / (σ_t - σ_r) and pulls f(x_t, t) toward sg f(x_r, r)
    loss, _ = ect_loss(net, x1, z, t, r, None)
    want = ((consistency_fn(net, xt, t, None) - consistency_fn(net, xr, r, None)).norm(dim=1)
            / ((1 - t) / t - (1 - r) / r)).mean()
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    # stage 0: the partner of a small σ is the data itself (σ_r clamped at 0)
    assert ect_partner(torch.tensor([0.9]), 0, 2.0, 8.0, 1.0).item() == 1.0


def test_ect_partner_shrinks_by_q_per_stage():
    t = torch.tensor([0.2, 0.5])
    sig = (1 - t) / t
    gaps = [sig - (1 - r) / r for r in (ect_partner(t, s, 2.0, 8.0, 1.0) for s in (6, 7))]
    assert torch.allclose(gaps[0] / gaps[1], torch.tensor([2.0, 2.0]), rtol=1e-4)


# ----------------------------------------------------------------------------- toy runs

TEACHER = {"data": {"spec": "toy2d:moons"},
           "net": {"name": "mlp", "hidden": 64, "depth": 2, "time_dim": 16, "time_scale": 1.0},
           "train": {"steps": 400, "batch_size": 128, "lr": 3e-3, "log_every": 400,
                     "ckpt_every": 400, "warmup": 0, "ema": {"decay": 0.9}}}


@pytest.fixture(scope="module")
def moons_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("baselines") / "teacher"
    train(load_config(None, TEACHER), out, progress=False)
    return out


def one_step_w2(ckpt, n=1000) -> float:
    """W2 to moons of the checkpoint's one-step Euler map x = z + v(z, 0) (the students'
    own sampler; for the teacher: its one-step map, where every student starts)."""
    x, _ = slimstep.load(ckpt).with_sampling(solver="euler", steps=1).generate(n, seed=0)
    ref, _ = load_data("toy2d:moons").reference(n, seed=1)
    return w2(x, ref)


@pytest.mark.parametrize("method, opts, lr, steps", [
    ("dmd2", {"fake_updates": 2, "cls_weight": 1e-2, "gan_weight": 3e-3}, 3e-4, 100),
    ("scd", {"tangent_warmup": 20}, 3e-4, 100),
    ("ect", {"stage_steps": 30}, 3e-4, 100),
])
def test_a_short_toy_run_lowers_one_step_w2(moons_teacher, tmp_path, method, opts, lr, steps):
    start = one_step_w2(moons_teacher)  # the students start as the teacher's Euler step (W2 ~1.3)
    cfg = load_config(None, {"data": {"spec": "toy2d:moons"}, "method": {"name": method, **opts},
                             "train": {"steps": steps, "batch_size": 128, "lr": lr, "log_every": 10,
                                       "ckpt_every": steps, "warmup": 0, "ema": {"decay": 0.9},
                                       "grad_clip": 1.0}})
    out = train(cfg, tmp_path / method, teacher=slimstep.load(moons_teacher), progress=False)
    end = one_step_w2(out)
    assert math.isfinite(end) and end < 0.7 * start, (start, end)


def test_dmd2_steps_its_generator_once_per_fake_updates(moons_teacher, tmp_path):
    cfg = load_config(None, {"data": {"spec": "toy2d:moons"},
                             "method": {"name": "dmd2", "fake_updates": 3},
                             "train": {"steps": 6, "batch_size": 16, "log_every": 1, "ckpt_every": 6}})
    out = train(cfg, tmp_path / "d", teacher=slimstep.load(moons_teacher), progress=False)
    rows = [__import__("json").loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [("gen/dm" in r) for r in rows] == [False, False, True, False, False, True]
    assert all("fake/fm" in r for r in rows)


@pytest.mark.parametrize("method, opts, match", [
    ("dmd2", {"fake_updates": 0}, "fake_updates must be a positive number"),
    ("dmd2", {"t_min": 0.9, "t_max": 0.1}, "t_min must be below"),
    ("dmd2", {"gan_feature": 7, "cls_weight": 1e-2}, "gan_feature must index"),
    ("dmd2", {"gan_feature": "mid", "cls_weight": 1e-2}, "gan_feature must index"),
    ("scd", {"tangent_c": -1.0}, "tangent_c must be a number, 0 or more"),
    ("ect", {"shrink_q": 1.0}, "shrink_q must be above 1"),
    ("ect", {"stage_steps": 0.5}, "stage_steps must be an integer"),
])
def test_bad_options_are_one_line(moons_teacher, method, opts, match):
    cfg = load_config(None, {"data": {"spec": "toy2d:moons"}, "method": {"name": method, **opts}})
    with pytest.raises(MethodError, match=match):
        build_method(cfg, load_data("toy2d:moons").info, torch.device("cpu"),
                     teacher=slimstep.load(moons_teacher))


def test_scd_refuses_a_sharp_time_embedding(tmp_path):
    cfg = load_config(None, {**TEACHER, "net": {**TEACHER["net"], "time_scale": 1000.0},
                             "train": {**TEACHER["train"], "steps": 1, "ckpt_every": 1}})
    out = train(cfg, tmp_path / "sharp", progress=False)
    scd = load_config(None, {"data": {"spec": "toy2d:moons"}, "method": {"name": "scd"}})
    with pytest.raises(MethodError, match="time_scale 1000"):
        build_method(scd, load_data("toy2d:moons").info, torch.device("cpu"), teacher=slimstep.load(out))


# ----------------------------------------------------------------------------- image teachers

IMAGE_NETS = {
    "unet": {"name": "unet", "in_shape": [1, 8, 8], "num_classes": 10, "nf": 8, "ch_mult": [1, 2],
             "num_res_blocks": 1, "attn_resolutions": [4]},
    "dit": {"name": "dit", "in_shape": [1, 8, 8], "num_classes": 10, "patch_size": 2, "hidden_size": 32,
            "depth": 2, "num_heads": 2, "time_scale": 1.0, "class_dropout_prob": 0.1},
}


@pytest.mark.parametrize("method, net", [("dmd2", "unet"), ("dmd2", "dit"), ("ect", "unet"),
                                         ("scd", "dit")])
def test_class_conditional_image_teachers_train(tmp_path, method, net):
    """On digits with a class-conditional U-Net or DiT teacher: DMD2 with its GAN head on the
    fake network's middle feature (on by default for images), sCD's JVP through the DiT, ECT;
    the exported one-step generator follows the teacher's classes."""
    teacher_cfg = load_config(None, {"data": {"spec": "digits"}, "net": IMAGE_NETS[net],
                                     "train": {"steps": 1, "batch_size": 8, "log_every": 1, "ckpt_every": 1}})
    tdir = train(teacher_cfg, tmp_path / "teacher", progress=False)
    opts = {"fake_updates": 2} if method == "dmd2" else {}
    cfg = load_config(None, {"data": {"spec": "digits"}, "method": {"name": method, **opts},
                             "train": {"steps": 2, "batch_size": 8, "log_every": 1, "ckpt_every": 2}})
    out = train(cfg, tmp_path / method, teacher=slimstep.load(tdir), progress=False)
    rows = [__import__("json").loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for r in rows for v in r.values())
    if method == "dmd2":
        assert "fake/cls" in rows[-1] and "gen/gan" in rows[-1]
    g = slimstep.load(out)
    x, y = g.generate(4, seed=0)
    assert x.shape == (4, 1, 8, 8) and y is not None and torch.isfinite(x).all()
