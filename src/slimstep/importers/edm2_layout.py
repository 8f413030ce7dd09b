"""EDM2's network pickles: the inert record tree of :mod:`safe_pickle` (EDM mode) -> EDM2-named
tensors and the kwargs of slimstep's ``edm2_unet``.

An EDM2 snapshot (``network-snapshot-*.pkl``, or a post-hoc EMA reconstruction
``edm2-img512-s-2147483-0.130.pkl``) is an ``EasyDict(encoder, dataset_kwargs, loss_fn, ema)``;
``ema`` is a ``training.networks_edm2.Precond`` (stored in float16) whose ``unet`` is a
``UNet`` of ``Block``, ``MPConv`` and ``MPFourier`` records, and whose ``logvar_fourier`` /
``logvar_linear`` are the uncertainty head. The tensors are read under ``state_dict`` names
(``unet.enc.64x64_block0.conv_res0.weight``), which :class:`slimstep.nets.edm2_unet.EDM2UNet`
has too: the map is the identity.

The architecture is read off the tensor names and shapes, the per-block options off the
``Block`` records' attributes (they are what EDM2's forward reads), and both are checked
against the ``_init_kwargs`` the persistence decorator recorded:

=======================================  ===============================================
``unet.enc.{R}x{R}_conv.weight``         resolution R, image channels (its input − 1: the
[C0, C + 1, 3, 3]                        constant channel), cblock[0] = C0
levels / ``{R}x{R}_block{i}``            len(channel_mult), num_blocks
``enc.{r}x{r}_block{n-1}.conv_res1``     cblock[l] (its out channels)
``emb_fourier.freqs`` [N]                the noise embedding width N
``emb_noise.weight`` [E, N]              the embedding width E
``emb_label.weight`` [E, K]              label_dim K
``enc.{r}x{r}_block0.attn_qkv``          r in attn_resolutions (heads from ``num_heads``)
``logvar_fourier.freqs`` [L]             logvar_channels L
Block attributes                         resample_filter, dropout, res_balance,
                                         attn_balance, clip_act, num_heads, flavor,
                                         resample_mode (each checked where it must be)
UNet attributes                          label_balance, concat_balance
=======================================  ===============================================

``model_channels`` is in no shape (only ``model_channels·channel_mult`` is): it is the
recorded one, else the greatest common divisor of the widths — the same network either way.
"""

from __future__ import annotations

import math
import re
from functools import reduce

import torch

from slimstep.importers.edm_layout import _records, _short, number, plain
from slimstep.importers.readers import TeacherImportError
from slimstep.importers.safe_pickle import NumpyArray, ObjectRecord
from slimstep.nets.edm_unet import _role

#: the layer classes EDM2's UNet is made of (EDM2's, and torch's ModuleDict)
LAYERS = {"Block", "MPConv", "MPFourier", "torch.nn.modules.container.ModuleDict"}
#: EDM2's UNet and Block constructor defaults, for keys a recorded init_kwargs omits
DEFAULTS = {"model_channels": 192, "channel_mult": [1, 2, 3, 4], "channel_mult_noise": None,
            "channel_mult_emb": None, "num_blocks": 3, "attn_resolutions": [16, 8],
            "label_balance": 0.5, "concat_balance": 0.5, "resample_filter": [1, 1],
            "channels_per_head": 64, "dropout": 0.0, "res_balance": 0.3, "attn_balance": 0.3,
            "clip_act": 256, "logvar_channels": 128, "sigma_data": 0.5}
#: Block attributes every block shares (EDM2 hands all of them the same block_kwargs)
BLOCK_SHARED = ("resample_filter", "dropout", "res_balance", "attn_balance", "clip_act")
#: sha256 of the one published networks_edm2.py (NVlabs/edm2, unchanged since d8299d3)
OFFICIAL_SOURCE_SHA256 = "7298880db4bf955d2941496cce3a554a970867b3eae4d22276cb1c293c131fa2"


def is_edm2(rec: ObjectRecord) -> bool:
    """Whether a network record is EDM2's ``Precond`` (its ``unet`` a ``UNet``)."""
    unet = (rec.state.get("_modules") or {}).get("unet")
    return (_short(rec.class_name) == "Precond" and isinstance(unet, ObjectRecord)
            and _short(unet.class_name) == "UNet")


