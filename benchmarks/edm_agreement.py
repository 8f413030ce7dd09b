"""slimstep's EDM import against EDM's own code (issue 12): side by side, not in CI.
SongUNet (DDPM++, NCSN++) and DhariwalUNet (ADM) behind EDMPrecond / VPPrecond / VEPrecond.

Builds networks with EDM's ``training/networks.py`` from a local EDM checkout (never
vendored: EDM is CC BY-NC-SA), gives them random weights (EDM zero-initialises some
layers), pickles them the way EDM's ``training_loop.py`` writes a snapshot, imports the
pickle with ``slimstep import --format edm`` and compares, on the same inputs:

* ``D``: EDM's preconditioned forward (float32, as EDM runs it) vs slimstep's ``denoise``;
* ``F``: EDM's SongUNet in float64 vs slimstep's (the architecture alone). EDM computes its
  attention weights and positional frequencies in float32 whatever the input's dtype, so
  this is also measured with those two promoted to float64 in this process (``F*``);
* ``v``: the velocity formula of docs/teachers.md applied to EDM's own ``D`` vs slimstep's
  ``forward`` (float32).

Writes benchmarks/results/edm_agreement.md (+ .json).

    python benchmarks/edm_agreement.py --edm /path/to/edm   # git clone NVlabs/edm
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, md_table  # noqa: E402

ARCHS = {  # EDM train.py's --arch presets
    "ddpmpp": dict(embedding_type="positional", encoder_type="standard", decoder_type="standard",
                   channel_mult_noise=1, resample_filter=[1, 1]),
    "ncsnpp": dict(embedding_type="fourier", encoder_type="residual", decoder_type="standard",
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1]),
    "adm": dict(model_type="DhariwalUNet"),
}
SIZES = {
    "tiny": dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4]),
    "tiny-adm": dict(model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8, 4]),
    "cifar10": dict(model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16]),
    # ImageNet-64's ADM layout (4 levels, 1 to 4 heads) at a third of its width: 296M -> 33M
    "adm-64": dict(model_channels=64, channel_mult=[1, 2, 3, 4], num_blocks=3, attn_resolutions=[32, 16, 8]),
}
CASES = [  # (precond, arch, label_dim, size, image shape)
    *[(p, a, k, "tiny-adm" if a == "adm" else "tiny", (1, 8, 8))
      for p in ("EDMPrecond", "VPPrecond", "VEPrecond") for a in ARCHS for k in (0, 10)],
    ("EDMPrecond", "ddpmpp", 10, "cifar10", (3, 32, 32)),   # edm-cifar10-32x32-cond-*.pkl's shape
    ("VEPrecond", "ncsnpp", 0, "cifar10", (3, 32, 32)),
    ("EDMPrecond", "adm", 1000, "adm-64", (3, 64, 64)),     # edm-imagenet-64x64-cond-adm.pkl's
]


@contextlib.contextmanager
def edm_in_float64():
    """EDM's AttentionOp and PositionalEmbedding, patched in this process to compute in the
    input's dtype (EDM forces float32 there): what is left of ΔF is the architecture."""
    from training import networks

    class Attention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k):
            return torch.einsum("ncq,nck->nqk", q, k / k.shape[1] ** 0.5).softmax(dim=2)

    def positional(self, x):
        half = self.num_channels // 2
        freqs = (1 / self.max_positions) ** (torch.arange(half, dtype=x.dtype) / (half - int(self.endpoint)))
        a = x.ger(freqs)
        return torch.cat([a.cos(), a.sin()], dim=1)

    saved = networks.AttentionOp, networks.PositionalEmbedding.forward
    networks.AttentionOp, networks.PositionalEmbedding.forward = Attention, positional
    try:
        yield
    finally:
        networks.AttentionOp, networks.PositionalEmbedding.forward = saved


def edm_network(precond, arch, label_dim, size, shape, seed=0):
    """EDM's own network, constructed as train.py does, with random weights."""
    import dnnlib

    torch.manual_seed(seed)
    kw = {"model_type": "SongUNet", **ARCHS[arch], **SIZES[size], "augment_dim": 9, "dropout": 0.0,
          "use_fp16": False}
    net = dnnlib.util.construct_class_by_name(
        class_name=f"training.networks.{precond}", img_resolution=shape[1],
        img_channels=shape[0], label_dim=label_dim, **kw)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * (0.2 if size.startswith("tiny") else 0.05))
    return net.eval().requires_grad_(False)


