"""GDD / GDD-I: one-step init equals the teacher's Euler step, R1 against autograd,
the freeze rules, frozen weights untouched, the discriminators, the CLI."""

import copy
import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import slimstep
from slimstep import checkpoint as ckpt
from slimstep.cli import main
from slimstep.config import load_config
from slimstep.data import load_data
from slimstep.methods import MethodError, build_method
from slimstep.methods.gdd import GDD, GDDI, diff_augment, frozen_fraction, gdd_i_frozen, r1_penalty
from slimstep.nets import build_net
from slimstep.nets.discriminators import (
    ConvDiscriminator,
    DiscriminatorError,
    ProjectedDiscriminator,
    TeacherFeatureDiscriminator,
    minibatch_std,
    sum_head_means,
)
from slimstep.spec.sampling import rule_dict
from slimstep.train.loop import FORMAT, train

DIGITS_NET = {"name": "unet", "in_shape": [1, 8, 8], "num_classes": 10, "nf": 8,
              "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4]}
DIT_NET = {"name": "dit", "in_shape": [1, 8, 8], "num_classes": 10, "patch_size": 2,
           "hidden_size": 32, "depth": 2, "num_heads": 2, "class_dropout_prob": 0.5}
TOY_NET = {"name": "mlp", "in_shape": [2], "num_classes": 0, "hidden": 32, "depth": 2,
           "time_dim": 16}


def save_teacher(directory: Path, spec: dict, data: str, seed: int = 0) -> Path:
    """A randomly initialised teacher in the layout the loop writes. Zero-initialised
    output layers are perturbed so that the velocity is not identically zero."""
    torch.manual_seed(seed)
    net = build_net(spec)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    info = load_data(data).info
    ckpt.save_model(directory, net, {
        "format": FORMAT, "net": spec, "method": {"name": "flow_matching"},
        "generator": {"kind": "velocity", "solver": "heun", "steps": 2, "cfg_scale": 1.0},
        "data": info.to_dict(), "train": {}, "sample": {}, "step": 0})
    return directory


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("gdd") / "digits-teacher", DIGITS_NET, "digits")


@pytest.fixture(scope="module")
def dit_teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("gdd") / "dit-teacher", DIT_NET, "digits")


@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("gdd") / "toy-teacher", TOY_NET, "toy2d:moons")


def gdd_cfg(data: str, method: str = "gdd", steps: int = 3, **method_opts) -> dict:
    return load_config(None, {
        "data": {"spec": data},
        "method": {"name": method, **method_opts},
        "train": {"steps": steps, "batch_size": 8, "lr": 1e-2, "log_every": 1,
                  "ckpt_every": steps, "grad_clip": 0},
    })


def method_for(teacher_dir: Path, data: str, method: str = "gdd", **opts):
    teacher = slimstep.load(teacher_dir)
    cfg = gdd_cfg(data, method, **opts)
    return build_method(cfg, load_data(data).info, torch.device("cpu"), teacher=teacher), teacher


# ----------------------------------------------------------------------------- generator init


@pytest.mark.parametrize("which", ["digits", "dit", "toy"])
def test_generator_at_step_0_is_the_teachers_one_step_euler(which, digits_teacher, dit_teacher,
                                                             toy_teacher):
    tdir, data = {"digits": (digits_teacher, "digits"), "dit": (dit_teacher, "digits"),
                  "toy": (toy_teacher, "toy2d:moons")}[which]
    m, teacher = method_for(tdir, data, "gdd-i" if which == "dit" else "gdd")
    m.net.train()  # as in the loop; a DiT's label dropout must not apply to the generator
    shape = tuple(teacher.info.shape)
    z = torch.randn(6, *shape)
    y = torch.randint(10, (6,)) if which != "toy" else None
    euler1 = teacher.with_sampling(solver="euler", steps=1)
    with torch.no_grad():
        ours = m.generate(z, y)
    assert torch.equal(ours, euler1(z, y))
    assert not torch.equal(ours, z)  # the teacher's velocity is not trivially zero
    assert rule_dict(m.export()) == {"kind": "velocity", "solver": "euler", "steps": 1, "cfg_scale": 1.0}


def test_gdd_needs_a_teacher():
    cfg = gdd_cfg("toy2d:moons")
    with pytest.raises(MethodError, match="teacher"):
        build_method(cfg, load_data("toy2d:moons").info, torch.device("cpu"))


# ----------------------------------------------------------------------------- R1