def check_classes(rec: ObjectRecord, where: str) -> ObjectRecord:
    """The ``UNet`` record of an EDM2 ``Precond`` made of EDM2's layers; an EDM network or
    anything else is one line saying which format reads it."""
    cls = _short(rec.class_name)
    if cls in ("EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond"):
        raise TeacherImportError(f"{where}: the network is EDM's {cls}, not EDM2's: import it "
                                 "with --format edm")
    if not is_edm2(rec):
        unet = (rec.state.get("_modules") or {}).get("unet")
        got = _short(unet.class_name) if isinstance(unet, ObjectRecord) else "no unet"
        raise TeacherImportError(f"{where}: the network is {rec.class_name} ({got}), not EDM2's "
                                 "Precond around its UNet")
    mods = rec.state.get("_modules") or {}
    for name in ("logvar_fourier", "logvar_linear"):
        if name in mods and (not isinstance(mods[name], ObjectRecord)
                             or _short(mods[name].class_name) not in LAYERS):
            raise TeacherImportError(f"{where}: Precond's {name} is not one of EDM2's layers")
    extra = sorted(set(mods) - {"unet", "logvar_fourier", "logvar_linear"})
    if extra:
        raise TeacherImportError(f"{where}: Precond holds modules EDM2's does not: {', '.join(extra)}")
    unet = mods["unet"]
    for path, r in _records(unet, "unet."):
        if path != "unet" and r.class_name not in LAYERS and _short(r.class_name) not in LAYERS:
            raise TeacherImportError(f"{where}: {path} is a {r.class_name}, not one of the layers "
                                     "of EDM2's UNet")
    return unet


