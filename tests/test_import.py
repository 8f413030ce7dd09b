"""slimstep import: SiT / DiT / FreeFlow state dicts in their official layouts (random
weights, tiny) against an independent reference forward written here; the EDM reader's
refusals (EDM's networks: tests/test_import_edm.py); bad inputs are one line, exit 2, nothing
written; training from an import."""

import argparse
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_checks import nothing_written, one_error_line
from safetensors.torch import save_file

import slimstep
from slimstep import checkpoint as ckpt
from slimstep.cli import main
from slimstep.importers import TeacherImportError, import_teacher
from slimstep.importers.safe_pickle import TensorUnpickler, UnsafePickleError, safe_load

C, SIDE, P, D, DEPTH, HEADS, K = 1, 8, 2, 32, 2, 4, 10  # digits-shaped: 1x8x8, 10 classes

# ----------------------------------------------------------------------------- official layout


def official_state_dict(learn_sigma: bool = True, extra: tuple[str, ...] = (), seed: int = 0,
                        std: float = 0.2) -> dict[str, torch.Tensor]:
    """Random weights under the names and shapes of DiT's / SiT's models.py (and FreeFlow's
    extra ``dt_embedder`` / ``gw_embedder``), written from the official layout, not from
    slimstep's modules."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * std  # noqa: E731
    c_out = 2 * C if learn_sigma else C
    T = (SIDE // P) ** 2
    sd = {"x_embedder.proj.weight": r(D, C, P, P), "x_embedder.proj.bias": r(D),
          "pos_embed": r(1, T, D), "y_embedder.embedding_table.weight": r(K + 1, D)}
    for emb in ("t_embedder", *extra):
        sd.update({f"{emb}.mlp.0.weight": r(D, 256), f"{emb}.mlp.0.bias": r(D),
                   f"{emb}.mlp.2.weight": r(D, D), f"{emb}.mlp.2.bias": r(D)})
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update({b + "attn.qkv.weight": r(3 * D, D), b + "attn.qkv.bias": r(3 * D),
                   b + "attn.proj.weight": r(D, D), b + "attn.proj.bias": r(D),
                   b + "mlp.fc1.weight": r(4 * D, D), b + "mlp.fc1.bias": r(4 * D),
                   b + "mlp.fc2.weight": r(D, 4 * D), b + "mlp.fc2.bias": r(D),
                   b + "adaLN_modulation.1.weight": r(6 * D, D), b + "adaLN_modulation.1.bias": r(6 * D)})
    sd.update({"final_layer.linear.weight": r(P * P * c_out, D), "final_layer.linear.bias": r(P * P * c_out),
               "final_layer.adaLN_modulation.1.weight": r(2 * D, D),
               "final_layer.adaLN_modulation.1.bias": r(2 * D)})
    return sd


def reference_forward(sd, x, t, y, conds=()):
    """The official DiT forward, functionally, in float64: patchify conv + pos_embed;
    c = Σ TimestepEmbedder(scalar) + class row; adaLN-Zero blocks (timm attention, GELU-tanh
    MLP, LayerNorm eps 1e-6 without affine); final adaLN layer; official unpatchify.
    ``conds``: extra (embedder prefix, scalar [B]) pairs summed into c."""
    sd = {k: v.double() for k, v in sd.items()}
    x, t = x.double(), t.double()
    lin = lambda h, name: F.linear(h, sd[name + ".weight"], sd[name + ".bias"])  # noqa: E731
    ln = lambda h: F.layer_norm(h, h.shape[-1:], eps=1e-6)  # noqa: E731
    mod = lambda h, sh, sc: h * (1 + sc[:, None]) + sh[:, None]  # noqa: E731

    def temb(prefix, v):
        half = 128
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
        a = v.double()[:, None] * freqs[None]
        e = torch.cat([torch.cos(a), torch.sin(a)], dim=-1)
        return lin(F.silu(lin(e, prefix + ".mlp.0")), prefix + ".mlp.2")

    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=P)
    h = h.flatten(2).transpose(1, 2) + sd["pos_embed"]
    c = temb("t_embedder", t) + sd["y_embedder.embedding_table.weight"][y]
    for prefix, v in conds:
        c = c + temb(prefix, v)
    B, N, _ = h.shape
    for i in range(DEPTH):
        b = f"blocks.{i}."
        s1, c1, g1, s2, c2, g2 = lin(F.silu(c), b + "adaLN_modulation.1").chunk(6, dim=1)
        q, k, v = lin(mod(ln(h), s1, c1), b + "attn.qkv").reshape(B, N, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // HEADS), dim=-1)
        h = h + g1[:, None] * lin((w @ v).transpose(1, 2).reshape(B, N, D), b + "attn.proj")
        m = lin(F.gelu(lin(mod(ln(h), s2, c2), b + "mlp.fc1"), approximate="tanh"), b + "mlp.fc2")
        h = h + g2[:, None] * m
    sh, sc = lin(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    out = lin(mod(ln(h), sh, sc), "final_layer.linear")
    g = SIDE // P
    out = out.reshape(B, g, g, P, P, -1)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(B, -1, SIDE, SIDE)


def inputs(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, SIDE, SIDE, generator=g), torch.randint(K, (n,), generator=g)


# ----------------------------------------------------------------------------- SiT


def test_sit_velocity_matches_reference(tmp_path, capsys):
    sd = official_state_dict(learn_sigma=True)
    src = tmp_path / "SiT-tiny.pt"  # a train.py checkpoint: model, ema, opt, args
    torch.save({"model": official_state_dict(seed=9), "ema": sd, "opt": {"step": 3},
                "args": argparse.Namespace(model="SiT-tiny", lr=1e-4)}, src)
    out = tmp_path / "sit"
    assert main(["import", "--format", "sit", str(src), "--out", str(out), "--data", "digits",
                 "num_heads=4"]) == 0
    gen = slimstep.load(out)
    cfg = ckpt.read_config(out)
    imp = cfg["import"]
    assert imp["container"] == "ema" and imp["tensors"] == imp["tensors_used"] == len(sd)
    assert cfg["net"]["name"] == "dit" and cfg["net"]["time_scale"] == 1.0
    assert cfg["net"]["learn_sigma"] is True and cfg["generator"]["kind"] == "velocity"
    assert imp["adapter"]["name"] == "identity" and cfg["data"]["spec"] == "digits"
    x, y = inputs()
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    with torch.no_grad():
        v = gen.net(x, t, y)
    want = reference_forward(sd, x, t, y)[:, :C]  # SiT's forward drops the learn-sigma half
    err = (v.double() - want).abs().max().item()
    print(f"SiT velocity max |diff| = {err:.2e} (max |v| = {want.abs().max():.1f})")
    assert err < 1e-5
    with torch.no_grad():  # in float64 the map is exact: what is left above is float32 rounding
        err64 = (gen.net.double()(x.double(), t.double(), y) - want).abs().max().item()
    gen.net.float()
    print(f"SiT velocity float64 max |diff| = {err64:.2e}")
    assert err64 < 1e-10
    # a safetensors file of the same weights imports to the same checkpoint weights
    st = tmp_path / "sit.safetensors"
    save_file(sd, str(st))
    import_teacher("sit", st, tmp_path / "sit2", options={"num_heads": 4})
    v2 = slimstep.load(tmp_path / "sit2").net(x, t, y)
    assert torch.equal(v, v2.detach())


def test_published_size_needs_no_heads_and_unpublished_does(tmp_path):
    src = tmp_path / "sit.pt"
    torch.save(official_state_dict(), src)
    with pytest.raises(TeacherImportError, match="pass num_heads=N"):
        import_teacher("sit", src, tmp_path / "o")
    nothing_written(tmp_path / "o")


# ----------------------------------------------------------------------------- DiT (VP eps)


def dit_reference_velocity(sd, x, t, y):
    """The documented adapter, computed independently with numpy's interp: DiT's linear
    schedule (ADM: betas linspace(1e-4, 0.02, 1000)), σ = (1-t)/t, n by linear interpolation
    in log σ, x_vp = sqrt(ᾱ) x / t, v = (x - ε(x_vp, n)) / t, t clamped to the trained σ range."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar = np.cumprod(1 - betas)
    log_sig = 0.5 * np.log((1 - abar) / abar)
    sig = np.exp(log_sig)
    td = np.clip(t.double().numpy(), 1 / (1 + sig[-1]), 1 / (1 + sig[0]))  # the trained range
    sigma = (1 - td) / td
    n = np.interp(np.log(sigma), log_sig, np.arange(1000.0))
    a = 1 / (1 + sigma ** 2)
    x_vp = x.double() * torch.from_numpy(np.sqrt(a) / td)[:, None, None, None]
    eps = reference_forward(sd, x_vp, torch.from_numpy(n), y)[:, :C]
    return (x.double() - eps) / torch.from_numpy(td)[:, None, None, None]


