"""Random-weight EDM / EDM2 network snapshots in the official pickle structure, for the
tests and benchmarks (nothing is downloaded; no EDM / EDM2 code is used or embedded).

EDM's and EDM2's ``torch_utils.persistence`` pickles a decorated module as
``(_reconstruct_persistent_obj, (meta,))`` with ``meta = dict(type='class', version=6,
module_src, class_name, state=the module's __dict__)``. :class:`Persistent` pickles itself
the same way; :func:`write_snapshot` makes the two modules the pickle names
(``torch_utils.persistence``, ``dnnlib.util``) importable only while it writes, and the
``module_src`` it embeds is whatever the caller passes (the tests pass a payload that writes
a file when run, to show that slimstep's reader never runs it).

Builders: :func:`edm_song_unet` (EDM's SongUNet, DDPM++ / NCSN++ options) inside
:func:`edm_snapshot`, and :func:`edm2_snapshot` (EDM2's Precond + UNet, its encoder
record, stored in float16 as EDM2's training loop stores ``ema``). Layouts are written from
the architectures' descriptions (docs/teachers.md).
"""

from __future__ import annotations

import contextlib
import math
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _reconstruct_persistent_obj(meta):  # pickled by reference only; never called here
    raise RuntimeError("slimstep's synthetic snapshots are written, not loaded, with this stand-in")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class EasyDict(dict):
    """``dnnlib.util.EasyDict`` as the pickle names it."""


EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"


class Persistent(nn.Module):
    """A module pickled as the ``persistent_class`` decorator pickles one. ``edm_class`` is
    the class name recorded; the other attributes become the record's state."""

    reconstruct = staticmethod(_reconstruct_persistent_obj)
    module_src = ""

    def __init__(self, class_name: str, **attrs) -> None:
        super().__init__()
        self.edm_class = class_name
        for k, v in attrs.items():
            setattr(self, k, v)

    def __reduce__(self):
        state = {k: v for k, v in self.__dict__.items() if k != "edm_class"}
        meta = dict(type="class", version=6, module_src=Persistent.module_src,
                    class_name=self.edm_class, state=state)
        return (Persistent.reconstruct, (meta,))


class PersistentObject:
    """A plain (non-module) persistent object, e.g. EDM2's encoders or loss."""

    def __init__(self, class_name: str, **attrs) -> None:
        self.edm_class = class_name
        self.__dict__.update(attrs)

    def __reduce__(self):
        state = {k: v for k, v in self.__dict__.items() if k != "edm_class"}
        meta = dict(type="class", version=6, module_src=Persistent.module_src,
                    class_name=self.edm_class, state=state)
        return (Persistent.reconstruct, (meta,))


@contextlib.contextmanager
def _importable(modules: dict[str, types.ModuleType]):
    saved = {k: sys.modules.get(k) for k in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def write_snapshot(path: str | Path, data, module_src: str = "# no source\n", protocol: int = 4,
                   reconstruct=None) -> None:
    """Pickle ``data`` (a dict holding :class:`Persistent` records) to ``path`` with
    ``module_src`` embedded in every persistent object. ``reconstruct`` replaces the function
    the pickle names (it must be called ``torch_utils.persistence._reconstruct_persistent_obj``)."""
    fn = reconstruct or _reconstruct_persistent_obj
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = fn
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    Persistent.reconstruct, Persistent.module_src = staticmethod(fn), module_src
    mods = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
            "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}
    try:
        with _importable(mods):
            Path(path).write_bytes(pickle.dumps(data, protocol=protocol))
    finally:
        Persistent.reconstruct = staticmethod(_reconstruct_persistent_obj)


def _param(g: torch.Generator, *shape: int, std: float = 0.2) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape, generator=g) * std, requires_grad=False)


# ----------------------------------------------------------------------------- EDM (SongUNet)


def _filt(f) -> torch.Tensor:
    f = torch.tensor(f, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum() ** 2)[None, None]


def edm_conv(g, cin: int, cout: int, k: int, up=False, down=False, filt=(1, 1), fused=False,
             bias=True, std=0.2) -> Persistent:
    m = Persistent("Conv2d", in_channels=cin, out_channels=cout, up=up, down=down, fused_resample=fused)
    if k:
        m.weight = _param(g, cout, cin, k, k, std=std)
        m.bias = _param(g, cout, std=std) if bias else None
    m.register_buffer("resample_filter", _filt(filt) if up or down else None)
    return m