def test_r1_penalty_equals_a_per_sample_autograd_reference():
    torch.manual_seed(0)
    d = ConvDiscriminator([1, 8, 8], num_classes=10, channels=8, mbstd_group=1)
    x, y = torch.randn(5, 1, 8, 8), torch.randint(10, (5,))
    _, pen = r1_penalty(d, x, y)
    ref = []
    for i in range(5):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(d(xi, y[i:i + 1]).sum(), xi)
        ref.append(g.pow(2).sum())
    torch.testing.assert_close(pen, torch.stack(ref).mean(), rtol=1e-5, atol=1e-7)
    # create_graph: the penalty has a gradient with respect to D's weights
    (gw,) = torch.autograd.grad(pen, d.stem.weight)
    assert gw.abs().sum() > 0


def test_lazy_r1_adds_every_times_gamma_over_2_on_its_steps(toy_teacher):
    m, _ = method_for(toy_teacher, "toy2d:moons", r1_gamma=0.5, r1_every=4)
    x = torch.randn(8, 2)

    def disc_loss(step):
        torch.manual_seed(1)
        return m.loss((x, None), step, "disc")

    on, off = disc_loss(8), disc_loss(9)
    assert "r1" in on and "r1" not in off
    torch.manual_seed(1)
    torch.randn_like(x)  # the loss draws z first
    _, ref = r1_penalty(m.disc, x, None)
    torch.testing.assert_close(on["r1"], ref.detach())
    torch.testing.assert_close(on["loss"] - off["loss"], 4 * 0.5 / 2 * ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- multi-head weighting


def test_train_compile_leaves_the_discriminator_eager_while_r1_is_on(toy_teacher):
    """torch.compile's autograd cannot differentiate a gradient, and R1 does (create_graph
    through D): a compiled D ended GDD with train.compile=true in a RuntimeError."""
    m, _ = method_for(toy_teacher, "toy2d:moons", r1_gamma=0.5, r1_every=4)
    assert set(m.compiled_modules()) == {"net"}
    m, _ = method_for(toy_teacher, "toy2d:moons", r1_gamma=0.0)
    assert set(m.compiled_modules()) == {"net", "disc"}


def test_sum_head_means_gives_each_head_one_unit_of_weight():
    v = torch.cat([torch.full((3, 4), 2.0), torch.full((3, 64), -1.0)], dim=1).requires_grad_(True)
    out = sum_head_means(v, (4, 64))
    torch.testing.assert_close(out, torch.full((3,), 2.0 - 1.0))  # a concat-mean would give -0.647
    out.sum().backward()
    assert torch.equal(v.grad[:, :4], torch.full((3, 4), 1 / 4))
    assert torch.equal(v.grad[:, 4:], torch.full((3, 64), 1 / 64))
    assert v.grad[0, :4].sum() == v.grad[0, 4:].sum() == 1.0
    with pytest.raises(DiscriminatorError, match="add up"):
        sum_head_means(v, (4, 60))


class _TwoHeads(nn.Module):
    """Two heads on the same per-sample feature m(x) = mean of x: head a gives 4 patch
    logits a·m(x), head b 64 patch logits b·m(x)."""

    head_sizes = (4, 64)

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(a)), nn.Parameter(torch.tensor(b))

    def forward(self, x, y=None):
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([(self.a * m).expand(-1, 4), (self.b * m).expand(-1, 64)], dim=1)


def test_gdd_loss_and_r1_weigh_two_heads_of_4_and_64_patches_equally(toy_teacher):
    m, _ = method_for(toy_teacher, "toy2d:moons", r1_gamma=1.0, r1_every=1)
    m.disc = _TwoHeads(0.7, 0.7)
    m._disc_params = list(m.disc.parameters())
    x = torch.randn(8, 2)
    torch.manual_seed(3)
    out = m.loss((x, None), 1, "disc")
    torch.manual_seed(3)
    with torch.no_grad():
        fake = m.generate(torch.randn_like(x), None)
    mr, mf = x.mean(1), fake.mean(1)
    sp = torch.nn.functional.softplus
    gan = (sp(0.7 * mf) + sp(-0.7 * mr)).mean() * 2  # two heads, each its patch mean
    torch.testing.assert_close(out["gan"], gan)
    # R1 differentiates a·m(x) + b·m(x): |grad|² = (a + b)² / d, not (4a + 64b)² / d
    torch.testing.assert_close(out["r1"], torch.tensor(1.4 ** 2 / 2))
    torch.testing.assert_close(out["loss"], gan + 1.0 / 2 * 1.4 ** 2 / 2)
    ga, gb = torch.autograd.grad(out["loss"], [m.disc.a, m.disc.b])
    torch.testing.assert_close(ga, gb)  # equal weight: a concat-mean gives gb = 16·ga
    assert ga.abs() > 1e-3
    torch.testing.assert_close(out["d_real"], 0.7 * mr.mean())  # logs: mean over heads
    torch.manual_seed(4)
    gen = m.loss((x, None), 2, "gen")
    torch.manual_seed(4)
    with torch.no_grad():
        mf = m.generate(torch.randn_like(x), None).mean(1)
    torch.testing.assert_close(gen["loss"].detach(), 2 * sp(-0.7 * mf).mean())