def test_dit_eps_through_the_vp_adapter(tmp_path):
    sd = official_state_dict(learn_sigma=True, seed=3)
    src = tmp_path / "DiT-tiny.pt"
    torch.save(sd, src)
    out = import_teacher("dit", src, tmp_path / "dit", options={"num_heads": 4})
    gen = slimstep.load(out)
    cfg = ckpt.read_config(out)
    assert cfg["net"]["name"] == "dit_vp_eps" and cfg["import"]["adapter"]["num_timesteps"] == 1000
    # t on the timestep grid (n = 0, 500, 999: no interpolation) and between rows
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    grid = [1 / (1 + math.sqrt((1 - abar[n]) / abar[n])) for n in (0, 500, 999)]
    t = torch.tensor(grid + [0.3, 0.77], dtype=torch.float32)
    x, y = inputs()
    with torch.no_grad():
        v = gen.net(x, t, y)
    want = dit_reference_velocity(sd, x, t, y)
    diff, scale = (v.double() - want).abs().max().item(), want.abs().max().item()
    print(f"DiT eps->velocity max |diff| = {diff:.2e} (max |v| = {scale:.1f}, 1/t up to 157)")
    assert diff / scale < 1e-6
    with torch.no_grad():
        diff64 = (gen.net.double()(x.double(), t.double(), y) - want).abs().max().item()
    gen.net.float()
    print(f"DiT eps->velocity float64 max |diff| = {diff64:.2e}")
    assert diff64 / scale < 1e-10
    # outside the trained range t is clamped: t = 0 is the velocity at t_min
    with torch.no_grad():
        v0 = gen.net(x, torch.zeros(5), y)
        vmin = gen.net(x, torch.full((5,), gen.net.t_min), y)
    assert torch.equal(v0, vmin) and torch.isfinite(v0).all()
    assert 0.006 < gen.net.t_min < 0.0065 and 0.98 < gen.net.t_max < 0.995


