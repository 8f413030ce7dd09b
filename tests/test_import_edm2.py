"""slimstep import --format edm2: EDM2 snapshots written in EDM2's persistence structure by
slimstep.importers.synthetic (tiny UNets, random weights, EDM2's tensor names, stored in
float16 as EDM2 stores them; no EDM2 code), read without running anything they embed,
mapped tensor for tensor, and checked against an independent float64 reference forward
written here from the paper's equations."""

import math
import pickle
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from cli_checks import nothing_written, one_error_line

import slimstep
from slimstep import checkpoint as ckpt
from slimstep.cli import main
from slimstep.importers import import_teacher
from slimstep.importers.safe_pickle import ObjectRecord, safe_load
from slimstep.importers.synthetic import edm2_snapshot, edm_snapshot
from slimstep.methods.gdd import frozen_fraction, gdd_i_frozen
from slimstep.nets import build_net

C, R, K = 1, 8, 10  # digits-shaped: 1x8x8, 10 classes
UNET = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
CASES = {  # (UNet options, Block options, label_dim, encoder)
    "cond": (UNET, dict(channels_per_head=8), K, "StandardRGBEncoder"),
    # other balances, a clip that bites, 16 channels a head, no labels, the VAE encoder's arrays
    "uncond": ({**UNET, "label_balance": 0.3, "concat_balance": 0.6, "channel_mult_emb": 3},
               dict(channels_per_head=16, res_balance=0.4, attn_balance=0.25, clip_act=2.5), 0,
               "StabilityVAEEncoder"),
}


def snapshot(path, case="cond", seed=0, **kw):
    unet, block, label_dim, encoder = CASES[case]
    return edm2_snapshot(path, img_resolution=R, img_channels=C, label_dim=label_dim, unet=unet,
                         block=block, seed=seed, encoder=encoder, **kw)


# ----------------------------------------------------------------------------- reference forward


