"""Imported teachers at paper scale on a GPU: step time and peak memory (issue 12).

    python benchmarks/gpu_import.py [--out DIR] [--steps 50] [--tiny]

Builds, with random weights in the official layouts (nothing is downloaded):

* a SiT-XL/2-sized state dict (hidden 1152, depth 28, 16 heads, patch 2, 4x32x32 SD-VAE
  latents, 1000 classes, learn-sigma: 675M parameters), imported with
  ``slimstep import --format sit``;
* a DDPM-CIFAR-10-sized diffusers ``UNet2DModel`` (35.7M parameters, the
  ``google/ddpm-cifar10-32`` configuration) saved with ``save_pretrained`` beside its
  ``DDPMScheduler``, imported with ``slimstep import --format diffusers``;

* EDM's CIFAR-10 DDPM++ (``EDMPrecond`` around a ``SongUNet``, 32x32, 128 channels, mult
  2-2-2, 4 blocks, attention at 16, 10 classes: 55.7M parameters, train.py's ``--arch=ddpmpp``)
  as an EDM network snapshot in EDM's persistence structure, written by
  ``slimstep.importers.synthetic.edm_snapshot`` (the builder tests/test_import_edm.py checks),
  imported with ``slimstep import --format edm``;

then trains ``--steps`` steps of ``gdd-i`` from each, and of ``flowmap`` from the SiT (a
VP-adapted UNet or an EDM U-Net is refused by flowmap: it extends a ``dit``), in bf16, with and without
``torch.compile``, then (issue 24) ``--steps`` eager steps of each paper preset as shipped:
``imagenet256/meanflow`` (the guided target, DiT-XL/2 on the latents), ``cifar10/meanflow``
(the v1 sampler), ``cifar10/gdd`` with ``gdd`` and ``gdd-i`` from the EDM snapshot
(``precond: official``, the separate lazy R1; the teacher-feature discriminator stands in
for the projected one, whose weights are a download), and prints one JSON line per run
(step time of the last half of the steps, from metrics.jsonl, and
``torch.cuda.max_memory_allocated``) and a Markdown table for BENCHMARKS.md. ``--tiny``
shrinks every model to a CPU check of the script itself.
Sized to finish in under 8 minutes on one H100/H200-class GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from slimstep.cli import main as slimstep
from slimstep.importers.synthetic import EDM_CIFAR_DDPMPP, edm_snapshot
from slimstep.nets import build_net

SIT_XL2 = {"hidden_size": 1152, "depth": 28, "num_heads": 16, "patch_size": 2}
SIT_TINY = {"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": 2}
DDPM_CIFAR = {"block_out_channels": (128, 256, 256, 256), "layers_per_block": 2,
              "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
              "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")}
DDPM_TINY = {"block_out_channels": (16, 32), "layers_per_block": 1,
             "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
             "up_block_types": ("AttnUpBlock2D", "UpBlock2D"), "norm_num_groups": 8}


EDM_TINY = {**EDM_CIFAR_DDPMPP, "img_resolution": 8, "model_channels": 16, "channel_mult": [1, 2],
            "num_blocks": 1, "attn_resolutions": [4]}


def sit_state_dict(size: dict, side: int, classes: int) -> dict:
    """A random SiT-layout state dict: slimstep's ``dit`` keeps DiT's tensor names, so its
    own state dict with learn-sigma on is the official layout (docs/teachers.md)."""
    torch.manual_seed(0)
    net = build_net({"name": "dit", "in_shape": [4, side, side], "num_classes": classes,
                     "learn_sigma": True, "time_scale": 1.0, **size})
    return {k: v.clone() for k, v in net.state_dict().items()}


def latents(path: Path, side: int, classes: int, n: int = 512) -> str:
    """Stand-in SD-VAE latents (std ~1, 4 channels) with labels: only GDD-I reads them."""
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.standard_normal((n, 4, side, side)).astype(np.float32),
             y=rng.integers(0, classes, n))
    return f"latents:{path}"


def cifar_like(path: Path, n: int = 512, side: int = 32, classes: int = 0) -> str:
    """Stand-in uint8 NHWC images (with ``classes`` labels when > 0)."""
    rng = np.random.default_rng(1)
    arrays = {"x": rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)}
    if classes:
        arrays["y"] = rng.integers(0, classes, n)
    np.savez(path, **arrays)
    return f"npz:{path}"


def ddpm_pipeline(folder: Path, size: dict) -> None:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, **size)
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
         "scheduler": ["diffusers", "DDPMScheduler"]}))


def train(name: str, method: str, config: str, teacher: Path | None, data: str | None, out: Path,
          steps: int, batch: int, device: str, compile_: bool, extra: tuple = ()) -> dict:
    run = out / f"{name}-{method}-{'compile' if compile_ else 'eager'}"
    shutil.rmtree(run, ignore_errors=True)
    over = [f"train.steps={steps}", f"train.batch_size={batch}", "train.log_every=5",
            f"train.ckpt_every={steps}", f"train.device={device}", f"train.compile={str(compile_).lower()}",
            "train.precision=bf16" if device != "cpu" else "train.precision=fp32"]
    if data:
        over.append(f"data={data}")
    over += list(extra)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    tic = time.perf_counter()
    rc = slimstep(["distill", "--method", method, "--config", config,
                   *(["--teacher", str(teacher)] if teacher is not None else []),
                   "--out", str(run), "--quiet", *over])
    wall = time.perf_counter() - tic
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] if rc == 0 else []
    half = rows[len(rows) // 2:]
    ips = sum(r["images_per_s"] for r in half) / len(half) if half else float("nan")
    res = {"teacher": name, "method": method, "compile": compile_, "rc": rc, "steps": steps,
           "batch": batch, "s_per_step": batch / ips if half else None, "wall_s": round(wall, 1),
           "peak_mem_gib": (torch.cuda.max_memory_allocated() / 2**30) if torch.cuda.is_available() else None}
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/gpu-import")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--tiny", action="store_true", help="tiny models: a CPU check of the script")
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    side, classes = (8, 10) if a.tiny else (32, 1000)

    sit_pt = out / "SiT-XL-2-random.pt"
    torch.save(sit_state_dict(SIT_TINY if a.tiny else SIT_XL2, side, classes), sit_pt)
    sit = out / "teacher-sit"
    shutil.rmtree(sit, ignore_errors=True)
    lat = latents(out / "latents.npz", side, classes)
    assert slimstep(["import", "--format", "sit", str(sit_pt), "--out", str(sit), "--data", lat]
                    + (["num_heads=2"] if a.tiny else [])) == 0
    ddpm_src, ddpm = out / "ddpm-cifar10-random", out / "teacher-ddpm"
    shutil.rmtree(ddpm_src, ignore_errors=True)
    shutil.rmtree(ddpm, ignore_errors=True)
    ddpm_pipeline(ddpm_src, DDPM_TINY if a.tiny else DDPM_CIFAR)
    assert slimstep(["import", "--format", "diffusers", str(ddpm_src), "--out", str(ddpm),
                     "--data", cifar_like(out / "cifar-like.npz")]) == 0

    edm_src, edm = out / "edm-cifar10-ddpmpp-random.pkl", out / "teacher-edm"
    shutil.rmtree(edm, ignore_errors=True)
    edm_size = EDM_TINY if a.tiny else EDM_CIFAR_DDPMPP
    edm_snapshot(edm_src, label_dim=10, std=0.05, **edm_size)  # small weights: a tame random teacher
    edm_side = edm_size["img_resolution"]
    assert slimstep(["import", "--format", "edm", str(edm_src), "--out", str(edm), "--data",
                     cifar_like(out / f"cifar-like-{edm_side}.npz", side=edm_side, classes=10)]) == 0

    sit_batch, unet_batch = (8, 8) if a.tiny else (32, 64)
    results = []
    for compile_ in (False, True):
        results.append(train("sit-xl2", "flowmap", "imagenet256/flowmap", sit, lat, out, a.steps,
                             sit_batch, device, compile_))
        results.append(train("sit-xl2", "gdd-i", "digits/gdd-i", sit, lat, out, a.steps, sit_batch,
                             device, compile_))
        results.append(train("ddpm-cifar10", "gdd-i", "digits/gdd-i", ddpm, None, out, a.steps,
                             unet_batch, device, compile_))
        results.append(train("edm-cifar10-ddpmpp", "gdd-i", "digits/gdd-i", edm, None, out, a.steps,
                             unet_batch, device, compile_))
    # issue 24: one short check of each paper preset as shipped (eager). The GDD preset's
    # projected discriminator needs a local weights file: the teacher-feature one stands in.
    tiny_dit = ("net.hidden_size=32", "net.depth=2", "net.num_heads=2") if a.tiny else ()
    results.append(train("preset", "meanflow", "imagenet256/meanflow", None, lat, out, a.steps,
                         sit_batch, device, False, tiny_dit))  # guided target on
    results.append(train("preset-cifar", "meanflow", "cifar10/meanflow", None,
                         cifar_like(out / "cifar-like-uncond.npz", side=side), out, a.steps,
                         unet_batch, device, False, tiny_dit))  # the v1 sampler
    results.append(train("preset-edm", "gdd", "cifar10/gdd", edm, None, out, a.steps, unet_batch,
                         device, False, ("method.disc=teacher",)))  # precond official, separate R1
    results.append(train("preset-edm", "gdd-i", "cifar10/gdd", edm, None, out, a.steps, unet_batch,
                         device, False, ("method.disc=teacher", "method.name=gdd-i")))
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"\n{gpu}, torch {torch.__version__}, {a.steps} steps, bf16 (fp32 on CPU)\n")
    print("| teacher | method | torch.compile | batch | s / step | peak GiB | exit |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        s = f"{r['s_per_step']:.3f}" if r["s_per_step"] else "-"
        m = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        print(f"| {r['teacher']} | {r['method']} | {r['compile']} | {r['batch']} | {s} | {m} | {r['rc']} |")
    sys.exit(0 if all(r["rc"] == 0 for r in results) else 1)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