@pytest.mark.parametrize("which", ["toy", "digits"])
def test_single_logit_discriminators_keep_the_plain_mean_loss(which, toy_teacher, digits_teacher):
    tdir, data = (toy_teacher, "toy2d:moons") if which == "toy" else (digits_teacher, "digits")
    m, _ = method_for(tdir, data, r1_every=0)
    assert m.disc.head_sizes == (1,)
    x = torch.randn(8, *load_data(data).info.shape)
    y = torch.randint(10, (8,)) if which == "digits" else None
    torch.manual_seed(5)
    out = m.loss((x, y), 1, "disc")
    torch.manual_seed(5)
    with torch.no_grad():
        fake = m.generate(torch.randn_like(x), y)
        ref = (torch.nn.functional.softplus(m.disc(fake, y)).mean()
               + torch.nn.functional.softplus(-m.disc(x, y)).mean())
    torch.testing.assert_close(out["gan"], ref, rtol=0, atol=0)


# ----------------------------------------------------------------------------- freeze rules


def test_gdd_i_freezes_83_percent_of_the_ncsnpp_unet():
    """SlimFlow's / NCSN++'s CIFAR UNet (nf 128, mult 1-2-2, 2 blocks, attention at 16):
    the paper reports ~85% frozen for EDM's DDPM++; ours measures 83.4%."""
    net = build_net({"name": "unet", "in_shape": [3, 32, 32], "nf": 128, "ch_mult": [1, 2, 2],
                     "num_res_blocks": 2, "attn_resolutions": [16]})
    f = frozen_fraction(net)
    assert 0.80 < f < 0.90, f
    names = gdd_i_frozen(net)
    assert all(n.split(".")[-2] in ("conv1", "conv2", "proj_out") for n in names)
    trainable = {n for n, _ in net.named_parameters()} - set(names)
    for kept in ("conv_in.weight", "conv_out.weight", "norm_out.weight", "time_embed.0.weight",
                 "down.0.blocks.0.emb_proj.weight", "down.0.blocks.0.norm1.weight",
                 "down.1.blocks.0.skip.weight", "down.1.attns.0.qkv.weight"):
        assert kept in trainable
    assert "down.0.resample.conv1.weight" in names  # resampling blocks are blocks too


def test_gdd_i_unet_level_2_adds_exactly_the_attention_qkv():
    net = build_net({"name": "unet", "in_shape": [3, 32, 32], "nf": 128, "ch_mult": [1, 2, 2],
                     "num_res_blocks": 2, "attn_resolutions": [16]})
    one, two = set(gdd_i_frozen(net)), set(gdd_i_frozen(net, level=2))
    assert one == set(gdd_i_frozen(net, level=1)) and one < two
    added = two - one
    assert added and all(n.split(".")[-2] == "qkv" for n in added)
    assert added == {n for n, _ in net.named_parameters() if ".qkv." in n}
    sizes = dict((n, p.numel()) for n, p in net.named_parameters())
    total = sum(sizes.values())
    assert frozen_fraction(net, 2) == pytest.approx(
        frozen_fraction(net, 1) + sum(sizes[n] for n in added) / total)
    with pytest.raises(MethodError, match="freeze_level"):
        gdd_i_frozen(net, level=3)


def test_gdd_i_digits_recipe_freezes_what_it_froze_before():
    """configs/digits/gdd-i.yaml at the default freeze_level 1: the same names as the
    rule had before the option existed (conv1, conv2 of every ResBlock, proj_out of
    every AttnBlock), 80.2% of the digits UNet."""
    cfg = load_config("configs/digits/gdd-i.yaml", [])
    assert "freeze_level" not in cfg.method.options
    spec = load_config("configs/digits/teacher.yaml", []).net.to_dict()
    net = build_net({**spec, "in_shape": [1, 8, 8], "num_classes": 10})
    before = {f"{prefix}.{layer}.{n}" for prefix, m in net.named_modules()
              for layer in {"ResBlock": ("conv1", "conv2"), "AttnBlock": ("proj_out",)}.get(
                  type(m).__name__, ()) for n, _ in m.get_submodule(layer).named_parameters()}
    assert set(gdd_i_frozen(net, GDDI.Options().freeze_level)) == before
    assert round(100 * frozen_fraction(net), 1) == 80.2