def reference_denoiser(sd, case, x, sigma, y):
    """EDM2's D(x; σ, y) from the tensors and the equations alone, float64 (the [1, 1]
    filter's re-sampling as average pooling / nearest-neighbour copies)."""
    unet, block, label_dim, _ = CASES[case]
    u = {"label_balance": 0.5, "concat_balance": 0.5, **unet}
    b = {"channels_per_head": 64, "res_balance": 0.3, "attn_balance": 0.3, "clip_act": 256, **block}
    sd = {k: v.double() for k, v in sd.items()}
    x, sigma = x.double(), sigma.double().reshape(-1, 1, 1, 1)
    sd2 = 0.25
    c_skip, c_out = sd2 / (sigma ** 2 + sd2), sigma * 0.5 / (sigma ** 2 + sd2).sqrt()
    c_in, c_noise = 1 / (sigma ** 2 + sd2).sqrt(), sigma.flatten().log() / 4

    def mpconv(p, h, gain=1.0):
        w = sd[p + ".weight"]
        fan = w[0].numel()
        rms = w.reshape(len(w), -1).pow(2).sum(1).sqrt() / math.sqrt(fan)  # per output channel
        w = w / (1e-4 + rms).reshape(-1, *[1] * (w.ndim - 1)) * (gain / math.sqrt(fan))
        return h @ w.T if w.ndim == 2 else F.conv2d(h, w, padding=w.shape[-1] // 2)

    def silu(h):
        return h * torch.sigmoid(h) / 0.596

    def msum(a, c, t):
        return ((1 - t) * a + t * c) / math.sqrt((1 - t) ** 2 + t ** 2)

    def unit(h, dim):  # unit root-mean-square along dim
        return h / (1e-4 + h.pow(2).mean(dim, keepdim=True).sqrt())

    def blk(p, h, emb, flavor, mode="keep"):
        if mode == "down":
            h = F.avg_pool2d(h, 2)
        elif mode == "up":
            h = h.repeat_interleave(2, 2).repeat_interleave(2, 3)
        has_skip = p + ".conv_skip.weight" in sd
        if flavor == "enc":
            h = unit(mpconv(p + ".conv_skip", h) if has_skip else h, 1)
        r = mpconv(p + ".conv_res0", silu(h))
        r = silu(r * (1 + mpconv(p + ".emb_linear", emb, sd[p + ".emb_gain"]))[:, :, None, None])
        r = mpconv(p + ".conv_res1", r)
        if flavor == "dec" and has_skip:
            h = mpconv(p + ".conv_skip", h)
        h = msum(h, r, b["res_balance"])
        if p + ".attn_qkv.weight" in sd:
            n, ch, hh, ww = h.shape
            heads = ch // b["channels_per_head"]
            qkv = unit(mpconv(p + ".attn_qkv", h).reshape(n, heads, ch // heads, 3, hh * ww), 2)
            q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
            w = torch.softmax(torch.einsum("nhcq,nhck->nhqk", q, k) / math.sqrt(ch // heads), dim=-1)
            a = torch.einsum("nhqk,nhck->nhcq", w, v).reshape(h.shape)
            h = msum(h, mpconv(p + ".attn_proj", a), b["attn_balance"])
        return h.clamp(-b["clip_act"], b["clip_act"])

    fourier = math.sqrt(2) * torch.cos(c_noise[:, None] * sd["unet.emb_fourier.freqs"][None]
                                       + sd["unet.emb_fourier.phases"][None])
    emb = mpconv("unet.emb_noise", fourier)
    if label_dim:
        onehot = torch.zeros(len(x), label_dim, dtype=torch.float64)
        real = y < label_dim  # the null class is the zero vector
        onehot[real.nonzero()[:, 0], y[real]] = 1
        emb = msum(emb, mpconv("unet.emb_label", onehot * math.sqrt(label_dim)), u["label_balance"])
    emb = silu(emb)
    h = torch.cat([c_in * x, torch.ones_like(x[:, :1])], dim=1)
    skips, levels = [], len(u["channel_mult"])
    for level in range(levels):
        r = R >> level
        h = mpconv(f"unet.enc.{r}x{r}_conv", h) if level == 0 else blk(f"unet.enc.{r}x{r}_down", h, emb, "enc", "down")
        skips.append(h)
        for i in range(u["num_blocks"]):
            h = blk(f"unet.enc.{r}x{r}_block{i}", h, emb, "enc")
            skips.append(h)
    t = u["concat_balance"]
    for level in reversed(range(levels)):
        r = R >> level
        if level == levels - 1:
            h = blk(f"unet.dec.{r}x{r}_in1", blk(f"unet.dec.{r}x{r}_in0", h, emb, "dec"), emb, "dec")
        else:
            h = blk(f"unet.dec.{r}x{r}_up", h, emb, "dec", "up")
        for i in range(u["num_blocks"] + 1):
            s = skips.pop()
            na, nb = h.shape[1], s.shape[1]
            cc = math.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2))
            h = torch.cat([cc * (1 - t) / math.sqrt(na) * h, cc * t / math.sqrt(nb) * s], dim=1)
            h = blk(f"unet.dec.{r}x{r}_block{i}", h, emb, "dec")
    f_x = mpconv("unet.out_conv", h, sd["unet.out_gain"])
    return c_skip * x + c_out * f_x


def reference_velocity(sd, case, x, t, y, sigma_range=(0.002, 80.0)):
    """t clamped to [1/(1+σ_max), 1/(1+σ_min)], σ = (1-t)/t, v = (D(x/t; σ) - x) / (1 - t)."""
    td = t.double().clamp(1 / (1 + sigma_range[1]), 1 / (1 + sigma_range[0]))
    tb = td.reshape(-1, 1, 1, 1)
    d = reference_denoiser(sd, case, x.double() / tb, (1 - td) / td, y)
    return (d - x.double()) / (1 - tb)


# ----------------------------------------------------------------------------- tests


def _exec_reconstruct():
    def _reconstruct_persistent_obj(meta):
        exec(meta["module_src"], {})  # what EDM2's persistence does with the embedded source
        return meta["class_name"]

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"  # how pickle names it
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    return _reconstruct_persistent_obj


def test_edm2_snapshot_is_read_inertly(tmp_path, monkeypatch):
    """The payload is real (plain pickle with a persistence module that does what EDM2's
    does runs it), yet slimstep's reader returns records and never runs it."""
    marker, src = tmp_path / "marker.txt", tmp_path / "edm2.pkl"
    payload = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n"
    fn = _exec_reconstruct()
    snapshot(src, "uncond", module_src=payload, reconstruct=fn)
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = fn
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = dict
    with monkeypatch.context() as mp:
        for name, mod in (("torch_utils", types.ModuleType("torch_utils")), ("torch_utils.persistence", persistence),
                          ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", util)):
            mp.setitem(sys.modules, name, mod)
        pickle.loads(src.read_bytes())
    assert marker.read_text() == "pwned"
    marker.unlink()
    obj = safe_load(src, edm=True)
    assert not marker.exists()
    assert not any(m.split(".")[0] in ("torch_utils", "dnnlib", "training") for m in sys.modules)
    ema = obj["ema"]
    assert isinstance(ema, ObjectRecord) and ema.class_name == "Precond"
    assert ema.state["_modules"]["unet"].class_name == "UNet"
    assert obj["encoder"].state["scale"].array.shape == (4,)  # numpy, decoded from bytes
    out = tmp_path / "out"
    assert main(["import", "--format", "edm2", str(src), "--out", str(out)]) == 0
    assert not marker.exists()


@pytest.mark.parametrize("case", list(CASES))
def test_velocity_matches_reference(tmp_path, case, capsys):
    src = tmp_path / f"edm2-{case}.pkl"
    sd = snapshot(src, case)
    assert all(v.dtype == torch.float16 for v in sd.values())  # as EDM2 stores ema
    out = tmp_path / "edm2"
    label_dim = CASES[case][2]
    data = ["--data", "digits"] if label_dim else []
    assert main(["import", "--format", "edm2", str(src), "--out", str(out), *data]) == 0
    cfg = ckpt.read_config(out)
    imp, net = cfg["import"], cfg["net"]
    assert imp["tensors"] == imp["tensors_used"] == len(sd) and imp["container"] == "ema"
    assert "init_kwargs agree" in imp["architecture"] and imp["dtype_in_file"] == "float16"
    assert imp["classes"] == {"precond": "Precond", "model": "UNet"}
    assert net["name"] == "edm2_unet" and net["channels_per_head"] == CASES[case][1]["channels_per_head"]
    assert imp["encoder"]["class"] == CASES[case][3]
    gen = slimstep.load(out)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, C, R, R, generator=g)
    y = torch.tensor([0, 3, 9, K, 5]) if label_dim else None
    t = torch.tensor([0.0, 0.05, 0.5, 0.9, 1.0])  # both ends outside the clamp
    with torch.no_grad():
        v = gen.net(x, t, y)
    want = reference_velocity(sd, case, x, t, y)
    err, scale = (v.double() - want).abs().max().item(), want.abs().max().item()
    with capsys.disabled():
        print(f"\nEDM2 {case} velocity max |diff| = {err:.2e} (max |v| = {scale:.1f})")
    # float32: the 1/(1 - t) of the data end (500 at σ_min = 0.002) amplifies D's rounding
    assert err / scale < 1e-4
    # the denoiser itself, float32, across EDM2's σ range
    sigma = torch.tensor([0.002, 0.05, 0.5, 5.0, 80.0])
    xs = x * (1 + sigma.reshape(-1, 1, 1, 1))
    with torch.no_grad():
        d32 = gen.net.denoise(xs, sigma, y)
    d_ref = reference_denoiser(sd, case, xs, sigma, y)
    d_err = (d32.double() - d_ref).abs().max().item()
    with capsys.disabled():
        print(f"EDM2 {case} D max |diff| = {d_err:.2e} (max |D| = {d_ref.abs().max().item():.1f})")
    assert d_err < 1e-5 * max(1.0, d_ref.abs().max().item())
    with torch.no_grad():
        err64 = (gen.net.double()(x.double(), t.double(), y) - want).abs().max().item()
        d64 = gen.net.denoise(xs.double(), sigma.double(), y)
    with capsys.disabled():
        print(f"EDM2 {case} float64 max |diff|: velocity {err64:.2e}, D {(d64 - d_ref).abs().max().item():.2e}")
    assert err64 / scale < 1e-12 and (d64 - d_ref).abs().max().item() < 1e-12
    assert main(["info", "--ckpt", str(out)]) == 0
    assert "edm2" in capsys.readouterr().out


def _missing(net):
    net.unet.dec["8x8_block0"].conv_res1.weight = None


def _wrong_shape(net):
    net.unet.enc["4x4_block0"].emb_linear.weight = torch.nn.Parameter(torch.zeros(32, 7), requires_grad=False)


def _extra(net):
    net.unet.enc["8x8_block0"].extra = torch.nn.Parameter(torch.zeros(3), requires_grad=False)


def _heads(net):
    net.unet.dec["4x4_in0"].num_heads = 2  # 32 channels, 8 a head elsewhere: 4


def _flavor(net):
    net.unet.dec["8x8_block0"].flavor = "enc"


def _balance(net):
    net.unet.dec["8x8_block1"].res_balance = 0.5


def _recorded(net):
    net.unet._init_kwargs["num_blocks"] = 2


def _layer(net):
    net.unet.enc["8x8_block0"].conv_res0.edm_class = "Conv2d"


@pytest.mark.parametrize("edit, says", [
    (_missing, "1 missing: unet.dec.8x8_block0.conv_res1.weight"),
    (_wrong_shape, "unet.enc.4x4_block0.emb_linear.weight is [32, 7] in the file, the inferred network needs [32, 32]"),
    (_extra, "1 tensor(s) of the file unused: unet.enc.8x8_block0.extra"),
    (_heads, "unet.dec.4x4_in0 has 2 attention heads for 32 channels"),
    (_flavor, "unet.dec.8x8_block0 has flavor='enc', EDM2's UNet has 'dec' there"),
    (_balance, "EDM2 gives every block the same one"),
    (_recorded, "recorded init_kwargs say num_blocks=2, its tensors and attributes 1"),
    (_layer, "unet.enc.8x8_block0.conv_res0 is a Conv2d, not one of the layers of EDM2's UNet")])
def test_malformed_edm2_pickles_are_one_line(tmp_path, capsys, edit, says):
    src, out = tmp_path / "edm2.pkl", tmp_path / "out"
    snapshot(src, edit=edit)
    assert main(["import", "--format", "edm2", str(src), "--out", str(out)]) == 2
    assert says in one_error_line(capsys)
    nothing_written(out)


def test_edm_and_edm2_formats_redirect(tmp_path, capsys):
    """Each format reads its own codebase's pickles; the other's is one line naming it."""
    e2, e1, out = tmp_path / "edm2.pkl", tmp_path / "edm.pkl", tmp_path / "out"
    snapshot(e2)
    edm_snapshot(e1, img_resolution=R, in_channels=C, label_dim=0, model_channels=16, channel_mult=[1, 2],
                 num_blocks=1, attn_resolutions=[4])
    assert main(["import", "--format", "edm", str(e2), "--out", str(out)]) == 2
    assert "an EDM2 network (networks_edm2.Precond): import it with --format edm2" in one_error_line(capsys)
    assert main(["import", "--format", "edm2", str(e1), "--out", str(out)]) == 2
    assert "the network is EDM's EDMPrecond, not EDM2's: import it with --format edm" in one_error_line(capsys)
    assert main(["import", "--format", "edm2", str(e2), "--out", str(out), "num_heads=4"]) == 2
    assert "--format edm2 takes no option 'num_heads'" in one_error_line(capsys)
    nothing_written(out)
    cfg = ckpt.read_config(import_teacher("edm2", e2, out, options={"sigma_max": 50, "dropout": 0.1}))
    assert cfg["net"]["sigma_max"] == 50 and cfg["import"]["adapter"]["t_min"] == pytest.approx(1 / 51)
    assert cfg["net"]["dropout"] == 0.1 and cfg["import"]["dropout_in_file"] == 0.0


# ----------------------------------------------------------------------------- GDD-I's rule


def test_gdd_i_edm2_rule_freezes_the_block_convs_and_attention_proj():
    """Level 1: every Block's 3x3 conv_res0 / conv_res1 and attn_proj; level 2 adds attn_qkv.
    The published sizes (built on the meta device): EDM2-S 83.9% / 91.4%, XS 83.7% / 91.3%."""
    net = build_net({"name": "edm2_unet", "in_shape": [C, R, R], "num_classes": K, **UNET,
                     "channels_per_head": 8})
    names = [n for n, _ in net.named_parameters()]
    for level, layers in ((1, ("conv_res0", "conv_res1", "attn_proj")),
                          (2, ("conv_res0", "conv_res1", "attn_proj", "attn_qkv"))):
        want = {n for n in names if n.split(".")[-2] in layers}
        assert set(gdd_i_frozen(net, level)) == want
    trainable = set(names) - set(gdd_i_frozen(net, 2))
    assert {"unet.enc.8x8_conv.weight", "unet.out_conv.weight", "unet.out_gain", "unet.emb_noise.weight",
            "unet.emb_label.weight", "unet.enc.4x4_block0.conv_skip.weight",
            "unet.enc.4x4_block0.emb_linear.weight", "unet.enc.4x4_block0.emb_gain"} <= trainable
    for mc, fraction in ((192, (83.9, 91.4)), (128, (83.7, 91.3))):
        with torch.device("meta"):
            big = build_net({"name": "edm2_unet", "in_shape": [4, 64, 64], "num_classes": 1000,
                             "model_channels": mc})
        assert tuple(round(100 * frozen_fraction(big, lv), 1) for lv in (1, 2)) == fraction


# ----------------------------------------------------------------------------- using the import


def test_sample_flowmap_and_gdd_i_from_an_edm2_teacher(tmp_path, capsys):
    src = tmp_path / "edm2-digits.pkl"
    snapshot(src, seed=4)
    teacher = import_teacher("edm2", src, tmp_path / "edm2", data="digits")
    assert main(["sample", "--ckpt", str(teacher), "--n", "3", "--out", str(tmp_path / "s.npz"),
                 "--device", "cpu", "--steps", "4"]) == 0
    assert "NFE" in capsys.readouterr().out
    runs = [("flowmap", "configs/digits/flowmap.yaml", []),  # the student is the teacher's net
            ("gdd-i", "configs/digits/gdd-i.yaml", ["method.disc=teacher"])]  # teacher features + R1
    for method, config, extra in runs:
        out = tmp_path / method
        assert main(["distill", "--method", method, "--config", config, "--teacher", str(teacher),
                     "--out", str(out), "--quiet", "train.steps=2", "train.batch_size=8",
                     "train.ckpt_every=2", *extra]) == 0, capsys.readouterr().err
        x, _ = slimstep.load(out).generate(3, seed=0)
        assert x.shape == (3, C, R, R) and torch.isfinite(x).all()
    assert ckpt.read_config(tmp_path / "flowmap")["net"]["extra_time_embeds"] == 1


def test_pair_methods_and_meanflow_train_from_an_edm2_teacher(tmp_path, capsys, runs_pair_methods):
    src = tmp_path / "edm2-digits.pkl"
    snapshot(src, seed=4)
    teacher = import_teacher("edm2", src, tmp_path / "edm2", data="digits")
    runs_pair_methods(teacher, (C, R, R))
    out = tmp_path / "meanflow"  # MeanFlow fine-tunes the teacher's net, as flowmap does
    assert main(["distill", "--method", "meanflow", "--config", "configs/digits/meanflow.yaml",
                 "--teacher", str(teacher), "--out", str(out), "--quiet", "train.steps=2",
                 "train.batch_size=8", "train.ckpt_every=2"]) == 0, capsys.readouterr().err
    x, _ = slimstep.load(out).generate(3, seed=0)
    assert x.shape == (3, C, R, R) and torch.isfinite(x).all()


@pytest.mark.parametrize("method", ["dmd2", "ect", "scd"])
def test_baselines_train_from_an_edm2_teacher(tmp_path, trains_one_step, method):
    """DMD2, ECT and sCD tune a copy of the imported EDM2 U-Net (c_noise = ln(σ)/4, a smooth
    time input, so sCD's JVP along t is allowed); the one-step export samples."""
    src = tmp_path / "edm2-digits.pkl"
    snapshot(src, seed=4)
    trains_one_step(import_teacher("edm2", src, tmp_path / "edm2", data="digits"), method, (C, R, R))