# ----------------------------------------------------------------------------- FreeFlow


@pytest.mark.parametrize("time", ["sit", "repa"])
def test_freeflow_flow_map(tmp_path, time):
    sd = official_state_dict(learn_sigma=(time == "sit"), extra=("dt_embedder", "gw_embedder"), seed=5)
    src = tmp_path / ("FreeFlow-REPA.pt" if time == "repa" else "FreeFlow.pt")
    torch.save(sd, src)
    out = import_teacher("freeflow", src, tmp_path / "ff", options={"num_heads": 4, "guidance": 1.5})
    cfg = ckpt.read_config(out)
    assert cfg["import"]["adapter"]["time"] == time  # from the file name, FreeFlow's own rule
    assert cfg["import"]["renamed"]["s_embedder.mlp.0.weight"] == "dt_embedder.mlp.0.weight"
    assert cfg["generator"] == {"kind": "flowmap", "nfe": 1, "t": 0.0, "s": 1.0}
    gen = slimstep.load(out)
    z, y = inputs()
    with torch.no_grad():
        x = gen(z, y)
    # FreeFlow's sample.py: t = 0 (SiT time) or 1 (REPA time), dt = 1, gw = cfg,
    # z + direction * dt * pred with direction +1 / -1
    t_ff, sign = (0.0, 1.0) if time == "sit" else (1.0, -1.0)
    ones = torch.ones(5)
    pred = reference_forward(sd, z, torch.full((5,), t_ff), y,
                             conds=[("dt_embedder", ones), ("gw_embedder", 1.5 * ones)])[:, :C]
    want = z.double() + sign * 1.0 * pred
    err = (x.double() - want).abs().max().item()
    print(f"FreeFlow ({time}) one-step max |diff| = {err:.2e} (max |x| = {want.abs().max():.1f})")
    assert err / want.abs().max().item() < 1e-5
    with torch.no_grad():
        gen.net.double()
        x64 = z.double() + gen.net(z.double(), torch.zeros(5, dtype=torch.float64), y,
                                   s=torch.ones(5, dtype=torch.float64))
    err64 = (x64 - want).abs().max().item()
    print(f"FreeFlow ({time}) float64 max |diff| = {err64:.2e}")
    assert err64 < 1e-10


