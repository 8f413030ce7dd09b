"""Data loaders: toy2d, digits, and image data written in the real file formats."""

from __future__ import annotations

import math
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slimstep.data import DataError, DataInfo, load_data, loader_options, student_data, toy2d
from slimstep.data.digits import N_TEST, load_digits_split
from slimstep.data.images import CIFAR10_CLASSES, open_image_data, safe_unpickle


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- toy2d -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", toy2d.NAMES)
def test_toy2d_shape_stats_determinism(name):
    ds = load_data(f"toy2d:{name}")
    assert ds.info.kind == "points" and ds.info.shape == (2,) and ds.info.num_classes == 0
    assert ds.info.spec == f"toy2d:{name}"
    x, y = ds.draw(20_000, gen(1))
    assert y is None and x.shape == (20_000, 2) and x.dtype == torch.float32
    assert torch.equal(x, ds.draw(20_000, gen(1))[0])
    assert not torch.equal(x, ds.draw(20_000, gen(2))[0])
    assert torch.equal(x, toy2d.sample(name, 20_000, gen(1)))
    # Documented scaling: mean 0, tr Cov = 2.
    assert x.mean(0).abs().max() < 0.05
    assert abs(x.var(0).sum().item() - 2) < 0.08


def test_toy2d_reference_splits_and_seeds():
    ds = toy2d.Toy2D("moons")
    test, _ = ds.reference(500, split="test", seed=3)
    assert torch.equal(test, ds.reference(500, split="test", seed=3)[0])
    assert not torch.equal(test, ds.reference(500, split="train", seed=3)[0])
    assert not torch.equal(test, ds.reference(500, split="test", seed=4)[0])
    assert len(ds.reference()[0]) == toy2d.N_REFERENCE
    with pytest.raises(DataError, match="split"):
        ds.reference(10, split="val")


def test_8gaussians_has_8_modes():
    x = toy2d.sample("8gaussians", 16_000, gen(0))
    radius = math.sqrt(2 * (1 - 0.2**2))
    k = torch.round(torch.atan2(x[:, 1], x[:, 0]) / (math.pi / 4)).long() % 8
    centres = radius * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1)
    frac = torch.bincount(k, minlength=8) / len(x)
    assert (frac - 1 / 8).abs().max() < 0.02
    assert ((x - centres).norm(dim=1) < 4 * 0.2).float().mean() > 0.99


def test_moons_extent_and_checkerboard_support():
    x = toy2d.sample("moons", 20_000, gen(0), noise=0.0)
    s = math.sqrt(2 / (21 / 16 - 1 / math.pi))
    assert x[:, 0].min() >= -1.5 * s - 1e-4 and x[:, 0].max() <= 1.5 * s + 1e-4
    assert x[:, 0].max() > 1.49 * s and x[:, 1].min() < -0.74 * s  # inner moon reaches -1/2-1/4
    c = toy2d.sample("checkerboard", 20_000, gen(0))
    side = math.sqrt(3) / 2  # [-2, 2]² scaled to unit variance
    cell = torch.floor(c / side).long()
    assert c.abs().max() <= 2 * side + 1e-5 and ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()


def test_rings_radii():
    r = toy2d.sample("rings", 8_000, gen(0), noise=0.0).norm(dim=1)
    scale = math.sqrt(2 / (15 / 32))
    levels = torch.round(r / scale * 4)
    assert torch.allclose(r, levels * scale / 4, atol=1e-5)
    assert set(levels.long().tolist()) == {1, 2, 3, 4}


def test_toy2d_errors():
    with pytest.raises(DataError, match=r"moons.*8gaussians.*checkerboard.*spirals.*rings"):
        load_data("toy2d:swissroll")
    with pytest.raises(DataError, match="noise"):
        toy2d.Toy2D("8gaussians", noise=0)
    with pytest.raises(DataError, match="resolution"):
        toy2d.Toy2D("moons", resolution=32)
    assert toy2d.Toy2D("moons", resolution=None, flip=False).info.options == {"noise": 0.1}


# --- digits ----------------------------------------------------------------------------


