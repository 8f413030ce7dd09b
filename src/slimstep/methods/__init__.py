"""Methods: each owns only its math (:class:`slimstep.methods.base.Method`) and is declared
in one place, its own file.

There is no list of methods to edit. The registry is found:

* **slimstep's own**: every :class:`Method` subclass with a ``name`` in the modules of
  this package (imported on the first lookup, not on ``import slimstep``);
* **anyone else's**: the Python entry points of the group ``slimstep.methods``, each
  ``name = "module:Class"`` (a package's ``[project.entry-points."slimstep.methods"]``),
  loaded when that name is asked for.

A method's plot style and whether its student starts from the teacher's weights are
declarations on its class too (``style``, ``starts_from_teacher``), read through
:func:`method_style` and :func:`starts_from_teacher`. docs/adding-a-method.md walks
through a new method from one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from slimstep.methods.base import Method, MethodError
from slimstep.spec import RunConfig

#: The entry-point group through which another package declares a method.
ENTRY_POINT_GROUP = "slimstep.methods"


@cache
def _builtin() -> dict[str, type[Method]]:
    """slimstep's own methods by name: the named Method subclasses this package's modules define."""
    found: dict[str, type[Method]] = {}
    for info in pkgutil.iter_modules(__path__, f"{__name__}."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, Method) and obj.name
                    and obj.__module__ == module.__name__):
                if found.get(obj.name, obj) is not obj:
                    raise MethodError(f"method '{obj.name}' is defined twice: "
                                      f"{found[obj.name].__qualname__} and {obj.__qualname__}")
                found[obj.name] = obj
    return found


def _declared() -> dict:
    """Other packages' methods by name: the entry points of :data:`ENTRY_POINT_GROUP` (read
    at each call, so a package installed or put on the path later is seen)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def method_names(students_only: bool = False) -> list[str]:
    """Every method, slimstep's and declared (``students_only``: without the teacher's flow_matching)."""
    names = set(_builtin()) | set(_declared())
    return sorted(n for n in names if not (students_only and n == "flow_matching"))


def method_class(name: str) -> type[Method]:
    """The class of the method ``name`` (an entry point's module is imported here)."""
    builtin, declared = _builtin(), _declared()
    if name in builtin:
        if name in declared:
            raise MethodError(f"method '{name}' is slimstep's own and also the entry point "
                              f"'{declared[name].value}' ({ENTRY_POINT_GROUP}): rename the latter")
        return builtin[name]
    if name not in declared:
        raise MethodError(f"unknown method '{name}' (expected one of {', '.join(method_names())})")
    ep = declared[name]
    try:
        cls = ep.load()
    except (ImportError, AttributeError) as e:
        raise MethodError(f"method '{name}': its entry point '{ep.value}' ({ENTRY_POINT_GROUP}) "
                          f"does not load: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise MethodError(f"method '{name}': the entry point '{ep.value}' is not a subclass of "
                          "slimstep.methods.Method")
    if cls.name != name:
        raise MethodError(f"method '{name}': the entry point '{ep.value}' names a class whose "
                          f"name is '{cls.name}': the two must agree")
    return cls


def method_style(name: str) -> tuple[str, str] | None:
    """(colour, marker) that the method ``name`` declares; None where it declares none or
    there is no such method (a plot then picks one from the name)."""
    try:
        return method_class(name).style
    except MethodError:
        return None


def starts_from_teacher(name: str) -> bool:
    """Whether the method ``name``'s student starts as a copy of the teacher's network
    (False for a name that is no method)."""
    try:
        return method_class(name).starts_from_teacher
    except MethodError:
        return False


def build_method(cfg: RunConfig, info, device, teacher=None) -> Method:
    """Instantiate the method named by ``cfg.method.name``."""
    return method_class(cfg.method.name)(cfg, info, device=device, teacher=teacher)


__all__ = ["ENTRY_POINT_GROUP", "Method", "MethodError", "build_method", "method_class", "method_names",
           "method_style", "starts_from_teacher"]