def test_freeflow_and_sit_formats_are_not_confused(tmp_path):
    ff = tmp_path / "ff.pt"
    torch.save(official_state_dict(extra=("dt_embedder", "gw_embedder")), ff)
    with pytest.raises(TeacherImportError, match="--format freeflow"):
        import_teacher("sit", ff, tmp_path / "o", options={"num_heads": 4})
    sit = tmp_path / "sit.pt"
    torch.save(official_state_dict(), sit)
    with pytest.raises(TeacherImportError, match="no dt_embedder"):
        import_teacher("freeflow", sit, tmp_path / "o", options={"num_heads": 4})


# ----------------------------------------------------------------------------- bad inputs


def test_missing_and_extra_tensors_are_named(tmp_path, capsys):
    sd = official_state_dict()
    del sd["blocks.1.mlp.fc2.bias"]
    src = tmp_path / "missing.pt"
    torch.save(sd, src)
    out = tmp_path / "out"
    assert main(["import", "--format", "sit", str(src), "--out", str(out), "num_heads=4"]) == 2
    line = one_error_line(capsys)
    assert "1 missing: blocks.1.mlp.fc2.bias" in line
    nothing_written(out)
    sd = official_state_dict()
    sd["decoder.extra.weight"] = torch.zeros(3)
    torch.save(sd, src)
    assert main(["import", "--format", "sit", str(src), "--out", str(out), "num_heads=4"]) == 2
    assert "unused: decoder.extra.weight" in one_error_line(capsys)
    nothing_written(out)


def test_bad_inputs_are_one_line(tmp_path, capsys):
    good = tmp_path / "sit.pt"
    torch.save(official_state_dict(), good)
    out = tmp_path / "out"
    # unknown format (argparse) and via the API
    assert main(["import", "--format", "onnx", str(good), "--out", str(out)]) == 2
    assert "invalid choice" in one_error_line(capsys)
    with pytest.raises(TeacherImportError, match="unknown format"):
        import_teacher("onnx", good, out)
    # unknown option
    assert main(["import", "--format", "sit", str(good), "--out", str(out), "bogus=1"]) == 2
    assert "no option 'bogus'" in one_error_line(capsys)
    # a file of another format: a pickle that is no torch.save, a text file, safetensors as edm
    pkl = tmp_path / "net.pkl"
    pkl.write_bytes(pickle.dumps({"ema": [1, 2, 3]}, protocol=4))
    assert main(["import", "--format", "sit", str(pkl), "--out", str(out), "num_heads=4"]) == 2
    assert "weights_only=True" in one_error_line(capsys)
    txt = tmp_path / "notes.pt"
    txt.write_text("hello")
    assert main(["import", "--format", "dit", str(txt), "--out", str(out)]) == 2
    assert "neither a torch.save file nor safetensors" in one_error_line(capsys)
    st = tmp_path / "w.safetensors"
    save_file(official_state_dict(), str(st))
    assert main(["import", "--format", "edm", str(st), "--out", str(out)]) == 2
    assert "not an EDM network pickle" in one_error_line(capsys)
    # data of another shape; an --out that holds something
    assert main(["import", "--format", "sit", str(good), "--out", str(out), "num_heads=4",
                 "--data", "toy2d:moons"]) == 2
    assert "shape" in one_error_line(capsys)
    nothing_written(out)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert main(["import", "--format", "sit", str(good), "--out", str(busy), "num_heads=4"]) == 2
    assert "not an empty directory" in one_error_line(capsys)
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]


# ----------------------------------------------------------------------------- EDM reader


