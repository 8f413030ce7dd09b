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
edm        EDM network snapshot (``ema``:      ``edm_unet`` (EDM's tensor        velocity
           EDMPrecond / VPPrecond / VEPrecond  names; D(x; σ) -> velocity,
           around a SongUNet or DhariwalUNet)  σ clamped to [0.002, 80])
           read inertly
edm2       EDM2 network snapshot (``ema``:     ``edm2_unet`` (EDM2's tensor      velocity
           networks_edm2.Precond around its    names; D(x; σ) -> velocity,
           magnitude-preserving UNet), read    σ clamped to [0.002, 80])
           inertly
=========  ==================================  ================================  ==========

Everything is checked before anything is written; the output appears by one rename.
EDM's iDDPMPrecond is refused in one line; an EDM2 pickle handed to ``--format edm`` (or an
EDM one to ``--format edm2``) is one line naming the format that reads it.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

from slimstep import checkpoint as ckpt
from slimstep.data import DataError, DataInfo, load_data
from slimstep.files import current_umask
from slimstep.importers import diffusers_folder, dit_layout, edm2_layout, edm_layout
from slimstep.importers.readers import TeacherImportError, file_digest, read_state_dict, sniff
from slimstep.importers.safe_pickle import UnsafePickleError, safe_load
from slimstep.nets import build_net, recorded_spec
from slimstep.outdir import output_path, replace_folder
from slimstep.spec import SampleConfig, is_number
from slimstep.spec.sampling import SOLVER_NAMES, SOLVERS

FORMATS = ("sit", "dit", "freeflow", "diffusers", "edm", "edm2")

