"""The commands about one checkpoint: ``slimstep info`` (what it holds) and ``export`` (its
one-step generator as TorchScript or ONNX), and :func:`_generator`, a checkpoint loaded
with the sampling options a command was given."""

from __future__ import annotations

import json
from pathlib import Path

from slimstep.errors import ConfigError
from slimstep.export import export
from slimstep.generator import load
from slimstep.outdir import output_path
from slimstep.spec import resolve_device


def _generator(a):
    gen = load(a.ckpt, resolve_device(a.device))
    return gen.with_sampling(steps=getattr(a, "steps", None), solver=getattr(a, "solver", None),
                             cfg_scale=getattr(a, "cfg_scale", None))


def cmd_info(a) -> None:
    gen = load(a.ckpt)
    total = sum(p.numel() for p in gen.net.parameters())
    cfg = gen.config
    print(f"checkpoint: {a.ckpt}")
    print(f"network:    {cfg['net'].get('name')} ({total:,} parameters)")
    if "params" in cfg:
        pr = cfg["params"]
        print(f"training:   {pr['trainable']:,} trainable, {pr['frozen']:,} frozen "
              f"({100 * pr['frozen'] / max(pr['total'], 1):.1f}% frozen)")
    print(f"method:     {cfg['method'].get('name')}, step {cfg.get('step')}, "
          f"{cfg.get('images_seen')} images seen")
    print(f"data:       {cfg['data']['spec']} {tuple(cfg['data']['shape'])}, "
          f"{cfg['data']['num_classes']} classes")
    print(f"sampling:   {json.dumps(cfg['generator'])}")


def cmd_export(a) -> None:
    onnx_name = Path(a.out).suffix == ".onnx"
    fmt = a.format or ("onnx" if onnx_name else "torchscript")
    if onnx_name != (fmt == "onnx"):  # a file whose name says another format than it holds
        raise ConfigError(f"--out {a.out}: --format {fmt} writes "
                          f"{'a .onnx file' if fmt == 'onnx' else 'TorchScript (e.g. gen.pt)'}; "
                          "name the file for its format")
    with output_path(a.out, a.overwrite):
        gen = _generator(a)
        out = export(gen, a.out, fmt=fmt)
    sig = "forward(z, y)" if gen.num_classes else "forward(z)"
    print(f"{fmt} one-step generator, {sig} -> x, {tuple(gen.info.shape)} -> {out}")
