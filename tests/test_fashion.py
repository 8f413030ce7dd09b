"""Fashion-MNIST: the idx reader on files in the real format, its errors, the classifier
protocol. The files are written here (tiny); the real ones are used where installed."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slimstep.cli import main
from slimstep.data import DataError, load_data
from slimstep.data.fashion import DEFAULT_DIR, read_idx
from slimstep.eval import evaluate


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """An idx file as LeCun's format defines it: magic (0, 0, 0x08 = uint8, ndim), sizes, data."""
    head = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    raw = head + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def make_fashion(folder: Path, n_train=24, n_test=12, gz=True, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28))
        x[0] = 0
        x[1] = 255
        write_idx(folder / f"{split}-images-idx3-ubyte{sfx}", x, gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte{sfx}", np.arange(n) % 10, gz)
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_reader_reads_the_real_format_gzipped_or_not(tmp_path, gz):
    root = make_fashion(tmp_path / "fm", gz=gz)
    ds = load_data(f"fashion-mnist:{root}")
    assert ds.info.shape == (1, 28, 28) and ds.info.num_classes == 10 and ds.info.kind == "image"
    assert ds.x.shape == (24, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.x[0].max() == -1.0 and ds.x[1].min() == 1.0  # uint8 0 -> -1, 255 -> 1
    raw = read_idx(root / f"train-images-idx3-ubyte{'.gz' if gz else ''}", 3)
    assert torch.equal(ds.x[5, 0], torch.from_numpy(raw[5].astype(np.float32) / 127.5 - 1))
    assert ds.y.tolist() == [i % 10 for i in range(24)]
    x, y = ds.reference(split="test")
    assert x.shape == (12, 1, 28, 28) and y.tolist()[:3] == [0, 1, 2]
    xb, yb = ds.draw(7, torch.Generator().manual_seed(0))
    assert xb.shape == (7, 1, 28, 28) and yb.shape == (7,)


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimstep: error:") and "\n" not in err, err
    return err


def test_bad_files_are_one_error_line(tmp_path, capsys):
    out = str(tmp_path / "x.npz")
    root = make_fashion(tmp_path / "magic", gz=False)
    p = root / "train-images-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x09\x03" + p.read_bytes()[4:])  # element type 0x09: not unsigned bytes
    assert "magic number 0x00000903, expected 0x00000803" in _cli_error(capsys, ["data", f"fashion-mnist:{root}",
                                                                                 "--split", "train", "--out", out])
    root = make_fashion(tmp_path / "cut", gz=True)
    p = root / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-100]))
    assert "truncated" in _cli_error(capsys, ["data", f"fashion-mnist:{root}", "--split", "train", "--out", out])
    root = make_fashion(tmp_path / "count", gz=True)
    write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(23), True)
    assert "24 images but 23 labels" in _cli_error(capsys, ["data", f"fashion-mnist:{root}", "--split", "train",
                                                           "--out", out])
    root = make_fashion(tmp_path / "gzip", gz=True)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    assert "cannot read" in _cli_error(capsys, ["data", f"fashion-mnist:{root}", "--out", out])
    assert not Path(out).exists()


def test_missing_files_name_the_four_files_and_where_to_put_them(tmp_path, capsys):
    err = _cli_error(capsys, ["data", f"fashion-mnist:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "x.npz")])
    assert "train-images-idx3-ubyte.gz" in err and "t10k-labels-idx1-ubyte.gz" in err and "dataset-fashion-mnist" in err
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        load_data(f"fashion-mnist:{tmp_path / 'half'}")


def test_classifier_protocol_scores_with_its_floor(tmp_path):
    """FD / precision / recall / coverage / copy rate in the shipped classifier's features,
    the test split as the floor; copies of the train split score below the floor."""
    from slimstep.eval.features import FashionClassifier

    clf = FashionClassifier.load()
    assert clf.feature_dim == 256 and clf.info["test_accuracy"] > 0.85
    root = make_fashion(tmp_path / "fm", n_train=40, n_test=20)
    spec = f"fashion-mnist:{root}"
    noise = torch.rand(20, 1, 28, 28) * 2 - 1
    r = evaluate(noise, spec)
    json.dumps(r)
    assert {"fd", "precision", "recall", "class_coverage", "copy_rate"} <= set(r["metrics"])
    assert r["floor_n"] == 20 and r["floor"]["copy_rate"] == pytest.approx(0.05, abs=0.05)
    copies = load_data(spec).x[:20]
    c = evaluate(copies, spec)
    assert c["metrics"]["copy_rate"] == 1.0
    assert "fashion-mnist classifier" in r["features"]


@pytest.mark.skipif(not Path(DEFAULT_DIR).is_dir(), reason=f"the Debian package's files are not in {DEFAULT_DIR}")
def test_the_real_files_and_the_shipped_classifier_accuracy():
    from slimstep.data.fashion import load_fashion_split
    from slimstep.eval.features import FashionClassifier

    x, y = load_fashion_split("test")
    assert x.shape == (10000, 1, 28, 28) and torch.bincount(y).tolist() == [1000] * 10
    clf = FashionClassifier.load()
    acc = (clf.logits(x).argmax(1) == y).double().mean().item()
    assert acc == pytest.approx(clf.info["test_accuracy"], abs=1e-6)
