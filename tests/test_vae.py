"""vae:VAE_DIR:DATA: an image set encoded once by a local diffusers VAE (a tiny random
AutoencoderKL in the real save_pretrained layout), resumable, decoded to be scored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from slimstep.cli import main  # noqa: E402
from slimstep.data import DataError, load_data  # noqa: E402
from slimstep.data import vae as vae_data  # noqa: E402
from slimstep.eval import evaluate  # noqa: E402


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=16)
    out = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(out)  # config.json + diffusion_pytorch_model.safetensors
    return out


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMSTEP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_refusals_are_one_line(tmp_path, tiny_vae, image_folder):
    folder = image_folder(tmp_path / "imgs", n=12, size=16)
    for spec, msg in [
        (f"vae:stabilityai/sd-vae-ft-mse:folder:{folder}", "never from the hub"),
        (f"vae:{tiny_vae}", "vae:VAE_DIR:DATA"),
        (f"vae:{tmp_path}:folder:{folder}", "safetensors weights"),
        (f"vae:{tiny_vae}:toy2d:moons", "must be images"),
    ]:
        with pytest.raises(DataError, match=msg) as e:
            load_data(spec)
        assert "\n" not in str(e.value)
    bin_only = tmp_path / "bin-vae"
    bin_only.mkdir()
    (bin_only / "config.json").write_text((tiny_vae / "config.json").read_text())
    (bin_only / "diffusion_pytorch_model.bin").write_bytes(b"a pickle")
    with pytest.raises(DataError, match="never read"):
        load_data(f"vae:{bin_only}:folder:{folder}")


def test_images_that_cannot_round_trip_are_refused_before_training(tmp_path, tiny_vae, image_folder, capsys):
    odd = image_folder(tmp_path / "odd", n=12, size=9)  # 9x9: the 2x VAE would decode 10x10
    with pytest.raises(DataError, match="9x9 images; the VAE .* downsamples by 2"):
        load_data(f"vae:{tiny_vae}:folder:{odd}")
    grey = tmp_path / "grey.npz"
    np.savez(grey, x=np.zeros((12, 1, 16, 16), np.float32))
    with pytest.raises(DataError, match="has 1-channel images, the VAE .* takes 3"):
        load_data(f"vae:{tiny_vae}:npz:{grey}")
    out = tmp_path / "t"
    assert main(["teacher", "--config", "digits/teacher", "--out", str(out), "--quiet", "train.steps=2",
                 f"data=vae:{tiny_vae}:folder:{odd}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimstep: error:") and "\n" not in err and "downsamples by 2" in err, err
    assert not out.exists()


def test_latents_encoded_once_scaled_and_resumed(tmp_path, tiny_vae, image_folder, cache, monkeypatch):
    import safetensors.torch

    folder = image_folder(tmp_path / "imgs", n=24, size=16)
    spec = f"vae:{tiny_vae}:folder:{folder}"
    monkeypatch.setattr(vae_data, "SHARD", 10)  # 24 images: three shards
    real = safetensors.torch.save  # shards are serialised in memory, then written (slimstep.files)
    calls = []

    def dies_on_the_second_shard(tensors, metadata=None):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(tensors, metadata)

    monkeypatch.setattr(safetensors.torch, "save", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        load_data(spec)
    (key,) = [p for p in (cache / "latents").iterdir()]
    man = json.loads((key / "manifest.json").read_text())
    assert man["shards"] == ["shard-00000.safetensors"] and not man["complete"]
    first = (key / "shard-00000.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(safetensors.torch, "save", real)
    ds = load_data(spec)
    man = json.loads((key / "manifest.json").read_text())
    assert man["complete"] and len(man["shards"]) == 3 and man["n"] == 24
    assert (key / "shard-00000.safetensors").stat().st_mtime_ns == first  # kept, not redone
    assert man["vae_sha256"] == vae_data.vae_sha(tiny_vae) and man["data"] == f"folder:{folder}"
    assert ds.info.kind == "latent" and ds.info.shape == (4, 8, 8) and ds.info.num_classes == 2
    # the latents are the VAE's posterior means times its scaling factor, in the folder's order
    vae = vae_data.load_vae(str(tiny_vae.resolve()), man["vae_sha256"])
    images = load_data(f"folder:{folder}")
    want = vae.encode(images.take(torch.arange(24))).latent_dist.mean * vae.config.scaling_factor
    z, y = ds.reference(split="train")
    assert torch.allclose(z, want, atol=1e-5) and torch.equal(y, images.y)
    image_folder(tmp_path / "imgs", n=26, size=16)  # two more images: the cache no longer matches
    with pytest.raises(DataError, match="the data changed since they were encoded"):
        load_data(spec)


def test_train_sample_and_score_through_the_vae(tmp_path, tiny_vae, image_folder, capsys):
    folder = image_folder(tmp_path / "imgs", n=24, size=20)
    spec = f"vae:{tiny_vae}:folder:{folder}"
    assert main(["teacher", "--config", "images/teacher-16", "--out", str(tmp_path / "t"), "--quiet",
                 f"data.spec={spec}", "net.nf=8", "net.ch_mult=[1]", "net.num_res_blocks=1",
                 "net.attn_resolutions=[]", "train.steps=2", "train.batch_size=4", "train.warmup=0"]) == 0
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert cfg["data"]["shape"] == [4, 8, 8] and cfg["data"]["options"]["resolution"] == 16
    assert main(["sample", "--ckpt", str(tmp_path / "t"), "--n", "12", "--steps", "1", "--solver", "euler",
                 "--out", str(tmp_path / "s.npz")]) == 0
    s = np.load(tmp_path / "s.npz")
    assert s["samples"].shape == (12, 3, 16, 16) and s["latents"].shape == (12, 4, 8, 8)
    assert str(s["data"]) == f"folder:{folder}" and str(s["latent_data"]) == spec
    assert np.abs(s["samples"]).max() <= 1
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--out", str(tmp_path / "r.json")]) == 0
    images = json.loads((tmp_path / "r.json").read_text())
    direct = evaluate(torch.from_numpy(s["latents"]), spec, data_options={"resolution": 16})
    assert direct["metrics"]["swd"] == pytest.approx(images["metrics"]["swd"], rel=1e-5)
    assert any("decoded by the VAE" in n["text"] for n in direct["notes"])
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(tmp_path / "t"), "--n", "12", "--steps", "1", "--solver", "euler"]) == 0
    assert "swd" in capsys.readouterr().out
