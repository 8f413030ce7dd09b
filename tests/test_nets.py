"""Networks: shapes, conditioning, features, parameter counts, DiT/SiT key layout, init."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slimstep.nets import build_net, count_params
from slimstep.nets.dit import DiT, DiTBlock, math_attention
from slimstep.nets.unet import AttnBlock, ResBlock, UNet, num_groups

TINY: dict[str, dict] = {
    "mlp": {"name": "mlp", "in_shape": [2], "hidden": 32, "depth": 3, "time_dim": 16},
    "unet8": {"name": "unet", "in_shape": [1, 8, 8], "nf": 8, "ch_mult": [1, 2],
              "num_res_blocks": 1, "attn_resolutions": [4]},
    "unet32": {"name": "unet", "in_shape": [3, 32, 32], "nf": 8, "ch_mult": [1, 2, 2],
               "num_res_blocks": 1, "attn_resolutions": [16]},
    "dit8": {"name": "dit", "in_shape": [1, 8, 8], "patch_size": 2, "hidden_size": 32,
             "depth": 2, "num_heads": 2},
    "dit32": {"name": "dit", "in_shape": [3, 32, 32], "patch_size": 4, "hidden_size": 32,
              "depth": 2, "num_heads": 2},
}


def _randomize(net: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Perturb every parameter so zero-initialised layers (adaLN-Zero, output convs) act."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return net


def _inputs(spec: dict, b: int = 3):
    torch.manual_seed(0)
    return torch.randn(b, *spec["in_shape"]), torch.rand(b), torch.randint(0, 10, (b,))


@pytest.mark.parametrize("key", list(TINY))
@pytest.mark.parametrize("num_classes", [0, 10])
def test_shapes_features_and_null_class(key: str, num_classes: int) -> None:
    spec = dict(TINY[key], num_classes=num_classes)
    net = _randomize(build_net(spec)).eval()
    x, t, y = _inputs(spec)
    outs = {}
    for name, yy in (("y", y), ("none", None)):
        out, feats = net(x, t, yy, return_features=True)
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert len(feats) > 0 and all(f.shape[0] == x.shape[0] for f in feats)
        outs[name] = out
    torch.testing.assert_close(net(x, t, y), outs["y"])  # features do not change the output
    if num_classes:  # y=None is the null class; labels matter
        torch.testing.assert_close(outs["none"], net(x, t, torch.full_like(y, num_classes)))
        assert not torch.allclose(outs["y"], outs["none"])
    else:  # an unconditional net ignores labels
        torch.testing.assert_close(outs["y"], outs["none"])
    # the output depends on t; a 0-dim t is broadcast to the batch
    t0 = torch.tensor(0.3)
    assert not torch.allclose(net(x, t0, y), outs["y"])
    torch.testing.assert_close(net(x, t0, y), net(x, t0.expand(3).clone(), y))
    with pytest.raises(TypeError):
        net(x, t, y, bogus=t)


@pytest.mark.parametrize("key", list(TINY))
def test_backward_reaches_every_parameter(key: str) -> None:
    spec = dict(TINY[key], num_classes=10)
    net = _randomize(build_net(spec))
    x, t, y = _inputs(spec)
    x.requires_grad_(True)
    net(x, t, y).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("key", ["unet8", "unet32", "dit8"])
def test_fresh_net_outputs_zero(key: str) -> None:
    spec = TINY[key]
    x, t, _ = _inputs(spec)
    assert torch.equal(build_net(spec)(x, t), torch.zeros_like(x))


# ----------------------------------------------------------------------------- UNet

SLIMFLOW_STUDENTS = [  # (nf, num_res_blocks, ch_mult, SlimFlow's parameter count)
    (128, 2, [1, 2, 2], 27.9e6),
    (96, 2, [1, 2, 2], 15.7e6),
    (64, 2, [1, 2, 2], 7.0e6),
    (64, 1, [1, 1, 2], 3.4e6),
]


@pytest.mark.parametrize("nf,nrb,mult,target", SLIMFLOW_STUDENTS)
def test_unet_matches_slimflow_parameter_counts(nf: int, nrb: int, mult: list[int],
                                                target: float) -> None:
    with torch.device("meta"):
        net = UNet([3, 32, 32], nf=nf, ch_mult=mult, num_res_blocks=nrb, attn_resolutions=[16])
    n = count_params(net)
    print(f"UNet nf={nf} blocks={nrb} mult={mult}: {n / 1e6:.3f}M (SlimFlow {target / 1e6}M)")
    assert abs(n - target) / target < 0.10


def test_unet_structure_for_freeze_rules() -> None:
    net = build_net(TINY["unet8"])
    names = dict(net.named_modules())
    assert any(isinstance(m, AttnBlock) for m in names.values())  # attention at res 4 exists
    for m in net.modules():
        if isinstance(m, ResBlock):
            assert m.conv1.kernel_size == m.conv2.kernel_size == (3, 3)
            assert isinstance(m.skip, torch.nn.Identity) or m.skip.kernel_size == (1, 1)
        if isinstance(m, AttnBlock):
            assert {"norm", "qkv", "proj_out"} <= {n for n, _ in m.named_children()}
    for attr in ("conv_in", "norm_out", "conv_out", "time_embed"):
        assert hasattr(net, attr)
    assert build_net(dict(TINY["unet8"], num_classes=10)).class_embed.num_embeddings == 11


def test_groupnorm_rule() -> None:
    for c in (8, 16, 24, 48, 96, 128, 288, 384, 640):
        g = num_groups(c)
        assert c % g == 0 and 1 <= g <= 32
    assert num_groups(256) == 32 and num_groups(8) == 2 and num_groups(3) == 1


# ----------------------------------------------------------------------------- DiT


def _sit_state_dict(c: int, p: int, d: int, depth: int, mlp: int, n_tok: int,
                    num_classes: int, c_out: int, s_embed: bool = False) -> dict:
    """A state dict in the official DiT / SiT layout, written from the key list by hand."""
    g = torch.Generator().manual_seed(1)

    def r(*shape: int) -> torch.Tensor:
        return 0.2 * torch.randn(*shape, generator=g)

    sd = {
        "x_embedder.proj.weight": r(d, c, p, p), "x_embedder.proj.bias": r(d),
        "t_embedder.mlp.0.weight": r(d, 256), "t_embedder.mlp.0.bias": r(d),
        "t_embedder.mlp.2.weight": r(d, d), "t_embedder.mlp.2.bias": r(d),
        "pos_embed": r(1, n_tok, d),
        "final_layer.linear.weight": r(p * p * c_out, d), "final_layer.linear.bias": r(p * p * c_out),
        "final_layer.adaLN_modulation.1.weight": r(2 * d, d),
        "final_layer.adaLN_modulation.1.bias": r(2 * d),
    }
    if s_embed:
        sd.update({"s_embedder.mlp.0.weight": r(d, 256), "s_embedder.mlp.0.bias": r(d),
                   "s_embedder.mlp.2.weight": r(d, d), "s_embedder.mlp.2.bias": r(d)})
    if num_classes:
        sd["y_embedder.embedding_table.weight"] = r(num_classes + 1, d)
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({
            b + "attn.qkv.weight": r(3 * d, d), b + "attn.qkv.bias": r(3 * d),
            b + "attn.proj.weight": r(d, d), b + "attn.proj.bias": r(d),
            b + "mlp.fc1.weight": r(mlp, d), b + "mlp.fc1.bias": r(mlp),
            b + "mlp.fc2.weight": r(d, mlp), b + "mlp.fc2.bias": r(d),
            b + "adaLN_modulation.1.weight": r(6 * d, d), b + "adaLN_modulation.1.bias": r(6 * d),
        })
    return sd


def _reference_dit(sd: dict, x, t, y, p: int, heads: int, depth: int) -> torch.Tensor:
    """DiT forward written directly from the paper / official code on a raw state dict."""
    def lin(h, k):
        return F.linear(h, sd[k + ".weight"], sd[k + ".bias"])

    def ln(h):
        return F.layer_norm(h, h.shape[-1:], eps=1e-6)

    b, c, hh, _ = x.shape
    tok = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p)
    tok = tok.flatten(2).transpose(1, 2) + sd["pos_embed"]
    freqs = torch.exp(-torch.log(torch.tensor(1e4)) * torch.arange(128) / 128)
    arg = (1000 * t)[:, None] * freqs
    temb = torch.cat([arg.cos(), arg.sin()], -1)
    cond = lin(F.silu(lin(temb, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    cond = cond + sd["y_embedder.embedding_table.weight"][y]
    n, d = tok.shape[1], tok.shape[2]
    for i in range(depth):
        k = f"blocks.{i}."
        m = lin(F.silu(cond), k + "adaLN_modulation.1")[:, None].chunk(6, -1)
        a = ln(tok) * (1 + m[1]) + m[0]
        qkv = lin(a, k + "attn.qkv").reshape(b, n, 3, heads, d // heads)
        q, kk, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))
        att = torch.softmax(q @ kk.transpose(-1, -2) / (d // heads) ** 0.5, -1) @ v
        tok = tok + m[2] * lin(att.transpose(1, 2).reshape(b, n, d), k + "attn.proj")
        a = ln(tok) * (1 + m[4]) + m[3]
        mlp = lin(F.gelu(lin(a, k + "mlp.fc1"), approximate="tanh"), k + "mlp.fc2")
        tok = tok + m[5] * mlp
    sh, sc = lin(F.silu(cond), "final_layer.adaLN_modulation.1")[:, None].chunk(2, -1)
    out = lin(ln(tok) * (1 + sc) + sh, "final_layer.linear")
    g = hh // p
    out = out.reshape(b, g, g, p, p, -1).permute(0, 5, 1, 3, 2, 4).reshape(b, -1, hh, hh)
    return out[:, :c]


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_dit_loads_sit_layout_state_dict(learn_sigma: bool) -> None:
    c, p, d, depth, heads = 2, 2, 32, 2, 4
    net = DiT([c, 8, 8], num_classes=10, patch_size=p, hidden_size=d, depth=depth,
              num_heads=heads, learn_sigma=learn_sigma).eval()
    x, t, y = torch.randn(3, c, 8, 8), torch.rand(3), torch.tensor([0, 5, 10])
    assert torch.equal(net(x, t, y), torch.zeros_like(x))  # adaLN-Zero
    sd = _sit_state_dict(c, p, d, depth, 4 * d, 16, 10, 2 * c if learn_sigma else c)
    net.load_state_dict(sd, strict=True)
    out = net(x, t, y)
    assert out.shape == x.shape and out.abs().mean() > 1e-3
    torch.testing.assert_close(out, _reference_dit(sd, x, t, y, p, heads, depth),
                               atol=1e-4, rtol=1e-4)
    # head() returns the first C channels of the full (2C with learn_sigma) projection
    tokens, cond = net.embed(x, t, y)
    for blk in net.blocks:
        tokens = blk(tokens, cond)
    full = net.unpatchify(net.final_layer(tokens, cond))
    assert full.shape[1] == (2 * c if learn_sigma else c)
    torch.testing.assert_close(net.head(tokens, cond), full[:, :c])


def test_dit_extra_time_embed_and_unconditional_keys() -> None:
    net = DiT([1, 8, 8], num_classes=0, hidden_size=32, depth=1, num_heads=2,
              extra_time_embeds=1)
    net.load_state_dict(_sit_state_dict(1, 2, 32, 1, 128, 16, 0, 1, s_embed=True), strict=True)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    a, b = net(x, t, s=torch.zeros(2)), net(x, t, s=torch.full((2,), 0.5))
    assert a.shape == x.shape and not torch.allclose(a, b)
    with pytest.raises(TypeError):
        net(x, t)  # s is required
    with pytest.raises(TypeError):
        net(x, t, s=t, r=t)
    with pytest.raises(TypeError):
        DiT([1, 8, 8], hidden_size=32, depth=1, num_heads=2)(x, t, s=t)


def test_dit_block_standalone_and_pos_embed_frozen() -> None:
    blk = DiTBlock(32, 4, 2.0)
    x, c = torch.randn(2, 5, 32), torch.randn(2, 32)
    torch.testing.assert_close(blk(x, c), x)  # adaLN-Zero gates start at 0: identity
    net = DiT([1, 8, 8], hidden_size=32, depth=1, num_heads=2)
    assert "pos_embed" in net.state_dict()
    assert all("pos_embed" not in n for n, _ in net.named_parameters())


def test_dit_class_dropout_uses_null_row() -> None:
    net = _randomize(DiT([1, 8, 8], num_classes=10, hidden_size=32, depth=1, num_heads=2,
                         class_dropout_prob=1.0))
    x, t, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.arange(4)
    net.train()
    dropped = net(x, t, y)
    net.eval()
    torch.testing.assert_close(dropped, net(x, t, None))
    assert not torch.allclose(net(x, t, y), dropped)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own jvp decompositions
@pytest.mark.parametrize("key", ["dit8", "unet8"])
def test_math_attention_matches_sdpa_and_supports_jvp(key: str) -> None:
    spec = dict(TINY[key], num_classes=10)
    net = _randomize(build_net(spec)).eval()
    x, t, y = _inputs(spec)
    ref = net(x, t, y)
    with math_attention():
        torch.testing.assert_close(net(x, t, y), ref, atol=1e-5, rtol=0)
    net.set_attention("math")
    torch.testing.assert_close(net(x, t, y), ref, atol=1e-5, rtol=0)
    # forward-mode derivative in t through the math path (MeanFlow / FreeFlow need it),
    # checked against a central difference in float64 (1000 t makes the net stiff in t)
    net, x, t = net.double(), x.double(), t.double()
    _, dout = torch.func.jvp(lambda tt: net(x, tt, y), (t,), (torch.ones_like(t),))
    eps = 1e-7
    fd = (net(x, t + eps, y) - net(x, t - eps, y)) / (2 * eps)
    torch.testing.assert_close(dout, fd, atol=1e-4 * fd.abs().max().item(), rtol=1e-4)
    net.set_attention("sdpa")
    with pytest.raises(ValueError):
        net.set_attention("flash3")
