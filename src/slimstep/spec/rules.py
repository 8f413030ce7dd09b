"""The one checker of typed settings: a value against its annotation and its range.

Every section a user writes — ``train``, ``sample``, a recipe's ``pairs``, a
method's options (:class:`slimstep.methods.base.Method.Options`), the sampling
rule a checkpoint records (:mod:`slimstep.spec.sampling`) — is a frozen
dataclass deriving :class:`Section`. A field says its type in its annotation
and its range with :func:`rule`; :meth:`Section.from_dict` checks both and
refuses, in one line naming the key, anything else. The "finite number, not a
bool" rule (:func:`is_number`) is written here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import typing
from dataclasses import field
from typing import Any

from slimstep.errors import ConfigError


def shown(v: Any) -> str:
    """How an error line shows a bad value: the value itself when short, else its type."""
    text = f"'{v}'" if isinstance(v, str) else repr(v)
    return text if len(text) <= 40 else f"a {type(v).__name__}"


def is_int(v: Any) -> bool:
    """An integer that is not a bool (``True`` is an int to Python, never to a user)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float that is not a bool: NaN and inf pass no range check."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_BASE = {
    "int": (is_int, "an integer"),
    "float": (is_number, "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "None": (lambda v: v is None, "null"),
    "dict": (lambda v: isinstance(v, dict), "a mapping"),
}


def check_type(where: str, value: Any, annotation: str, error: type[Exception] = ConfigError,
               context: str = "") -> None:
    """Refuse ``value`` unless it fits ``annotation`` (a string such as ``"int"``,
    ``"float | None"``, ``"list[int] | tuple[int, ...]"``). An annotation this
    checker does not know passes: the constructor then has the last word."""
    alts = [a.strip() for a in str(annotation).replace("typing.", "").split("|")]
    need = []
    for a in alts:
        m = re.fullmatch(r"(list|tuple)\[(\w+)(?:, \.\.\.)?\]|(list|tuple)", a)
        if m:
            inner = _BASE.get(m.group(2) or "")
            if isinstance(value, (list, tuple)) and (inner is None or all(inner[0](x) for x in value)):
                return
            need.append(f"a list of {inner[1].split(' ', 1)[1]}s" if inner else "a list")
        elif a in _BASE:
            if _BASE[a][0](value):
                return
            need.append(_BASE[a][1])
        else:
            return  # not a type this checker reads
    raise error(f"{where} must be {' or '.join(dict.fromkeys(need))}, not {shown(value)}{context}")


def check_kwargs(where: str, options: dict, fn, skip: tuple[str, ...] = ()) -> None:
    """Check ``options`` against the keyword parameters of ``fn`` (a class or
    function): every key must be one of them and of its annotated type."""
    params = {n: p for n, p in inspect.signature(fn).parameters.items()
              if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for k, v in options.items():
        if k in skip:
            continue
        if k not in params:
            valid = ", ".join(n for n in params if n not in skip)
            raise ConfigError(f"unknown option '{where}.{k}' (valid: {valid})")
        if params[k].annotation is not inspect.Parameter.empty:
            check_type(f"{where}.{k}", v, params[k].annotation)


# ---------------------------------------------------------------- ranges


def positive(v) -> bool:
    return v > 0


def non_negative(v) -> bool:
    return v >= 0


def unit(v) -> bool:
    return 0 <= v <= 1


def below_one(v) -> bool:
    return 0 <= v < 1


def count(v) -> bool:
    return is_int(v) and v >= 1


def rule(default, ok=None, need: str = "", **kw):
    """A dataclass field with a range check ``ok(value) -> bool`` described by ``need``
    (the value's type is the field's annotation, checked first)."""
    if isinstance(default, (dict, list)):  # a mutable default is built anew for each instance
        kw["default_factory"] = (lambda d=default: type(d)(d))
    else:
        kw["default"] = default
    return field(metadata={"ok": ok, "need": need}, **kw)


class Section:
    """A typed settings section: ``from_dict`` checks, ``to_dict`` is the plain-data view."""

    @classmethod
    def from_dict(cls, d: Any, where: str, error: type[Exception] = ConfigError, context: str = ""):
        """Build from plain data, refusing (with ``error``, the line ending in ``context``) an
        unknown key, a value of the wrong type or one out of its field's range."""
        if not isinstance(d, dict):
            raise error(f"'{where}' is a section (a mapping of keys), not {shown(d)}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise error(f"unknown config key '{where}.{unknown[0]}' (valid: {', '.join(names)})")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            v, key = d[f.name], f"{where}.{f.name}"
            sub = hints[f.name]
            if isinstance(sub, type) and issubclass(sub, Section):
                values[f.name] = sub.from_dict(v, key, error, context)
                continue
            check_type(key, v, f.type, error, context)
            ok = f.metadata.get("ok")
            if ok is not None and v is not None and not ok(v):
                raise error(f"{key} must be {f.metadata['need']}, not {shown(v)}{context}")
            values[f.name] = v
        return cls(**values)

    def to_dict(self) -> dict:
        def plain(v):
            if isinstance(v, Section):
                return v.to_dict()
            return list(v) if isinstance(v, tuple) else v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
