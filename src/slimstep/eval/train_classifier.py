"""Train one of slimstep's protocol classifiers (the feature nets of FD) deterministically.

    python -m slimstep.eval.train_classifier digits        [--out DIR] [--seed 0] [--epochs 60]
    python -m slimstep.eval.train_classifier fashion-mnist [--out DIR] [--seed 0] [--epochs 8]

Trains on the data set's *train* split only (the test split is the FD floor's real
sample, so the classifier never sees it), with small random shifts (background fill)
so features respond smoothly to slightly misplaced strokes. AdamW + cosine learning
rate, fixed epochs (no model selection on test). Reports test-split accuracy, then
writes ``<name>_classifier.safetensors`` and ``<name>_classifier.json`` into DIR
(default: the package's assets) atomically. (The digits classifier's record names the
earlier module ``slimstep.eval.train_digits_classifier``: the same training, renamed.)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from slimstep.data.digits import load_digits_split
from slimstep.data.fashion import load_fashion_split
from slimstep.eval.features import ASSETS, CLASSIFIERS, FeatureClassifier, sha256_file
from slimstep.files import atomic_write, tensor_bytes, write_bytes


@dataclass(frozen=True)
class Recipe:
    """How one classifier is trained: its fixed hyper-parameters."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    shift: int  # random shift of up to this many pixels each way


RECIPES = {
    "digits": Recipe(epochs=60, batch_size=64, lr=2e-3, weight_decay=1e-4, shift=1),
    "fashion-mnist": Recipe(epochs=8, batch_size=128, lr=2e-3, weight_decay=1e-4, shift=2),
}
FILE_STEM = {"digits": "digits_classifier", "fashion-mnist": "fashion_classifier"}


def load_split(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "digits":

        return load_digits_split(split)

    return load_fashion_split(split)


def random_shift(x: torch.Tensor, s: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by an integer offset in [-s, s]², filling with background (-1)."""
    n, _, h, w = x.shape
    pad = F.pad(x, (s, s, s, s), value=-1.0)
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # [n, h, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # [n, 1, w]
    return pad[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def accuracy(model: FeatureClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model.logits(x).argmax(1) == y).double().mean().item()


def train(
    name: str = "digits", seed: int = 0, epochs: int | None = None, log: Callable[[str], None] = print,
) -> tuple[FeatureClassifier, dict]:
    r = RECIPES[name]
    epochs = r.epochs if epochs is None else epochs
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = load_split(name, "train")
    xt, yt = load_split(name, "test")
    model = CLASSIFIERS[name]()
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    steps_per_epoch = (len(x) + r.batch_size - 1) // r.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    every = max(1, epochs // 6)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), r.batch_size):
            idx = perm[i : i + r.batch_size]
            xb = random_shift(x[idx], r.shift, gen) if r.shift else x[idx]
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (ep + 1) % every == 0 or ep == epochs - 1:  # progress only: no selection on test
            model.eval()
            log(f"epoch {ep + 1:3d}  loss {total / len(x):.4f}  test acc {accuracy(model, xt, yt):.4f}")
    model.eval()
    feats = model.features(x)
    shape = ", ".join(map(str, model.input_shape))
    info = {
        "arch": model.arch,
        "feature_dim": model.feature_dim,
        "features": "penultimate layer fc1, post-ReLU",
        "input": f"[N, {shape}] in [-1, 1] ({name} in slimstep's data space)",
        "train_split": f"{name} train ({len(x)} images)",
        "test_accuracy": round(accuracy(model, xt, yt), 6),
        "train_accuracy": round(accuracy(model, x, y), 6),
        "n_test": len(xt),
        "dead_features_on_train": int((feats.max(0).values <= 0).sum()),
        "seed": seed,
        "hyper": {**asdict(r), "epochs": epochs, "optimizer": "AdamW", "schedule": "cosine"},
        "command": f"python -m slimstep.eval.train_classifier {name} --seed {seed} --epochs {epochs}",
        "torch": torch.__version__,
    }
    return model, info


def save(model: FeatureClassifier, info: dict, out: str | os.PathLike, name: str = "digits") -> Path:
    """Write ``<stem>.safetensors`` + ``.json`` into ``out`` atomically (weights first;
    the JSON records their SHA-256, so a half-updated pair is detected)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{FILE_STEM[name]}.safetensors"
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    write_bytes(weights, tensor_bytes(tensors, metadata={"format": "pt"}))
    info = {**info, "weights_sha256": sha256_file(weights)}
    text = json.dumps(info, indent=2) + "\n"
    atomic_write(out / f"{FILE_STEM[name]}.json", lambda p: Path(p).write_text(text))
    return weights


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", choices=sorted(RECIPES), help="which protocol's classifier")
    p.add_argument("--out", default=str(ASSETS), help="output folder (default: package assets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="default: the data set's recipe")
    a = p.parse_args(argv)
    t0 = time.time()
    model, info = train(a.data, seed=a.seed, epochs=a.epochs)
    path = save(model, info, a.out, a.data)
    print(f"test accuracy {info['test_accuracy']:.4f} (train {info['train_accuracy']:.4f}), "
          f"dead features {info['dead_features_on_train']}, {time.time() - t0:.0f} s -> {path}")


if __name__ == "__main__":
    main()
