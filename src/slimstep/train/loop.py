"""The one training loop. Every method trains here; a method owns only its loss.

One optimizer step (:func:`_train_step`) reads in one screen: reseed from
(seed, rank, step), draw the batch, then for each of the method's phases
accumulate micro-batch gradients, average them over ranks, clip, step; then
update the EMA. Around it: warm-up schedule, NaN/inf guard, logging to
``metrics.jsonl`` (and TensorBoard when installed), atomic snapshots every
``ckpt_every`` steps keeping the last ``keep``, and exact resume.

**Exact resume.** Randomness is a pure function of (seed, rank, step): the
global RNG is reseeded before every step and the data generator is derived
from the same numbers. A resumed run therefore needs only weights, EMA,
optimizer and scheduler state and the step, and continues with exactly the
loss sequence of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from slimstep import checkpoint as ckpt
from slimstep.config import ConfigError, check_config
from slimstep.data import ShapeOnly, load_data
from slimstep.data.pairs import check_teacher
from slimstep.errors import SlimstepError, os_error
from slimstep.files import atomic_write
from slimstep.methods import build_method, method_class
from slimstep.methods.base import OptimizerSettings
from slimstep.nets import recorded_spec
from slimstep.outdir import output_dir
from slimstep.spec import RunConfig, TrainConfig
from slimstep.spec.sampling import rule_dict
from slimstep.train import dist
from slimstep.train.ema import EMA

FORMAT = ckpt.FORMAT  # the schema lives with the checkpoint module


class TrainingDiverged(SlimstepError, RuntimeError):
    """A loss or gradient became NaN/inf; the last good checkpoint is kept."""

    exit_code = 1  # the inputs were fine, the run failed


class ResumeError(SlimstepError, ValueError):
    """``--resume`` cannot continue the run in the output directory."""


def step_seed(seed: int, rank: int, step: int) -> int:
    # A large odd multiplier keeps (seed, rank, step) triples from colliding.
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729 + 1) % (2**63 - 1)


_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}  # TrainConfig names the choice


def _optimizer(params, t: TrainConfig, over: OptimizerSettings) -> torch.optim.Optimizer:
    lr = (t.lr if over.lr is None else over.lr) * over.lr_scale
    betas = t.betas if over.betas is None else over.betas
    return _OPTIMIZERS[t.optimizer](params, lr=float(lr), betas=tuple(betas), weight_decay=float(t.weight_decay))


def lr_factor(step: int, t: TrainConfig) -> float:
    """Linear warm-up over ``t.warmup`` steps, then constant or a cosine decay to
    ``t.min_lr`` x lr at the last step (``t.schedule``)."""
    warm = min(1.0, (step + 1) / t.warmup) if t.warmup > 0 else 1.0
    if t.schedule == "constant" or step < t.warmup:
        return warm
    span = max(t.steps - t.warmup, 1)
    cos = 0.5 * (1 + math.cos(math.pi * min(step - t.warmup, span) / span))
    return t.min_lr + (1 - t.min_lr) * cos


def _schedule(opt, t: TrainConfig):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, t))


def _row_step(line: str) -> float:
    """A metrics line's step; a line that is not a JSON row (the torn last line of a
    killed run, or a damaged file) counts as infinitely late, so resume drops it."""
    try:
        row = json.loads(line)
    except ValueError:
        return math.inf
    step = row.get("step", 0) if isinstance(row, dict) else None
    return step if isinstance(step, (int, float)) else math.inf


def training_seconds(ckpt_dir: Path, log: Path | None = None, step: int | None = None) -> float | None:
    """Wall seconds the training loop ran to reach the checkpoint in ``ckpt_dir``, summed over
    every invocation that resumed it (``train_seconds`` in its config). A checkpoint written
    before that key existed: the loop time its metrics log records, up to ``step`` (default:
    the checkpoint's). Each row's ``images_per_s`` is the images of its interval over that
    interval's wall time; the interval is taken as the steps since the row before (after a
    resume from a snapshot between two rows it began at the snapshot, but the steps the
    killed invocation made past its last row were trained too and are in no row, so the two
    roughly cancel). Steps between the last row before ``step`` and ``step`` itself count at
    the next row's rate (else the last one's). None when neither says."""
    cfg = ckpt.read_config(ckpt_dir) if (Path(ckpt_dir) / ckpt.CONFIG).is_file() else {}
    if isinstance(cfg.get("train_seconds"), (int, float)):
        return float(cfg["train_seconds"])
    log = Path(ckpt_dir) / "metrics.jsonl" if log is None else log
    step = cfg.get("step") if step is None else step
    batch = (cfg.get("train") or {}).get("batch_size")
    if not log.is_file() or not isinstance(step, int) or not batch:
        return None
    total, prev, rate = 0.0, -1, None
    for line in log.read_text(errors="replace").splitlines():
        at = _row_step(line)
        if at == math.inf:
            continue  # a torn line
        ips = json.loads(line).get("images_per_s")
        if not isinstance(ips, (int, float)) or ips <= 0:
            return None
        rate = ips
        if at >= step:
            break
        total += (at - prev) * batch / ips
        prev = at
    if rate is None:
        return 0.0 if step == 0 else None
    return total + (step - 1 - prev) * batch / rate


class Logger:
    """metrics.jsonl on rank 0, plus TensorBoard when it is installed."""

    def __init__(self, out: Path, main: bool, start_step: int):
        self.main, self.path, self.tb = main, out / "metrics.jsonl", None
        if not main:
            return
        if self.path.exists():  # drop lines a resumed run will write again
            keep = [ln for ln in self.path.read_text(errors="replace").splitlines()
                    if _row_step(ln) < start_step]
            atomic_write(self.path, lambda p: Path(p).write_text(
                "".join(ln + "\n" for ln in keep)))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"), purge_step=start_step)
        except Exception:  # tensorboard is optional
            self.tb = None

    def log(self, step: int, row: dict) -> None:
        if not self.main:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **row}) + "\n")
        except OSError as e:  # a full disk: name this file (the OS names none for a write)
            raise os_error(e, self.path) from None
        if self.tb:
            for k, v in row.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()


def _train_step(method, data, phases, ema, ctx, cfg, step):
    """One optimizer step of every phase; returns the scalars to log."""
    t = cfg.train
    torch.manual_seed(step_seed(t.seed, ctx.rank, step))
    gen = torch.Generator().manual_seed(step_seed(t.seed, ctx.rank, step) ^ 0x5EED)
    batch = tuple(b.to(ctx.device) if b is not None else None
                  for b in data.draw(t.batch_size // ctx.world, gen))
    size = len(batch[0]) // t.accum  # train() checked that the batch divides evenly
    micro = [tuple(b[i:i + size] if b is not None else None for b in batch)
             for i in range(0, len(batch[0]), size)]
    amp = torch.autocast(ctx.device.type, dtype=torch.bfloat16,
                         enabled=t.precision == "bf16")
    logs: dict[str, float] = {}
    for name, (params, opt, sched) in phases.items():
        if not method.phase_active(name, step):  # GDD's separate lazy R1 step, DMD2's generator (TTUR)
            continue
        opt.zero_grad(set_to_none=True)
        for mb in micro:
            with amp:
                out = method.loss(mb, step, name)
            loss = out["loss"]
            if not torch.isfinite(loss.detach()).all():
                raise TrainingDiverged(f"loss of phase '{name}' is {loss.item()} at step {step}")
            (loss / len(micro)).backward()
            for k, v in out.items():
                key = k if len(phases) == 1 else f"{name}/{k}"
                logs[key] = logs.get(key, 0.0) + float(v.detach()) / len(micro)
        dist.allreduce_grads(params, ctx.world)
        clip = t.grad_clip if t.grad_clip > 0 else math.inf
        gnorm = float(nn.utils.clip_grad_norm_(params, clip))
        if not math.isfinite(gnorm):
            raise TrainingDiverged(f"gradient norm of phase '{name}' is {gnorm} at step {step}")
        logs["grad_norm" if len(phases) == 1 else f"{name}/grad_norm"] = gnorm
        logs["lr" if len(phases) == 1 else f"{name}/lr"] = sched.get_last_lr()[0]
        opt.step()
        if method.shared_optimizer(name) is None:  # a shared optimizer keeps its owner's schedule
            sched.step()
    ema.update(method.net, step, t.batch_size)
    return logs


def train(cfg: RunConfig | dict, out: str | Path, *, resume: bool = False, teacher=None,
          progress: bool = True) -> Path:
    """Train ``cfg.method`` and write checkpoints to ``out``; returns ``out``. ``cfg`` is
    :func:`slimstep.config.load_config`'s value (a plain dict is checked into one).

    Everything that can be checked — the config, the data, the method and its
    inputs — is checked before ``out`` is created; then ``out`` is locked for the
    run (:func:`slimstep.outdir.output_dir`)."""
    out = Path(out)
    cfg = check_config(cfg)
    t = cfg.train
    ctx = dist.setup(t.device)
    if t.batch_size % (ctx.world * t.accum):
        raise ConfigError(f"train.batch_size {t.batch_size} must divide by "
                          f"world size x accum = {ctx.world * t.accum}")
    if t.precision == "bf16" and ctx.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision=bf16 does not run on {torch.cuda.get_device_name(ctx.device)}: "
                          "use fp32")
    torch.manual_seed(t.seed)  # same initial weights on every rank
    mcls = method_class(cfg.method.name)
    if mcls.data_free and teacher is not None:
        data = ShapeOnly(teacher.info)
    else:
        spec = mcls.data_spec(cfg)
        # The options are those of the config's data set; pairs carry their teacher's shapes.
        data = load_data(spec, **(cfg.data.options if spec == cfg.data.spec else {}))
    check_teacher(data, teacher)  # pairs from another teacher, data set or shape
    method = build_method(cfg, data.info, ctx.device, teacher=teacher)
    for m in method.modules().values():
        dist.broadcast_module(m)
    phases = {}
    for name in method.phases:
        params = [p for p in method.parameters(name) if p.requires_grad]
        owner = method.shared_optimizer(name)
        if owner is not None:  # steps the optimizer (and Adam state) of an earlier phase
            phases[name] = (params, *phases[owner][1:])
            continue
        opt = _optimizer(params, t, method.optimizer_options(name))
        phases[name] = (params, opt, _schedule(opt, t))
    ema = EMA(method.net, **t.ema.to_dict())
    with output_dir(out, lock=ctx.main, expect="checkpoint"):
        return _run(cfg, out, resume, method, data, phases, ema, ctx, progress)


def _run(cfg: RunConfig, out: Path, resume: bool, method, data, phases, ema, ctx, progress: bool) -> Path:
    """The run itself, in a locked ``out``: resume or start, train, snapshot."""
    t = cfg.train
    start, before = 0, 0.0
    if resume:
        start = _resume(out, cfg, method, phases, ema)
        # None (no time recorded or logged): leave train_seconds out, so it is read from the log later
        before = training_seconds(ckpt.list_snapshots(out)[-1], out / "metrics.jsonl", start)
    elif ckpt.list_snapshots(out):  # every rank checks, so none waits in a collective
        raise ResumeError(f"{out} already holds a training run: pass --resume or choose another --out")
    elif (out / ckpt.CONFIG).is_file():  # an imported teacher, a copy: nothing to resume, not ours to replace
        raise ResumeError(f"{out} already holds a checkpoint (not a training run to resume): "
                          "choose another --out")
    if t.compile:
        for m in method.compiled_modules().values():
            m.compile()

    net_params = list(method.net.parameters())
    params = {"total": sum(p.numel() for p in net_params),
              "trainable": sum(p.numel() for p in net_params if p.requires_grad)}
    params["frozen"] = params["total"] - params["trainable"]

    def config(step):
        return {"format": FORMAT, "net": recorded_spec(getattr(method, "spec", None), method.net),
                "teacher": cfg.teacher, "pairs": cfg.pairs, "init": cfg.init,
                "generator": rule_dict(method.export()), "method": method.method_config(),
                "data": data.info.to_dict(), "train": t.to_dict(), "sample": cfg.sample.to_dict(),
                "step": step, "images_seen": step * t.batch_size, "params": params,
                **({} if before is None else {"train_seconds": round(before + time.perf_counter() - began, 3)})}

    def save(step):
        if ctx.main:
            state = {"step": step, "ema": ema.state_dict(),
                     "modules": {k: m.state_dict() for k, m in method.modules().items()},
                     "optimizers": {k: v[1].state_dict() for k, v in phases.items()},
                     "schedulers": {k: v[2].state_dict() for k, v in phases.items()}}
            ckpt.save_snapshot(out, step, ema.net, config(step), state, t.keep)

    logger = Logger(out, ctx.main, start)
    bar = None
    if ctx.main and progress:
        from tqdm import tqdm

        bar = tqdm(total=t.steps, initial=start, desc=method.name, mininterval=1.0,
                   dynamic_ncols=True)
    tic, last = time.perf_counter(), start
    began = tic
    try:
        for step in range(start, t.steps):
            for m in method.modules().values():
                m.train()
            logs = _train_step(method, data, phases, ema, ctx, cfg, step)
            done = step + 1
            if done % t.log_every == 0 or done == t.steps:
                now = time.perf_counter()
                logs = {k: float(dist.allreduce_mean(torch.tensor(v), ctx.world))
                        for k, v in logs.items()}
                logs["images_per_s"] = (done - last) * t.batch_size / max(now - tic, 1e-9)
                tic, last = now, done
                logger.log(step, logs)
                if bar:
                    bar.set_postfix(loss=f"{logs.get('loss', next(iter(logs.values()))):.4g}")
            if done % t.ckpt_every == 0 or done == t.steps:
                save(done)
            if bar:
                bar.update(1)
        dist.barrier(ctx.world)  # rank 0 may still be writing the final snapshot
    except TrainingDiverged as e:
        snaps = ckpt.list_snapshots(out)
        keep = f"last good checkpoint: {snaps[-1]}" if snaps else "no checkpoint was written yet"
        raise TrainingDiverged(f"training diverged: {e}; stopped, {keep}") from None
    finally:
        if bar:
            bar.close()
        logger.close()
        dist.teardown()
    return out


#: Train settings a resumed run may change: the length (the schedule is rebuilt from it)
#: and bookkeeping. Anything else (lr, batch size, schedule, EMA, seed...) would be
#: recorded but not used, since the optimizer, scheduler and EMA come from the snapshot.
RESUMABLE = frozenset({"steps", "log_every", "ckpt_every", "keep", "device", "compile"})


def _changed_train_keys(saved: dict, mine: dict) -> list[str]:
    return sorted(k for k in set(saved) | set(mine) if k not in RESUMABLE and saved.get(k) != mine.get(k))


#: Keys recorded since older snapshots were written: (section, key) -> the value an older
#: snapshot implies, from the rest of the current section (None: any value), so a run
#: interrupted before the key existed still resumes when it would have had that value.
_ADDED_LATER = {
    ("net", "time_scale"): None,
    ("net", "teacher_patch_size"): lambda sec: sec.get("patch_size"),  # SLT: tokens = teacher's
    ("method", "bank"): lambda sec: 0,  # SLT: fresh noise every step
    # issue 24: MeanFlow's guided target and v1 sampler, GDD's precond and R1 step
    ("method", "tr_sampler"): lambda sec: "sort",
    ("method", "guidance_omega"): lambda sec: 1.0,
    ("method", "guidance_kappa"): lambda sec: 0.0,
    ("method", "guidance_t_min"): lambda sec: 0.0,
    ("method", "guidance_t_max"): lambda sec: 1.0,
    ("method", "precond"): lambda sec: "teacher",
    ("method", "r1_step"): lambda sec: "joint",
}


def _resume(out: Path, cfg: RunConfig, method, phases, ema) -> int:
    snaps = ckpt.list_snapshots(out)
    if not snaps:
        raise ResumeError(f"--resume: no checkpoint in {out}/checkpoints")
    saved = ckpt.read_config(snaps[-1])
    for key in ("net", "method"):
        mine = (recorded_spec(getattr(method, "spec", None), method.net) if key == "net"
                else method.method_config())
        if isinstance(saved.get(key), dict):
            for (sec, k), implied in _ADDED_LATER.items():
                if sec == key and k not in saved[key] and k in mine and (
                        implied is None or mine[k] == implied(mine)):
                    mine = {kk: v for kk, v in mine.items() if kk != k}  # written before it was
        if saved.get(key) != mine:
            raise ResumeError(f"--resume: the {key} section differs from the run in {out}")
    if isinstance(saved.get("data"), dict) and saved["data"].get("spec") != cfg.data.spec:
        raise ResumeError(f"--resume: the run in {out} trained on {saved['data'].get('spec')}, "
                          f"not {cfg.data.spec}")
    mine = cfg.train.to_dict()
    changed = _changed_train_keys(saved.get("train") or {}, mine)
    if changed:
        was = ", ".join(f"train.{k} {saved['train'].get(k)!r} -> {mine.get(k)!r}" for k in changed)
        raise ResumeError(f"--resume: {was} (the run in {out} used the first); a resumed run keeps "
                          f"its optimizer and schedule state, so only {', '.join(sorted(RESUMABLE))} may change")
    state = ckpt.load_training_state(snaps[-1])
    for k, m in method.modules().items():
        m.load_state_dict(state["modules"][k])
    ema.load_state_dict(state["ema"])
    for k, (_, opt, sched) in phases.items():
        opt.load_state_dict(state["optimizers"][k])
        sched.load_state_dict(state["schedulers"][k])
    return int(state["step"])