def compare(case, workdir: Path) -> dict:
    from slimstep.generator import load
    from slimstep.importers import import_teacher

    precond, arch, label_dim, size, shape = case
    net = edm_network(*case)
    src = workdir / f"{precond}-{arch}-{label_dim}-{size}.pkl"
    data = dict(ema=copy.deepcopy(net), loss_fn=None, augment_pipe=None, dataset_kwargs={})
    src.write_bytes(pickle.dumps(data))
    out = import_teacher("edm", src, workdir / src.stem)
    mine = load(out).net.eval()
    g = torch.Generator().manual_seed(1)
    n = 4
    x = torch.randn(n, *shape, generator=g) * 2
    sigma = torch.tensor([0.002, 0.5, 5.0, 80.0])
    y = torch.tensor([0, 3, 9, label_dim - 1]) if label_dim else None
    onehot = torch.nn.functional.one_hot(y, label_dim).float() if label_dim else None
    with torch.no_grad():
        d_edm, d_mine = net(x, sigma, onehot), mine.denoise(x, sigma, y)
        c_noise = torch.tensor([-1.5, 0.0, 0.4, 1.1], dtype=torch.float64)
        args = (x.double(), c_noise, onehot.double() if label_dim else None)
        f_edm = copy.deepcopy(net.model).double()(*args)
        with edm_in_float64():
            f_edm64 = copy.deepcopy(net.model).double()(*args)
        f_mine = copy.deepcopy(mine.model).double()(*args)
        t = torch.tensor([0.0, 0.1, 0.5, 0.99])
        tc = t.clamp(mine.t_min, mine.t_max)
        tb = tc.reshape(-1, 1, 1, 1)
        v_edm = (net(x / tb, (1 - tc) / tc, onehot) - x) / (1 - tb)  # docs/teachers.md's formula
        v_mine = mine(x, t, y)
    err = lambda a, b: (a.double() - b.double()).abs().max().item()  # noqa: E731
    return {"precond": precond, "arch": arch, "label_dim": label_dim, "size": size,
            "params": sum(p.numel() for p in net.parameters()),
            "tensors": json.loads((out / "config.json").read_text())["import"]["tensors_used"],
            "dD_f32": err(d_edm, d_mine), "D_max": d_edm.abs().max().item(),
            "dF_f64": err(f_edm, f_mine), "dF_f64_promoted": err(f_edm64, f_mine),
            "F_max": f_edm.abs().max().item(),
            "dv_f32": err(v_edm, v_mine), "v_max": v_edm.abs().max().item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edm", required=True, help="a checkout of github.com/NVlabs/edm")
    ap.add_argument("--edm-commit", help="the checkout's commit, when it is not a git work tree")
    a = ap.parse_args()
    commit = a.edm_commit or subprocess.run(["git", "-C", a.edm, "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True).stdout.strip() or "unknown"
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(a.edm).resolve()))  # EDM's dnnlib, torch_utils, training
    rows = []
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            rows.append(compare(case, Path(tmp)))
            r = rows[-1]
            print(f"{r['precond']:10s} {r['arch']} K={r['label_dim']:2d} {r['size']:7s} "
                  f"|dD| {r['dD_f32']:.1e} |dF|64 {r['dF_f64']:.1e} |dF*|64 {r['dF_f64_promoted']:.1e} "
                  f"|dv| {r['dv_f32']:.1e}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "edm_agreement.json").write_text(json.dumps(rows, indent=1) + "\n")
    shown = [{**r, "params": f"{r['params']:,}", "dD": f"{r['dD_f32']:.1e} ({r['D_max']:.1f})",
              "dF": f"{r['dF_f64']:.1e} ({r['F_max']:.1f})", "dF*": f"{r['dF_f64_promoted']:.1e}",
              "dv": f"{r['dv_f32']:.1e} ({r['v_max']:.1f})"}
             for r in rows]
    table = md_table(shown, [("precond", "precond"), ("arch", "arch"), ("classes", "label_dim"),
                             ("size", "size"), ("params", "params"), ("tensors", "tensors"),
                             ("max abs ΔD f32 (max abs D)", "dD"), ("max abs ΔF f64 (max abs F)", "dF"),
                             ("max abs ΔF* f64", "dF*"),
                             ("max abs Δv f32 (max abs v)", "dv")])
    (RESULTS / "edm_agreement.md").write_text(
        "# slimstep's EDM import vs EDM's own networks\n\n"
        f"`python benchmarks/edm_agreement.py --edm /path/to/edm` (EDM commit {commit}; "
        f"{time.time() - start:.0f} s on one CPU thread). Random weights, σ in "
        "{0.002, 0.5, 5, 80}, t in {0, 0.1, 0.5, 0.99}; ΔD and Δv in float32 as EDM runs, "
        "ΔF (the SongUNet alone) in float64, ΔF* with EDM's float32 attention weights and "
        "positional frequencies promoted to float64.\n\n" + table + "\n")
    print(f"wrote {RESULTS / 'edm_agreement.md'}")


if __name__ == "__main__":
    main()