class _WritesAFile:
    """A pickle payload: unpickling it with plain pickle creates ``path``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "pwned"))


def test_unsafe_pickle_is_refused_without_running(tmp_path, capsys):
    control = tmp_path / "control.txt"
    pickle.loads(pickle.dumps({"ema": _WritesAFile(control)}))  # the payload is real...
    assert control.read_text() == "pwned"
    marker = tmp_path / "marker.txt"
    src = tmp_path / "network-snapshot.pkl"
    src.write_bytes(pickle.dumps({"ema": _WritesAFile(marker), "w": torch.ones(2)}))
    out = tmp_path / "out"
    assert main(["import", "--format", "edm", str(src), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "refused" in line and "write_text" in line
    assert not marker.exists()  # ...and the restricted reader never ran it
    nothing_written(out)
    with pytest.raises(UnsafePickleError):
        safe_load(src)
    for payload in (b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.",
                    b"\x80\x04cbuiltins\neval\n(S'1'\ntR."):
        with pytest.raises(UnsafePickleError):
            TensorUnpickler(__import__("io").BytesIO(payload)).load()
    assert not marker.exists()


def test_safe_reader_rebuilds_tensors_and_containers(tmp_path, capsys):
    obj = {"w": torch.randn(3, 4), "p": torch.nn.Parameter(torch.randn(2)),
           "h": torch.randn(5).half(), "view": torch.randn(4, 4)[1:, ::2],
           "nested": [{"k": torch.arange(3)}, (1, 2.5, "s", None)]}
    src = tmp_path / "tensors.pkl"
    src.write_bytes(pickle.dumps(obj))
    back = safe_load(src)
    for k in ("w", "p", "h", "view"):
        assert torch.equal(back[k], obj[k]) and back[k].dtype == obj[k].dtype
    assert isinstance(back["p"], torch.nn.Parameter)
    assert torch.equal(back["nested"][0]["k"], torch.arange(3)) and back["nested"][1] == (1, 2.5, "s", None)
    assert main(["import", "--format", "edm", str(src), "--out", str(tmp_path / "out")]) == 2
    assert "no 'ema' in the pickle" in one_error_line(capsys)  # read, but holds no EDM network
    nothing_written(tmp_path / "out")


# ----------------------------------------------------------------------------- training from it


@pytest.fixture
def sit_teacher(tmp_path):
    src = tmp_path / "SiT-tiny.pt"
    torch.save(official_state_dict(std=0.05), src)
    out = import_teacher("sit", src, tmp_path / "sit", data="digits", options={"num_heads": 4})
    return out


@pytest.mark.parametrize("method, config", [("gdd", "configs/digits/gdd.yaml"),
                                            ("flowmap", "configs/digits/flowmap.yaml")])
def test_distill_from_an_imported_teacher(sit_teacher, tmp_path, method, config, capsys):
    out = tmp_path / method
    assert main(["distill", "--method", method, "--config", config, "--teacher", str(sit_teacher),
                 "--out", str(out), "--quiet", "train.steps=2", "train.batch_size=8",
                 "train.ckpt_every=2"]) == 0, capsys.readouterr().err
    gen = slimstep.load(out)
    x, _ = gen.generate(4, seed=0)
    assert x.shape == (4, C, SIDE, SIDE) and torch.isfinite(x).all() and gen.nfe == 1
    assert ckpt.read_config(out)["teacher"] == str(Path(sit_teacher).resolve())


def test_pair_methods_and_meanflow_train_from_a_sit_teacher(sit_teacher, tmp_path, capsys,
                                                            runs_pair_methods):
    runs_pair_methods(sit_teacher, (C, SIDE, SIDE))
    out = tmp_path / "meanflow"
    assert main(["distill", "--method", "meanflow", "--config", "configs/digits/meanflow.yaml",
                 "--teacher", str(sit_teacher), "--out", str(out), "--quiet", "train.steps=2",
                 "train.batch_size=8", "train.ckpt_every=2"]) == 0, capsys.readouterr().err
    x, _ = slimstep.load(out).generate(3, seed=0)
    assert x.shape == (3, C, SIDE, SIDE) and torch.isfinite(x).all()


def test_data_free_methods_train_from_a_teacher_imported_without_data(tmp_path, capsys):
    """flowmap and SLT read no data set (FreeFlow's point): a teacher imported without
    --data trains them; GDD, which needs real data, says so in one line."""
    src = tmp_path / "SiT-tiny.pt"
    torch.save(official_state_dict(std=0.05), src)
    sit = import_teacher("sit", src, tmp_path / "sit", options={"num_heads": 4})
    assert ckpt.read_config(sit)["data"]["spec"] == "none"
    tiny = ["--quiet", "train.steps=2", "train.batch_size=8", "train.ckpt_every=2"]
    fm = tmp_path / "fm"
    assert main(["distill", "--method", "flowmap", "--config", "digits/flowmap", "--teacher", str(sit),
                 "--out", str(fm), *tiny]) == 0, capsys.readouterr().err
    st = tmp_path / "slt"
    assert main(["distill", "--method", "slt", "--config", "digits/slt", "--teacher", str(fm),
                 "--out", str(st), *tiny, "net.patches=2", "net.steps=2"]) == 0, capsys.readouterr().err
    for out in (fm, st):
        x, _ = slimstep.load(out).generate(2, seed=0)
        assert x.shape == (2, C, SIDE, SIDE) and torch.isfinite(x).all()
        assert ckpt.read_config(out)["data"]["spec"] == "none"
    assert main(["distill", "--method", "gdd", "--config", "digits/gdd", "--teacher", str(sit),
                 "--out", str(tmp_path / "gdd"), *tiny]) == 2
    assert "imported without its data set" in one_error_line(capsys)
    assert not (tmp_path / "gdd").exists()


def test_sample_from_imported_dit_and_freeflow(tmp_path, capsys):
    src = tmp_path / "dit.pt"
    torch.save(official_state_dict(seed=2, std=0.05), src)
    dit = import_teacher("dit", src, tmp_path / "dit", options={"num_heads": 4, "steps": 4,
                                                               "solver": "euler"})
    ff_src = tmp_path / "ff.pt"
    torch.save(official_state_dict(extra=("dt_embedder", "gw_embedder"), std=0.05), ff_src)
    ff = import_teacher("freeflow", ff_src, tmp_path / "ff", options={"num_heads": 4})
    for ck, nfe in ((dit, 4), (ff, 1)):
        assert main(["sample", "--ckpt", str(ck), "--n", "3", "--out", str(tmp_path / f"s{nfe}.npz"),
                     "--device", "cpu"]) == 0  # an existing samples file is kept (no --overwrite)
        assert f"NFE {nfe}" in capsys.readouterr().out
        assert main(["info", "--ckpt", str(ck)]) == 0
        assert "import" in capsys.readouterr().out


def test_gdd_from_dit_and_slt_from_freeflow(tmp_path, capsys):
    """The VP-ε teacher trains GDD (its generator = the adapter at t = 0); the FreeFlow map
    is a one-step DiT teacher for SLT (hidden states through the wrapper)."""
    src = tmp_path / "dit.pt"
    torch.save(official_state_dict(seed=2, std=0.05), src)
    dit = import_teacher("dit", src, tmp_path / "dit", data="digits", options={"num_heads": 4})
    ff_src = tmp_path / "ff.pt"
    torch.save(official_state_dict(extra=("dt_embedder", "gw_embedder"), std=0.05), ff_src)
    ff = import_teacher("freeflow", ff_src, tmp_path / "ff", data="digits", options={"num_heads": 4})
    runs = [("gdd", "configs/digits/gdd.yaml", dit, []),
            ("slt", "configs/digits/slt.yaml", ff, ["net.patches=2", "net.steps=2"])]
    for method, config, teacher, extra in runs:
        out = tmp_path / method
        assert main(["distill", "--method", method, "--config", config, "--teacher", str(teacher),
                     "--out", str(out), "--quiet", "train.steps=2", "train.batch_size=8",
                     "train.ckpt_every=2", *extra]) == 0, capsys.readouterr().err
        x, _ = slimstep.load(out).generate(3, seed=0)
        assert x.shape == (3, C, SIDE, SIDE) and torch.isfinite(x).all()
    # flowmap / MeanFlow need a velocity network they can extend with a second time: refused
    assert main(["distill", "--method", "flowmap", "--config", "configs/digits/flowmap.yaml",
                 "--teacher", str(dit), "--out", str(tmp_path / "fm"), "--quiet"]) == 2
    assert "dit_vp_eps" in one_error_line(capsys)


@pytest.mark.parametrize("method", ["dmd2", "ect", "scd"])
def test_baselines_train_from_a_sit_teacher(sit_teacher, trains_one_step, method):
    """DMD2, ECT and sCD tune a copy of the imported SiT (t embedded unscaled, so sCD's JVP
    along t is allowed); the one-step export samples."""
    trains_one_step(sit_teacher, method, (C, SIDE, SIDE))
