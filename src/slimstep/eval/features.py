"""Feature networks of the evaluation protocol.

- :class:`DigitsClassifier`: slimstep's own small CNN for the 8×8 digits, weights shipped
  in ``slimstep/assets`` (retrain with ``python -m slimstep.eval.train_digits_classifier``).
  Its penultimate layer (128 post-ReLU units) is the feature space of digits FD and
  precision / recall; its argmax gives class histograms.
- :class:`InceptionFeatures`: the TF-ported Inception-v3 of FID and KID (2048-d pool
  features) from torch-fidelity, loaded from a *local* weights file; nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import pickle  # only for its exception type: nothing is un-pickled
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from slimstep.errors import load_refusal
from slimstep.eval import EvalError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DIGITS_WEIGHTS = ASSETS / "digits_classifier.safetensors"
RETRAIN = "python -m slimstep.eval.train_digits_classifier"


def sha256_file(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class DigitsClassifier(nn.Module):
    """conv3×3(1→c1) → ReLU → conv3×3 stride 2 (c1→c2) → ReLU → flatten (c2·4·4)
    → linear(hidden) → ReLU [= features] → dropout → linear(num_classes) [= logits].

    Inputs are ``[N, 1, 8, 8]`` in [-1, 1] (slimstep's digits data space). There is no
    batch norm, so features do not depend on train / eval mode or on the batch.
    """

    def __init__(
        self, c1: int = 32, c2: int = 64, hidden: int = 128, num_classes: int = 10,
        dropout: float = 0.3,
    ):
        super().__init__()
        self.arch = {"c1": c1, "c2": c2, "hidden": hidden, "num_classes": num_classes,
                     "dropout": dropout}
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(c2 * 16, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.info: dict = {}  # the asset's JSON record when loaded from disk

    @property
    def feature_dim(self) -> int:
        return self.fc1.out_features

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (with dropout in train mode): what training calls."""
        return self.fc2(self.drop(self._features(x)))

    def _run(self, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise EvalError(f"digits classifier expects [N, 1, 8, 8] in [-1, 1], got {tuple(x.shape)}")
        dev = next(self.parameters()).device
        feats, logits = [], []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                f = self._features(x[i : i + batch_size].to(dev, torch.float32))
                feats.append(f.cpu())
                logits.append(self.fc2(f).cpu())
        return torch.cat(feats), torch.cat(logits)

    def features(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Penultimate (post-ReLU) features ``[N, hidden]`` float32 on CPU."""
        return self._run(x, batch_size)[0]

    def logits(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Class logits ``[N, num_classes]`` float32 on CPU (no dropout)."""
        return self._run(x, batch_size)[1]

    def features_and_logits(
        self, x: torch.Tensor, batch_size: int = 4096
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(x, batch_size)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> DigitsClassifier:
        """The shipped classifier (or the one at ``path``), frozen, in eval mode, on CPU.
        Cached: every caller shares one instance, so do not train or move it
        (``copy.deepcopy`` it first)."""
        return _load_digits(str(Path(path) if path is not None else DIGITS_WEIGHTS))


@functools.lru_cache(maxsize=4)
def _load_digits(path: str) -> DigitsClassifier:
    from safetensors.torch import load_file

    weights, meta = Path(path), Path(path).with_suffix(".json")
    if not weights.is_file() or not meta.is_file():
        raise EvalError(f"digits classifier not found at {weights} (+ .json); rebuild it with: {RETRAIN}")
    info = json.loads(meta.read_text())
    # The JSON records the weights' hash: a stale pair (retrained weights, old record) is caught.
    if info.get("weights_sha256") not in (None, sha256_file(weights)):
        raise EvalError(f"{weights} does not match the hash in {meta.name}; rebuild with: {RETRAIN}")
    model = _from_info(info)
    model.load_state_dict(load_file(str(weights)))
    model.info = info
    return model.eval().requires_grad_(False)


def _from_info(info: dict) -> DigitsClassifier:
    return DigitsClassifier(**info["arch"])


# --------------------------------------------------------------------------- Inception

#: The weights file of torch-fidelity's FeatureExtractorInceptionV3 (its GitHub release v0.2.0),
#: named the same in the errors, README.md and docs/evaluation.md.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_HINT = (
    f"pass --inception-weights PATH (inception_weights=...) pointing to torch-fidelity's "
    f"{INCEPTION_FILE} (from its GitHub release v0.2.0)"
)
#: The note of an image evaluation without weights: SWD is scored, FID and KID are not.
NO_FID = (f"no FID or KID: they need Inception weights, --inception-weights {INCEPTION_FILE} "
          "(torch-fidelity's; slimstep never downloads them); SWD needs none")


def _import_inception() -> type:
    """torch-fidelity's FeatureExtractorInceptionV3 class, without torchvision.

    ``torch_fidelity/__init__`` imports its CLIP / VGG / DINOv2 extractors, which import
    torchvision (no CPU build here); the Inception module itself needs only torch. When
    the package import fails on torchvision, the module is imported under a bare
    namespace stand-in for the package, so ``__init__`` never runs.
    """
    name = "torch_fidelity.feature_extractor_inceptionv3"
    try:
        return importlib.import_module(name).FeatureExtractorInceptionV3
    except ModuleNotFoundError as e:
        if e.name != "torchvision":
            raise EvalError(
                "image FID needs torch-fidelity: pip install --no-deps torch-fidelity "
                "(--no-deps keeps the installed torch; torchvision is not needed)"
            ) from None
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        raise EvalError("torch-fidelity is installed but cannot be located; reinstall it")
    stub = types.ModuleType("torch_fidelity")
    stub.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = stub
    try:
        return importlib.import_module(name).FeatureExtractorInceptionV3
    finally:
        if sys.modules.get("torch_fidelity") is stub:
            del sys.modules["torch_fidelity"]


@contextlib.contextmanager
def _weights_only_torch_load() -> Iterator[None]:
    """torch-fidelity calls ``torch.load(path, weights_only=False)``; this forces
    ``weights_only=True`` so a user's file is never un-pickled."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def images_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW float → uint8 [0, 255] RGB, EDM's rounding ``x·127.5 + 128``
    truncated; grey images are repeated to 3 channels."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise EvalError(f"Inception expects images [N, 1|3, H, W], got {tuple(x.shape)}")
    u = (x.float() * 127.5 + 128.0).clamp(0, 255).to(torch.uint8)
    return u.expand(-1, 3, -1, -1) if u.shape[1] == 1 else u


class InceptionFeatures:
    """2048-d pool features of FID's Inception-v3 (torch-fidelity's TF-compatible port;
    it resizes to 299×299 inside, bilinearly as TF 1.x did)."""

    dim = 2048
    name = "inception-v3-compat (torch-fidelity, 2048-d pool3)"

    def __init__(
        self, weights_path: str | os.PathLike | None, device: str | torch.device | None = None,
        batch_size: int = 100,
    ):
        if weights_path is None or not Path(weights_path).is_file():
            raise EvalError(f"Inception weights file not found ({weights_path}): {INCEPTION_HINT}")
        cls = _import_inception()
        try:
            with _weights_only_torch_load():
                net = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights_path))
        except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, KeyError, EOFError) as e:
            # a pickled object (refused), a wrong state dict, a bad file
            first = load_refusal(e)
            raise EvalError(
                f"cannot load Inception weights {weights_path} as a plain state dict: {first}"
            ) from None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = net.to(self.device).eval()
        self.batch_size = batch_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 2048]`` float32 features (CPU) of images ``x`` in [-1, 1] NCHW."""
        out = []
        with torch.no_grad():
            for i in range(0, len(x), self.batch_size):
                u = images_to_uint8(x[i : i + self.batch_size]).to(self.device)
                out.append(self.net(u)[0].float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.dim)

    __call__ = features


__all__ = ["INCEPTION_FILE", "DigitsClassifier", "InceptionFeatures", "images_to_uint8", "sha256_file"]
