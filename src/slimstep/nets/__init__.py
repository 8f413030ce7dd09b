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

from torch import nn

from slimstep.errors import ConfigError
from slimstep.spec import check_kwargs

_REGISTRY = {
    "mlp": "slimstep.nets.mlp:MLP",
    "unet": "slimstep.nets.unet:UNet",
    "dit": "slimstep.nets.dit:DiT",
    "shared_block": "slimstep.nets.shared_block:SharedBlockDiT",
    # imported teachers (slimstep import): DiT layouts with their time adapters in forward
    "dit_vp_eps": "slimstep.nets.imported:VPEpsDiT",
    "freeflow_dit": "slimstep.nets.imported:FreeFlowDiT",
    # EDM's preconditioned SongUNet / DhariwalUNet under EDM's names (slimstep import --format edm)
    "edm_unet": "slimstep.nets.edm_unet:EDMUNet",
}


def net_class(name: str) -> type[nn.Module]:
    """The network class registered under ``name``."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown network net.name={name!r} (valid: {', '.join(_REGISTRY)})")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_net(spec: dict) -> nn.Module:
    """Build a network from ``{"name": ..., **kwargs}``; options are checked against
    the constructor's signature first, so a typo is one line naming the valid keys; a
    value the constructor rejects (``net.time_embed=fourier``) is one line too."""
    spec = dict(spec)
    name = spec.pop("name", None)
    cls = net_class(name)
    check_kwargs("net", spec, cls)
    try:
        return cls(**spec)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"net '{name}': {e}") from e


def recorded_spec(spec: dict | None, net: nn.Module) -> dict | None:
    """``spec`` as config.json records it: with the network's ``time_scale`` made explicit,
    because methods that differentiate along a time input (MeanFlow) or derive a gap scale
    from it (flowmap) read it from the checkpoint, not from a constructor default."""
    if spec is None or not hasattr(net, "time_scale"):
        return spec
    return {**spec, "time_scale": float(net.time_scale)}


def count_params(net: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


__all__ = ["build_net", "count_params", "recorded_spec"]
