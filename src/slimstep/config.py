"""Recipe configs: YAML files under ``configs/`` plus ``key=value`` overrides.

A config is a nested dict with five sections — ``data``, ``net``, ``method``,
``train``, ``sample`` — and the input paths ``teacher``, ``pairs``, ``init``,
merged over :data:`DEFAULTS`. Overrides use dotted
keys (``train.steps=100``, ``net.nf=32``) and YAML values (``1e-4``,
``[1,2]``, ``true``). A key that neither the defaults nor the file define is
an error, so a typo never silently does nothing; ``net`` and ``method`` are
open sections because their keys depend on the network / method chosen.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from slimstep.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; every researcher writes it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: builds plain data only


DEFAULTS: dict = {
    # Inputs of distillation methods (checkpoint / pairs directories), set by the CLI.
    "teacher": None,
    "pairs": None,
    "init": None,
    "data": {"spec": "digits", "options": {}},
    "net": {"name": "unet"},
    "method": {"name": "flow_matching"},
    "train": {
        "steps": 1000,
        "batch_size": 128,
        "optimizer": "adam",  # adam | adamw
        "lr": 2e-4,
        "betas": [0.9, 0.999],
        "weight_decay": 0.0,
        "warmup": 0,  # linear warm-up steps
        "schedule": "constant",  # constant | cosine (decay to min_lr x lr at the last step)
        "min_lr": 0.0,  # the cosine's floor, a fraction of lr
        "grad_clip": 1.0,  # max global grad norm; 0 = off
        "accum": 1,  # micro-batches per optimizer step
        "ema": {"decay": 0.999, "half_life_images": None, "start": 0, "warmup": True, "rampup": 0.05},
        "precision": "fp32",  # fp32 | bf16 (autocast on CUDA only)
        "compile": False,  # torch.compile the trained modules
        "seed": 0,
        "log_every": 50,
        "ckpt_every": 500,
        "keep": 2,  # snapshots kept on disk
        "device": "auto",  # auto | cpu | cuda
    },
    "sample": {"solver": "heun", "steps": 16, "cfg_scale": 1.0, "rtol": 1e-5, "atol": 1e-5},
}
OPEN_SECTIONS = ("net", "method")


def _merge(base: dict, new: dict, path: str, strict: bool) -> dict:
    out = copy.deepcopy(base)
    for k, v in new.items():
        where = f"{path}{k}"
        if k not in out:
            if strict and not any(where.startswith(s) for s in OPEN_SECTIONS) and not (
                path.endswith("options.")
            ):
                raise ConfigError(f"unknown config key '{where}'")
            out[k] = copy.deepcopy(v)
        elif isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = _merge(out[k], v, where + ".", strict)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_overrides(items: list[str]) -> dict:
    """``["train.steps=10", "net.nf=32"]`` -> nested dict."""
    out: dict = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"override '{item}' is not key=value")
        try:
            value = _yaml(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> dict:
    """Defaults <- YAML file <- overrides. ``data`` may be given as a bare spec string."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = _yaml(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        cfg = _merge(cfg, _normalise(loaded), "", strict=True)
    if overrides:
        ov = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        cfg = _merge(cfg, _normalise(ov), "", strict=True)
    return cfg


def _normalise(d: dict) -> dict:
    d = dict(d)
    if isinstance(d.get("data"), str):
        d["data"] = {"spec": d["data"]}
    if isinstance(d.get("net"), str):
        d["net"] = {"name": d["net"]}
    if isinstance(d.get("method"), str):
        d["method"] = {"name": d["method"]}
    return d
