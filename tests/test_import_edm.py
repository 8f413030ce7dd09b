"""slimstep import --format edm: EDM network snapshots built here in EDM's persistence
structure (tiny SongUNets, random weights, EDM's tensor names; no EDM code), read without
running anything they embed, mapped tensor for tensor, and checked against an independent
float64 reference forward of the architecture and of the σ -> velocity formula."""

import math
import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_checks import nothing_written, one_error_line

import slimstep
from slimstep import checkpoint as ckpt
from slimstep.cli import main
from slimstep.importers import import_teacher
from slimstep.importers.safe_pickle import ObjectRecord, UnsafePickleError, safe_load

C, R, K = 1, 8, 10  # digits-shaped: 1x8x8, 10 classes
MC, MULT, NB, ATTN = 16, (1, 2), 1, (4,)  # SongUNet
ADM_MC = 64  # DhariwalUNet: 64 and 128 channels, so one and two heads (64 channels a head)
ARCHS = {  # EDM train.py's --arch presets (model_channels / channel_mult scaled down)
    "ddpmpp": dict(embedding_type="positional", encoder_type="standard", decoder_type="standard",
                   channel_mult_noise=1, resample_filter=[1, 1]),
    "ncsnpp": dict(embedding_type="fourier", encoder_type="residual", decoder_type="standard",
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1]),
    "adm": {},  # DhariwalUNet (model_type), no SongUNet options
}

# ----------------------------------------------------------------------------- EDM's pickle structure


def persistence_modules(marker):
    """Stand-ins for ``torch_utils.persistence`` and ``dnnlib.util``, as modules pickle can
    name. ``_reconstruct_persistent_obj`` does what EDM's does first — it executes the
    module source in ``meta`` — so loading the file with plain ``pickle`` runs the payload
    (the control below), and the source written here creates ``marker`` when it runs."""
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):
        exec(meta["module_src"], {})  # what EDM's persistence does with the embedded source
        return meta["class_name"]

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"  # how pickle names it
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    src = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n"
    return persistence, util, src


class Persistent(torch.nn.Module):
    """A module pickled as EDM's ``persistent_class`` decorator pickles one:
    ``(_reconstruct_persistent_obj, (meta,))`` with ``meta = dict(type='class', version,
    module_src, class_name, state=the module's __dict__)``."""

    reconstruct, module_src = None, ""

    def __init__(self, class_name, **attrs):
        super().__init__()
        self.edm_class = class_name
        for k, v in attrs.items():
            setattr(self, k, v)

    def __reduce__(self):
        state = {k: v for k, v in self.__dict__.items() if k != "edm_class"}
        meta = dict(type="class", version=6, module_src=Persistent.module_src,
                    class_name=self.edm_class, state=state)
        return (Persistent.reconstruct, (meta,))


def _param(g, *shape, std=0.2):
    return torch.nn.Parameter(torch.randn(*shape, generator=g) * std, requires_grad=False)


def _filt(f):
    f = torch.tensor(f, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum() ** 2)[None, None]


def conv(g, cin, cout, k, up=False, down=False, filt=(1, 1), fused=False, bias=True):
    m = Persistent("Conv2d", in_channels=cin, out_channels=cout, up=up, down=down,
                   fused_resample=fused)
    if k:
        m.weight = _param(g, cout, cin, k, k)
        m.bias = _param(g, cout) if bias else None
    m.register_buffer("resample_filter", _filt(filt) if up or down else None)
    return m