@pytest.mark.parametrize("level", [1, 2])
def test_gdd_i_dit_rule_freezes_mlp_and_attention_matrices(level):
    """Per block (hidden D, MLP ratio 4): level 1 freezes proj + fc1 + fc2, 9D² + 6D of
    the block's 18D² + 15D parameters (adaLN is the other third); level 2 adds qkv,
    12D² + 9D (DiT-XL/2 measures 49.6% and 66.1%)."""
    d, depth = 96, 3
    net = build_net({"name": "dit", "in_shape": [4, 16, 16], "num_classes": 10,
                     "hidden_size": d, "depth": depth, "num_heads": 4})
    names = set(gdd_i_frozen(net, level))
    frozen = sum(p.numel() for n, p in net.named_parameters() if n in names)
    assert frozen == depth * ((9 * d * d + 6 * d) if level == 1 else (12 * d * d + 9 * d))
    total = sum(p.numel() for p in net.parameters())
    assert frozen_fraction(net, level) == frozen / total
    assert 0.40 < frozen_fraction(net, 1) < 0.5 and 0.55 < frozen_fraction(net, 2) < 2 / 3
    assert {"blocks.0.attn.proj.weight", f"blocks.{depth - 1}.mlp.fc2.bias"} <= names
    assert ("blocks.0.attn.qkv.weight" in names) == (level == 2)
    assert not any("adaLN" in n or "embedder" in n or "final_layer" in n for n in names)
    with pytest.raises(MethodError, match="unet and the dit"):
        gdd_i_frozen(build_net(TOY_NET))


@pytest.mark.parametrize("arch, fraction", [
    ({}, (85.4, 87.5)),
    ({"embedding_type": "fourier", "channel_mult_noise": 2, "encoder_type": "residual",
      "resample_filter": [1, 3, 3, 1]}, (84.4, 86.5)),
    ({"model_type": "DhariwalUNet", "model_channels": 64, "channel_mult": [1, 2, 2],
      "num_blocks": 2, "attn_resolutions": [16, 8]}, None)])
def test_gdd_i_edm_rule_is_the_official_name_rule(arch, fraction):
    """GDD's training loop (--freeze 1 / 2) freezes a parameter whose EDM name holds
    block / up / down / in and conv / proj (/ qkv). On EDM's CIFAR-10 DDPM++ / NCSN++
    (3x32x32, 128 channels, mult 2,2,2, 4 blocks, attention at 16) slimstep's rule names
    the same set: 85.4% / 84.4% of the parameters (the paper: "85%"); on a (small) ADM too."""
    net = build_net({"name": "edm_unet", "in_shape": [3, 32, 32], "num_classes": 10,
                     "augment_dim": 9, **arch})
    names = [n for n, _ in net.named_parameters()]
    for level, words in ((1, ("conv", "proj")), (2, ("conv", "proj", "qkv"))):
        official = {n for n in names if any(s in n for s in ("block", "up", "down", "in"))
                    and any(s in n for s in words)}
        assert set(gdd_i_frozen(net, level)) == official
        if fraction:
            assert round(100 * frozen_fraction(net, level), 1) == fraction[level - 1]
    trainable = set(names) - set(gdd_i_frozen(net, 2))
    adm = arch.get("model_type") == "DhariwalUNet"
    out, skip = (("model.out_", "model.enc.16x16_block0.skip") if adm else
                 ("model.dec.32x32_aux_", "model.enc.32x32_block0.skip"))
    assert {"model.enc.32x32_conv.weight", out + "conv.weight", out + "norm.weight",
            skip + ".weight", "model.dec.8x8_in0.norm2.weight", "model.map_layer0.weight"} <= trainable


