"""EDM's network pickles: the inert record tree of :mod:`safe_pickle` (EDM mode) -> EDM-named
tensors and the kwargs of slimstep's ``edm_unet``.

An EDM snapshot is ``{"ema": EDMPrecond | VPPrecond | VEPrecond, "loss_fn": ..., ...}``, the
precond's ``model`` a ``SongUNet`` or a ``DhariwalUNet``; each
network object is an :class:`~slimstep.importers.safe_pickle.ObjectRecord` whose ``state`` is
the module's ``__dict__``: ``_parameters``, ``_buffers``, ``_modules`` (child records), plain
attributes, and the persistence decorator's ``_init_args`` / ``_init_kwargs``. The tensors are
read the way ``torch.nn.Module.state_dict`` names them (``model.enc.32x32_block0.conv0.weight``),
so the map onto :class:`slimstep.nets.edm_unet.EDMUNet` is the identity.

The architecture is read off the tensor names and shapes (what they give below) and then
checked against the ``_init_kwargs`` the pickle recorded, when it recorded them; a few plain
attributes SongUNet fixes (skip scale, GroupNorm ε, the embedding's endpoint) are checked too,
so a modified architecture is refused instead of mapped onto the wrong math. The table is
SongUNet's; a DhariwalUNet's stem has model_channels·channel_mult[0] outputs, so there
model_channels is ``map_layer0``'s input width, and it has no SongUNet-only options.

====================================  ===============================================
``enc.{R}x{R}_conv.weight`` [C0, C]   resolution R, image channels C, model_channels C0
levels / ``{R}x{R}_block{i}``         len(channel_mult), num_blocks (at level 0)
``enc.{r}x{r}_block{n-1}.conv1``      channel_mult[l] = its out channels / C0
``enc.{r}x{r}_block0.qkv``            r in attn_resolutions
``aux_residual`` / ``aux_skip``       encoder_type residual / skip (else standard)
``dec.*_aux_up`` or a ``dec`` aux     decoder_type skip (else standard)
conv below R
``map_noise.freqs``                   embedding_type fourier (else positional)
``map_layer0.weight`` [E, N]          channel_mult_emb = E / C0, channel_mult_noise = N / C0
``map_label`` / ``map_augment``       label_dim, augment_dim (their input widths)
a ``resample_filter`` buffer          the 1-D filter f (the buffer is f fᵀ / (Σf)²)
====================================  ===============================================
"""

from __future__ import annotations

import math
import re

import torch

from slimstep.importers.readers import TeacherImportError
from slimstep.importers.safe_pickle import ObjectRecord
from slimstep.nets.edm_unet import attention_heads

#: EDM's preconditioning classes slimstep maps -> ``EDMUNet.precond``
PRECONDS = {"EDMPrecond": "edm", "VPPrecond": "vp", "VEPrecond": "ve"}
#: classes that are EDM's, but not (yet) mapped: why, in one line
NOT_YET = {
    "iDDPMPrecond": "EDMPrecond, VPPrecond and VEPrecond supported; iDDPMPrecond not yet",
    "Precond": "an EDM2 network (networks_edm2.Precond): import it with --format edm2",
}
#: the layer classes EDM's U-Nets are made of (EDM's, and torch's ModuleDict)
LAYERS = {"UNetBlock", "Conv2d", "Linear", "GroupNorm", "PositionalEmbedding",
          "FourierEmbedding", "torch.nn.modules.container.ModuleDict"}