def group_norm(g, ch, eps=1e-6):
    m = Persistent("GroupNorm", num_groups=min(32, ch // 4), eps=eps)
    m.weight, m.bias = _param(g, ch, std=0.1), _param(g, ch, std=0.1)
    with torch.no_grad():
        m.weight += 1
    return m


def linear(g, cin, cout, bias=True):
    m = Persistent("Linear", in_features=cin, out_features=cout)
    m.weight = _param(g, cout, cin)
    m.bias = _param(g, cout) if bias else None
    return m


def unet_block(g, cin, cout, emb, up=False, down=False, attn=False, filt=(1, 1), adm=False):
    """EDM's UNetBlock with SongUNet's settings (skip_scale a numpy float, as EDM's np.sqrt),
    or ADM's (``adm``: skip scale 1, ε 1e-5, scale-and-shift affine, a head per 64
    channels, and a skip without weights where only the resolution changes)."""
    heads = (cout // 64 if adm else 1) if attn else 0
    eps = 1e-5 if adm else 1e-6
    m = Persistent("UNetBlock", in_channels=cin, out_channels=cout, emb_channels=emb,
                   num_heads=heads, dropout=0.13, skip_scale=1 if adm else np.sqrt(0.5),
                   adaptive_scale=adm)
    m.norm0 = group_norm(g, cin, eps)
    m.conv0 = conv(g, cin, cout, 3, up, down, filt)
    m.affine = linear(g, emb, 2 * cout if adm else cout)
    m.norm1 = group_norm(g, cout, eps)
    m.conv1 = conv(g, cout, cout, 3)
    kernel = 0 if adm and cin == cout else 1
    m.skip = conv(g, cin, cout, kernel, up, down, filt) if cout != cin or up or down else None
    if heads:
        m.norm2 = group_norm(g, cout, eps)
        m.qkv = conv(g, cout, 3 * cout, 1)
        m.proj = conv(g, cout, cout, 1)
    return m


def unet(g, arch, label_dim, augment_dim=9):
    """A SongUNet (``ddpmpp``, ``ncsnpp``) or DhariwalUNet (``adm``: attention in every block
    at 4x4 and in in0) in EDM's layout, written from the architectures' description."""
    a, adm = ARCHS[arch], arch == "adm"
    mc = ADM_MC if adm else MC
    filt, emb = a.get("resample_filter", [1, 1]), 4 * mc
    noise = mc * a.get("channel_mult_noise", 1)
    kwargs = dict(img_resolution=R, in_channels=C, out_channels=C, label_dim=label_dim,
                  augment_dim=augment_dim, model_channels=mc, channel_mult=list(MULT),
                  num_blocks=NB, attn_resolutions=list(ATTN), dropout=0.13, **a)
    m = Persistent("DhariwalUNet" if adm else "SongUNet", label_dropout=0, _init_args=(),
                   _init_kwargs=kwargs)
    if a.get("embedding_type") == "fourier":
        m.map_noise = Persistent("FourierEmbedding")
        m.map_noise.register_buffer("freqs", torch.randn(noise // 2, generator=g) * 2)
    else:
        m.map_noise = Persistent("PositionalEmbedding", num_channels=noise, max_positions=10000,
                                 endpoint=not adm)
    if label_dim:  # ADM adds the label to the embedding after the MLP, without a bias
        m.map_label = linear(g, label_dim, emb, bias=False) if adm else linear(g, label_dim, noise)
    m.map_augment = linear(g, augment_dim, noise, bias=False) if augment_dim else None
    m.map_layer0, m.map_layer1 = linear(g, noise, emb), linear(g, emb, emb)
    m.enc, m.dec = torch.nn.ModuleDict(), torch.nn.ModuleDict()
    blk = dict(filt=filt, adm=adm)
    cout, caux, skips = C, C, []
    for level, mult in enumerate(MULT):  # MULT[0] = 1: both stems have mc outputs
        r = R >> level
        if level == 0:
            m.enc[f"{r}x{r}_conv"] = conv(g, cout, mc, 3)
            cout = mc
        else:
            m.enc[f"{r}x{r}_down"] = unet_block(g, cout, cout, emb, down=True, **blk)
            if a.get("encoder_type") == "residual":
                m.enc[f"{r}x{r}_aux_residual"] = conv(g, caux, cout, 3, down=True, filt=filt, fused=True)
                caux = cout
        skips.append(cout)
        for i in range(NB):
            m.enc[f"{r}x{r}_block{i}"] = unet_block(g, cout, mc * mult, emb, attn=r in ATTN, **blk)
            cout = mc * mult
            skips.append(cout)
    for level, mult in reversed(list(enumerate(MULT))):
        r = R >> level
        if level == len(MULT) - 1:
            m.dec[f"{r}x{r}_in0"] = unet_block(g, cout, cout, emb, attn=True, **blk)
            m.dec[f"{r}x{r}_in1"] = unet_block(g, cout, cout, emb, **blk)
        else:
            m.dec[f"{r}x{r}_up"] = unet_block(g, cout, cout, emb, up=True, **blk)
        for i in range(NB + 1):
            cin, cout = cout + skips.pop(), mc * mult
            attn = r in ATTN and (adm or i == NB)  # SongUNet: the last block of a level only
            m.dec[f"{r}x{r}_block{i}"] = unet_block(g, cin, cout, emb, attn=attn, **blk)
        if level == 0 and not adm:
            m.dec[f"{r}x{r}_aux_norm"] = group_norm(g, cout)
            m.dec[f"{r}x{r}_aux_conv"] = conv(g, cout, C, 3)
    if adm:
        m.out_norm = group_norm(g, cout, eps=1e-5)
        m.out_conv = conv(g, cout, C, 3)
    return m


PRECONDS = {"edm": ("EDMPrecond", dict(sigma_min=0, sigma_max=float("inf"), sigma_data=0.5)),
            "vp": ("VPPrecond", dict(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5,  # σ(ε_t), σ(1)
                                     sigma_min=0.0010004976266502028, sigma_max=152.1669702839464)),
            "ve": ("VEPrecond", dict(sigma_min=0.02, sigma_max=100))}


def snapshot(path, marker, monkeypatch, precond="edm", arch="ddpmpp", label_dim=K, seed=0,
             edit=None, protocol=4):
    """Write an EDM ``network-snapshot-*.pkl``: {ema, loss_fn, augment_pipe, dataset_kwargs};
    returns the network's tensors by name. ``edit(net)`` may change the network first."""
    persistence, util, src = persistence_modules(marker)
    Persistent.reconstruct, Persistent.module_src = persistence._reconstruct_persistent_obj, src
    g = torch.Generator().manual_seed(seed)
    cls, attrs = PRECONDS[precond]
    adm = arch == "adm"
    net = Persistent(cls, img_resolution=R, img_channels=C, label_dim=label_dim, use_fp16=False,
                     **attrs, _init_args=(), _init_kwargs=dict(
                         img_resolution=R, img_channels=C, label_dim=label_dim,
                         model_type="DhariwalUNet" if adm else "SongUNet", use_fp16=False,
                         dropout=0.13, augment_dim=9, model_channels=ADM_MC if adm else MC,
                         channel_mult=list(MULT), num_blocks=NB, attn_resolutions=list(ATTN),
                         **ARCHS[arch]))
    net.model = unet(g, arch, label_dim)
    if edit:
        edit(net)
    data = dict(ema=net.eval(), loss_fn=Persistent("EDMLoss", P_mean=-1.2, P_std=1.2, sigma_data=0.5),
                augment_pipe=None,
                dataset_kwargs=util.EasyDict(class_name="training.dataset.ImageFolderDataset", path="x"))
    with monkeypatch.context() as mp:  # the stand-ins are importable only while pickling
        for name, mod in (("torch_utils", types.ModuleType("torch_utils")),
                          ("torch_utils.persistence", persistence),
                          ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", util)):
            mp.setitem(sys.modules, name, mod)
        path.write_bytes(pickle.dumps(data, protocol=protocol))
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# ----------------------------------------------------------------------------- reference forward


def ref_resample(x, f, up, p=None):
    """Depthwise 2x re-sampling by f fᵀ (f normalised, padding p), up by zero-stuffing then
    filtering with 4 f fᵀ — a different route than a transposed convolution, same numbers."""
    b, c, h, w = x.shape
    k = f.shape[-1]
    p = (k - 1) // 2 if p is None else p
    x = x.reshape(b * c, 1, h, w)
    if up:
        z = x.new_zeros(b * c, 1, 2 * h - 1, 2 * w - 1)
        z[..., ::2, ::2] = x
        out = F.conv2d(F.pad(z, [k - 1 - p] * 4), 4 * f.flip(-1, -2))
    else:
        out = F.conv2d(F.pad(x, [p] * 4), f, stride=2)
    return out.reshape(b, c, *out.shape[-2:])


def reference_denoiser(sd, precond, arch, x, sigma, y, label_dim=K):
    """EDM's D(x; σ, y) from the tensors alone, float64: preconditioning, SongUNet (DDPM++,
    NCSN++) or DhariwalUNet (``arch="adm"``)."""
    a, adm = ARCHS[arch], arch == "adm"
    sd = {k: v.double() for k, v in sd.items()}
    x, sigma = x.double(), sigma.double().reshape(-1, 1, 1, 1)
    if precond == "edm":
        c_skip, c_out = 0.25 / (sigma ** 2 + 0.25), sigma * 0.5 / (sigma ** 2 + 0.25).sqrt()
        c_in, c_noise = 1 / (sigma ** 2 + 0.25).sqrt(), sigma.log() / 4
    elif precond == "vp":
        c_skip, c_out, c_in = 1.0, -sigma, 1 / (sigma ** 2 + 1).sqrt()
        c_noise = 999 * ((0.01 + 2 * 19.9 * (1 + sigma ** 2).log()).sqrt() - 0.1) / 19.9
    else:
        c_skip, c_out, c_in, c_noise = 1.0, sigma, 1.0, (sigma / 2).log()
    c_noise = c_noise.flatten()
    skip_scale, eps = (1.0, 1e-5) if adm else (1 / math.sqrt(2), 1e-6)

    def cv(p, h, up=False, down=False, fused=False):
        w, b = sd.get(p + ".weight"), sd.get(p + ".bias")
        f = sd.get(p + ".resample_filter")
        if fused:  # conv at padding k//2 + f_pad, then the filter with stride 2, unpadded
            h = F.conv2d(h, w, padding=w.shape[-1] // 2 + (f.shape[-1] - 1) // 2)
            h = ref_resample(h, f, False, p=0)
        else:
            if up or down:
                h = ref_resample(h, f, up)
            if w is not None:
                h = F.conv2d(h, w, padding=w.shape[-1] // 2)
        return h + b.reshape(1, -1, 1, 1) if b is not None else h

    def gn(p, h):
        return F.group_norm(h, min(32, h.shape[1] // 4), sd[p + ".weight"], sd[p + ".bias"], eps=eps)

    def lin(p, h):
        return F.linear(h, sd[p + ".weight"], sd.get(p + ".bias"))

    def block(p, h, emb, up=False, down=False):
        o = cv(p + ".conv0", F.silu(gn(p + ".norm0", h)), up, down)
        e = lin(p + ".affine", emb)[:, :, None, None]
        if adm:  # scale and shift of the normalised state
            scale, shift = e[:, :o.shape[1]], e[:, o.shape[1]:]
            o = F.silu(gn(p + ".norm1", o) * (1 + scale) + shift)
        else:
            o = F.silu(gn(p + ".norm1", o + e))
        o = cv(p + ".conv1", o)
        has_skip = p + ".skip.weight" in sd or p + ".skip.resample_filter" in sd
        o = (o + (cv(p + ".skip", h, up, down) if has_skip else h)) * skip_scale
        if p + ".qkv.weight" in sd:  # qkv channels interleaved as [head, C/heads, 3]
            b, c = o.shape[:2]
            nh = c // 64 if adm else 1
            qkv = cv(p + ".qkv", gn(p + ".norm2", o)).flatten(2)
            q, k, v = (qkv[:, j::3].reshape(b, nh, c // nh, -1) for j in range(3))
            w = torch.softmax(torch.einsum("bhci,bhcj->bhij", q, k) / math.sqrt(c // nh), dim=-1)
            att = torch.einsum("bhij,bhcj->bhci", w, v).reshape(o.shape)
            o = (cv(p + ".proj", att) + o) * skip_scale
        return o

    n = sd["model.map_layer0.weight"].shape[1]
    if a.get("embedding_type") == "fourier":
        ang = 2 * math.pi * c_noise[:, None] * sd["model.map_noise.freqs"][None]
    else:
        steps = n // 2 if adm else n // 2 - 1
        ang = c_noise[:, None] * 10000.0 ** (-torch.arange(n // 2, dtype=torch.float64) / steps)[None]
    emb = torch.cat([ang.cos(), ang.sin()] if adm else [ang.sin(), ang.cos()], dim=1)
    onehot = None
    if label_dim:
        onehot = torch.zeros(len(x), label_dim, dtype=torch.float64)
        real = y < label_dim  # the null class is the zero vector
        onehot[real.nonzero()[:, 0], y[real]] = 1
    if adm:  # the label joins after the MLP, unscaled
        emb = lin("model.map_layer1", F.silu(lin("model.map_layer0", emb)))
        emb = F.silu(emb + (lin("model.map_label", onehot) if label_dim else 0))
    else:
        if label_dim:
            emb = emb + lin("model.map_label", onehot * math.sqrt(label_dim))
        emb = F.silu(lin("model.map_layer1", F.silu(lin("model.map_layer0", emb))))
    h = c_in * x
    aux, skips = h, []
    for level in range(len(MULT)):
        r = R >> level
        if level == 0:
            h = cv(f"model.enc.{r}x{r}_conv", h)
        else:
            h = block(f"model.enc.{r}x{r}_down", h, emb, down=True)
            if a.get("encoder_type") == "residual":
                h = aux = (h + cv(f"model.enc.{r}x{r}_aux_residual", aux, fused=True)) / math.sqrt(2)
        skips.append(h)
        for i in range(NB):
            h = block(f"model.enc.{r}x{r}_block{i}", h, emb)
            skips.append(h)
    for level in reversed(range(len(MULT))):
        r = R >> level
        if level == len(MULT) - 1:
            h = block(f"model.dec.{r}x{r}_in1", block(f"model.dec.{r}x{r}_in0", h, emb), emb)
        else:
            h = block(f"model.dec.{r}x{r}_up", h, emb, up=True)
        for i in range(NB + 1):
            h = block(f"model.dec.{r}x{r}_block{i}", torch.cat([h, skips.pop()], dim=1), emb)
    out = "model.out" if adm else f"model.dec.{R}x{R}_aux"
    f_x = cv(out + "_conv", F.silu(gn(out + "_norm", h)))
    return c_skip * x + c_out * f_x


def reference_velocity(sd, precond, arch, x, t, y, sigma_range=(0.002, 80.0), label_dim=K):
    """The documented adapter: t clamped to [1/(1+σ_max), 1/(1+σ_min)], σ = (1-t)/t,
    v = (D(x/t; σ) - x) / (1 - t)."""
    td = t.double().clamp(1 / (1 + sigma_range[1]), 1 / (1 + sigma_range[0]))
    tb = td.reshape(-1, 1, 1, 1)
    d = reference_denoiser(sd, precond, arch, x.double() / tb, (1 - td) / td, y, label_dim)
    return (d - x.double()) / (1 - tb)


def inputs(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, R, R, generator=g), torch.tensor([0, 3, 9, K, 5])[:n]


# ----------------------------------------------------------------------------- tests


def test_snapshot_is_read_inertly(tmp_path, monkeypatch):
    """The payload is real (plain pickle with EDM's persistence runs it), yet slimstep's reader
    returns records, never runs the source, and imports no module the file names."""
    marker = tmp_path / "marker.txt"
    src = tmp_path / "network-snapshot-000000.pkl"
    sd = snapshot(src, marker, monkeypatch)
    persistence, util, _ = persistence_modules(marker)
    with monkeypatch.context() as mp:
        for name, mod in (("torch_utils", types.ModuleType("torch_utils")),
                          ("torch_utils.persistence", persistence),
                          ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", util)):
            mp.setitem(sys.modules, name, mod)
        pickle.loads(src.read_bytes())
    assert marker.read_text() == "pwned"
    marker.unlink()
    for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    obj = safe_load(src, edm=True)
    assert not marker.exists()
    assert not any(m.split(".")[0] in ("torch_utils", "dnnlib", "training") for m in sys.modules)
    ema = obj["ema"]
    assert isinstance(ema, ObjectRecord) and ema.class_name == "EDMPrecond" and ema.version == 6
    assert len(ema.source_sha256) == 64
    enc = ema.state["_modules"]["model"].state["_modules"]["enc"]
    assert enc.class_name == "torch.nn.modules.container.ModuleDict"
    block = enc.state["_modules"]["8x8_block0"]
    assert block.state["skip_scale"] == pytest.approx(math.sqrt(0.5))  # a numpy scalar, decoded
    assert torch.equal(block.state["_modules"]["conv0"].state["_parameters"]["weight"],
                       sd["model.enc.8x8_block0.conv0.weight"])
    assert isinstance(obj["dataset_kwargs"], dict) and obj["dataset_kwargs"]["path"] == "x"
    assert obj["loss_fn"].class_name == "EDMLoss"
    # without EDM mode the same file is refused at its first persistence global
    with pytest.raises(UnsafePickleError, match="_reconstruct_persistent_obj"):
        safe_load(src)
    assert not marker.exists()


@pytest.mark.parametrize("precond, arch, label_dim", [("edm", "ddpmpp", K), ("edm", "ncsnpp", 0),
                                                      ("vp", "ddpmpp", K), ("ve", "ncsnpp", 0),
                                                      ("edm", "adm", K), ("vp", "adm", 0)])
def test_velocity_matches_reference(tmp_path, monkeypatch, precond, arch, label_dim):
    """EDM's DDPM++ / NCSN++ / ADM presets behind the three preconditionings, with and without
    labels; VE is pickled with protocol 2 (``__builtin__.set``, ``_codecs.encode`` bytes)."""
    marker = tmp_path / "marker.txt"
    src = tmp_path / f"edm-{precond}-{arch}.pkl"
    sd = snapshot(src, marker, monkeypatch, precond, arch, label_dim, protocol=2 if precond == "ve" else 4)
    out = tmp_path / "edm"
    data = ["--data", "digits"] if label_dim else []
    assert main(["import", "--format", "edm", str(src), "--out", str(out), *data]) == 0
    assert not marker.exists()
    cfg = ckpt.read_config(out)
    imp, net = cfg["import"], cfg["net"]
    assert imp["tensors"] == imp["tensors_used"] == len(sd) and imp["container"] == "ema"
    assert "init_kwargs agree" in imp["architecture"]
    model_type = "DhariwalUNet" if arch == "adm" else "SongUNet"
    assert imp["classes"] == {"precond": PRECONDS[precond][0], "model": model_type}
    assert net["name"] == "edm_unet" and net["precond"] == precond and net["model_type"] == model_type
    assert {k: net[k] for k in ARCHS[arch]} == ARCHS[arch]
    mc = ADM_MC if arch == "adm" else MC
    assert (net["model_channels"], net["channel_mult"], net["attn_resolutions"]) == (mc, list(MULT), list(ATTN))
    lo, hi = {"edm": (0.002, 80.0), "vp": (0.002, 80.0), "ve": (0.02, 80.0)}[precond]
    assert (imp["adapter"]["sigma_min"], imp["adapter"]["sigma_max"]) == (lo, hi)
    gen = slimstep.load(out)
    x, y = inputs()
    y = y if label_dim else None
    t = torch.tensor([0.0, 0.05, 0.5, 0.9, 1.0])  # both ends outside the clamp
    with torch.no_grad():
        v = gen.net(x, t, y)
    want = reference_velocity(sd, precond, arch, x, t, y, (lo, hi), label_dim)
    err, scale = (v.double() - want).abs().max().item(), want.abs().max().item()
    print(f"EDM {precond}/{arch} velocity max |diff| = {err:.2e} (max |v| = {scale:.1f})")
    # float32: the 1/(1 - t) of the data end (500 at σ_min = 0.002) amplifies D's rounding
    assert err / scale < 1e-4
    with torch.no_grad():
        err64 = (gen.net.double()(x.double(), t.double(), y) - want).abs().max().item()
    gen.net.float()
    print(f"EDM {precond}/{arch} velocity float64 max |diff| = {err64:.2e}")
    assert err64 / scale < 1e-12


def _drop_bias(net):
    net.model.dec["8x8_block1"].conv1.bias = None


def _extra_param(net):
    net.model.enc["8x8_block0"].extra = torch.nn.Parameter(torch.zeros(3), requires_grad=False)


def _stray_tensor(net):
    object.__setattr__(net.model, "cache", torch.zeros(3))  # an attribute, not a buffer


@pytest.mark.parametrize("edit, says", [
    (_drop_bias, "1 missing: model.dec.8x8_block1.conv1.bias"),
    (_extra_param, "1 tensor(s) of the file unused: model.enc.8x8_block0.extra"),
    (_stray_tensor, "model.cache holds tensors outside the module's parameters and buffers")])
def test_every_tensor_is_used_exactly_once(tmp_path, monkeypatch, capsys, edit, says):
    src = tmp_path / "edm.pkl"
    snapshot(src, tmp_path / "marker.txt", monkeypatch, edit=edit)
    out = tmp_path / "out"
    assert main(["import", "--format", "edm", str(src), "--out", str(out)]) == 2
    assert says in one_error_line(capsys)
    nothing_written(out)


def _rename(cls):
    def edit(net):
        net.model.edm_class = cls
    return edit


def _precond(cls):
    def edit(net):
        net.edm_class = cls
    return edit


def _layer(net):
    net.model.enc["8x8_block0"].norm0.edm_class = "LayerNorm"


def _skip_scale(net):
    net.model.dec["8x8_block0"].skip_scale = 1.0


def _recorded(net):
    net.model._init_kwargs["model_channels"] = 32


def _junk_sigma_data(net):
    net.sigma_data = "half"


def _junk_heads(net):
    net.model.dec["4x4_in0"].out_channels = "many"


def _flat_stem(net):
    net.model.enc["8x8_conv"].weight = torch.nn.Parameter(torch.zeros(3), requires_grad=False)


def _no_recorded(net):
    net.model._init_kwargs = None


def _malicious(net):
    net.model.enc["8x8_block0"].note = _WritesAFile(net.marker)


class _WritesAFile:
    """A reduce that writes a file when plain pickle loads it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        from pathlib import Path

        return (Path.write_text, (self.path, "pwned"))


@pytest.mark.parametrize("edit, says", [
    (_rename("DhariwalUNet"), "model.map_noise (PositionalEmbedding) has endpoint=True, DhariwalUNet's is False"),
    (_precond("iDDPMPrecond"), "iDDPMPrecond not yet"),
    (_precond("Precond"), "an EDM2 network (networks_edm2.Precond): import it with --format edm2"),
    (_rename("MyUNet"), "EDMPrecond wraps a MyUNet, not EDM's SongUNet or DhariwalUNet"),
    (_layer, "model.enc.8x8_block0.norm0 is a LayerNorm, not one of the layers of EDM's SongUNet"),
    (_skip_scale, "model.dec.8x8_block0 (UNetBlock) has skip_scale=1.0"),
    (_recorded, "recorded init_kwargs say model_channels=32, its tensors 16"),
    (_malicious, "refused: the pickle calls pathlib.Path.write_text"),
    (_junk_sigma_data, "the network's sigma_data is 'half', not a number"),
    (_junk_heads, "model.dec.4x4_in0 has 1 attention heads for 'many' channels"),
    (_flat_stem, "tensor shapes that do not fit EDM's SongUNet layout")])
def test_unsupported_or_unsafe_networks_are_one_line(tmp_path, monkeypatch, capsys, edit, says):
    src, marker = tmp_path / "edm.pkl", tmp_path / "marker.txt"

    def edit_with_marker(net):
        net.marker = marker
        edit(net)
        del net.marker

    snapshot(src, marker, monkeypatch, edit=edit_with_marker)
    out = tmp_path / "out"
    assert main(["import", "--format", "edm", str(src), "--out", str(out)]) == 2
    assert says in one_error_line(capsys)
    assert not marker.exists()
    nothing_written(out)


def test_without_recorded_init_kwargs_the_shapes_decide(tmp_path, monkeypatch):
    src = tmp_path / "edm.pkl"
    snapshot(src, tmp_path / "m", monkeypatch, arch="ncsnpp", edit=_no_recorded)
    cfg = ckpt.read_config(import_teacher("edm", src, tmp_path / "out"))
    assert cfg["import"]["architecture"].endswith("(no init_kwargs recorded)")
    assert cfg["net"]["encoder_type"] == "residual" and cfg["net"]["resample_filter"] == [1, 3, 3, 1]


def test_edm_options_and_bad_files(tmp_path, monkeypatch, capsys):
    src = tmp_path / "edm.pkl"
    snapshot(src, tmp_path / "m", monkeypatch, precond="ve")
    cfg = ckpt.read_config(import_teacher("edm", src, tmp_path / "a", options={"sigma_max": 50}))
    assert cfg["import"]["adapter"]["t_min"] == pytest.approx(1 / 51) and cfg["net"]["sigma_max"] == 50
    assert cfg["net"]["dropout"] == 0.0 and cfg["import"]["dropout_in_file"] == 0.13  # EDM CIFAR-10's
    cfg = ckpt.read_config(import_teacher("edm", src, tmp_path / "b", options={"dropout": 0.13}))
    assert cfg["net"]["dropout"] == 0.13
    out = tmp_path / "out"
    for opt, says in (("sigma_min=0.001", "within the network's range [0.02, 100]"),
                      ("sigma_max=abc", "sigma_max='abc' must be a number"),
                      ("num_heads=4", "--format edm takes no option 'num_heads'"),
                      ("dropout=1", "dropout must be in [0, 1)"),
                      ("container=loss_fn", "the network is EDMLoss, not one of EDM's EDMPrecond"),
                      ("container=dataset_kwargs", "'dataset_kwargs' is a dict, not an EDM network"),
                      ("container=opt", "no 'opt' in the pickle")):
        assert main(["import", "--format", "edm", str(src), "--out", str(out), opt]) == 2
        assert says in one_error_line(capsys), opt
        nothing_written(out)
    tensors = tmp_path / "tensors.pkl"  # a plain pickle without a network
    tensors.write_bytes(pickle.dumps({"w": torch.ones(2)}))
    assert main(["import", "--format", "edm", str(tensors), "--out", str(out)]) == 2
    assert "no 'ema' in the pickle (top-level keys: w)" in one_error_line(capsys)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(src.read_bytes()[:5000])
    assert main(["import", "--format", "edm", str(cut), "--out", str(out)]) == 2
    assert "unreadable pickle" in one_error_line(capsys)
    nothing_written(out)


# ----------------------------------------------------------------------------- using the import


@pytest.fixture
def edm_teacher(tmp_path, monkeypatch):
    src = tmp_path / "edm-digits.pkl"
    sd = snapshot(src, tmp_path / "marker.txt", monkeypatch, seed=4)
    for k, v in sd.items():  # small weights: a tame teacher for a few training steps
        if k.endswith(".weight") and v.ndim > 1:
            v.mul_(0.25)
    return import_teacher("edm", src, tmp_path / "edm", data="digits")


def test_sample_and_distill_from_an_edm_teacher(edm_teacher, tmp_path, capsys):
    assert main(["sample", "--ckpt", str(edm_teacher), "--n", "3", "--out", str(tmp_path / "s.npz"),
                 "--device", "cpu", "--steps", "4"]) == 0
    assert "NFE" in capsys.readouterr().out
    runs = [("gdd", "configs/digits/gdd.yaml", []),
            ("gdd-i", "configs/digits/gdd-i.yaml", ["method.disc=teacher"])]  # teacher features + R1
    for method, config, extra in runs:
        out = tmp_path / method
        assert main(["distill", "--method", method, "--config", config, "--teacher", str(edm_teacher),
                     "--out", str(out), "--quiet", "train.steps=2", "train.batch_size=8",
                     "train.ckpt_every=2", *extra]) == 0, capsys.readouterr().err
        x, _ = slimstep.load(out).generate(3, seed=0)
        assert x.shape == (3, C, R, R) and torch.isfinite(x).all()


def test_pair_methods_train_from_an_edm_teacher(edm_teacher, runs_pair_methods):
    runs_pair_methods(edm_teacher, (C, R, R))


def test_the_shared_snapshot_builder_writes_edm_s_layout(tmp_path):
    """slimstep.importers.synthetic (what benchmarks/gpu_import.py builds EDM's CIFAR-10 DDPM++
    with) writes the layout this file's builder writes: imported, every tensor used, the
    velocity the reference forward's."""
    from slimstep.importers.synthetic import edm_snapshot

    src = tmp_path / "shared.pkl"
    sd = edm_snapshot(src, img_resolution=R, in_channels=C, label_dim=K, model_channels=MC,
                      channel_mult=MULT, num_blocks=NB, attn_resolutions=ATTN, seed=3)
    cfg = ckpt.read_config(import_teacher("edm", src, tmp_path / "out", data="digits"))
    assert cfg["import"]["tensors"] == cfg["import"]["tensors_used"] == len(sd)
    assert "init_kwargs agree" in cfg["import"]["architecture"]
    x, y = inputs()
    t = torch.tensor([0.0, 0.05, 0.5, 0.9, 1.0])
    with torch.no_grad():
        v = slimstep.load(tmp_path / "out").net.double()(x.double(), t.double(), y)
    want = reference_velocity(sd, "edm", "ddpmpp", x, t, y)
    assert (v - want).abs().max().item() / want.abs().max().item() < 1e-12


@pytest.mark.parametrize("method", ["dmd2", "ect", "scd"])
def test_baselines_train_from_an_edm_teacher(edm_teacher, trains_one_step, method):
    """DMD2, ECT and sCD tune a copy of the imported network (EDM's c_noise = ln(σ)/4 is a
    smooth time input, so sCD's JVP along t is allowed); the one-step export samples."""
    trains_one_step(edm_teacher, method, (C, R, R))