def test_gdd_i_freeze_level_option_reaches_the_generator(dit_teacher):
    for level in (1, 2):
        m, _ = method_for(dit_teacher, "digits", "gdd-i", freeze_level=level)
        frozen = {n for n, p in m.net.named_parameters() if not p.requires_grad}
        assert frozen == set(gdd_i_frozen(m.net, level))
        assert ("blocks.0.attn.qkv.weight" in frozen) == (level == 2)
    assert m.method_config()["freeze_level"] == 2
    with pytest.raises(MethodError, match="freeze_level"):
        method_for(dit_teacher, "digits", "gdd-i", freeze_level=0)
    with pytest.raises(MethodError, match="no option"):  # plain GDD freezes nothing
        method_for(dit_teacher, "digits", "gdd", freeze_level=1)


def test_gdd_i_frozen_weights_stay_bit_identical(digits_teacher, tmp_path):
    teacher = slimstep.load(digits_teacher)
    out = train(gdd_cfg("digits", "gdd-i", steps=3), tmp_path / "r", teacher=teacher,
                progress=False)
    frozen = set(gdd_i_frozen(teacher.net))
    start = teacher.net.state_dict()
    state = ckpt.load_training_state(ckpt.list_snapshots(out)[-1])
    raw, ema = state["modules"]["net"], load_file(str(out / "model.safetensors"))
    for n in frozen:
        assert torch.equal(raw[n], start[n]) and torch.equal(ema[n], start[n]), n
    moved = [n for n in start if n not in frozen and not torch.equal(raw[n], start[n])]
    assert moved  # the trainable part did train
    # frozen parameters are not in the generator's optimizer
    n_trainable = len([n for n, _ in teacher.net.named_parameters() if n not in frozen])
    assert len(state["optimizers"]["gen"]["param_groups"][0]["params"]) == n_trainable
    p = ckpt.read_config(out)["params"]
    assert p["frozen"] == sum(start[n].numel() for n in frozen)
    assert p["frozen"] + p["trainable"] == p["total"]
    assert ckpt.read_config(out)["method"]["name"] == "gdd-i"


# ----------------------------------------------------------------------------- discriminators


def test_minibatch_std_appends_the_group_std():
    x = torch.randn(8, 3, 4, 4)
    out = minibatch_std(x, group=4)
    assert out.shape == (8, 4, 4, 4)
    ref = x.view(4, 2, 3, 4, 4).std(0, unbiased=False).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out[:, 3, 0, 0], ref.repeat(4), rtol=1e-4, atol=1e-5)


def test_teacher_feature_discriminator_is_frozen_and_out_of_the_state(digits_teacher, tmp_path):
    teacher = slimstep.load(digits_teacher)
    cfg = gdd_cfg("digits", disc="teacher", disc_options={"teacher": {"t_levels": [0.5, 0.9], "hidden": 8}},
                  r1_every=2, r1_gamma=1.0)
    before = copy.deepcopy(teacher.net.state_dict())
    out = train(cfg, tmp_path / "r", teacher=teacher, progress=False)
    state = ckpt.load_training_state(ckpt.list_snapshots(out)[-1])
    assert all(k.startswith("heads.") for k in state["modules"]["disc"])  # no trunk weights saved
    after = teacher.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the teacher is untouched
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("disc/r1" in r for r in rows)  # the double backward through the trunk works
    d = TeacherFeatureDiscriminator(teacher.net, [1, 8, 8], 10, t_levels=[0.7], hidden=8)
    assert not list(d.trunk.parameters())[0].requires_grad and not d.trunk.training
    d.train()
    assert not d.trunk.training
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    logits = d(x, torch.arange(4))
    assert logits.shape[0] == 4 and logits.shape[1] > 5  # patch logits of several maps
    feats = teacher.net(x, torch.full((4,), 0.7), None, return_features=True)[1]
    assert d.head_sizes == tuple(f.shape[-2] * f.shape[-1] for f in feats)  # one per map
    assert sum(d.head_sizes) == logits.shape[1] and len(set(d.head_sizes)) > 1
    (g,) = torch.autograd.grad(logits.sum(), x)
    assert g.abs().sum() > 0
    with pytest.raises(DiscriminatorError, match="t_levels"):
        TeacherFeatureDiscriminator(teacher.net, [1, 8, 8], 10, t_levels=[0.0])


class _TinyBackbone(nn.Module):
    """Stands in for a timm model: ``forward_intermediates`` as timm >= 1.0 has it."""

    def __init__(self, num_classes=0):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward_intermediates(self, x, indices=None, intermediates_only=True):
        h1 = self.a(x)
        return [h1, self.b(h1)]


