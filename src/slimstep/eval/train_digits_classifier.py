"""Train slimstep's digits classifier (the feature net of digits FD) deterministically.

    python -m slimstep.eval.train_digits_classifier [--out DIR] [--seed 0] [--epochs 60]

Trains on the digits *train* split only (the test split is the FD floor's real
sample, so the classifier never sees it), with small random shifts (±1 pixel,
background fill) so features respond smoothly to slightly misplaced strokes.
AdamW + cosine learning rate, fixed epochs (no model selection on test). Reports
test-split accuracy, then writes ``digits_classifier.safetensors`` and
``digits_classifier.json`` into DIR (default: the package's assets) atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from slimstep.eval.features import ASSETS, DigitsClassifier, sha256_file
from slimstep.files import atomic_write, tensor_bytes, write_bytes


def random_shift(x: torch.Tensor, s: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by an integer offset in [-s, s]², filling with background (-1)."""
    n, _, h, w = x.shape
    pad = F.pad(x, (s, s, s, s), value=-1.0)
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # [n, h, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # [n, 1, w]
    return pad[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def accuracy(model: DigitsClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model.logits(x).argmax(1) == y).double().mean().item()


def train(
    seed: int = 0, epochs: int = 60, batch_size: int = 64, lr: float = 2e-3,
    weight_decay: float = 1e-4, shift: int = 1, log: Callable[[str], None] = print,
) -> tuple[DigitsClassifier, dict]:
    from slimstep.data.digits import load_digits_split

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = load_digits_split("train")
    xt, yt = load_digits_split("test")
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            xb = random_shift(x[idx], shift, gen) if shift else x[idx]
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (ep + 1) % 10 == 0 or ep == epochs - 1:  # progress only: no selection on test
            model.eval()
            log(f"epoch {ep + 1:3d}  loss {total / len(x):.4f}  test acc {accuracy(model, xt, yt):.4f}")
    model.eval()
    feats = model.features(x)
    info = {
        "arch": model.arch,
        "feature_dim": model.feature_dim,
        "features": "penultimate layer fc1, post-ReLU",
        "input": "[N, 1, 8, 8] in [-1, 1] (sklearn digits v / 8 - 1)",
        "train_split": f"digits train ({len(x)} images)",
        "test_accuracy": round(accuracy(model, xt, yt), 6),
        "train_accuracy": round(accuracy(model, x, y), 6),
        "n_test": len(xt),
        "dead_features_on_train": int((feats.max(0).values <= 0).sum()),
        "seed": seed,
        "hyper": {"epochs": epochs, "batch_size": batch_size, "lr": lr,
                  "weight_decay": weight_decay, "shift": shift, "optimizer": "AdamW",
                  "schedule": "cosine"},
        "command": f"python -m slimstep.eval.train_digits_classifier --seed {seed} --epochs {epochs}",
        "torch": torch.__version__,
    }
    return model, info


def save(model: DigitsClassifier, info: dict, out: str | os.PathLike) -> Path:
    """Write ``digits_classifier.safetensors`` + ``.json`` into ``out`` atomically
    (weights first; the JSON records their SHA-256, so a half-updated pair is detected)."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "digits_classifier.safetensors"
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    write_bytes(weights, tensor_bytes(tensors, metadata={"format": "pt"}))
    info = {**info, "weights_sha256": sha256_file(weights)}
    text = json.dumps(info, indent=2) + "\n"
    atomic_write(out / "digits_classifier.json", lambda p: Path(p).write_text(text))
    return weights


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ASSETS), help="output folder (default: package assets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=60)
    a = p.parse_args(argv)
    t0 = time.time()
    model, info = train(seed=a.seed, epochs=a.epochs)
    path = save(model, info, a.out)
    print(f"test accuracy {info['test_accuracy']:.4f} (train {info['train_accuracy']:.4f}), "
          f"dead features {info['dead_features_on_train']}, {time.time() - t0:.0f} s -> {path}")


if __name__ == "__main__":
    main()
