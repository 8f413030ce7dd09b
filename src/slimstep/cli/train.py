"""The commands that train: ``slimstep teacher``, ``pairs`` (a teacher's reflow pairs),
``distill`` and ``screen-train`` (the realism screening score)."""

from __future__ import annotations

from slimstep.config import DEFAULTS, load_config
from slimstep.errors import ConfigError
from slimstep.inputs import resolve_inputs
from slimstep.pairs import generate_pairs
from slimstep.realism import train_realism
from slimstep.spec import Named, resolve_device
from slimstep.train.loop import train


def cmd_teacher(a) -> None:
    cfg = load_config(a.config, a.overrides)
    if cfg.method.name != "flow_matching":
        raise ConfigError(f"slimstep teacher trains flow_matching, the config names "
                          f"'{cfg.method.name}'")
    out = train(cfg, a.out, resume=a.resume, progress=not a.quiet)
    print(f"teacher checkpoint: {out}")


def cmd_pairs(a) -> None:
    out = generate_pairs(a.teacher, a.out, a.n, solver=a.solver, steps=a.steps, rtol=a.rtol,
                         atol=a.atol, cfg_scale=a.cfg_scale, seed=a.seed, shard_size=a.shard_size,
                         batch_size=a.batch_size, device=a.device, progress=not a.quiet)
    print(f"{a.n} pairs -> {out}")


def cmd_distill(a) -> None:
    cfg = load_config(a.config, a.overrides)
    named = cfg.method.name
    if named not in (a.method, DEFAULTS["method"]["name"]):
        raise ConfigError(f"{a.config} is a recipe for method '{named}', not '{a.method}'")
    cfg = cfg.replace(method=Named(a.method, cfg.method.options))
    cfg, inputs = resolve_inputs(cfg, teacher=a.teacher, pairs=a.pairs, init=a.init,
                                 device=resolve_device(cfg.train.device))
    out = train(cfg, a.out, resume=a.resume, teacher=inputs.teacher, progress=not a.quiet)
    print(f"{a.method} checkpoint: {out}")


def cmd_screen_train(a) -> None:
    out = train_realism(a.ckpt, a.data, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                        r1_gamma=a.r1_gamma, seed=a.seed, log=(lambda *_: None) if a.quiet else print,
                        overwrite=a.overwrite)
    print(f"realism discriminator of {a.ckpt} -> {out} (screen with --scorer realism "
          f"--discriminator {out})")
