"""Export of a one-step generator: the TorchScript (or ONNX) file gives the generator's samples."""

from __future__ import annotations

import pytest
import torch

import slimstep
from slimstep import checkpoint as ckpt
from slimstep.cli import main
from slimstep.config import load_config
from slimstep.data import DataInfo
from slimstep.errors import ConfigError
from slimstep.export import ExportError, export
from slimstep.generator import Generator, seeded_noise
from slimstep.nets import build_net
from slimstep.spec.sampling import KINDS
from slimstep.train.loop import train

# torch 2.13 deprecates torch.jit.save / load; TorchScript is the format under test
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")

DIGITS = DataInfo("digits", "image", (1, 8, 8), 10, "uint8/127.5-1")
CONDITIONAL = {  # class-conditional image models, one per one-step rule
    "unet-velocity-cfg": ({"name": "unet", "in_shape": [1, 8, 8], "num_classes": 10, "nf": 8,
                           "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4]},
                          {"kind": "velocity", "solver": "euler", "steps": 1, "cfg_scale": 2.0}),
    "dit-flowmap": ({"name": "dit", "in_shape": [1, 8, 8], "num_classes": 10, "hidden_size": 16,
                     "depth": 2, "num_heads": 2, "extra_time_embeds": 1},
                    {"kind": "flowmap", "nfe": 1, "t": 0.0, "s": 0.5}),
    "shared-block-slt": ({"name": "shared_block", "in_shape": [1, 8, 8], "num_classes": 10,
                          "hidden_size": 16, "num_heads": 2, "steps": 2, "patches": 2,
                          "frequency_embedding_size": 32},
                         {"kind": "slt", "nfe": 1, "t": 0.0, "s": 1.0}),
    "shared-block-slt-gap": ({"name": "shared_block", "in_shape": [1, 8, 8], "num_classes": 10,
                              "hidden_size": 16, "num_heads": 2, "steps": 3, "patches": 2,
                              "frequency_embedding_size": 32, "depth": "gap"},
                             {"kind": "slt", "nfe": 1, "t": 0.0, "s": 1.0}),
}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A toy flow-matching teacher (MLP on moons) that samples with 4 Euler steps."""
    cfg = load_config(None, {
        "data": {"spec": "toy2d:moons"},
        "net": {"name": "mlp", "hidden": 16, "depth": 1, "time_dim": 8},
        "train": {"steps": 4, "batch_size": 16, "lr": 1e-2, "ckpt_every": 4, "warmup": 0},
        "sample": {"solver": "euler", "steps": 4}})
    return train(cfg, tmp_path_factory.mktemp("export") / "teacher", progress=False)


def _checkpoint(out, name: str):
    """A conditional one-step checkpoint with random (non-zero-init) weights: a trained
    adaLN-Zero net after a few steps is nearly the identity, which tests nothing."""
    spec, sampling = CONDITIONAL[name]
    torch.manual_seed(0)
    net = build_net(spec)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    ckpt.save_model(out, net, {"net": spec, "data": DIGITS.to_dict(), "generator": sampling,
                               "method": {"name": name}})
    return out


def _no_temp_files(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_one_euler_step_toy_model_exports_to_the_same_samples(teacher, tmp_path):
    gen = slimstep.load(teacher).with_sampling(steps=1)
    assert gen.nfe == 1 and gen.num_classes == 0
    out = export(gen, tmp_path / "gen.pt")
    assert out == tmp_path / "gen.pt" and _no_temp_files(tmp_path)
    m = torch.jit.load(str(out))
    x, _ = gen.generate(7, seed=5)  # per-seed noise; a batch size other than the traced one
    z, _ = seeded_noise((2,), list(range(5, 12)))
    with torch.no_grad():
        torch.testing.assert_close(m(z), x, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(m(z), z + gen.net(z, torch.zeros(7)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(CONDITIONAL))
def test_class_conditional_one_step_models_export_with_labels(name, tmp_path):
    gen = slimstep.load(_checkpoint(tmp_path / "ckpt", name))
    assert gen.nfe == 1 and gen.num_classes == 10
    m = torch.jit.load(str(export(gen, tmp_path / "gen.pt")))
    x, y = gen.generate(5, seed=3)
    z, y2 = seeded_noise((1, 8, 8), list(range(3, 8)), 10)
    assert torch.equal(y, y2)
    with torch.no_grad():
        got = m(z, y)
        torch.testing.assert_close(got, x, rtol=1e-6, atol=1e-6)
        assert (got - z).abs().mean() > 0.1  # the network really contributes
        # the labels matter, and y = num_classes is the null class the generator uses without y
        assert not torch.allclose(m(z, (y + 1) % 10), got)
        null = torch.full((5,), 10)
        torch.testing.assert_close(m(z, null), gen(z), rtol=1e-6, atol=1e-6)


def test_multi_step_generators_are_refused(teacher, tmp_path):
    gen = slimstep.load(teacher)
    for g, what in [(gen, "euler 4 step"), (gen.with_sampling(steps=1, solver="heun"), "NFE 2"),
                    (gen.with_sampling(solver="dopri5"), "adaptive")]:
        with pytest.raises(ExportError, match="--steps 1") as e:
            export(g, tmp_path / "gen.pt")
        assert what in str(e.value)
    assert isinstance(e.value, ValueError)
    flowmap = Generator(gen.net, gen.info, {"kind": "flowmap", "nfe": 2})
    with pytest.raises(ExportError, match="NFE is 2"):
        export(flowmap, tmp_path / "gen.pt")
    assert not list(tmp_path.iterdir())  # nothing written, no temp file left


def test_unknown_rules_and_formats_are_refused(teacher, tmp_path, monkeypatch):
    gen = slimstep.load(teacher).with_sampling(steps=1)
    with pytest.raises(ExportError, match="format"):
        export(gen, tmp_path / "gen.x", fmt="tflite")
    # the kinds are a closed set (slimstep.spec.sampling), refused when the generator is made:
    # no generator, so no export, of a rule nothing can sample
    assert set(KINDS) == {"velocity", "flowmap", "meanflow", "slt"}
    with pytest.raises(ConfigError, match="unknown generator kind 'nope'"):
        Generator(gen.net, gen.info, {"kind": "nope"})
    real = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda n, *a: None if n == "onnxscript" else real(n, *a))
    with pytest.raises(ExportError, match="pip install .*onnxscript"):
        export(gen, tmp_path / "gen.onnx", fmt="onnx")
    assert not list(tmp_path.iterdir())


def test_onnx_file_gives_the_same_samples(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    gen = slimstep.load(_checkpoint(tmp_path / "ckpt", "unet-velocity-cfg"))
    out = export(gen, tmp_path / "gen.onnx", fmt="onnx")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["z", "y"]
    x, y = gen.generate(5, seed=3)
    z, _ = seeded_noise((1, 8, 8), list(range(3, 8)), 10)
    got = sess.run(["x"], {"z": z.numpy(), "y": y.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), x, rtol=1e-4, atol=1e-5)


def test_cli_export(teacher, tmp_path, capsys):
    out = tmp_path / "gen.pt"
    assert main(["export", "--ckpt", str(teacher), "--out", str(out), "--steps", "1"]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    z = torch.randn(3, 2)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(out))(z),
                                   slimstep.load(teacher).with_sampling(steps=1)(z), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("argv,msg", [
    (["--ckpt", "{teacher}"], "--steps 1"),  # the teacher samples with 4 steps
    (["--ckpt", "{teacher}", "--steps", "1", "--solver", "heun"], "NFE 2"),
    (["--ckpt", "{tmp}/missing"], "not a slimstep checkpoint"),
])
def test_cli_export_mistakes_are_one_line_and_exit_2(argv, msg, teacher, tmp_path, capsys):
    argv = [a.replace("{teacher}", str(teacher)).replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["export", *argv, "--out", str(tmp_path / "gen.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimstep: error:") and msg in err and "\n" not in err
    assert not (tmp_path / "gen.pt").exists()


def test_sampling_needs_no_method_module():
    """The one-step rules live in slimstep.onestep: loading and sampling a checkpoint (or
    exporting it) imports no method, so no rule depends on an import side effect."""
    import subprocess
    import sys

    code = ("import sys, slimstep.generator, slimstep.export; "
            "print(sorted(m for m in sys.modules if m.startswith('slimstep.methods')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
