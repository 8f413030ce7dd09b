"""``slimstep import``: a teacher that slimstep did not train (a SiT / DiT / FreeFlow state
dict, a diffusers folder, an EDM / EDM2 pickle) converted into a slimstep checkpoint."""

from __future__ import annotations

from slimstep.importers import import_teacher, parse_options


def cmd_import(a) -> None:
    opts = parse_options(a.options, a.format)
    out = import_teacher(a.format, a.src, a.out, data=a.data, options=opts, scheduler=a.scheduler,
                         overwrite=a.overwrite)
    print(f"{a.format} teacher {a.src} -> {out} (use it as --teacher {out})")