def _need(sd: dict[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in sd:
        raise TeacherImportError(f"{where}: no tensor '{key}': not EDM2's UNet layout")
    return sd[key]


def infer_architecture(sd: dict[str, torch.Tensor], unet: ObjectRecord, where: str) -> dict:
    """The UNet's options read off EDM2-named tensors and its Block / UNet attributes
    (module docstring), plus ``img_resolution`` / ``img_channels`` / ``label_dim``. Shapes
    that do not fit (too few dimensions, zero channels) are one line."""
    try:
        return _infer(sd, unet, where)
    except TeacherImportError:
        raise
    except (IndexError, ValueError, ZeroDivisionError, RuntimeError, TypeError) as e:
        raise TeacherImportError(f"{where}: tensor shapes that do not fit EDM2's UNet layout "
                                 f"({type(e).__name__}: {e})") from None


def _infer(sd: dict[str, torch.Tensor], unet: ObjectRecord, where: str) -> dict:
    recorded = unet.state.get("_init_kwargs")
    recorded = recorded if isinstance(recorded, dict) else {}
    stems = [(int(m.group(1)), k) for k in sd
             if (m := re.fullmatch(r"unet\.enc\.(\d+)x\1_conv\.weight", k))]
    if len(stems) != 1:
        raise TeacherImportError(f"{where}: no single unet.enc.RxR_conv.weight: not EDM2's UNet layout")
    res, stem = stems[0]
    in_ch = int(sd[stem].shape[1]) - 1  # the constant channel
    found = {int(m.group(1)) for k in sd if (m := re.match(r"unet\.enc\.(\d+)x\1_", k))}
    levels = [res >> i for i in range(len(found))]
    if sorted(found, reverse=True) != levels:
        raise TeacherImportError(f"{where}: encoder resolutions {sorted(found, reverse=True)} do "
                                 f"not halve from {res}")
    nb = len({m.group(1) for k in sd if (m := re.match(rf"unet\.enc\.{res}x{res}_block(\d+)\.", k))})
    if nb < 1:
        raise TeacherImportError(f"{where}: no unet.enc.{res}x{res}_block0: not EDM2's UNet layout")
    cblock = [int(_need(sd, f"unet.enc.{r}x{r}_block{nb - 1}.conv_res1.weight", where).shape[0])
              for r in levels]
    cnoise = int(_need(sd, "unet.emb_fourier.freqs", where).shape[0])
    cemb = int(_need(sd, "unet.emb_noise.weight", where).shape[0])
    if min(cblock + [cnoise, cemb, in_ch]) < 1:
        raise TeacherImportError(f"{where}: a layer with no channels")
    gcd = reduce(math.gcd, cblock + [cnoise, cemb])
    rmc = recorded.get("model_channels")
    mc = rmc if isinstance(rmc, int) and not isinstance(rmc, bool) and rmc > 0 and gcd % rmc == 0 else gcd
    label = sd.get("unet.emb_label.weight")
    blocks = {path: r for path, r in _records(unet, "unet.") if _short(r.class_name) == "Block"}
    shared = _block_options(blocks, where)
    attn = [r for r in levels if f"unet.enc.{r}x{r}_block0.attn_qkv.weight" in sd]
    cph = _channels_per_head(blocks, attn, recorded.get("channels_per_head"), where)
    arch = {
        "img_resolution": res, "img_channels": in_ch, "label_dim": int(label.shape[1]) if label is not None else 0,
        "model_channels": mc, "channel_mult": [c // mc for c in cblock],
        "channel_mult_noise": cnoise // mc, "channel_mult_emb": cemb // mc, "num_blocks": nb,
        "attn_resolutions": attn,
        "label_balance": number(unet.state, "label_balance", 0.5, where),
        "concat_balance": number(unet.state, "concat_balance", 0.5, where),
        "channels_per_head": cph, **shared,
        "logvar_channels": int(sd["logvar_fourier.freqs"].shape[0]) if "logvar_fourier.freqs" in sd else 128,
    }
    _check_block_roles(blocks, where)
    return arch


def _block_options(blocks: dict[str, ObjectRecord], where: str) -> dict:
    """The options all Blocks share, from their attributes: the same in every block."""
    out: dict = {}
    for key in BLOCK_SHARED:
        values = {repr(plain(r.state.get(key, DEFAULTS[key]))): (p, r.state.get(key, DEFAULTS[key]))
                  for p, r in blocks.items()}
        if len(values) > 1:
            (p1, v1), (p2, v2) = list(values.values())[:2]
            raise TeacherImportError(f"{where}: {p1} has {key}={plain(v1)!r}, {p2} {plain(v2)!r}: EDM2 "
                                     "gives every block the same one")
        v = next(iter(values.values()))[1] if values else DEFAULTS[key]
        if key == "resample_filter":
            ok = isinstance(v, (list, tuple)) and v and len(v) % 2 == 0 and all(
                isinstance(a, (int, float)) and not isinstance(a, bool) for a in v) and sum(v) != 0
            if not ok:
                raise TeacherImportError(f"{where}: resample_filter {plain(v)!r} is not a 1-D filter of "
                                         "even length")
            v = [int(a) if float(a).is_integer() else float(a) for a in v]
        elif key == "clip_act":
            v = None if v is None else number({"clip_act": v}, "clip_act", 0, where)
        else:
            v = number({key: v}, key, 0, where)
        out[key] = v
    return out


def _channels_per_head(blocks: dict[str, ObjectRecord], attn_resolutions: list[int], recorded,
                       where: str) -> int:
    """EDM2's ``channels_per_head``: the one that gives every block its recorded
    ``num_heads`` — ``out_channels // channels_per_head`` where it attends (a level in
    ``attn_resolutions``, and the deepest ``_in0``), 0 elsewhere. The recorded one when it
    does, else the one the first attending block implies (64 when none attends). Heads are
    in no tensor shape, so this is the only check that they agree."""
    heads = {}
    for p, r in blocks.items():
        n, ch = r.state.get("num_heads", 0), r.state.get("out_channels")
        if not (isinstance(n, int) and not isinstance(n, bool) and isinstance(ch, int) and 0 <= n <= ch):
            raise TeacherImportError(f"{where}: {p} has {n!r} attention heads for {ch!r} channels")
        name = p.rsplit(".", 1)[-1]
        # EDM2 asks for attention in in0 and in the _block{i} of attention levels only
        attends = name.endswith("_in0") or (_role(name) == "block" and int(name.split("x", 1)[0])
                                            in attn_resolutions)
        heads[p] = (n, ch, attends)
    first = next(((n, ch) for n, ch, a in heads.values() if n), None)
    candidates = [recorded] if isinstance(recorded, int) and recorded > 0 else []
    candidates.append(first[1] // first[0] if first else 64)
    for cph in candidates:
        if all(n == (ch // cph if a else 0) for n, ch, a in heads.values()):
            return cph
    p, (n, ch, _) = next(iter((p, v) for p, v in heads.items() if v[0] != (v[1] // candidates[-1] if v[2] else 0)))
    raise TeacherImportError(f"{where}: {p} has {n} attention heads for {ch} channels; no one "
                             "channels_per_head gives every block its heads")


def _check_block_roles(blocks: dict[str, ObjectRecord], where: str) -> None:
    """Each Block's ``flavor`` and ``resample_mode`` are what its name says in EDM2's UNet."""
    for p, r in blocks.items():
        name = p.rsplit(".", 1)[-1]
        flavor = "enc" if p.startswith("unet.enc.") else "dec"
        mode = "down" if name.endswith("_down") else "up" if name.endswith("_up") else "keep"
        for attr, want in (("flavor", flavor), ("resample_mode", mode)):
            got = r.state.get(attr, want)
            if got != want:
                raise TeacherImportError(f"{where}: {p} has {attr}={got!r}, EDM2's UNet has {want!r} "
                                         "there: a modified architecture slimstep does not map")


def check_init_kwargs(arch: dict, recorded, where: str) -> bool:
    """Compare the reading with the UNet's recorded ``_init_kwargs`` (defaults filled in);
    ``False`` when none was recorded. ``channel_mult_noise`` / ``_emb`` None mean EDM2's
    default widths (cblock[0], max(cblock)); attention resolutions compare as the set that
    attends (a listed level whose blocks have too few channels for a head attends nowhere)."""
    if not isinstance(recorded, dict):
        return False
    rec = {**DEFAULTS, **recorded}
    mc = rec["model_channels"]
    try:
        cblock = [mc * m for m in rec["channel_mult"]]
        want = {
            "img_resolution": rec.get("img_resolution"), "img_channels": rec.get("img_channels"),
            "label_dim": rec.get("label_dim"),
            "widths": cblock,
            "noise width": mc * rec["channel_mult_noise"] if rec["channel_mult_noise"] else cblock[0],
            "embedding width": mc * rec["channel_mult_emb"] if rec["channel_mult_emb"] else max(cblock),
            "num_blocks": rec["num_blocks"],
            "attn_resolutions": sorted((arch["img_resolution"] >> j for j, c in enumerate(cblock)
                                        if arch["img_resolution"] >> j in set(rec["attn_resolutions"])
                                        and c // rec["channels_per_head"]), reverse=True),
            **{k: rec[k] for k in ("label_balance", "concat_balance", "res_balance", "attn_balance",
                                   "clip_act", "resample_filter")},
        }
    except (TypeError, KeyError, ZeroDivisionError):
        raise TeacherImportError(f"{where}: the pickle's recorded init_kwargs are not EDM2 UNet "
                                 "arguments slimstep can read") from None
    amc = arch["model_channels"]
    have = {"img_resolution": arch["img_resolution"], "img_channels": arch["img_channels"],
            "label_dim": arch["label_dim"], "widths": [amc * m for m in arch["channel_mult"]],
            "noise width": amc * arch["channel_mult_noise"], "embedding width": amc * arch["channel_mult_emb"],
            **{k: arch[k] for k in ("num_blocks", "attn_resolutions", "label_balance", "concat_balance",
                                    "res_balance", "attn_balance", "clip_act", "resample_filter")}}
    for k, v in have.items():
        w = want[k]
        if isinstance(w, tuple):
            w = list(w)
        same = (w == v) if not isinstance(v, float) else (
            isinstance(w, (int, float)) and math.isclose(float(w), v, rel_tol=1e-9))
        if w is not None and not same:
            raise TeacherImportError(f"{where}: the pickle's recorded init_kwargs say {k}={plain(w)!r}, "
                                     f"its tensors and attributes {plain(v)!r}")
    return True


def encoder_record(obj) -> dict | None:
    """What the snapshot's ``encoder`` says about the data the network models (recorded in
    config.json, never run): its class, and for ``StabilityVAEEncoder`` the VAE's name and
    the per-channel map raw latents -> final latents, ``final = raw · scale + bias``."""
    enc = obj.get("encoder") if isinstance(obj, dict) else None
    if not isinstance(enc, ObjectRecord):
        return None
    out = {"class": enc.class_name}
    for key in ("vae_name", "scale", "bias", "batch_size"):
        v = enc.state.get(key)
        if isinstance(v, NumpyArray) and v.array is not None:
            v = v.array.tolist()
        if v is not None:
            out[key] = plain(v)
    if _short(enc.class_name) == "StandardRGBEncoder":
        out["meaning"] = "pixels: x / 127.5 - 1, slimstep's [-1, 1] images"
    elif _short(enc.class_name) == "StabilityVAEEncoder":
        out["meaning"] = ("SD-VAE latents: final = (mean + std * noise) * scale + bias per channel "
                          "of the VAE's raw latents; decode with (final - bias) / scale")
    return out