def edm_group_norm(g, ch: int, eps=1e-6) -> Persistent:
    m = Persistent("GroupNorm", num_groups=min(32, ch // 4), eps=eps)
    m.weight, m.bias = _param(g, ch, std=0.1), _param(g, ch, std=0.1)
    with torch.no_grad():
        m.weight += 1
    return m


def edm_linear(g, cin: int, cout: int, bias=True, std=0.2) -> Persistent:
    m = Persistent("Linear", in_features=cin, out_features=cout)
    m.weight = _param(g, cout, cin, std=std)
    m.bias = _param(g, cout, std=std) if bias else None
    return m


def edm_song_block(g, cin: int, cout: int, emb: int, up=False, down=False, attn=False, filt=(1, 1),
                   dropout=0.13, std=0.2) -> Persistent:
    """EDM's UNetBlock with SongUNet's settings (skip scale a numpy float, as EDM's np.sqrt)."""
    m = Persistent("UNetBlock", in_channels=cin, out_channels=cout, emb_channels=emb,
                   num_heads=1 if attn else 0, dropout=dropout, skip_scale=np.sqrt(0.5),
                   adaptive_scale=False)
    m.norm0 = edm_group_norm(g, cin)
    m.conv0 = edm_conv(g, cin, cout, 3, up, down, filt, std=std)
    m.affine = edm_linear(g, emb, cout, std=std)
    m.norm1 = edm_group_norm(g, cout)
    m.conv1 = edm_conv(g, cout, cout, 3, std=std)
    m.skip = edm_conv(g, cin, cout, 1, up, down, filt, std=std) if cout != cin or up or down else None
    if attn:
        m.norm2 = edm_group_norm(g, cout)
        m.qkv = edm_conv(g, cout, 3 * cout, 1, std=std)
        m.proj = edm_conv(g, cout, cout, 1, std=std)
    return m


#: EDM train.py's --arch presets for SongUNet
EDM_ARCHS = {
    "ddpmpp": dict(embedding_type="positional", encoder_type="standard", decoder_type="standard",
                   channel_mult_noise=1, resample_filter=[1, 1]),
    "ncsnpp": dict(embedding_type="fourier", encoder_type="residual", decoder_type="standard",
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1]),
}


def edm_song_unet(g, img_resolution: int, in_channels: int, label_dim: int, model_channels: int,
                  channel_mult, num_blocks: int, attn_resolutions, arch: str = "ddpmpp",
                  augment_dim: int = 9, dropout: float = 0.13, std: float = 0.2) -> Persistent:
    """EDM's SongUNet (DDPM++ or NCSN++ with the standard decoder) in EDM's layout."""
    a, mc, res = EDM_ARCHS[arch], model_channels, img_resolution
    filt, emb, noise = a["resample_filter"], 4 * mc, mc * a["channel_mult_noise"]
    kwargs = dict(img_resolution=res, in_channels=in_channels, out_channels=in_channels,
                  label_dim=label_dim, augment_dim=augment_dim, model_channels=mc,
                  channel_mult=list(channel_mult), num_blocks=num_blocks,
                  attn_resolutions=list(attn_resolutions), dropout=dropout, **a)
    m = Persistent("SongUNet", label_dropout=0, _init_args=(), _init_kwargs=kwargs)
    if a["embedding_type"] == "fourier":
        m.map_noise = Persistent("FourierEmbedding")
        m.map_noise.register_buffer("freqs", torch.randn(noise // 2, generator=g) * 2)
    else:
        m.map_noise = Persistent("PositionalEmbedding", num_channels=noise, max_positions=10000, endpoint=True)
    if label_dim:
        m.map_label = edm_linear(g, label_dim, noise, std=std)
    m.map_augment = edm_linear(g, augment_dim, noise, bias=False, std=std) if augment_dim else None
    m.map_layer0, m.map_layer1 = edm_linear(g, noise, emb, std=std), edm_linear(g, emb, emb, std=std)
    m.enc, m.dec = nn.ModuleDict(), nn.ModuleDict()
    blk = dict(filt=filt, dropout=dropout, std=std)
    cout, caux, skips = in_channels, in_channels, []
    for level, mult in enumerate(channel_mult):
        r = res >> level
        if level == 0:
            m.enc[f"{r}x{r}_conv"] = edm_conv(g, cout, mc, 3, std=std)
            cout = mc
        else:
            m.enc[f"{r}x{r}_down"] = edm_song_block(g, cout, cout, emb, down=True, **blk)
            if a["encoder_type"] == "residual":
                m.enc[f"{r}x{r}_aux_residual"] = edm_conv(g, caux, cout, 3, down=True, filt=filt,
                                                          fused=True, std=std)
                caux = cout
        skips.append(cout)
        for i in range(num_blocks):
            m.enc[f"{r}x{r}_block{i}"] = edm_song_block(g, cout, mc * mult, emb, attn=r in attn_resolutions, **blk)
            cout = mc * mult
            skips.append(cout)
    for level, mult in reversed(list(enumerate(channel_mult))):
        r = res >> level
        if level == len(channel_mult) - 1:
            m.dec[f"{r}x{r}_in0"] = edm_song_block(g, cout, cout, emb, attn=True, **blk)
            m.dec[f"{r}x{r}_in1"] = edm_song_block(g, cout, cout, emb, **blk)
        else:
            m.dec[f"{r}x{r}_up"] = edm_song_block(g, cout, cout, emb, up=True, **blk)
        for i in range(num_blocks + 1):
            cin, cout = cout + skips.pop(), mc * mult
            attn = r in attn_resolutions and i == num_blocks  # the last block of a level only
            m.dec[f"{r}x{r}_block{i}"] = edm_song_block(g, cin, cout, emb, attn=attn, **blk)
        if level == 0:
            m.dec[f"{r}x{r}_aux_norm"] = edm_group_norm(g, cout)
            m.dec[f"{r}x{r}_aux_conv"] = edm_conv(g, cout, in_channels, 3, std=std)
    return m


#: EDM's CIFAR-10 DDPM++ (train.py --arch=ddpmpp at 32x32): 55.7M parameters with 10 classes
EDM_CIFAR_DDPMPP = dict(img_resolution=32, in_channels=3, model_channels=128, channel_mult=[2, 2, 2],
                        num_blocks=4, attn_resolutions=[16])


def edm_snapshot(path: str | Path, *, img_resolution: int, in_channels: int, label_dim: int,
                 model_channels: int, channel_mult, num_blocks: int, attn_resolutions,
                 arch: str = "ddpmpp", seed: int = 0, std: float = 0.2, module_src: str = "# no source\n",
                 protocol: int = 4, reconstruct=None) -> dict[str, torch.Tensor]:
    """Write an EDM ``network-snapshot-*.pkl`` ({ema: EDMPrecond(SongUNet), loss_fn,
    augment_pipe, dataset_kwargs}) with random weights; returns the network's tensors."""
    g = torch.Generator().manual_seed(seed)
    size = dict(model_channels=model_channels, channel_mult=list(channel_mult), num_blocks=num_blocks,
                attn_resolutions=list(attn_resolutions))
    net = Persistent("EDMPrecond", img_resolution=img_resolution, img_channels=in_channels,
                     label_dim=label_dim, use_fp16=False, sigma_min=0, sigma_max=float("inf"),
                     sigma_data=0.5, _init_args=(), _init_kwargs=dict(
                         img_resolution=img_resolution, img_channels=in_channels, label_dim=label_dim,
                         model_type="SongUNet", use_fp16=False, dropout=0.13, augment_dim=9,
                         **size, **EDM_ARCHS[arch]))
    net.model = edm_song_unet(g, img_resolution, in_channels, label_dim, arch=arch, std=std, **size)
    data = dict(ema=net.eval(), loss_fn=Persistent("EDMLoss", P_mean=-1.2, P_std=1.2, sigma_data=0.5),
                augment_pipe=None, dataset_kwargs=EasyDict(class_name="training.dataset.ImageFolderDataset",
                                                           path="x"))
    write_snapshot(path, data, module_src, protocol, reconstruct)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# ----------------------------------------------------------------------------- EDM2


def _rows(g, cout: int, fan_in: int, *kernel: int, std: float) -> nn.Parameter:
    """A random MPConv weight whose output channels have different scales (the forward
    normalises them away, so a missing normalisation shows)."""
    w = torch.randn(cout, fan_in, *kernel, generator=g)
    scale = torch.exp(torch.randn(cout, *([1] * (w.ndim - 1)), generator=g) * 0.5) * std
    return nn.Parameter(w * scale, requires_grad=False)


def edm2_mpconv(g, cin: int, cout: int, kernel=(), std: float = 1.0) -> Persistent:
    m = Persistent("MPConv", out_channels=cout)
    m.weight = _rows(g, cout, cin, *kernel, std=std)
    return m


def edm2_fourier(g, n: int, bandwidth: float = 1.0) -> Persistent:
    m = Persistent("MPFourier")
    m.register_buffer("freqs", 2 * math.pi * torch.randn(n, generator=g) * bandwidth)
    m.register_buffer("phases", 2 * math.pi * torch.rand(n, generator=g))
    return m


def edm2_block(g, cin: int, cout: int, emb: int, flavor: str, mode: str = "keep", attn: bool = False,
               opts: dict | None = None, gain_std: float = 0.5) -> Persistent:
    """EDM2's Block: its attributes as EDM2 sets them, its gain drawn (EDM2 starts it at 0;
    a nonzero one makes the embedding's path matter in a test)."""
    o = {"resample_filter": [1, 1], "channels_per_head": 64, "dropout": 0.0, "res_balance": 0.3,
         "attn_balance": 0.3, "clip_act": 256, **(opts or {})}
    heads = cout // o["channels_per_head"] if attn else 0
    m = Persistent("Block", out_channels=cout, flavor=flavor, resample_filter=list(o["resample_filter"]),
                   resample_mode=mode, num_heads=heads, dropout=o["dropout"], res_balance=o["res_balance"],
                   attn_balance=o["attn_balance"], clip_act=o["clip_act"])
    m.emb_gain = nn.Parameter(torch.randn([], generator=g) * gain_std, requires_grad=False)
    m.conv_res0 = edm2_mpconv(g, cout if flavor == "enc" else cin, cout, (3, 3))
    m.emb_linear = edm2_mpconv(g, emb, cout)
    m.conv_res1 = edm2_mpconv(g, cout, cout, (3, 3))
    m.conv_skip = edm2_mpconv(g, cin, cout, (1, 1)) if cin != cout else None
    m.attn_qkv = edm2_mpconv(g, cout, 3 * cout, (1, 1)) if heads else None
    m.attn_proj = edm2_mpconv(g, cout, cout, (1, 1)) if heads else None
    return m


#: EDM2's UNet / Block defaults (networks_edm2.py signatures)
EDM2_DEFAULTS = dict(model_channels=192, channel_mult=[1, 2, 3, 4], channel_mult_noise=None,
                     channel_mult_emb=None, num_blocks=3, attn_resolutions=[16, 8], label_balance=0.5,
                     concat_balance=0.5)
#: EDM2-S at 512 px (edm2-img512-s: 4x64x64 SD-VAE latents, 1000 classes, 192 channels)
EDM2_IMG512_S = dict(img_resolution=64, img_channels=4, label_dim=1000, model_channels=192)


def edm2_unet(g, img_resolution: int, img_channels: int, label_dim: int, unet: dict,
              block: dict, out_gain: float = 0.7) -> Persistent:
    """EDM2's UNet in its layout (``unet``: UNet options, ``block``: Block options)."""
    u = {**EDM2_DEFAULTS, **unet}
    mc = u["model_channels"]
    cblock = [mc * m for m in u["channel_mult"]]
    cnoise = mc * u["channel_mult_noise"] if u["channel_mult_noise"] else cblock[0]
    cemb = mc * u["channel_mult_emb"] if u["channel_mult_emb"] else max(cblock)
    m = Persistent("UNet", label_balance=u["label_balance"], concat_balance=u["concat_balance"],
                   _init_args=(), _init_kwargs=dict(img_resolution=img_resolution, img_channels=img_channels,
                                                    label_dim=label_dim, **unet, **block))
    m.out_gain = nn.Parameter(torch.tensor(float(out_gain)), requires_grad=False)
    m.emb_fourier = edm2_fourier(g, cnoise)
    m.emb_noise = edm2_mpconv(g, cnoise, cemb)
    m.emb_label = edm2_mpconv(g, label_dim, cemb) if label_dim else None
    m.enc, m.dec = nn.ModuleDict(), nn.ModuleDict()
    cout, skips = img_channels + 1, []
    for level, ch in enumerate(cblock):
        r = img_resolution >> level
        if level == 0:
            m.enc[f"{r}x{r}_conv"] = edm2_mpconv(g, cout, ch, (3, 3))
            cout = ch
        else:
            m.enc[f"{r}x{r}_down"] = edm2_block(g, cout, cout, cemb, "enc", "down", opts=block)
        skips.append(cout)
        for i in range(u["num_blocks"]):
            m.enc[f"{r}x{r}_block{i}"] = edm2_block(g, cout, ch, cemb, "enc",
                                                    attn=r in u["attn_resolutions"], opts=block)
            cout = ch
            skips.append(cout)
    for level, ch in reversed(list(enumerate(cblock))):
        r = img_resolution >> level
        if level == len(cblock) - 1:
            m.dec[f"{r}x{r}_in0"] = edm2_block(g, cout, cout, cemb, "dec", attn=True, opts=block)
            m.dec[f"{r}x{r}_in1"] = edm2_block(g, cout, cout, cemb, "dec", opts=block)
        else:
            m.dec[f"{r}x{r}_up"] = edm2_block(g, cout, cout, cemb, "dec", "up", opts=block)
        for i in range(u["num_blocks"] + 1):
            cin, cout = cout + skips.pop(), ch
            m.dec[f"{r}x{r}_block{i}"] = edm2_block(g, cin, cout, cemb, "dec",
                                                    attn=r in u["attn_resolutions"], opts=block)
    m.out_conv = edm2_mpconv(g, cout, img_channels, (3, 3))
    return m


def edm2_snapshot(path: str | Path, *, img_resolution: int, img_channels: int, label_dim: int,
                  unet: dict | None = None, block: dict | None = None, seed: int = 0,
                  encoder: str = "StandardRGBEncoder", fp16: bool = True, edit=None,
                  module_src: str = "# no source\n", protocol: int = 4, reconstruct=None
                  ) -> dict[str, torch.Tensor]:
    """Write an EDM2 snapshot — ``EasyDict(encoder, dataset_kwargs, loss_fn, ema)`` with
    ``ema`` a Precond (sigma_data 0.5, logvar_channels 128) around :func:`edm2_unet`, in
    float16 when ``fp16`` (as EDM2's training loop and reconstruct_phema.py store it);
    ``encoder`` ``StandardRGBEncoder`` or ``StabilityVAEEncoder`` (numpy scale / bias).
    ``edit(net)`` may change the network first. Returns the network's tensors as stored."""
    unet, block = dict(unet or {}), dict(block or {})
    g = torch.Generator().manual_seed(seed)
    net = Persistent("Precond", img_resolution=img_resolution, img_channels=img_channels,
                     label_dim=label_dim, use_fp16=True, sigma_data=0.5, _init_args=(),
                     _init_kwargs=dict(img_resolution=img_resolution, img_channels=img_channels,
                                       label_dim=label_dim, **unet, **block))
    net.unet = edm2_unet(g, img_resolution, img_channels, label_dim, unet, block)
    net.logvar_fourier = edm2_fourier(g, 128)
    net.logvar_linear = edm2_mpconv(g, 128, 1)
    if edit:
        edit(net)
    net = net.eval().requires_grad_(False)
    if fp16:
        net = net.to(torch.float16)
    if encoder == "StabilityVAEEncoder":
        raw_mean, raw_std = [5.81, 3.25, 0.12, -2.15], [4.17, 4.62, 3.71, 3.28]
        scale = np.float32(0.5) / np.float32(raw_std)
        enc = PersistentObject(encoder, vae_name="stabilityai/sd-vae-ft-mse", scale=scale,
                               bias=np.float32(0) - np.float32(raw_mean) * scale, batch_size=8,
                               _vae=None, _init_args=(), _init_kwargs={})
    else:
        enc = PersistentObject(encoder, _init_args=(), _init_kwargs={})
    data = EasyDict(encoder=enc, dataset_kwargs=EasyDict(class_name="training.dataset.ImageFolderDataset",
                                                         path="x", use_labels=bool(label_dim)),
                    loss_fn=PersistentObject("EDM2Loss", P_mean=-0.4, P_std=1.0, sigma_data=0.5))
    data["ema"] = net
    write_snapshot(path, data, module_src, protocol, reconstruct)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}