#: the U-Nets' constructor defaults (EDM's signatures), for keys a recorded init_kwargs omits
DEFAULTS = {
    "SongUNet": {
        "label_dim": 0, "augment_dim": 0, "model_channels": 128, "channel_mult": [1, 2, 2, 2],
        "channel_mult_emb": 4, "num_blocks": 4, "attn_resolutions": [16], "dropout": 0.10,
        "embedding_type": "positional", "channel_mult_noise": 1, "encoder_type": "standard",
        "decoder_type": "standard", "resample_filter": [1, 1]},
    "DhariwalUNet": {
        "label_dim": 0, "augment_dim": 0, "model_channels": 192, "channel_mult": [1, 2, 3, 4],
        "channel_mult_emb": 4, "num_blocks": 3, "attn_resolutions": [32, 16, 8], "dropout": 0.10},
}
#: plain attributes each U-Net fixes and EDMUNet implements: (class, attribute, value)
FIXED = {
    "SongUNet": (("UNetBlock", "skip_scale", math.sqrt(0.5)), ("UNetBlock", "adaptive_scale", False),
                 ("GroupNorm", "eps", 1e-6), ("PositionalEmbedding", "endpoint", True),
                 ("PositionalEmbedding", "max_positions", 10000)),
    "DhariwalUNet": (("UNetBlock", "skip_scale", 1.0), ("UNetBlock", "adaptive_scale", True),
                     ("GroupNorm", "eps", 1e-5), ("PositionalEmbedding", "endpoint", False),
                     ("PositionalEmbedding", "max_positions", 10000)),
}


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def network(obj, container: str | None, where: str) -> tuple[ObjectRecord, str | None]:
    """The network record of a snapshot (``ema`` by default, or ``container``), or the
    top-level object when the pickle is a network itself."""
    if isinstance(obj, ObjectRecord):
        return obj, None
    if not isinstance(obj, dict):
        raise TeacherImportError(f"{where}: holds a {type(obj).__name__}, not an EDM snapshot "
                                 "(a dict with 'ema')")
    key = container or "ema"
    if key not in obj:
        keys = ", ".join(str(k) for k in list(obj)[:8]) or "none"
        raise TeacherImportError(f"{where}: no '{key}' in the pickle (top-level keys: {keys}); "
                                 "an EDM network snapshot holds its network under 'ema'")
    if not isinstance(obj[key], ObjectRecord):
        kind = "dict" if isinstance(obj[key], dict) else type(obj[key]).__name__
        raise TeacherImportError(f"{where}: '{key}' is a {kind}, not an EDM network (a "
                                 "torch_utils.persistence object)")
    return obj[key], key


