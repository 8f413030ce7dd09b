"""``slimstep import``: a foreign teacher file -> a normal slimstep checkpoint.

Each format is an explicit converter; nothing from the file is ever executed. The
checkpoint it writes (``config.json`` + ``model.safetensors``, format
``slimstep-checkpoint/1``) is read by every command as ``--teacher`` / ``--ckpt``, and its
``config.json`` records the source file, its sha256, and the time / parametrisation
adapter in words and parameters (section ``import``). See ``docs/teachers.md``.

=========  ==================================  ================================  ==========
format     file                                slimstep network                  sampling
=========  ==================================  ================================  ==========
sit        SiT state dict (velocity, linear    ``dit``, time_scale 1 (SiT's time  velocity
           path, SiT's t = slimstep's t)       is ours: no conversion)
dit        DiT state dict (VP, ε, 1000 steps)  ``dit_vp_eps`` (ε -> velocity)    velocity
freeflow   FreeFlow flow map (DiT code,        ``freeflow_dit`` (t, dt, gw)      flowmap
           dt + gw embedders)
diffusers  diffusers pipeline / model folder   ``diffusers_vp``: the diffusers     velocity
           (UNet2DModel, DiTTransformer2DModel  model wrapped, VP ε / v / x0 ->
           + a VP scheduler config)            velocity (``nets.vp.VPAdapter``)
edm        EDM network pickle                  (reader only: refused, see below)  —
=========  ==================================  ================================  ==========

Everything is checked before anything is written; the output appears by one rename.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from slimstep.data import DataError, DataInfo, load_data
from slimstep.files import current_umask
from slimstep.importers import diffusers_folder, dit_layout
from slimstep.importers.readers import TeacherImportError, file_digest, read_state_dict, sniff
from slimstep.importers.safe_pickle import UnsafePickleError, safe_load
from slimstep.nets import build_net, recorded_spec
from slimstep.spec import SampleConfig
from slimstep.train import checkpoint as ckpt

FORMATS = ("sit", "dit", "freeflow", "diffusers", "edm")

_STATE_DICT = ("container", "num_heads")
_SAMPLING = ("solver", "steps", "cfg_scale")
#: key=value options each format takes (value parsed as JSON-ish scalars)
OPTIONS = {
    "sit": _STATE_DICT + _SAMPLING,
    "dit": _STATE_DICT + _SAMPLING + ("num_timesteps", "beta_start", "beta_end"),
    "freeflow": _STATE_DICT + _SAMPLING + ("guidance", "time"),  # sampling keys: refused, with why
    "diffusers": _SAMPLING + ("variant",),
    "edm": _STATE_DICT + _SAMPLING,  # read, then refused
}


def parse_options(pairs: list[str], fmt: str) -> dict:
    """``["num_heads=4", "time=repa"]`` -> ``{"num_heads": 4, "time": "repa"}``; unknown
    keys are one line naming the valid ones."""
    valid = OPTIONS.get(fmt, ())
    out: dict = {}
    for item in pairs:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise TeacherImportError(f"expected key=value, got '{item}'")
        if key not in valid:
            raise TeacherImportError(f"--format {fmt} takes no option '{key}' (valid: {', '.join(valid)})")
        out[key] = _scalar(text)
    return out


def _scalar(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


_KIND = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _typed(opts: dict, key: str, kind: type, default, where: str):
    """``opts[key]`` checked to be of ``kind`` (an int is a float too), else ``default``."""
    if key not in opts:
        return default
    v = opts[key]
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or (kind is not bool and isinstance(v, bool)):
        raise TeacherImportError(f"{where}: {key}={v!r} must be {_KIND[kind]}")
    return v


# ---------------------------------------------------------------- formats


def _sampling(opts: dict, where: str) -> dict:
    s = SampleConfig()
    solver = opts.get("solver", s.solver)
    if solver not in ("euler", "heun", "dopri5"):
        raise TeacherImportError(f"{where}: solver must be euler, heun or dopri5, not {solver!r}")
    steps = _typed(opts, "steps", int, s.steps, where)
    if steps < 1:
        raise TeacherImportError(f"{where}: steps must be at least 1")
    return {"kind": "velocity", "solver": solver, "steps": steps,
            "cfg_scale": _typed(opts, "cfg_scale", float, s.cfg_scale, where),
            "rtol": s.rtol, "atol": s.atol}


def _plan_dit_family(fmt: str, src: Path, opts: dict) -> tuple[dict, dict, dict, dict]:
    """(net spec, tensors under slimstep names, renames, import record) for sit / dit / freeflow."""
    where = str(src)
    raw, container = read_state_dict(src, opts.get("container"))
    sd, names = dit_layout.renamed(raw, fmt)
    if fmt != "freeflow" and any(k.startswith(("dt_embedder.", "gw_embedder.")) for k in raw):
        raise TeacherImportError(f"{where}: has dt_embedder / gw_embedder: a FreeFlow flow map, "
                                 "import it with --format freeflow")
    if fmt == "freeflow" and not any(k.startswith("dt_embedder.") for k in raw):
        raise TeacherImportError(f"{where}: no dt_embedder: not a FreeFlow flow map (a velocity "
                                 "SiT is --format sit)")
    kw = dit_layout.infer_dit(sd, where, _typed(opts, "num_heads", int, None, where))
    record = {"format": fmt, "source": str(src.resolve()), "sha256": file_digest(src),
              "container": container, "tensors": len(raw), "renamed": names}
    if fmt == "sit":
        spec = {"name": "dit", **kw, "time_scale": 1.0}
        record["adapter"] = {
            "name": "identity",
            "formula": "v_slimstep(x, t) = v_SiT(x, t): SiT's Linear path is x_t = t x1 + (1-t) x0 "
                       "with x1 data (ICPlan alpha_t = t, sigma_t = 1 - t), velocity x1 - x0, "
                       "t fed unscaled; learn-sigma channels dropped"}
        generator = _sampling(opts, where)
    elif fmt == "dit":
        n = _typed(opts, "num_timesteps", int, 1000, where)
        b0 = _typed(opts, "beta_start", float, 1e-4, where)
        b1 = _typed(opts, "beta_end", float, 0.02, where)
        if n < 2 or not 0 < b0 < b1 < 1:
            raise TeacherImportError(f"{where}: need num_timesteps >= 2 and 0 < beta_start < beta_end < 1")
        spec = {"name": "dit_vp_eps", **kw, "time_scale": 1.0, "num_timesteps": n,
                "beta_start": b0, "beta_end": b1}
        record["adapter"] = {
            "name": "vp_eps_to_velocity", "schedule": "linear", "num_timesteps": n,
            "beta_start": b0, "beta_end": b1,
            "formula": "sigma = (1-t)/t; x_vp = x_t / (t sqrt(1+sigma^2)); "
                       "n = interp(log sigma, log sigma_n, n); v = (x_t - eps(x_vp, n)) / t; "
                       "t clamped to the trained sigma range; learn-sigma channels dropped"}
        generator = _sampling(opts, where)
    else:
        time = opts.get("time")
        reason = "time= option"
        if time is None:  # FreeFlow's own sample.py decides by the file name
            time = "repa" if "REPA" in src.name else "sit"
            reason = "file name (FreeFlow's sample.py rule: 'REPA' in the name = REPA time)"
        if time not in ("sit", "repa"):
            raise TeacherImportError(f"{where}: time must be sit or repa, not {time!r}")
        guidance = _typed(opts, "guidance", float, 1.0, where)
        for k in ("solver", "steps", "cfg_scale"):
            if k in opts:
                raise TeacherImportError(f"{where}: {k}= is for velocity teachers; a FreeFlow map "
                                         "samples in one step (its guidance is guidance=)")
        spec = {"name": "freeflow_dit", **kw, "time_scale": 1.0, "guidance": guidance,
                "reversed_time": time == "repa"}
        sign, tt = ("-", "1 - t") if time == "repa" else ("+", "t")
        record["adapter"] = {
            "name": "freeflow_flowmap", "time": time, "time_from": reason, "guidance": guidance,
            "formula": f"F(x, t, s) = {sign}pred(x, t'={tt}, y, dt=s, gw={guidance:g}); "
                       "one step x = z + F(z, 0, s=1); dt_embedder -> s_embedder"}
        generator = {"kind": "flowmap", "nfe": 1, "t": 0.0, "s": 1.0}
    return spec, sd, names, {"record": record, "generator": generator}


def _refuse_edm(src: Path) -> None:
    """Read an EDM pickle with the restricted unpickler; always ends in one line: the
    refusal of the code it embeds, or 'network mapping not yet supported'."""
    kind = sniff(src)
    if kind in ("torch-zip", "safetensors"):
        raise TeacherImportError(f"{src}: a {kind} file, not an EDM network pickle "
                                 "(a state dict is --format sit, dit or freeflow)")
    if kind != "pickle":
        raise TeacherImportError(f"{src}: not a pickle (unrecognised first bytes)")
    try:
        obj = safe_load(src)
    except UnsafePickleError as e:
        hint = (" (EDM's torch_utils.persistence: the pickle embeds its network's source code)"
                if e.module.startswith("torch_utils") else "")
        raise TeacherImportError(
            f"{src}: refused: the pickle calls {e.module}.{e.name}{hint}; slimstep unpickles "
            "tensors and plain containers only and never runs code from a file") from None
    except Exception as e:  # a truncated or corrupt pickle
        raise TeacherImportError(f"{src}: unreadable pickle ({type(e).__name__}: {e})") from None
    n = _count_tensors(obj)
    raise TeacherImportError(
        f"{src}: read safely ({n} tensors), but mapping EDM's networks (SongUNet / DhariwalUNet "
        "behind EDMPrecond) onto slimstep's is not yet supported")


def _count_tensors(obj) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return 1
    if isinstance(obj, dict):
        return sum(_count_tensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_count_tensors(v) for v in obj)
    return 0


# ---------------------------------------------------------------- entry point


def _data_info(data: str | None, shape: list[int], num_classes: int) -> DataInfo:
    if data is None:  # sampling works without; training names its data with --data at import
        return DataInfo(spec="none", kind="image", shape=tuple(shape), num_classes=num_classes)
    try:
        info = load_data(data).info
    except DataError as e:
        raise TeacherImportError(f"--data {data}: {e}") from None
    if tuple(info.shape) != tuple(shape):
        raise TeacherImportError(f"--data {data} has samples of shape {tuple(info.shape)}, the "
                                 f"network takes {tuple(shape)}")
    # an unconditional teacher (num_classes 0) models a labelled set too: it ignores the labels
    if info.num_classes and num_classes and info.num_classes != num_classes:
        raise TeacherImportError(f"--data {data} has {info.num_classes} classes, the network "
                                 f"{num_classes}")
    return DataInfo(spec=info.spec, kind=info.kind, shape=tuple(shape), num_classes=num_classes,
                    scaling=info.scaling, options=dict(info.options))


def import_teacher(fmt: str, src: str | Path, out: str | Path, *, data: str | None = None,
                   options: dict | None = None, scheduler: str | Path | None = None) -> Path:
    """Convert ``src`` (format ``fmt``) into a slimstep checkpoint directory ``out``.
    Every check runs first; on any error nothing is written. ``scheduler`` (diffusers
    only) names the scheduler folder or config of a bare model folder."""
    if fmt not in FORMATS:
        raise TeacherImportError(f"unknown format '{fmt}' (known: {', '.join(FORMATS)})")
    src, out = Path(src), Path(out)
    if fmt == "diffusers" and not src.is_dir():
        raise TeacherImportError(f"{src}: no such folder (a diffusers pipeline or model folder)")
    if fmt != "diffusers" and not src.is_file():
        raise TeacherImportError(f"{src}: no such file")
    if scheduler is not None and fmt != "diffusers":
        raise TeacherImportError("--scheduler is for --format diffusers")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TeacherImportError(f"--out {out} exists and is not an empty directory: choose another path")
    opts = dict(options or {})
    if fmt == "edm":
        _refuse_edm(src)
    if fmt == "diffusers":  # the diffusers model is wrapped: its tensors fill net.model, names kept
        variant = _typed(opts, "variant", str, None, str(src))
        spec, sd, record = diffusers_folder.plan(src, scheduler, variant)
        names, target, plan = {}, "model", {"record": record, "generator": _sampling(opts, str(src))}
    else:
        spec, sd, names, plan = _plan_dit_family(fmt, src, opts)
        target = ""
    try:
        net = build_net(spec)
    except Exception as e:  # a shape combination the constructor refuses
        raise TeacherImportError(f"{src}: the inferred network cannot be built ({e})") from None
    plan["record"]["tensors_used"] = dit_layout.assign_exactly_once(net.get_submodule(target), sd,
                                                                    names, str(src))
    info = _data_info(data, spec["in_shape"], spec["num_classes"])
    config = {"format": ckpt.FORMAT, "net": recorded_spec(spec, net), "generator": plan["generator"],
              "method": {"name": "import", "format": fmt}, "data": info.to_dict(),
              "step": 0, "images_seen": 0, "import": plan["record"]}
    _write_atomically(out, net, config)
    return out


def _write_atomically(out: Path, net, config: dict) -> None:
    """Assemble the checkpoint in a temporary sibling folder and rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700
        ckpt.save_model(tmp, net, config)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["FORMATS", "TeacherImportError", "import_teacher", "parse_options"]
