r"""Teacher pairs for reflow: :math:`(z, \hat x = \mathrm{ODE}_{teacher}(z)[, y])`.

Written as shards ``DIR/shard-NNNNN.safetensors`` (tensors ``z``, ``x``,
``seeds`` and ``y`` for conditional teachers) plus ``DIR/manifest.json``.
Shard ``i`` holds seeds ``seed + i·S … seed + (i+1)·S − 1`` (the last one may
be shorter), and every pair's noise and class come from its own seed, so the
pairs never depend on batch size or process count.

**Resumable.** A shard is written atomically, so after a kill every shard on
disk is complete. Rerun with the same arguments, the command keeps the
finished shards and makes only the missing ones; the result equals an
uninterrupted run. Different arguments against an existing directory are an
error. Under ``torchrun``, shard ``i`` belongs to rank ``i mod world``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from slimstep import checkpoint as ck
from slimstep.data.pairs import MANIFEST, read_manifest
from slimstep.errors import SlimstepError
from slimstep.files import tensor_bytes, write_bytes, write_json
from slimstep.generator import load, seeded_noise
from slimstep.outdir import output_dir
from slimstep.spec import PairsConfig
from slimstep.spec.sampling import VelocityRule
from slimstep.train import dist


class PairsError(SlimstepError, ValueError):
    """A pairs directory does not match the request (one clear line)."""


def shard_path(directory: Path, i: int) -> Path:
    return directory / f"shard-{i:05d}.safetensors"


_D = PairsConfig()  # the defaults of this function, `slimstep pairs` and a recipe's pairs stage


def generate_pairs(teacher: str | Path, out: str | Path, n: int, *, solver: str = _D.solver,
                   steps: int = _D.steps, rtol: float = _D.rtol, atol: float = _D.atol,
                   cfg_scale: float | None = None, seed: int = _D.seed, shard_size: int = _D.shard_size,
                   batch_size: int = _D.batch_size, labels: str = "random", device: str = "auto",
                   progress: bool = True) -> Path:
    """Solve the teacher's ODE from ``n`` per-seed noises into ``out`` (defaults:
    :class:`slimstep.spec.PairsConfig`, Heun 16 steps, seeds from 10⁶)."""
    PairsConfig.from_dict({"n": n, "solver": solver, "steps": steps, "seed": seed, "rtol": rtol,
                           "atol": atol, "cfg_scale": cfg_scale, "shard_size": shard_size,
                           "batch_size": batch_size}, "pairs")
    out = Path(out)
    ctx = dist.setup(device)
    gen = load(teacher, ctx.device).with_sampling(solver=solver, steps=steps, rtol=rtol,
                                                  atol=atol, cfg_scale=cfg_scale)
    args = {"teacher": str(Path(teacher).resolve()), "n": n, "solver": solver,
            "steps": steps if solver != "dopri5" else None,
            "rtol": rtol if solver == "dopri5" else None,
            "atol": atol if solver == "dopri5" else None,
            "cfg_scale": gen.sampling.cfg_scale if isinstance(gen.sampling, VelocityRule) else 1.0, "seed": seed,
            "shard_size": shard_size, "labels": labels if gen.num_classes else "none"}
    shards = math.ceil(n / shard_size)
    with output_dir(out, lock=ctx.main, expect="pairs folder"):
        return _generate(gen, out, args, shards, labels, batch_size, ctx, progress)


def _generate(gen, out: Path, args: dict, shards: int, labels: str, batch_size: int, ctx,
              progress: bool) -> Path:
    n, seed, shard_size = args["n"], args["seed"], args["shard_size"]
    mpath = out / MANIFEST
    saved = read_manifest(out)
    if saved is not None and saved["args"] != args and not saved.get("complete") and not any(
            shard_path(out, i).is_file() for i in range(saved["shards"])):
        saved = None  # a run that failed before its first shard: the corrected rerun starts over
    if saved is not None:
        if saved["args"] != args:
            diff = sorted(k for k in args if saved["args"].get(k) != args[k])
            raise PairsError(f"{out} holds pairs made with other arguments ({', '.join(diff)}); "
                             "use another --out or the same arguments")
    elif ctx.main:
        write_json(mpath, {"args": args, "shards": shards, "complete": False,
                           "data": gen.info.to_dict(), "num_classes": gen.num_classes,
                           "teacher_sha": ck.weights_digest(args["teacher"])})
    if ctx.world > 1:
        torch.distributed.barrier()

    todo = [i for i in range(shards) if i % ctx.world == ctx.rank and not shard_path(out, i).is_file()]
    bar = None
    if ctx.main and progress:
        from tqdm import tqdm

        bar = tqdm(total=shards, initial=shards - len(todo) * ctx.world, desc="pairs", unit="shard")
    nfe = 0
    for i in todo:
        seeds = list(range(seed + i * shard_size, seed + min((i + 1) * shard_size, n)))
        z, y = seeded_noise(tuple(gen.info.shape), seeds, gen.num_classes if labels == "random" else 0)
        x = gen.sample_from(z, y, batch_size)
        nfe = max(nfe, gen.last_nfe)
        tensors = {"z": z.contiguous(), "x": x.contiguous(),
                   "seeds": torch.tensor(seeds, dtype=torch.long)}
        if y is not None:
            tensors["y"] = y.contiguous()
        write_bytes(shard_path(out, i), tensor_bytes(tensors))
        if bar:
            bar.update(ctx.world if ctx.world > 1 else 1)
    if bar:
        bar.close()
    if ctx.world > 1:
        torch.distributed.barrier()
    if ctx.main:
        missing = [i for i in range(shards) if not shard_path(out, i).is_file()]
        if missing:
            raise PairsError(f"{len(missing)} shards are missing after generation (first: {missing[0]})")
        m = json.loads(mpath.read_text())
        m.update(complete=True, last_nfe=nfe or m.get("last_nfe"))
        write_json(mpath, m)
    dist.barrier(ctx.world)  # no rank tears gloo down while rank 0 still writes
    dist.teardown()
    return out
