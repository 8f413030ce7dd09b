"""``vae:VAE_DIR:DATA``: an image data set seen through a local diffusers VAE, as latents.

``VAE_DIR`` is a folder written by diffusers' ``AutoencoderKL.save_pretrained``
(``config.json`` + ``diffusion_pytorch_model.safetensors``), loaded with
``from_pretrained(VAE_DIR, local_files_only=True)``: a path that is not an existing
folder (a hub id such as ``stabilityai/sd-vae-ft-mse``) is refused, nothing is ever
downloaded, and a folder holding only pickled ``.bin`` weights is refused (slimstep
never un-pickles a user's file). ``DATA`` is an image spec (``folder:``, ``npz:``,
``cifar10:``) and the image options (``resolution``, ``center_crop``) apply to it, e.g.
``vae:/models/sd-vae:folder:/data/faces`` with ``resolution: 256``. The VAE path may not
contain ``:`` (the first one ends it).

**Encoding, once.** Every training image is encoded to ``latent_dist.mean`` (the
posterior mean: deterministic, where DiT's scripts draw a sample) times the VAE's
``scaling_factor``, in shards ``shard-NNNNN.safetensors`` (``latents``, and ``labels``
for class folders) under ``$SLIMSTEP_CACHE/latents/<key>`` (default
``~/.cache/slimstep``), ``key`` a digest of the VAE's files, the data spec and its
options. ``manifest.json`` records the VAE's sha256, its folder, the data spec and
options, the image count, the latent shape and the shards done. A shard is written
atomically and the manifest after it, so an interrupted encode resumes at the first
missing shard; a manifest that no longer matches the data (another image count) is one
error line naming the folder to delete.

**Training and scoring.** Methods train on the latents (``info.kind`` ``latent``;
``flip`` flips the latent grid, an approximation of flipping the image). ``slimstep
sample`` writes the decoded images (``z / scaling_factor`` through the decoder, clamped
to [-1, 1]) as ``samples`` of the image data set, and the latents beside them;
:func:`slimstep.eval.evaluate` decodes latent samples the same way and scores the
images with the image protocol of ``DATA`` (SWD, FID with weights).

Under ``torchrun`` every process would encode; encode first in one (``slimstep data
vae:... --out x.npz`` does it) and train from the finished cache.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from slimstep.data.base import IMAGE_KINDS, IMAGE_OPTIONS, DataError, DataInfo
from slimstep.data.images import ImageData, open_image_data
from slimstep.files import cache_dir, tensor_bytes, write_bytes, write_json

FORMAT = "slimstep-latents/1"
WEIGHTS = "diffusion_pytorch_model.safetensors"
SHARD = 1024  # images per shard
BATCH = 32  # images per VAE call


def parse(arg: str) -> tuple[Path, str]:
    """``VAE_DIR:DATA`` -> (the VAE folder, the image spec), both checked."""
    vae, sep, data = arg.partition(":")
    if not sep or not vae or not data:
        raise DataError(f"data spec 'vae:{arg}' must be vae:VAE_DIR:DATA, e.g. vae:/models/sd-vae:folder:/data/x")
    p = Path(vae).expanduser()
    if not p.is_dir():
        raise DataError(f"vae: {vae} is not an existing folder: slimstep loads a VAE from a local diffusers "
                        "folder (save_pretrained) only, never from the hub")
    if not (p / "config.json").is_file() or not (p / WEIGHTS).is_file():
        raise DataError(f"vae: {vae} is not a diffusers AutoencoderKL folder with safetensors weights "
                        f"(needs config.json and {WEIGHTS}; pickled .bin weights are never read)")
    if data.partition(":")[0] not in IMAGE_KINDS:
        raise DataError(f"vae: the data behind the VAE must be images ({', '.join(IMAGE_KINDS)}), not '{data}'")
    return p.resolve(), data


def _file_sha(path: Path) -> str:
    st = path.stat()
    return _sha_cached(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha_cached(path: str, size: int, mtime: int) -> str:  # size and mtime key the cache
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def vae_sha(folder: Path) -> str:
    """One digest of the VAE: its config and its weights."""
    return hashlib.sha256(f"{_file_sha(folder / 'config.json')}{_file_sha(folder / WEIGHTS)}".encode()).hexdigest()


@functools.lru_cache(maxsize=2)
def load_vae(folder: str, sha: str):
    """The VAE in ``folder`` (``sha`` keys the cache), frozen, in eval mode."""
    try:
        from diffusers import AutoencoderKL
        from diffusers.utils import logging as dlog
    except ModuleNotFoundError:
        raise DataError("vae: data sets need diffusers: pip install 'slimstep[diffusers]'") from None
    level = dlog.get_verbosity()
    dlog.set_verbosity_error()  # its advice to install accelerate is not ours to print
    try:
        with _offline():
            vae = AutoencoderKL.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"vae: cannot load {folder} as an AutoencoderKL: {first}") from None
    finally:
        dlog.set_verbosity(level)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return vae.to(dev).eval().requires_grad_(False)


@contextlib.contextmanager
def _offline():
    """The hub client may not reach the network, whatever the environment says."""
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "DIFFUSERS_OFFLINE")}
    os.environ.update({k: "1" for k in old})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cache_root() -> Path:
    return cache_dir("latents")


def _read_manifest(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        man = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable latents manifest ({e}); delete {path.parent} to encode again") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} manifest; delete {path.parent} to encode again")
    return man


def encode_dataset(vae_dir: Path, data: str, options: dict, progress: bool = False) -> tuple[Path, dict]:
    """Encode the training images of ``data`` (opened with ``options``) through the VAE
    into the cache, resuming a partial encode. Returns (cache folder, manifest)."""
    sha = vae_sha(vae_dir)
    key = hashlib.sha256(json.dumps([sha, data, options], sort_keys=True).encode()).hexdigest()[:16]
    out = cache_root() / key
    kind, _, path = data.partition(":")  # an image spec: parse() checked its kind
    images = open_image_data(kind, path, **options)
    _check_round_trip(vae_dir, data, tuple(images.info.shape))
    n = images.split_size("train")
    want = {"format": FORMAT, "vae": str(vae_dir), "vae_sha256": sha, "data": data, "options": options, "n": n}
    man = _read_manifest(out / "manifest.json")
    if man is not None and {k: man.get(k) for k in want} != want:
        raise DataError(f"{out}: latents of {man.get('n')} images of {man.get('data')}, but {data} now holds "
                        f"{n}: the data changed since they were encoded; delete {out} to encode again")
    if man is not None and man["complete"]:
        return out, man
    vae = load_vae(str(vae_dir), sha)
    man = man or {**want, "scaling_factor": float(vae.config.scaling_factor), "shard_size": SHARD, "shards": [],
                  "complete": False, "encoding": "latent_dist.mean * scaling_factor",
                  "num_classes": images.info.num_classes, "classes": images.info.options.get("classes")}
    sf, dev, y = man["scaling_factor"], next(vae.parameters()).device, images.y
    for i in range(len(man["shards"]), -(-n // SHARD)):
        idx = torch.arange(i * SHARD, min(n, (i + 1) * SHARD))
        with torch.no_grad():
            z = torch.cat([vae.encode(images.take(idx[b : b + BATCH]).to(dev)).latent_dist.mean.float().cpu()
                           for b in range(0, len(idx), BATCH)]) * sf
        tensors = {"latents": z.contiguous()}
        if y is not None:
            tensors["labels"] = y[idx].contiguous()
        name = f"shard-{i:05d}.safetensors"
        write_bytes(out / name, tensor_bytes(tensors))
        man["shards"].append(name)
        man["shape"] = list(z.shape[1:])
        man["complete"] = len(man["shards"]) * SHARD >= n
        write_json(out / "manifest.json", man)  # after its shard: a listed shard is always whole
        if progress:
            print(f"vae: encoded {min(n, (i + 1) * SHARD)} of {n} images -> {out}")
    return out, man


def open_vae_data(arg: str, *, flip: bool = False, **image_options):
    """Open ``vae:VAE_DIR:DATA`` (see the module docstring), encoding on first use."""
    unknown = sorted(set(image_options) - set(IMAGE_OPTIONS))
    if unknown:
        raise DataError(f"vae: data options are {', '.join(IMAGE_OPTIONS)} and flip, not {unknown}")
    vae_dir, data = parse(arg)
    opts = {k: v for k, v in image_options.items() if v}
    out, man = encode_dataset(vae_dir, data, opts)
    lost = [s for s in man["shards"] if not (out / s).is_file()]
    if lost:
        raise DataError(f"{out}: shard {lost[0]} of the manifest is missing; delete {out} to encode again")
    parts = [load_file(str(out / s)) for s in man["shards"]]
    z = torch.cat([p["latents"] for p in parts])
    y = torch.cat([p["labels"] for p in parts]) if "labels" in parts[0] else None
    info = DataInfo(
        spec=f"vae:{arg}", kind="latent", shape=tuple(z.shape[1:]), num_classes=man["num_classes"],
        scaling=f"VAE latents: {man['encoding']} ({man['scaling_factor']:g})",
        options={**opts, "flip": flip, "classes": man["classes"], "vae_sha256": man["vae_sha256"],
                 "latents": str(out)},
    )
    return ImageData(z, y, info)


def _check_round_trip(vae_dir: Path, data: str, shape: tuple[int, ...]) -> None:
    """Refuse images the VAE cannot take or give back at their size, before anything is
    encoded or trained: a model trained on their latents could never be evaluated (9x9
    images decode to 8x8 or 10x10), and other channels fail inside the encoder."""
    try:
        cfg = json.loads((vae_dir / "config.json").read_text())
    except (OSError, ValueError):
        return  # load_vae names what is wrong with the folder
    c_in, blocks = cfg.get("in_channels"), cfg.get("block_out_channels")
    if len(shape) != 3:
        return
    c, h, w = shape
    if isinstance(c_in, int) and c != c_in:
        raise DataError(f"vae: {data} has {c}-channel images, the VAE {vae_dir} takes {c_in} "
                        f"(convert the images, e.g. grey to RGB)")
    if isinstance(blocks, list) and blocks:
        f = 2 ** (len(blocks) - 1)  # one 2x downsampling between consecutive blocks
        if h % f or w % f:
            raise DataError(f"vae: {data} has {h}x{w} images; the VAE {vae_dir} downsamples by {f}, "
                            f"so their latents would not decode back to {h}x{w} (set the data option "
                            f"resolution to a multiple of {f})")


def as_images(x: torch.Tensor, spec: str) -> torch.Tensor:
    """Samples of ``spec`` as pictures: a ``vae:`` data set's latents decoded, others as they are."""
    return decode(x, spec.partition(":")[2]) if spec.partition(":")[0] == "vae" else x


def decode(z: torch.Tensor, arg: str) -> torch.Tensor:
    """Latents of ``vae:VAE_DIR:DATA`` (in data space: scaled) -> images in [-1, 1], on CPU."""
    vae_dir, _ = parse(arg)
    vae = load_vae(str(vae_dir), vae_sha(vae_dir))
    sf = float(vae.config.scaling_factor)
    dev = next(vae.parameters()).device
    with torch.no_grad():
        out = [vae.decode(z[b : b + BATCH].to(dev, torch.float32) / sf).sample.float().cpu()
               for b in range(0, len(z), BATCH)]
    return torch.cat(out).clamp(-1, 1)


__all__ = ["as_images", "decode", "encode_dataset", "open_vae_data", "parse"]