def test_digits_splits_disjoint_and_range():
    (xtr, ytr), (xte, yte) = load_digits_split("train"), load_digits_split("test")
    xall, yall = load_digits_split("all")
    assert len(xtr) == 1200 and len(xte) == N_TEST == 597
    assert xtr.shape[1:] == (1, 8, 8) and xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert xtr.min() >= -1 and xtr.max() <= 1 and xtr.min() == -1 and xtr.max() == 1

    def rows(x, y):
        return Counter(a.tobytes() + bytes([b]) for a, b in zip(x.numpy(), y.numpy(), strict=True))

    # train + test is a partition of all 1,797 images (as a multiset)
    assert rows(xtr, ytr) + rows(xte, yte) == rows(xall, yall)
    with pytest.raises(DataError):
        load_digits_split("val")


def test_digits_load_data_round_trip():
    ds = load_data("digits")
    assert DataInfo.from_dict(ds.info.to_dict()) == ds.info
    assert load_data(ds.info.spec).info == ds.info
    x, y = ds.draw(64, gen(0))
    assert x.shape == (64, 1, 8, 8) and y.shape == (64,) and y.dtype == torch.int64
    assert torch.equal(x, ds.draw(64, gen(0))[0])
    ref, yref = ds.reference(100)
    assert torch.equal(ref, load_digits_split("test")[0][:100]) and len(yref) == 100


# --- folder ----------------------------------------------------------------------------


def asymmetric(h: int, w: int, value: int) -> np.ndarray:
    """An RGB uint8 image whose left and right halves differ."""
    a = np.full((h, w, 3), value, np.uint8)
    a[:, : w // 2, 0] = 255 - value
    return a


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    root = tmp_path / "classes"
    for c, (cls, n) in enumerate([("cat", 3), ("dog", 2)]):
        (root / cls / "sub").mkdir(parents=True)
        for i in range(n):
            a = asymmetric(6, 6, 40 * i + 100 * c)
            Image.fromarray(a).save(root / cls / f"{i}.png")
        # JPEG (lossy) in a nested folder still belongs to the class.
        Image.fromarray(np.full((6, 6, 3), 128, np.uint8)).save(root / cls / "sub" / "z.jpg")
    (root / "empty").mkdir()  # no images: not a class
    return root


def test_folder_with_classes(class_folder):
    ds = load_data(f"folder:{class_folder}")
    assert ds.info.kind == "image" and ds.info.shape == (3, 6, 6) and ds.info.num_classes == 2
    assert ds.info.options["classes"] == ["cat", "dog"]
    x, y = ds.reference()
    assert x.shape == (7, 3, 6, 6) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 0, 0, 1, 1, 1]  # sorted paths: cat/0..2, cat/sub/z, dog/...
    expected = torch.from_numpy(asymmetric(6, 6, 40)).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(x[1], expected)  # cat/1.png, exact for PNG
    assert (x[3] - (128 / 127.5 - 1)).abs().max() < 0.05  # the JPEG, approximately
    assert torch.equal(ds.reference(split="train")[0], x)  # one pool for every split
    xb, yb = ds.draw(32, gen(5))
    assert xb.min() >= -1 and xb.max() <= 1 and yb.dtype == torch.int64
    assert torch.equal(xb, ds.draw(32, gen(5))[0])


