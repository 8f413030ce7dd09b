"""Recipe configs: YAML files plus ``key=value`` overrides.

The configs and recipes ship inside the package (:data:`CONFIGS`,
``src/slimstep/configs/<dataset>/``), so an installed slimstep has them. A config
is named by path, or by its short name from anywhere: ``digits/teacher`` is
``CONFIGS/digits/teacher.yaml``; a path through a ``configs/`` folder that does not
exist here (``configs/digits/teacher.yaml`` outside a checkout, where the files
lived before they moved into the package) finds the shipped file (:func:`find_config`).

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
from slimstep.nets import net_class
from slimstep.spec import RunConfig, SampleConfig, TrainConfig, check_kwargs


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; every researcher writes it as a float.
    A key written twice in one mapping is an error: plain YAML keeps the last one
    silently (two recipe stages of one name, the first one lost)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                continue  # a complex key: YAML's own constructor judges it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice (line {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


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
    # Typed, commented and range-checked in slimstep.spec; here as the plain dicts a run records.
    "train": TrainConfig().to_dict(),
    "sample": SampleConfig().to_dict(),
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
        elif isinstance(out[k], dict) and v is None:
            continue  # an empty section in YAML (every key commented out) changes nothing
        elif isinstance(out[k], dict):
            raise ConfigError(f"'{where}' is a section (a mapping of keys), not {v!r}: "
                              f"set its keys, e.g. {where}.{next(iter(out[k]), 'key')}=...")
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
        for i, p in enumerate(parts[:-1]):
            if isinstance(node.get(p), str) and i == 0 and p in SHORTHAND:
                node[p] = {SHORTHAND[p]: node[p]}  # data=folder:X, then data.options.resolution=16
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' sets a key inside '{'.'.join(parts[:i + 1])}', "
                                  f"which an earlier override set to {node!r}")
        node[parts[-1]] = value
    return out


#: The shipped configs and recipes.
CONFIGS = Path(__file__).resolve().parent / "configs"


def find_config(name: str | Path, what: str = "config file") -> Path:
    """The YAML file ``name`` names: a path that exists, else the shipped file it
    stands for — ``digits/teacher`` or ``digits/teacher.yaml`` under :data:`CONFIGS`,
    or the part after the last ``configs/`` of a path that does not exist."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    parts = p.parts
    tail = Path(*parts[len(parts) - parts[::-1].index("configs"):]) if "configs" in parts else (
        None if p.is_absolute() else p)
    if tail is not None and tail.parts:
        for cand in (CONFIGS / tail, CONFIGS / tail.with_name(tail.name + ".yaml")):
            if cand.is_file():
                return cand
    shipped = ", ".join(sorted(str(f.relative_to(CONFIGS).with_suffix("")) for f in CONFIGS.glob("*/all.yaml")))
    raise ConfigError(f"{what} not found: {name} (neither a file nor a shipped config; shipped recipes "
                      f"include {shipped or 'none'}, configs are under {CONFIGS})")


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    """Defaults <- YAML file <- overrides. ``data`` may be given as a bare spec string;
    ``path`` as a short name (:func:`find_config`)."""
    cfg = copy.deepcopy(DEFAULTS)
    named = False  # whether the file or an override names the network (see check_config)
    if path is not None:
        p = find_config(path)
        try:
            loaded = _yaml(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        loaded = _normalise(loaded)
        named |= isinstance(loaded.get("net"), dict) and "name" in loaded["net"]
        cfg = _merge(cfg, loaded, "", strict=True)
    if overrides:
        if not isinstance(overrides, (list, tuple, dict)):  # a string would be read character by character
            raise ConfigError(f"overrides are a list of key=value strings (or a mapping), not {overrides!r}")
        ov = parse_overrides(list(overrides)) if isinstance(overrides, (list, tuple)) else overrides
        ov = _normalise(ov)
        named |= isinstance(ov.get("net"), dict) and "name" in ov["net"]
        cfg = _merge(cfg, ov, "", strict=True)
    return check_config(cfg, net=named)


#: Sections that may be given as one string: ``data: digits``, ``net: unet``, ``method: gdd``.
SHORTHAND = {"data": "spec", "net": "name", "method": "name"}


def _normalise(d: dict) -> dict:
    d = dict(d)
    for section, key in SHORTHAND.items():
        if isinstance(d.get(section), str):
            d[section] = {key: d[section]}
    return d


def check_config(cfg: dict | RunConfig, net: bool = False) -> RunConfig:
    """The typed config of ``cfg`` (a merged dict, e.g. a test's or an API user's), refusing
    in one line naming the key a config that cannot train as written: every section
    against its schema (:class:`slimstep.spec.RunConfig`) and, with ``net``, the network's
    options against its constructor. ``net`` is for a config that names its network: one
    that does not (a method that takes the architecture of ``--init`` or the teacher)
    carries the default name only as a placeholder, and :func:`slimstep.nets.build_net`
    checks the options when, and if, a network is built from them. Values are kept as
    written (they are what a run records and hashes)."""
    run = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)
    if net:
        check_kwargs("net", run.net.options, net_class(run.net.name))
    return run