def test_projected_discriminator_loads_local_weights_through_timm(tmp_path, monkeypatch):
    fake = types.ModuleType("timm")
    fake.create_model = lambda name, pretrained=False, num_classes=0: _TinyBackbone()
    monkeypatch.setitem(sys.modules, "timm", fake)
    src = _TinyBackbone()
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    d = ProjectedDiscriminator([1, 8, 8], 10, backbone="tiny", weights=str(tmp_path / "w.safetensors"),
                               resolution=16, hidden=8)
    assert torch.equal(d.trunk.a.weight, src.a.weight)  # the user's weights, not a fresh init
    assert not any(k.startswith("trunk") for k in d.state_dict())
    assert all(not p.requires_grad for p in d.trunk.parameters())
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    logits = d(x, torch.arange(3))
    assert logits.shape == (3, 8 * 8 + 4 * 4) and d.head_sizes == (64, 16)
    logits.sum().backward()
    assert x.grad.abs().sum() > 0 and d.heads[0].conv.weight.grad is not None
    torch.save({"state_dict": {"a.weight": src.a.weight}}, tmp_path / "bad.pt")
    with pytest.raises(DiscriminatorError, match="does not fit"):
        ProjectedDiscriminator([1, 8, 8], 0, weights=str(tmp_path / "bad.pt"), resolution=16)


