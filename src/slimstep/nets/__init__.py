"""Networks. Every network is built by name from JSON-serialisable kwargs, so a
checkpoint's ``config.json`` can rebuild it: ``build_net(cfg["net"])``.

Contract shared by all of them::

    net = build_net({"name": "unet", "in_shape": [1, 8, 8], "num_classes": 10, ...})
    out = net(x, t, y=None)                       # shaped like x
    out, feats = net(x, t, y, return_features=True)  # feats: list of hidden states

``t`` is float ``[B]`` in [0, 1] (0 = noise, 1 = data). ``y`` is int64 ``[B]``;
index ``num_classes`` is the null class (classifier-free guidance); ``y=None``
on a conditional net means the null class for the whole batch.
"""

from __future__ import annotations

import importlib
import inspect

from torch import nn

from slimstep.errors import ConfigError
from slimstep.spec import check_kwargs, is_int, is_number

_REGISTRY = {
    "mlp": "slimstep.nets.mlp:MLP",
    "unet": "slimstep.nets.unet:UNet",
    "dit": "slimstep.nets.dit:DiT",
    "shared_block": "slimstep.nets.shared_block:SharedBlockDiT",
    # imported teachers (slimstep import): DiT layouts with their time adapters in forward
    "dit_vp_eps": "slimstep.nets.imported:VPEpsDiT",
    "freeflow_dit": "slimstep.nets.imported:FreeFlowDiT",
    # a diffusers UNet2DModel / DiTTransformer2DModel, wrapped, behind the VP -> velocity adapter
    "diffusers_vp": "slimstep.nets.diffusers_vp:DiffusersVP",
    # EDM's preconditioned SongUNet / DhariwalUNet under EDM's names (slimstep import --format edm)
    "edm_unet": "slimstep.nets.edm_unet:EDMUNet",
    # EDM2's magnitude-preserving Precond + UNet under EDM2's names (slimstep import --format edm2)
    "edm2_unet": "slimstep.nets.edm2_unet:EDM2UNet",
}


def net_class(name: str) -> type[nn.Module]:
    """The network class registered under ``name``."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown network net.name={name!r} (valid: {', '.join(_REGISTRY)})")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def _positive_int(v) -> bool:
    return is_int(v) and v >= 1


def _sizes(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(_positive_int(x) for x in v)


#: ranges of the size options, by name, for every network (the constructors trust them:
#: torch builds a zero-width Linear silently and fails on a negative one with a traceback)
VALUE_RULES: dict[str, tuple] = {
    **dict.fromkeys(("hidden", "time_dim", "nf", "num_res_blocks", "patch_size", "hidden_size",
                     "num_heads", "steps", "patches", "frequency_embedding_size", "teacher_hidden",
                     "num_timesteps", "teacher_patch_size"), (_positive_int, "an integer >= 1")),
    "depth": (lambda v: _positive_int(v) or isinstance(v, str), "an integer >= 1"),
    **dict.fromkeys(("in_shape", "ch_mult"), (_sizes, "a non-empty list of integers >= 1")),
    "attn_resolutions": (lambda v: isinstance(v, (list, tuple)) and all(_positive_int(x) for x in v),
                         "a list of integers >= 1"),
    **dict.fromkeys(("num_classes", "extra_time_embeds"),
                    (lambda v: is_int(v) and v >= 0,
                     "an integer >= 0")),
    **dict.fromkeys(("mlp_ratio", "time_scale", "depth_scale"),
                    (lambda v: is_number(v) and v > 0, "a positive number")),
    **dict.fromkeys(("dropout", "class_dropout_prob"), (lambda v: is_number(v) and 0 <= v < 1, "in [0, 1)")),
}


def check_values(name: str, spec: dict) -> None:
    """Each size option in its range, one line naming the key (``net.hidden=0``)."""
    for k, v in spec.items():
        if k in VALUE_RULES and v is not None and not VALUE_RULES[k][0](v):
            raise ConfigError(f"net.{k} must be {VALUE_RULES[k][1]}, not {v!r} (net '{name}')")


def build_net(spec: dict) -> nn.Module:
    """Build a network from ``{"name": ..., **kwargs}``; options are checked against
    the constructor's signature first, so a typo is one line naming the valid keys; a
    value out of range (``net.hidden=0``) or one the constructor rejects
    (``net.time_embed=fourier``) is one line too."""
    spec = dict(spec)
    name = spec.pop("name", None)
    cls = net_class(name)
    check_kwargs("net", spec, cls)
    check_values(name, spec)
    try:
        return cls(**spec)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"net '{name}': {e}") from e


def recorded_spec(spec: dict | None, net: nn.Module) -> dict | None:
    """``spec`` as config.json records it: with the network's ``time_scale`` made explicit,
    because methods that differentiate along a time input (MeanFlow) or derive a gap scale
    from it (flowmap) read it from the checkpoint, not from a constructor default. A network
    whose time scale is not an option (a wrapped diffusers model: its DDPM timestep range)
    keeps its spec as it is."""
    if spec is None or not hasattr(net, "time_scale"):
        return spec
    if "time_scale" not in inspect.signature(type(net).__init__).parameters:
        return spec
    return {**spec, "time_scale": float(net.time_scale)}


def count_params(net: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


__all__ = ["build_net", "count_params", "recorded_spec"]