def test_folder_unconditional_grey_and_mixed(tmp_path):
    grey = tmp_path / "grey"
    grey.mkdir()
    for i in range(3):
        Image.fromarray(np.full((5, 5), 50 * i, np.uint8)).save(grey / f"{i}.png")
    ds = load_data(f"folder:{grey}")
    assert ds.info.shape == (1, 5, 5) and ds.info.num_classes == 0
    assert ds.info.options["classes"] is None and ds.draw(4, gen(0))[1] is None
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(grey / "rgb.png")
    x, _ = load_data(f"folder:{grey}").reference()
    assert x.shape == (4, 3, 5, 5)
    assert torch.equal(x[1, 0], x[1, 2]) and x[1, 0, 0, 0] == 50 / 127.5 - 1  # grey -> RGB
    # A single subfolder is one class only: unconditional.
    single = tmp_path / "single"
    (single / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(single / "a" / "x.png")
    assert load_data(f"folder:{single}").info.num_classes == 0


def test_folder_resize_and_center_crop(tmp_path):
    a = np.zeros((8, 16, 3), np.uint8)  # H=8, W=16: red | green | blue quarters
    a[:, :4, 0], a[:, 4:12, 1], a[:, 12:, 2] = 255, 255, 255
    d = tmp_path / "wide"
    d.mkdir()
    Image.fromarray(a).save(d / "a.png")
    Image.fromarray(a[:, :12]).save(d / "b.png")  # another size
    with pytest.raises(DataError, match="resolution"):
        load_data(f"folder:{d}")
    crop, _ = load_data(f"folder:{d}", resolution=8, center_crop=True).reference()
    assert crop.shape == (2, 3, 8, 8)
    assert torch.equal(crop[0].permute(1, 2, 0), torch.from_numpy(a[:, 4:12]) / 127.5 - 1)
    plain, _ = load_data(f"folder:{d}", resolution=4).reference()
    assert plain.shape == (2, 3, 4, 4)
    assert plain[0, 0, :, 0].min() > 0.5 and plain[0, 2, :, -1].min() > 0.5  # red left, blue right
    up, _ = load_data(f"folder:{d}", resolution=20, center_crop=True).reference()
    assert up.shape == (2, 3, 20, 20) and up.min() >= -1 and up.max() <= 1
    with pytest.raises(DataError, match="center_crop"):
        load_data(f"folder:{d}", center_crop=True)


def test_folder_flip(class_folder):
    plain = open_image_data("folder", str(class_folder))
    flip = open_image_data("folder", str(class_folder), flip=True)
    assert flip.info.options["flip"] is True
    x0, y0 = plain.draw(200, gen(7))
    x1, y1 = flip.draw(200, gen(7))
    assert torch.equal(y0, y1)  # same indices: the coin is drawn after them
    same = (x1 == x0).flatten(1).all(1)
    mirrored = (x1 == x0.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all()
    asym = ~(x0 == x0.flip(-1)).flatten(1).all(1)
    assert 50 < mirrored[asym].sum() < asym.sum() - 50  # about half flipped


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(DataError, match="no PNG/JPEG"):
        load_data(f"folder:{tmp_path / 'empty'}")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_data(f"folder:{bad}")
    with pytest.raises(DataError, match="needs a path"):
        load_data("folder:")
    with pytest.raises(DataError, match="image options are"):
        load_data(f"folder:{bad}", colour="red")


# --- npz -------------------------------------------------------------------------------


def test_npz_uint8_nhwc(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    y = rng.integers(0, 3, 10)
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    ds = load_data(f"npz:{tmp_path / 'd.npz'}")
    assert ds.info.shape == (3, 4, 4) and ds.info.num_classes == int(y.max()) + 1
    xr, yr = ds.reference(6)
    assert torch.allclose(xr, torch.from_numpy(x[:6]).permute(0, 3, 1, 2) / 127.5 - 1)
    assert yr.tolist() == y[:6].tolist() and yr.dtype == torch.int64
    big, _ = load_data(f"npz:{tmp_path / 'd.npz'}", resolution=8).reference()
    want = np.array(Image.fromarray(x[0]).resize((8, 8), Image.Resampling.BICUBIC))
    assert big.shape == (10, 3, 8, 8)
    assert torch.equal(big[0], torch.from_numpy(want).permute(2, 0, 1) / 127.5 - 1)
    np.savez(tmp_path / "grey.npz", x=x[..., 0])  # NHW: one channel
    small, _ = load_data(f"npz:{tmp_path / 'grey.npz'}", resolution=2).reference()
    assert small.shape == (10, 1, 2, 2)


def test_npz_float_nchw(tmp_path):
    x = np.linspace(-1, 1, 2 * 1 * 3 * 3, dtype=np.float64).reshape(2, 1, 3, 3)
    np.savez(tmp_path / "f.npz", x=x)
    ds = load_data(f"npz:{tmp_path / 'f.npz'}", flip=True)
    xr, yr = ds.reference()
    assert yr is None and xr.dtype == torch.float32
    assert torch.allclose(xr, torch.from_numpy(x).float())
    assert ds.info.num_classes == 0 and ds.info.shape == (1, 3, 3)
    big, _ = load_data(f"npz:{tmp_path / 'f.npz'}", resolution=7).reference()
    assert big.shape == (2, 1, 7, 7) and big.dtype == torch.float32
    assert -1 <= big.min() and big.max() <= 1 and big.min() < -0.9 and big.max() > 0.9
    np.savez(tmp_path / "g.npz", arr_0=(x * 2).astype(np.float32))
    with pytest.raises(DataError, match=r"\[-1, 1\]"):
        load_data(f"npz:{tmp_path / 'g.npz'}")


@pytest.mark.parametrize("arrays, match", [
    ({"z": np.zeros((2, 4, 4, 3), np.uint8)}, "no image array"),
    ({"x": np.zeros((2, 3, 4, 4), np.uint8)}, "NHWC"),
    ({"x": np.zeros((2, 4, 4, 3), np.float32)}, "NCHW"),
    ({"x": np.zeros((2, 4, 4, 3), np.int32)}, "dtype"),
    ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.zeros(3, np.int64)}, "integers"),
    ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.zeros(2, np.float32)}, "integers"),
])
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "e.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_data(f"npz:{tmp_path / 'e.npz'}")