def test_projected_discriminator_errors_are_one_line(digits_teacher, tmp_path, capsys, monkeypatch):
    def base(out):
        return ["distill", "--method", "gdd", "--config", "configs/digits/gdd.yaml", "--teacher",
                str(digits_teacher), "--out", str(tmp_path / out), "--quiet", "train.steps=1",
                "method.disc=projected"]

    assert main(base("a")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights" in err[0] and "never downloads" in err[0]
    (tmp_path / "w.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    assert main([*base("b"), f"method.disc_options.projected.weights={tmp_path / 'w.safetensors'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install timm" in err[0]


def test_diffaugment_keeps_shape_and_gradient():
    torch.manual_seed(0)
    x = torch.randn(6, 1, 8, 8, requires_grad=True)
    out = diff_augment(x, "color,translation,cutout")
    assert out.shape == x.shape and not torch.equal(out, x)
    out.sum().backward()
    assert x.grad is not None
    # translation moves pixels (zero padding), it does not rescale them
    t = diff_augment(torch.ones(4, 1, 8, 8), "translation")
    assert set(t.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(MethodError, match="policy"):
        diff_augment(x, "rotate")


def test_instance_term_logs_and_trains(toy_teacher, tmp_path):
    teacher = slimstep.load(toy_teacher)
    cfg = gdd_cfg("toy2d:moons", steps=2, gan_weight=0.0, instance_weight=1.0,
                  instance_distance="l2", instance_solver="euler", instance_steps=2)
    out = train(cfg, tmp_path / "r", teacher=teacher, progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["gen/instance"] > 0 and r["gen/gan"] == 0 for r in rows)


def test_grad_clip_bounds_the_gradient_each_phase_steps_with(toy_teacher, tmp_path, monkeypatch):
    """``train.grad_clip`` applies per phase (disc, gen: the Fashion GDD recipes rely on it,
    docs/fashion.md), and the log keeps each phase's norm before clipping."""
    stepped = []  # (the optimizer's parameters' gradient norm at its step)
    adam_step = torch.optim.Adam.step

    def spy(self, *a, **k):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        stepped.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return adam_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    teacher = slimstep.load(toy_teacher)
    for clip in (0.0, 1e-3):
        stepped.clear()
        cfg = load_config(None, {"data": {"spec": "toy2d:moons"}, "method": {"name": "gdd"},
                                 "train": {"steps": 2, "batch_size": 8, "lr": 1e-2, "log_every": 1,
                                           "ckpt_every": 2, "grad_clip": clip}})
        out = train(cfg, tmp_path / f"clip-{clip}", teacher=teacher, progress=False)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        logged = [r[f"{phase}/grad_norm"] for r in rows for phase in ("disc", "gen")]
        assert len(stepped) == len(logged) == 4  # disc then gen, two steps
        assert min(logged) > 1e-3  # so a clip at 1e-3 binds on every phase
        if clip:
            assert all(s <= clip * (1 + 1e-4) for s in stepped)
        else:
            assert stepped == pytest.approx(logged, rel=1e-5)

# ----------------------------------------------------------------------------- CLI


def test_cli_distill_gdd_on_toy2d_gives_a_one_nfe_checkpoint(toy_teacher, tmp_path, capsys):
    out = tmp_path / "gdd"
    assert main(["distill", "--method", "gdd", "--config", "configs/toy2d/gdd.yaml", "--teacher",
                 str(toy_teacher), "--out", str(out), "--quiet", "train.steps=4",
                 "train.batch_size=16", "train.ckpt_every=2"]) == 0
    gen = slimstep.load(out)
    x, _ = gen.generate(9, seed=1)
    assert x.shape == (9, 2) and torch.isfinite(x).all() and gen.nfe == 1
    cfg = ckpt.read_config(out)
    assert cfg["net"] == {**TOY_NET, "time_scale": 1000.0}  # config.json records the time scale
    assert cfg["teacher"] == str(toy_teacher.resolve())
    # DiffAugment is for images; gdd-i has no rule for the MLP
    assert main(["distill", "--method", "gdd", "--config", "configs/toy2d/gdd.yaml", "--teacher",
                 str(toy_teacher), "--out", str(tmp_path / "x"), "--quiet",
                 "method.diffaugment=color"]) == 2
    assert "images only" in capsys.readouterr().err
    with pytest.raises(MethodError, match="unet and the dit"):
        method_for(toy_teacher, "toy2d:moons", "gdd-i")


def test_cli_gdd_i_on_digits_and_info_prints_frozen_counts(digits_teacher, tmp_path, capsys):
    out = tmp_path / "gddi"
    assert main(["distill", "--method", "gdd-i", "--config", "configs/digits/gdd-i.yaml",
                 "--teacher", str(digits_teacher), "--out", str(out), "--quiet",
                 "train.steps=2", "train.batch_size=8", "train.ckpt_every=2"]) == 0
    capsys.readouterr()
    assert main(["info", "--ckpt", str(out)]) == 0
    text = capsys.readouterr().out
    frac = 100 * frozen_fraction(slimstep.load(digits_teacher).net)
    assert "frozen" in text and f"{frac:.1f}% frozen" in text
    assert slimstep.load(out).nfe == 1


def test_gdd_rejects_unknown_options(toy_teacher):
    with pytest.raises(MethodError, match="no option"):
        method_for(toy_teacher, "toy2d:moons", r1=1.0)
    with pytest.raises(MethodError, match="unknown discriminator"):
        method_for(toy_teacher, "toy2d:moons", disc="vgg")
    assert isinstance(method_for(toy_teacher, "toy2d:moons")[0], GDD)


# ----------------------------------------------------------------------------- GDD as its code runs

EDM_VE_NET = {"name": "edm_unet", "in_shape": [1, 8, 8], "num_classes": 10, "precond": "ve",
              "model_channels": 16, "channel_mult": [1, 1], "num_blocks": 1,
              "attn_resolutions": [4], "dropout": 0.1, "sigma_min": 0.02, "sigma_max": 100.0}


@pytest.fixture(scope="module")
def edm_ve_teacher(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("gdd") / "edm-ve", EDM_VE_NET, "digits")


def test_official_precond_is_gddprecond_around_the_teachers_f(edm_ve_teacher):
    """precond=official on a VE teacher: G(z) = D(σ_max z; σ_max) with GDDPrecond's EDM
    coefficients (σ - 2e-3 in c_skip and c_out) around the teacher's own F, by hand."""
    m, teacher = method_for(edm_ve_teacher, "digits", precond="official")
    m.net.train()  # the loop's mode: dropout must be off anyway
    torch.manual_seed(0)
    z, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 4, 9])
    s, sd, eps = 100.0, 0.5, 2e-3
    labels = torch.nn.functional.one_hot(y, 10).float()
    with torch.no_grad():
        f = teacher.net.model(z * s / (s ** 2 + sd ** 2) ** 0.5,
                              torch.full((3,), math.log(s) / 4), labels)
        want = (sd ** 2 / ((s - eps) ** 2 + sd ** 2) * s * z
                + (s - eps) * sd / (s ** 2 + sd ** 2) ** 0.5 * f)
        got = m.generate(z, y)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # the exported map (z + v(z, 0), Euler 1) is the same G
        torch.testing.assert_close(z + m.net(z, torch.zeros(3), y), want, rtol=1e-5, atol=1e-5)
        # precond=teacher keeps the VE reading: another function
        ve, _ = method_for(edm_ve_teacher, "digits")
        assert not torch.allclose(ve.generate(z, y), want, atol=1e-3)
    assert m.spec["precond"] == "gdd" and teacher.config["net"]["precond"] == "ve"


def test_official_precond_needs_an_edm_teacher(digits_teacher):
    with pytest.raises(MethodError, match="precond=official"):
        method_for(digits_teacher, "digits", precond="official")
    with pytest.raises(MethodError, match="method.precond"):
        method_for(digits_teacher, "digits", precond="edm")


def test_generator_dropout_is_off_for_every_network_kind(edm_ve_teacher, dit_teacher, tmp_path):
    """Every official run passes --dropout=0: the generator's dropout options are 0 in its
    spec and its training-mode forward is deterministic (EDM UNet 0.1, UNet 0.3, DiT label
    dropout 0.5 in the teachers)."""
    unet = save_teacher(tmp_path / "unet", {**DIGITS_NET, "dropout": 0.3}, "digits")
    torch.manual_seed(0)
    z, y = torch.randn(4, 1, 8, 8), torch.randint(10, (4,))
    for tdir, key in ((edm_ve_teacher, "dropout"), (unet, "dropout"),
                      (dit_teacher, "class_dropout_prob")):
        m, teacher = method_for(tdir, "digits")
        assert teacher.config["net"][key] > 0 and m.spec[key] == 0.0
        m.net.train()
        assert not any(isinstance(x, nn.Dropout) and x.p > 0 for x in m.net.modules())
        with torch.no_grad():
            assert torch.equal(m.generate(z, y), m.generate(z, y))
    # a teacher without dropout keeps its spec as it was (the digits recipe's numbers stand)
    m, teacher = method_for(save_teacher(tmp_path / "plain", DIGITS_NET, "digits"), "digits")
    assert m.spec == teacher.config["net"]


def test_official_r1_gamma_rescales_the_presets():
    """docs/gdd.md: the official γ on the sum of 25 patch logits per head, with a GAN term
    B/4 times ours (B per GPU), is 2500 γ / B on our per-head-mean scale."""
    from slimstep.config import CONFIGS
    from slimstep.config import _yaml as read
    from slimstep.methods.gdd import official_r1_gamma

    assert official_r1_gamma(1e-4, 64) == pytest.approx(3.90625e-3)
    for preset, per_gpu in (("cifar10", 64), ("afhqv2", 64), ("ffhq", 64), ("imagenet64", 128)):
        m = read((CONFIGS / preset / "gdd.yaml").read_text())["method"]
        assert m["r1_gamma"] == pytest.approx(official_r1_gamma(1e-4, per_gpu), rel=1e-2), preset
        assert m["precond"] == "official" and m["r1_step"] == "separate", preset


def test_separate_lazy_r1_step(toy_teacher, tmp_path):
    """r1_step=separate: G, then D on the GAN loss, then every r1_every steps an R1-only D
    step; both D phases share one Adam at lr·c, β^c, c = r1_every / (r1_every + 1)."""
    m, _ = method_for(toy_teacher, "toy2d:moons", r1_gamma=0.5, r1_every=4, r1_step="separate",
                      lr_d=1e-3, betas=[0.5, 0.99])
    assert m.phases == ("gen", "disc", "r1")
    assert m.shared_optimizer("r1") == "disc" and m.shared_optimizer("disc") is None
    assert {id(p) for p in m.parameters("r1")} == {id(p) for p in m.parameters("disc")}
    assert [m.phase_active("r1", s) for s in (8, 9)] == [True, False]
    from slimstep.train.loop import _optimizer

    group = _optimizer(m.parameters("disc"), m.cfg.train, m.optimizer_options("disc")).param_groups[0]
    assert group["lr"] == pytest.approx(1e-3 * 4 / 5)
    assert group["betas"] == pytest.approx([0.5 ** 0.8, 0.99 ** 0.8])
    x = torch.randn(8, 2)
    assert "r1" not in m.loss((x, None), 8, "disc")  # no penalty inside the GAN step
    out = m.loss((x, None), 8, "r1")
    _, ref = r1_penalty(m.disc, x, None)
    torch.testing.assert_close(out["loss"], 4 * 0.5 / 2 * ref.detach(), rtol=1e-5, atol=1e-7)
    # through the loop: the r1 phase logs only on its steps and steps D's own optimizer
    cfg = gdd_cfg("toy2d:moons", steps=3, r1_gamma=0.5, r1_every=2, r1_step="separate")
    out_dir = train(cfg, tmp_path / "sep", teacher=slimstep.load(toy_teacher), progress=False)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "gen/loss" in r]
    assert ["r1/r1" in r for r in rows] == [True, False, True]
    state = ckpt.load_training_state(ckpt.list_snapshots(out_dir)[-1])
    assert state["optimizers"]["r1"] == state["optimizers"]["disc"]