def state_dict(rec: ObjectRecord, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a record tree under ``state_dict`` names; any tensor the tree holds
    outside a ``_parameters`` / ``_buffers`` entry is one line naming it (it would be left
    unused)."""
    out: dict[str, torch.Tensor] = {}

    def walk(r: ObjectRecord, prefix: str) -> None:
        st = r.state
        skip = st.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for name, v in (st.get(group) or {}).items():
                if v is None:
                    continue
                if not isinstance(v, torch.Tensor) or (group == "_buffers" and name in skip):
                    raise TeacherImportError(f"{where}: {prefix}{name} is not a tensor slimstep "
                                             "can map (a non-persistent buffer or not a tensor)")
                out[prefix + name] = v.detach()
        for name, child in (st.get("_modules") or {}).items():
            if child is None:
                continue
            if not isinstance(child, ObjectRecord):
                raise TeacherImportError(f"{where}: {prefix}{name} is a {type(child).__name__}, "
                                         "not a module record")
            walk(child, f"{prefix}{name}.")
        for name, v in st.items():  # plain attributes must hold no tensors
            if name not in ("_parameters", "_buffers", "_modules") and count_tensors(v):
                raise TeacherImportError(f"{where}: {prefix}{name} holds tensors outside the "
                                         "module's parameters and buffers: they would be unused")

    walk(rec, "")
    return out


def count_tensors(obj) -> int:
    """Every tensor reachable from ``obj`` (records, dicts, lists, tuples)."""
    if isinstance(obj, torch.Tensor):
        return 1
    if isinstance(obj, ObjectRecord):
        return count_tensors(obj.state)
    if isinstance(obj, dict):
        return sum(count_tensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return sum(count_tensors(v) for v in obj)
    return 0


def _records(rec: ObjectRecord, prefix: str = ""):
    """``(path, record)`` for ``rec`` and every module record below it."""
    yield prefix.rstrip("."), rec
    for name, child in (rec.state.get("_modules") or {}).items():
        if isinstance(child, ObjectRecord):
            yield from _records(child, f"{prefix}{name}.")


def check_classes(rec: ObjectRecord, where: str) -> tuple[str, ObjectRecord, str]:
    """``(precond name, the model's record, its class)``: the preconditioning class must be one
    slimstep maps, its ``model`` a SongUNet or DhariwalUNet made of EDM's layer classes;
    otherwise one line saying what is (not yet) supported."""
    cls = _short(rec.class_name)
    if cls in NOT_YET:
        raise TeacherImportError(f"{where}: the network is EDM's {cls}: {NOT_YET[cls]}")
    if cls not in PRECONDS:
        raise TeacherImportError(f"{where}: the network is {rec.class_name}, not one of EDM's "
                                 f"{', '.join(PRECONDS)}")
    model = (rec.state.get("_modules") or {}).get("model")
    mcls = _short(model.class_name) if isinstance(model, ObjectRecord) else type(model).__name__
    if mcls not in DEFAULTS:
        raise TeacherImportError(f"{where}: {cls} wraps a {mcls}, not EDM's SongUNet or DhariwalUNet")
    for path, r in _records(model, "model."):
        if path != "model" and r.class_name not in LAYERS and _short(r.class_name) not in LAYERS:
            raise TeacherImportError(f"{where}: {path} is a {r.class_name}, not one of the layers "
                                     f"of EDM's {mcls}")
    return PRECONDS[cls], model, mcls


def _same(got, want) -> bool:
    if isinstance(want, bool):
        return got == want
    try:
        return math.isclose(float(got), want, rel_tol=1e-9)
    except (TypeError, ValueError):
        return False


def check_fixed(model: ObjectRecord, model_type: str, where: str) -> None:
    """The plain attributes of :data:`FIXED` and the attention heads as the U-Net sets them."""
    for path, r in _records(model, "model."):
        cls = _short(r.class_name)
        for c, attr, want in FIXED[model_type]:
            got = r.state.get(attr, want)
            if c == cls and not _same(got, want):
                raise TeacherImportError(f"{where}: {path} ({cls}) has {attr}={got!r}, {model_type}'s "
                                         f"is {want!r}: a modified architecture slimstep does not map")
        if cls == "UNetBlock":
            n, ch = r.state.get("num_heads", 0), r.state.get("out_channels", 0)
            want = attention_heads(model_type, True, ch) if isinstance(ch, int) else None
            if n not in (0, want):
                raise TeacherImportError(f"{where}: {path} has {n!r} attention heads for {ch!r} "
                                         f"channels; {model_type} has {want}")


def number(state: dict, key: str, default: float, where: str) -> float:
    """A numeric attribute of a record, or one line saying it is not a number."""
    v = state.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TeacherImportError(f"{where}: the network's {key} is {v!r}, not a number")
    return float(v)


def precond_params(precond: str, state: dict, where: str) -> dict:
    """The preconditioning's own constants, from the EDMPrecond / VPPrecond attributes."""
    if precond == "edm":
        return {"sigma_data": number(state, "sigma_data", 0.5, where)}
    if precond == "vp":
        return {"beta_d": number(state, "beta_d", 19.9, where),
                "beta_min": number(state, "beta_min", 0.1, where),
                "M": int(number(state, "M", 1000, where))}
    return {}


def dropout(model: ObjectRecord, where: str) -> float:
    """The dropout probability of the UNetBlocks (an attribute: in no tensor)."""
    for _, r in _records(model):
        if _short(r.class_name) == "UNetBlock":
            return number(r.state, "dropout", 0.1, where)
    return 0.0


def _need(sd: dict[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in sd:
        raise TeacherImportError(f"{where}: no tensor '{key}': not EDM's U-Net layout")
    return sd[key]


def _filter_1d(buf: torch.Tensor, where: str) -> list[int]:
    """The integer 1-D filter f of a ``resample_filter`` buffer f fᵀ / (Σf)²."""
    g = buf.double().reshape(buf.shape[-2], buf.shape[-1]).sum(1)  # rows sum to f / Σf
    ints = g / g.min()
    f = [int(round(float(v))) for v in ints]
    if (ints - torch.tensor(f, dtype=torch.float64)).abs().max() > 1e-4 or not torch.allclose(
            torch.outer(g, g), buf.double().reshape(len(f), len(f)), atol=1e-6):
        raise TeacherImportError(f"{where}: a resample_filter buffer that is not the outer "
                                 "product of an integer filter")
    return f


def infer_architecture(sd: dict[str, torch.Tensor], model_type: str, where: str) -> dict:
    """The U-Net's options read off EDM-named tensors (module docstring); the image shape as
    ``img_resolution`` / ``in_channels``. Shapes that do not fit (a tensor of too few
    dimensions, zero channels) are one line."""
    try:
        return _infer(sd, model_type, where)
    except (IndexError, ValueError, ZeroDivisionError, RuntimeError) as e:
        raise TeacherImportError(f"{where}: tensor shapes that do not fit EDM's {model_type} "
                                 f"layout ({type(e).__name__}: {e})") from None


def _infer(sd: dict[str, torch.Tensor], model_type: str, where: str) -> dict:
    stems = [(int(m.group(1)), k) for k in sd if (m := re.fullmatch(r"model\.enc\.(\d+)x\1_conv\.weight", k))]
    if len(stems) != 1:
        raise TeacherImportError(f"{where}: no single model.enc.RxR_conv.weight: not EDM's "
                                 f"{model_type} layout")
    res, stem = stems[0]
    in_ch = int(sd[stem].shape[1])
    l0 = _need(sd, "model.map_layer0.weight", where)
    emb, noise = int(l0.shape[0]), int(l0.shape[1])
    # SongUNet's stem has model_channels outputs; ADM's model_channels x channel_mult[0]
    mc = int(sd[stem].shape[0]) if model_type == "SongUNet" else noise
    found = {int(m.group(1)) for k in sd if (m := re.match(r"model\.enc\.(\d+)x\1_", k))}
    levels = [res >> i for i in range(len(found))]
    if sorted(found, reverse=True) != levels:
        raise TeacherImportError(f"{where}: encoder resolutions {sorted(found, reverse=True)} do "
                                 f"not halve from {res}")
    nb = len({m.group(1) for k in sd if (m := re.match(rf"model\.enc\.{res}x{res}_block(\d+)\.", k))})
    mult = []
    for r in levels:
        out = int(_need(sd, f"model.enc.{r}x{r}_block{nb - 1}.conv1.weight", where).shape[0])
        if out % mc:
            raise TeacherImportError(f"{where}: level {r}x{r} has {out} channels, not a multiple "
                                     f"of model_channels {mc}")
        mult.append(out // mc)
    if emb % mc or noise % mc:
        raise TeacherImportError(f"{where}: map_layer0 is {list(l0.shape)}, not multiples of "
                                 f"model_channels {mc}")
    width = lambda key: int(sd[key].shape[1]) if key in sd else 0  # noqa: E731
    arch = {"img_resolution": res, "in_channels": in_ch, "label_dim": width("model.map_label.weight"),
            "augment_dim": width("model.map_augment.weight"), "model_channels": mc,
            "channel_mult": mult, "channel_mult_emb": emb // mc, "num_blocks": nb,
            "attn_resolutions": [r for r in levels if f"model.enc.{r}x{r}_block0.qkv.weight" in sd]}
    if model_type == "DhariwalUNet":
        return arch
    has = lambda pat: any(re.search(pat, k) for k in sd)  # noqa: E731
    filters = [k for k in sd if k.endswith(".resample_filter")]
    dec_skip = has(r"^model\.dec\.[^.]*_aux_up\.") or any(
        f"model.dec.{r}x{r}_aux_conv.weight" in sd for r in levels[1:])
    return {**arch,
            "embedding_type": "fourier" if "model.map_noise.freqs" in sd else "positional",
            "channel_mult_noise": noise // mc,
            "encoder_type": ("residual" if has(r"_aux_residual\.") else "skip" if has(r"_aux_skip\.")
                             else "standard"),
            "decoder_type": "skip" if dec_skip else "standard",
            "resample_filter": _filter_1d(sd[filters[0]], where) if filters else [1, 1]}


def check_init_kwargs(inferred: dict, recorded, model_type: str, where: str) -> bool:
    """Compare the shapes' reading with the U-Net's recorded ``_init_kwargs`` (defaults filled
    in); ``False`` when the pickle recorded none. Attention resolutions compare as the set
    that attends (a listed resolution the network lacks, or where an ADM level has fewer
    than 64 channels and so no head, changes nothing)."""
    if not isinstance(recorded, dict):
        return False
    rec = {**DEFAULTS[model_type], **recorded}
    width = {inferred["img_resolution"] >> i: inferred["model_channels"] * m
             for i, m in enumerate(inferred["channel_mult"])}
    for k, v in inferred.items():
        want = rec.get(k, v)
        try:
            if k == "attn_resolutions":
                want = sorted((r for r in set(want) if r in width and attention_heads(model_type, True, width[r])),
                              reverse=True)
                v = sorted(v, reverse=True)
            elif isinstance(v, list):
                want = list(want)
        except TypeError:  # a recorded value of the wrong kind: it disagrees
            pass
        if want != v:
            raise TeacherImportError(f"{where}: the pickle's recorded init_kwargs say {k}={want!r}, "
                                     f"its tensors {v!r}")
    return True


def plain(value):
    """``value`` as JSON can hold it (recorded init_kwargs in config.json)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return repr(value)