def test_npz_rejects_pickled_objects(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"junk")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    for f in ("obj.npz", "junk.npz"):
        with pytest.raises(DataError, match="cannot read npz"):
            load_data(f"npz:{tmp_path / f}")


# --- latents ---------------------------------------------------------------------------


def test_latents_are_loaded_as_stored(tmp_path):
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(6, 4, 4, 4)) * 5).astype(np.float32)  # SD-VAE-like: 4 channels, past ±1
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "lat.npz", latents=z, y=y)
    ds = load_data(f"latents:{tmp_path / 'lat.npz'}", flip=True)
    assert ds.info.kind == "latent" and ds.info.shape == (4, 4, 4) and ds.info.num_classes == 3
    assert "as stored" in ds.info.scaling and ds.info.options == {"flip": True}
    xr, yr = ds.reference()
    assert torch.equal(xr, torch.from_numpy(z)) and yr.tolist() == y.tolist()  # no clamp, no rescale
    xb, _ = ds.draw(64, gen(0))
    assert xb.abs().max() > 1 and {tuple(v.shape) for v in xb} == {(4, 4, 4)}
    info = DataInfo.from_dict(ds.info.to_dict())
    assert info == ds.info


@pytest.mark.parametrize("arrays, options, match", [
    ({"x": np.zeros((2, 4, 3, 3), np.uint8)}, {}, "float array NCHW"),
    ({"x": np.zeros((2, 9), np.float32)}, {}, "float array NCHW"),
    ({"x": np.full((2, 4, 3, 3), np.nan, np.float32)}, {}, "NaN or inf"),
    ({"z": np.zeros((2, 4, 3, 3), np.float32)}, {}, "no latent array"),
    ({"x": np.zeros((2, 4, 3, 3), np.float32)}, {"resolution": 8}, "flip only"),
])
def test_latents_errors(tmp_path, arrays, options, match):
    np.savez(tmp_path / "e.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_data(f"latents:{tmp_path / 'e.npz'}", **options)
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"latents:{tmp_path / 'missing.npz'}")


def test_npz_refuses_latents_with_a_pointer_to_latents_spec(tmp_path):
    """Float images outside [-1, 1] (or with 4 channels) are not silently clamped: one line
    saying what npz: takes and where such data goes."""
    np.savez(tmp_path / "wide.npz", x=np.full((2, 3, 4, 4), 3.5, np.float32))
    np.savez(tmp_path / "four.npz", x=np.zeros((2, 4, 4, 4), np.float32))
    for f in ("wide.npz", "four.npz"):
        with pytest.raises(DataError, match="latents:PATH") as e:
            load_data(f"npz:{tmp_path / f}")
        assert "\n" not in str(e.value)
    assert load_data(f"latents:{tmp_path / 'wide.npz'}").reference()[0].max() == 3.5


