import os
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

# Tests are small; two threads match the 2-core CI machine and keep timings sane.
torch.set_num_threads(min(2, os.cpu_count() or 1))
# Inception on CPU costs seconds an image: automatic FID would turn every image evaluation
# into minutes. Off for the suite; tests/test_fid.py asks for it where it tests it.
os.environ["SLIMSTEP_FID"] = "off"


@pytest.fixture(autouse=True, scope="session")
def _fid_cache(tmp_path_factory):
    """Reference statistics cached by a test never land in the user's ~/.cache."""
    os.environ["SLIMSTEP_CACHE"] = str(tmp_path_factory.mktemp("slimstep-cache"))


@pytest.fixture
def toy_cfg():
    """A tiny flow-matching recipe on moons: a few thousand parameters, seconds to run (as
    the plain dict a test edits; train() checks it into a RunConfig)."""
    from slimstep.config import load_config

    return load_config(None, {
        "data": {"spec": "toy2d:moons"},
        "net": {"name": "mlp", "hidden": 32, "depth": 2, "time_dim": 16},
        "train": {"steps": 6, "batch_size": 32, "lr": 1e-3, "log_every": 1, "ckpt_every": 3,
                  "keep": 5, "warmup": 2},
        "sample": {"solver": "euler", "steps": 4},
    }).to_dict()


@pytest.fixture
def free_port() -> int:
    """A free TCP port on the loopback for a test's process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_batch(path: Path, x: np.ndarray, labels: list[int], name: bytes) -> None:
    """A batch as in the real files: protocol 2, bytes keys, data uint8 [N, 3072]."""
    d = {
        b"batch_label": name, b"labels": labels, b"data": x.reshape(len(x), 3072),
        b"filenames": [b"img_%d.png" % i for i in range(len(x))],
    }
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


@pytest.fixture
def cifar_dir(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """CIFAR-10 python batches in the real format: 20 train images (two batches), 10 test."""
    from slimstep.data.images import CIFAR10_CLASSES

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 30)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    write_batch(root / "data_batch_1", x[:12], y[:12].tolist(), b"training batch 1 of 5")
    write_batch(root / "data_batch_2", x[12:20], y[12:20].tolist(), b"training batch 2 of 5")
    write_batch(root / "test_batch", x[20:], y[20:].tolist(), b"testing batch 1 of 1")
    meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": 10000,
            b"num_vis": 3072}
    with open(root / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return root, x, y


def _image_folder(root: Path, n: int = 24, size: int = 20, seed: int = 0) -> Path:
    """``n`` smooth RGB PNGs in two class subfolders (white noise has no structure to compare)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        coarse = torch.rand(3, 4, 4, generator=g)
        img = torch.nn.functional.interpolate(coarse[None], size=size, mode="bilinear")[0]
        sub = root / ("cats" if i % 2 else "dogs")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(sub / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder():
    """``image_folder(root, n=24, size=20, seed=0)`` writes a small image folder (above)."""
    return _image_folder


#: The methods that train a student from a velocity teacher's ODE (SlimFlow's path: pairs
#: first) and those that start from the teacher's own network; what every imported teacher
#: is checked against (issue 12: "every method runs a few steps from each imported teacher").
PAIR_METHODS = ("annealing-reflow", "slimflow", "distill")


@pytest.fixture
def runs_pair_methods(tmp_path, capsys):
    """``check(teacher, shape)``: teacher pairs (a few Euler steps), then 2 training steps of
    every pair method from them (slimflow from the annealing-reflow student, as SlimFlow
    chains them); each student samples finite images of the teacher's shape."""
    import torch

    import slimstep
    from slimstep.cli import main

    def check(teacher: Path, shape: tuple[int, ...]) -> None:
        pairs = tmp_path / "pairs"
        assert main(["pairs", "--teacher", str(teacher), "--n", "16", "--steps", "2", "--out", str(pairs),
                     "--device", "cpu", "--quiet"]) == 0, capsys.readouterr().err
        for method in PAIR_METHODS:
            out = tmp_path / method
            init = ["--init", str(tmp_path / "annealing-reflow")] if method == "slimflow" else []
            assert main(["distill", "--method", method, "--config", f"configs/digits/{method}.yaml",
                         "--teacher", str(teacher), "--pairs", str(pairs), "--out", str(out), "--quiet",
                         *init, "train.steps=2", "train.batch_size=8", "train.ckpt_every=2"]) == 0, \
                (method, capsys.readouterr().err)
            x, _ = slimstep.load(out).generate(3, seed=0)
            assert tuple(x.shape[1:]) == tuple(shape) and torch.isfinite(x).all(), method

    return check


@pytest.fixture
def trains_one_step(tmp_path, capsys):
    """``check(teacher, method, shape)``: 2 training steps of a teacher-initialised one-step
    method (``configs/digits/<method>.yaml``: dmd2, ect, scd) from ``teacher``; the exported
    generator takes one call and samples finite images of the teacher's shape."""
    import torch

    import slimstep
    from slimstep.cli import main

    def check(teacher: Path, method: str, shape: tuple[int, ...]) -> None:
        out = tmp_path / method
        assert main(["distill", "--method", method, "--config", f"digits/{method}", "--teacher", str(teacher),
                     "--out", str(out), "--quiet", "train.steps=2", "train.batch_size=8",
                     "train.ckpt_every=2"]) == 0, capsys.readouterr().err
        gen = slimstep.load(out)
        x, _ = gen.generate(3, seed=0)
        assert tuple(x.shape[1:]) == tuple(shape) and torch.isfinite(x).all() and gen.nfe == 1

    return check