_STATE_DICT = ("container", "num_heads")
_SAMPLING = ("solver", "steps", "cfg_scale")
#: key=value options each format takes (value parsed as JSON-ish scalars)
OPTIONS = {
    "sit": _STATE_DICT + _SAMPLING,
    "dit": _STATE_DICT + _SAMPLING + ("num_timesteps", "beta_start", "beta_end"),
    "freeflow": _STATE_DICT + _SAMPLING + ("guidance", "time"),  # sampling keys: refused, with why
    "diffusers": _SAMPLING + ("variant",),
    "edm": ("container",) + _SAMPLING + ("sigma_min", "sigma_max", "dropout"),
    "edm2": ("container",) + _SAMPLING + ("sigma_min", "sigma_max", "dropout"),
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
    if solver not in SOLVERS:
        raise TeacherImportError(f"{where}: solver must be {SOLVER_NAMES}, not {solver!r}")
    steps = _typed(opts, "steps", int, s.steps, where)
    if steps < 1:
        raise TeacherImportError(f"{where}: steps must be at least 1")
    cfg_scale = _typed(opts, "cfg_scale", float, s.cfg_scale, where)
    if not is_number(cfg_scale):  # written, it would make a checkpoint no reader accepts
        raise TeacherImportError(f"{where}: cfg_scale must be a finite number, not {cfg_scale}")
    return {"kind": "velocity", "solver": solver, "steps": steps, "cfg_scale": cfg_scale,
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


def _read_edm(src: Path):
    """The EDM pickle as an inert record tree (:mod:`safe_pickle`, EDM mode); any global
    outside that allow-list is one line naming it, before it is called."""
    kind = sniff(src)
    if kind in ("torch-zip", "safetensors"):
        raise TeacherImportError(f"{src}: a {kind} file, not an EDM network pickle "
                                 "(a state dict is --format sit, dit or freeflow)")
    if kind != "pickle":
        raise TeacherImportError(f"{src}: not a pickle (unrecognised first bytes)")
    try:
        return safe_load(src, edm=True)
    except UnsafePickleError as e:
        raise TeacherImportError(
            f"{src}: refused: the pickle calls {e.module}.{e.name}; slimstep reads EDM's persistence "
            "objects inertly, torch's tensors and plain containers, and never runs code from a "
            "file") from None
    except Exception as e:  # a truncated or corrupt pickle
        raise TeacherImportError(f"{src}: unreadable pickle ({type(e).__name__}: {e})") from None


#: EDM's sampler's σ range (generate.py), intersected with the network's own
EDM_SIGMA_RANGE = (0.002, 80.0)
_EDM_COEFFICIENTS = {
    "edm": "c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd/sqrt(sigma^2+sd^2), "
           "c_in = 1/sqrt(sigma^2+sd^2), c_noise = ln(sigma)/4 (sd = sigma_data)",
    "vp": "c_skip = 1, c_out = -sigma, c_in = 1/sqrt(sigma^2+1), "
          "c_noise = (M-1) (sqrt(beta_min^2 + 2 beta_d ln(1+sigma^2)) - beta_min)/beta_d",
    "ve": "c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma/2)",
}


def _edm_sigma_range(state: dict, opts: dict, where: str):
    """``((network σ_min, σ_max), clamp low, clamp high)``: EDM's sampler's range within the
    network's own, or ``sigma_min=`` / ``sigma_max=`` (inside the network's)."""
    net = (edm_layout.number(state, "sigma_min", 0.0, where),
           edm_layout.number(state, "sigma_max", math.inf, where))
    lo = _typed(opts, "sigma_min", float, max(EDM_SIGMA_RANGE[0], net[0]), where)
    hi = _typed(opts, "sigma_max", float, min(EDM_SIGMA_RANGE[1], net[1]), where)
    if not net[0] <= lo < hi <= net[1] or lo <= 0:
        raise TeacherImportError(f"{where}: need 0 < sigma_min < sigma_max within the network's "
                                 f"range [{net[0]:g}, {net[1]:g}], got {lo:g}, {hi:g}")
    return net, lo, hi


def _plan_edm(src: Path, opts: dict) -> tuple[dict, dict, dict, dict]:
    """(net spec, EDM-named tensors, renames (none), import record) for an EDM snapshot."""
    where = str(src)
    if "num_heads" in opts:
        raise TeacherImportError(f"{where}: num_heads= is for DiT layouts; an EDM network's "
                                 "attention is read off the file")
    rec, container = edm_layout.network(_read_edm(src), opts.get("container"), where)
    precond, model, model_type = edm_layout.check_classes(rec, where)
    edm_layout.check_fixed(model, model_type, where)
    sd = edm_layout.state_dict(rec, where)
    arch = edm_layout.infer_architecture(sd, model_type, where)
    agreed = edm_layout.check_init_kwargs(arch, model.state.get("_init_kwargs"), model_type, where)
    st = rec.state
    c, res, classes = arch.pop("in_channels"), arch.pop("img_resolution"), arch.pop("label_dim")
    for attr, have in (("img_channels", c), ("img_resolution", res), ("label_dim", classes)):
        if attr in st and st[attr] != have:
            raise TeacherImportError(f"{where}: the network says {attr}={st[attr]!r}, its tensors {have}")
    net_range, lo, hi = _edm_sigma_range(st, opts, where)
    params = edm_layout.precond_params(precond, st, where)
    # dropout only acts in training; GDD's official code fine-tunes EDM's networks with 0
    dropout = _typed(opts, "dropout", float, 0.0, where)
    if not 0 <= dropout < 1:
        raise TeacherImportError(f"{where}: dropout must be in [0, 1), got {dropout:g}")
    spec = {"name": "edm_unet", "in_shape": [int(c), int(res), int(res)], "num_classes": int(classes),
            "precond": precond, "sigma_min": lo, "sigma_max": hi, **params, "model_type": model_type,
            **arch, "dropout": dropout}
    record = {
        "format": "edm", "source": str(src.resolve()), "sha256": file_digest(src),
        "container": container, "tensors": edm_layout.count_tensors(rec), "renamed": {},
        "classes": {"precond": rec.class_name, "model": model.class_name},
        "module_source_sha256": rec.source_sha256,  # the embedded networks.py, never executed
        "architecture": "read off the tensor names and shapes" + (
            "; the pickle's recorded init_kwargs agree" if agreed else " (no init_kwargs recorded)"),
        "init_kwargs": edm_layout.plain(st.get("_init_kwargs")),
        "dropout_in_file": edm_layout.dropout(model, where),
        "adapter": {
            "name": "edm_denoiser_to_velocity", "precond": precond, **params,
            "sigma_min": lo, "sigma_max": hi, "network_sigma_range": [edm_layout.plain(v) for v in net_range],
            "t_min": 1 / (1 + hi), "t_max": 1 / (1 + lo),
            "formula": "t clamped to [1/(1+sigma_max), 1/(1+sigma_min)]; sigma = (1-t)/t; "
                       "v = (D(x_t/t; sigma, y) - x_t)/(1-t) with D(x; sigma) = c_skip x + c_out "
                       f"F(c_in x; c_noise, onehot(y)), {_EDM_COEFFICIENTS[precond]}; "
                       "the null class is the zero label vector"}}
    return spec, sd, {}, {"record": record, "generator": _sampling(opts, where)}


_EDM2_FORMULA = ("t clamped to [1/(1+sigma_max), 1/(1+sigma_min)]; sigma = (1-t)/t; "
                 "v = (D(x_t/t; sigma, y) - x_t)/(1-t) with D(x; sigma) = c_skip x + c_out "
                 "F(c_in x; c_noise, onehot(y)), c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd/"
                 "sqrt(sigma^2+sd^2), c_in = 1/sqrt(sigma^2+sd^2), c_noise = ln(sigma)/4 (sd = "
                 "sigma_data); F is EDM2's magnitude-preserving UNet; the null class is the zero "
                 "label vector")


def _plan_edm2(src: Path, opts: dict) -> tuple[dict, dict, dict, dict]:
    """(net spec, EDM2-named tensors, renames (none), import record) for an EDM2 snapshot."""
    where = str(src)
    obj = _read_edm(src)
    rec, container = edm_layout.network(obj, opts.get("container"), where)
    unet = edm2_layout.check_classes(rec, where)
    sd = edm_layout.state_dict(rec, where)
    arch = edm2_layout.infer_architecture(sd, unet, where)
    agreed = edm2_layout.check_init_kwargs(arch, unet.state.get("_init_kwargs"), where)
    st = rec.state
    c, res, classes = arch.pop("img_channels"), arch.pop("img_resolution"), arch.pop("label_dim")
    for attr, have in (("img_channels", c), ("img_resolution", res), ("label_dim", classes)):
        if attr in st and st[attr] != have:
            raise TeacherImportError(f"{where}: the network says {attr}={st[attr]!r}, its tensors {have}")
    if "logvar_fourier.freqs" not in sd or "logvar_linear.weight" not in sd:
        raise TeacherImportError(f"{where}: no logvar_fourier / logvar_linear: not EDM2's Precond")
    # Precond has no sigma range of its own: EDM2's sampler's [0.002, 80] (generate_images.py)
    _, lo, hi = _edm_sigma_range({}, opts, where)
    sigma_data = edm_layout.number(st, "sigma_data", 0.5, where)
    if sigma_data <= 0:
        raise TeacherImportError(f"{where}: the network's sigma_data is {sigma_data:g}, not positive")
    dropout = _typed(opts, "dropout", float, 0.0, where)  # training only; GDD fine-tunes with 0
    if not 0 <= dropout < 1:
        raise TeacherImportError(f"{where}: dropout must be in [0, 1), got {dropout:g}")
    in_file = arch.pop("dropout")
    spec = {"name": "edm2_unet", "in_shape": [int(c), int(res), int(res)], "num_classes": int(classes),
            "sigma_min": lo, "sigma_max": hi, "sigma_data": sigma_data, **arch, "dropout": dropout}
    source = rec.source_sha256
    record = {
        "format": "edm2", "source": str(src.resolve()), "sha256": file_digest(src),
        "container": container, "tensors": edm_layout.count_tensors(rec), "renamed": {},
        "classes": {"precond": rec.class_name, "model": unet.class_name},
        "module_source_sha256": source,  # the embedded networks_edm2.py, never executed
        "module_source": ("the published networks_edm2.py (NVlabs/edm2)"
                          if source == edm2_layout.OFFICIAL_SOURCE_SHA256 else
                          "not the published networks_edm2.py (its architecture was checked "
                          "attribute by attribute)" if source else "none embedded"),
        "architecture": "read off the tensor names, shapes and block attributes" + (
            "; the pickle's recorded init_kwargs agree" if agreed else " (no init_kwargs recorded)"),
        "init_kwargs": edm_layout.plain(st.get("_init_kwargs")),
        "use_fp16_in_file": edm_layout.plain(st.get("use_fp16")),  # slimstep runs float32 on the CPU
        "dtype_in_file": str(next(iter(sd.values())).dtype).replace("torch.", ""),
        "dropout_in_file": in_file,
        "logvar": "logvar_fourier / logvar_linear (EDM2's uncertainty u(sigma)) kept as buffers; "
                  "the denoiser does not read them",
        "encoder": edm2_layout.encoder_record(obj),
        "adapter": {
            "name": "edm2_denoiser_to_velocity", "precond": "edm2", "sigma_data": sigma_data,
            "sigma_min": lo, "sigma_max": hi, "network_sigma_range": [0.0, "inf"],
            "t_min": 1 / (1 + hi), "t_max": 1 / (1 + lo), "formula": _EDM2_FORMULA}}
    return spec, sd, {}, {"record": record, "generator": _sampling(opts, where)}


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
                   options: dict | None = None, scheduler: str | Path | None = None,
                   overwrite: bool = False) -> Path:
    """Convert ``src`` (format ``fmt``) into a slimstep checkpoint directory ``out``.
    Every check runs first; on any error nothing is written. ``scheduler`` (diffusers
    only) names the scheduler folder or config of a bare model folder. An existing
    checkpoint in ``out`` is replaced only with ``overwrite``."""
    if fmt not in FORMATS:
        raise TeacherImportError(f"unknown format '{fmt}' (known: {', '.join(FORMATS)})")
    src, out = Path(src), Path(out)
    if fmt == "diffusers" and not src.is_dir():
        raise TeacherImportError(f"{src}: no such folder (a diffusers pipeline or model folder)")
    if fmt != "diffusers" and not src.is_file():
        raise TeacherImportError(f"{src}: no such file")
    if scheduler is not None and fmt != "diffusers":
        raise TeacherImportError("--scheduler is for --format diffusers")
    with output_path(out, overwrite, folder=True):  # lock, refuse an existing one, clean old temps
        return _import(fmt, src, out, data, dict(options or {}), scheduler)


def _import(fmt: str, src: Path, out: Path, data: str | None, opts: dict, scheduler) -> Path:
    if fmt == "diffusers":  # the diffusers model is wrapped: its tensors fill net.model, names kept
        variant = _typed(opts, "variant", str, None, str(src))
        spec, sd, record = diffusers_folder.plan(src, scheduler, variant)
        names, target, plan = {}, "model", {"record": record, "generator": _sampling(opts, str(src))}
    else:
        plan_of = {"edm": _plan_edm, "edm2": _plan_edm2}.get(fmt)
        spec, sd, names, plan = plan_of(src, opts) if plan_of else _plan_dit_family(fmt, src, opts)
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
    """Assemble the checkpoint in a temporary sibling folder, read it back with the reader
    every command uses (a value no reader accepts is refused here, not at first use), and
    rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700
        ckpt.save_model(tmp, net, config)
        try:
            ckpt.read_model_config(tmp)
        except ckpt.CheckpointError as e:
            raise TeacherImportError(str(e).replace(str(tmp), str(out))) from None
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["FORMATS", "TeacherImportError", "import_teacher", "parse_options"]