# --- CIFAR-10 --------------------------------------------------------------------------


def test_cifar10(cifar_dir):
    root, x, y = cifar_dir
    ds = load_data(f"cifar10:{root.parent}")  # the parent directory works too
    assert ds.info.shape == (3, 32, 32) and ds.info.num_classes == 10
    assert ds.info.options["classes"] == list(CIFAR10_CLASSES)
    xtr, ytr = ds.reference(split="train")
    xte, yte = ds.reference(split="test")
    assert xtr.shape == (20, 3, 32, 32) and xte.shape == (10, 3, 32, 32)
    # R, G, B planes of a row-major 32x32 image -> NCHW
    assert torch.equal(xtr, torch.from_numpy(x[:20]).float() / 127.5 - 1)
    assert torch.equal(xte, torch.from_numpy(x[20:]).float() / 127.5 - 1)
    assert ytr.tolist() == y[:20].tolist() and yte.tolist() == y[20:].tolist()
    xb, yb = ds.draw(16, gen(0))
    assert xb.shape == (16, 3, 32, 32) and yb.dtype == torch.int64
    assert -1 <= xb.min() and xb.max() <= 1


def test_cifar10_missing_batches(cifar_dir):
    root, _, _ = cifar_dir
    (root / "test_batch").unlink()
    ds = load_data(f"cifar10:{root}", resolution=16)
    assert ds.info.shape == (3, 16, 16)
    with pytest.raises(DataError, match="test_batch"):
        ds.reference(split="test")
    for i in (1, 2):
        (root / f"data_batch_{i}").unlink()
    with pytest.raises(DataError, match="data_batch"):
        load_data(f"cifar10:{root}")


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_cifar10_malicious_pickle_not_executed(tmp_path, protocol):
    root = tmp_path / "evil"
    root.mkdir()
    marker = tmp_path / "pwned"
    with open(root / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(marker), b"labels": [0]}, f, protocol=protocol)
    with pytest.raises(DataError, match=r"forbidden global (posix|os)\.system"):
        load_data(f"cifar10:{root}")
    assert not marker.exists()


def test_safe_unpickle_refuses_other_globals(tmp_path):
    f = tmp_path / "p"
    f.write_bytes(pickle.dumps({b"x": Path("/etc")}, protocol=2))
    with pytest.raises(DataError, match="pathlib"):
        safe_unpickle(f)
    f.write_bytes(pickle.dumps(np.arange(3), protocol=5))  # out-of-band style: _frombuffer
    with pytest.raises(DataError, match="forbidden global"):
        safe_unpickle(f)
    f.write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="cannot unpickle"):
        safe_unpickle(f)
    f.write_bytes(pickle.dumps([np.arange(3, dtype=np.int16), b"ok"], protocol=4))
    a, b = safe_unpickle(f)
    assert a.tolist() == [0, 1, 2] and b == b"ok"


def test_a_student_sees_its_teachers_images():
    """A student's data is its teacher's spec at the teacher's resolution and crop (GDD on a
    16 x 16 teacher drew 20 x 20 images before); flip stays the student's own choice."""
    teacher = {"resolution": 16, "center_crop": True, "flip": True, "classes": ["a", "b"]}
    assert loader_options(teacher) == {"resolution": 16, "center_crop": True}
    assert loader_options({"resolution": None, "center_crop": False}) == {}
    got = student_data({"spec": "digits", "options": {"flip": False}}, "folder:/x", teacher)
    assert got == {"spec": "folder:/x", "options": {"flip": False, "resolution": 16, "center_crop": True}}
    with pytest.raises(DataError, match="resolution=32.*16"):
        student_data({"spec": "digits", "options": {"resolution": 32}}, "folder:/x", teacher)
