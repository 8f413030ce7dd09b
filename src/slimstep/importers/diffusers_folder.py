"""The diffusers folder layout: a pipeline or model folder -> a ``diffusers_vp`` network plan.

What is read, and nothing else (no pipeline code, no ``from_pretrained``, no remote code):

==================================  ===============================================================
``SRC/model_index.json``            a pipeline (``DDPMPipeline``, ``DiTPipeline``, ...): its ``unet`` or
                                    ``transformer`` entry names the model class, ``scheduler`` the
                                    scheduler; each entry must be ``["diffusers", CLASS]``
``SRC/{unet,transformer}/``         the model folder: ``config.json`` + ``diffusion_pytorch_model``
                                    ``[.VARIANT].safetensors`` (or ``.bin``, read with
                                    ``torch.load(weights_only=True)``)
``SRC/config.json``                 a bare model folder instead (then ``--scheduler`` is needed)
``SRC/scheduler/``                  ``scheduler_config.json`` (or ``--scheduler DIR|FILE``, which wins)
==================================  ===============================================================

The model's ``_class_name`` must be one of :data:`slimstep.nets.diffusers_vp.SUPPORTED_MODELS`;
the scheduler's one of :data:`VP_SCHEDULERS`, the discrete VP schedulers whose ᾱ table is
the one formula of :func:`slimstep.nets.vp.diffusers_alphas_cumprod` (tests/test_import_diffusers.py
checks each against diffusers' own ``alphas_cumprod``). Scheduler fields:

* the table and the parametrisation — ``num_train_timesteps``, ``beta_schedule``,
  ``beta_start``, ``beta_end``, ``trained_betas``, ``prediction_type`` — become the network's
  ``schedule`` and ``prediction`` (absent ones take the scheduler class's own defaults);
* fields that would change what the network was trained on, and which the adapter does not
  model, are refused (:data:`REFUSED`);
* every other field only steers diffusers' samplers (``clip_sample``, ``thresholding``,
  ``timestep_spacing``, ``variance_type``...): recorded under ``sampling_only``, not used —
  slimstep integrates the probability-flow ODE of the velocity.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from slimstep.importers.readers import TeacherImportError, file_digest, read_state_dict
from slimstep.nets.diffusers_vp import SUPPORTED_MODELS, describe_model, require_diffusers
from slimstep.nets.vp import BETA_SCHEDULES, PREDICTIONS, VPAdapter, diffusers_alphas_cumprod

#: diffusers' discrete VP schedulers whose ᾱ is computed by the shared formula
VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
                 "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler",
                 "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
                 "UniPCMultistepScheduler", "DEISMultistepScheduler")
#: scheduler fields that become the network's table and parametrisation
TABLE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "trained_betas",
              "prediction_type")
#: field -> (the value that is fine, why any other is refused)
REFUSED = {
    "rescale_betas_zero_snr": (False, "zero terminal SNR makes the last ᾱ 0 (σ infinite at the "
                                      "noise end); the adapter needs a finite σ range"),
    "use_flow_sigmas": (False, "flow-matching sigmas: not a VP model"),
    "timestep_type": ("discrete", "continuous timesteps feed the network 0.25·log σ, not a "
                                  "discrete timestep"),
}
WEIGHTS_STEM = "diffusion_pytorch_model"
COMPONENTS = ("unet", "transformer")


def _read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TeacherImportError(f"{path}: unreadable {what} ({getattr(e, 'msg', e)})") from None
    if not isinstance(obj, dict):
        raise TeacherImportError(f"{path}: the {what} must be a JSON object")
    return obj


def _entry(index: dict, key: str, path: Path) -> str:
    """The class of a model_index.json entry ``["diffusers", CLASS]``."""
    e = index[key]
    if not (isinstance(e, list) and len(e) == 2 and all(isinstance(s, str) for s in e)):
        raise TeacherImportError(f"{path}: entry '{key}' is {e!r}, not [library, class]")
    if e[0] != "diffusers":
        raise TeacherImportError(f"{path}: '{key}' comes from '{e[0]}', not diffusers: slimstep reads "
                                 "diffusers' own classes and never runs a pipeline's code")
    return e[1]


def locate(src: Path, scheduler: str | Path | None) -> tuple[Path, Path, dict]:
    """``(model folder, scheduler_config.json, pipeline record)`` of a pipeline or bare model
    folder, every refusal one line."""
    record: dict = {"pipeline": None}
    index_path = src / "model_index.json"
    if index_path.is_file():
        index = _read_json(index_path, "pipeline index")
        record["pipeline"] = index.get("_class_name")
        found = [k for k in COMPONENTS if index.get(k) is not None]
        if len(found) != 1:
            names = ", ".join(k for k in index if not k.startswith("_")) or "none"
            raise TeacherImportError(f"{index_path}: needs one 'unet' or 'transformer' component "
                                     f"(has {names})")
        model_dir = src / found[0]
        record["component"] = found[0]
        _entry(index, found[0], index_path)
        others = [k for k in index if not k.startswith("_") and k not in (found[0], "scheduler")
                  and index[k] is not None]
        record["not_imported"] = others  # a DiT pipeline's vae: the teacher works on latents
        if "vae" in others and (src / "vae" / "config.json").is_file():
            record["vae_scaling_factor"] = _read_json(src / "vae" / "config.json", "vae config").get(
                "scaling_factor")
        if scheduler is None:
            if index.get("scheduler") is None:
                raise TeacherImportError(f"{index_path}: no scheduler component: pass --scheduler "
                                         "DIR|scheduler_config.json")
            _entry(index, "scheduler", index_path)
            scheduler = src / "scheduler"
    elif (src / "config.json").is_file():
        model_dir = src
        if scheduler is None:
            raise TeacherImportError(f"{src}: a bare model folder has no scheduler: pass --scheduler "
                                     "DIR|scheduler_config.json (the schedule and prediction type "
                                     "it was trained with)")
    else:
        raise TeacherImportError(f"{src}: neither a diffusers pipeline folder (model_index.json) nor a "
                                 "model folder (config.json)")
    sched = Path(scheduler)
    sched = sched / "scheduler_config.json" if sched.is_dir() else sched
    if not sched.is_file():
        raise TeacherImportError(f"{sched}: no such scheduler config")
    return model_dir, sched, record


def weights_file(model_dir: Path, variant: str | None) -> Path:
    """``diffusion_pytorch_model[.VARIANT].safetensors``, else ``.bin``."""
    stem = WEIGHTS_STEM + (f".{variant}" if variant else "")
    for name in (f"{stem}.safetensors", f"{stem}.bin"):
        if (model_dir / name).is_file():
            return model_dir / name
    if any(model_dir.glob(f"{stem}*.index.json")):
        raise TeacherImportError(f"{model_dir}: sharded weights ({stem}.*.index.json) are not "
                                 "supported; save the model unsharded")
    have = ", ".join(sorted(p.name for p in model_dir.glob(f"{WEIGHTS_STEM}*"))) or "none"
    raise TeacherImportError(f"{model_dir}: no {stem}.safetensors or .bin (weights files: {have})"
                             + ("; pass variant=NAME for diffusion_pytorch_model.NAME.*" if have != "none"
                                and not variant else ""))


def _number(v, key: str, where: Path) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TeacherImportError(f"{where}: {key}={v!r} must be a number")
    return float(v)


def read_scheduler(path: Path) -> tuple[dict, str, dict]:
    """``(schedule kwargs, prediction type, record)`` of a VP scheduler config."""
    cfg = _read_json(path, "scheduler config")
    cls = cfg.get("_class_name")
    if cls not in VP_SCHEDULERS:
        raise TeacherImportError(f"{path}: scheduler {cls!r} is not supported: --format diffusers "
                                 f"reads the discrete VP schedulers ({', '.join(VP_SCHEDULERS)})")
    # absent fields: the scheduler class's own defaults, as diffusers would construct it
    defaults = {k: p.default for k, p in
                inspect.signature(getattr(require_diffusers(), cls).__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    full = {**defaults, **cfg}
    for key, (fine, why) in REFUSED.items():
        if key in full and full[key] != fine:
            raise TeacherImportError(f"{path}: {key}={full[key]!r} is not supported ({why})")
    prediction = full.get("prediction_type")
    if prediction not in PREDICTIONS:
        raise TeacherImportError(f"{path}: prediction_type {prediction!r} is not supported "
                                 f"({', '.join(PREDICTIONS)})")
    n = full.get("num_train_timesteps")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise TeacherImportError(f"{path}: num_train_timesteps={n!r} must be an integer >= 2")
    betas = full.get("trained_betas")
    schedule: dict = {"num_train_timesteps": n, "beta_schedule": full.get("beta_schedule"),
                      "beta_start": _number(full.get("beta_start"), "beta_start", path),
                      "beta_end": _number(full.get("beta_end"), "beta_end", path),
                      "trained_betas": None}
    if betas is not None:
        if not isinstance(betas, list) or not all(0 < _number(b, "trained_betas", path) < 1 for b in betas):
            raise TeacherImportError(f"{path}: trained_betas must be a list of numbers in (0, 1)")
        schedule["trained_betas"] = [float(b) for b in betas]
    elif schedule["beta_schedule"] not in BETA_SCHEDULES:
        raise TeacherImportError(f"{path}: beta_schedule {schedule['beta_schedule']!r} is not supported "
                                 f"({', '.join(BETA_SCHEDULES)}, or trained_betas)")
    elif schedule["beta_schedule"] != "squaredcos_cap_v2" and not (
            0 < schedule["beta_start"] < schedule["beta_end"] < 1):
        raise TeacherImportError(f"{path}: need 0 < beta_start < beta_end < 1")
    try:
        VPAdapter(diffusers_alphas_cumprod(**schedule), prediction)
    except ValueError as e:  # a trained_betas count or a table that is not a VP schedule
        raise TeacherImportError(f"{path}: {e}") from None
    used = set(TABLE_KEYS) | set(REFUSED) | {"_class_name", "_diffusers_version"}
    record = {"class": cls, "config": str(path.resolve()),
              "sampling_only": {k: v for k, v in sorted(cfg.items()) if k not in used}}
    return schedule, prediction, record


def plan(src: Path, scheduler: str | Path | None, variant: str | None
         ) -> tuple[dict, dict, dict]:
    """``(net spec, tensors under the diffusers model's own names, import record)``."""
    model_dir, sched_path, record = locate(src, scheduler)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise TeacherImportError(f"{model_dir}: no config.json")
    config = _read_json(config_path, "model config")
    cls = config.get("_class_name")
    if cls not in SUPPORTED_MODELS:
        raise TeacherImportError(f"{config_path}: a {cls!r} is not supported: --format diffusers imports "
                                 f"{' and '.join(SUPPORTED_MODELS)}")
    try:
        shape = describe_model(cls, config)
    except ValueError as e:
        raise TeacherImportError(f"{config_path}: {e}") from None
    schedule, prediction, sched_record = read_scheduler(sched_path)
    weights = weights_file(model_dir, variant)
    sd, _ = read_state_dict(weights)
    spec = {"name": "diffusers_vp", "model_class": cls, "model_config": config,
            "prediction": prediction, "schedule": schedule,
            "in_shape": shape["in_shape"], "num_classes": shape["num_classes"]}
    adapter = VPAdapter(diffusers_alphas_cumprod(**schedule), prediction).describe()
    if shape["learn_sigma"]:
        adapter["formula"] += "; learned-variance channels dropped"
    record = {"format": "diffusers", "source": str(src.resolve()), **record, "model_class": cls,
              "model_config": str(config_path.resolve()), "weights": str(weights.resolve()),
              "sha256": file_digest(weights), "container": None, "tensors": len(sd),
              "names": "model.<diffusers name> (the wrapped diffusers model's own)",
              "scheduler": sched_record,
              "adapter": {**adapter, "schedule": {  # trained_betas: the list is in net.schedule
                  **{k: v for k, v in schedule.items() if k != "trained_betas"},
                  "trained_betas": schedule["trained_betas"] is not None}}}
    return spec, sd, record
