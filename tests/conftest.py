import os
import socket

import pytest
import torch

# Tests are small; two threads match the 2-core CI machine and keep timings sane.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def toy_cfg():
    """A tiny flow-matching recipe on moons: a few thousand parameters, seconds to run."""
    from slimstep.config import load_config

    return load_config(None, {
        "data": {"spec": "toy2d:moons"},
        "net": {"name": "mlp", "hidden": 32, "depth": 2, "time_dim": 16},
        "train": {"steps": 6, "batch_size": 32, "lr": 1e-3, "log_every": 1, "ckpt_every": 3,
                  "keep": 5, "warmup": 2},
        "sample": {"solver": "euler", "steps": 4},
    })


@pytest.fixture
def free_port() -> int:
    """A free TCP port on the loopback for a test's process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
