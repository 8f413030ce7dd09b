"""slimstep import --format diffusers: tiny diffusers pipelines (random weights, written by
diffusers' own save_pretrained) against the diffusers model's own forward read through the
documented VP -> velocity adapter, computed independently here; ᾱ tables against diffusers'
schedulers; bad inputs one line, exit 2, nothing written; every command and GDD / GDD-I
from an imported teacher."""

import json
import math
import sys

import numpy as np
import pytest
import torch
from cli_checks import nothing_written, one_error_line
from safetensors.torch import load_file, save_file

import slimstep
from slimstep import checkpoint as ckpt
from slimstep.cli import main
from slimstep.importers import import_teacher
from slimstep.importers.diffusers_folder import VP_SCHEDULERS, read_scheduler
from slimstep.methods.gdd import frozen_fraction, gdd_i_frozen
from slimstep.nets import build_net
from slimstep.nets.vp import diffusers_alphas_cumprod
from slimstep.solvers import guided

diffusers = pytest.importorskip("diffusers")  # CI installs it (the extra); only a guard

C, SIDE, K = 1, 8, 10  # digits-shaped: 1x8x8, 10 classes
UNET = dict(sample_size=SIDE, in_channels=C, out_channels=C, block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=8,
            attention_head_dim=8)
DIT = dict(num_attention_heads=2, attention_head_dim=8, in_channels=C, out_channels=2 * C, num_layers=2,
           sample_size=SIDE, patch_size=2, num_embeds_ada_norm=K)


def perturbed(model, seed: int, std: float = 0.05):
    """diffusers' init leaves norms at 1 and some biases at 0: move every tensor, so a tensor
    loaded into the wrong place would show in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def unet(seed: int = 0):
    torch.manual_seed(seed)
    return perturbed(diffusers.UNet2DModel(**UNET), seed)


def dit(seed: int = 0):
    torch.manual_seed(seed)
    return perturbed(diffusers.DiTTransformer2DModel(**DIT), seed)


def tiny_vae():
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=C,
                                   block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                                   up_block_types=("UpDecoderBlock2D",), norm_num_groups=4,
                                   layers_per_block=1)


def ddpm_pipeline(path, model, **sched):
    diffusers.DDPMPipeline(unet=model, scheduler=diffusers.DDPMScheduler(**sched)).save_pretrained(path)
    return path


def dit_pipeline(path, model, **sched):
    diffusers.DiTPipeline(transformer=model, vae=tiny_vae(), scheduler=diffusers.DDIMScheduler(**sched),
                          id2label={i: str(i) for i in range(K)}).save_pretrained(path)
    return path


def reference_velocity(model, scheduler, x, t, y=None):
    """The documented adapter from diffusers' own definitions, in float64 scalars: ᾱ_n of the
    scheduler object, σ_n = sqrt((1-ᾱ_n)/ᾱ_n), t clamped to [1/(1+σ_max), 1/(1+σ_min)],
    σ = (1-t)/t, n by numpy interp in log σ, ᾱ = 1/(1+σ²), x_vp = sqrt(ᾱ) x_t / t; the
    model's own forward at (x_vp, n); x̂1 and ε̂ as DDPMScheduler.step / DDIMScheduler.step
    read them for the prediction type; v = x̂1 - ε̂."""
    abar = scheduler.alphas_cumprod.double().numpy()
    log_sig = 0.5 * np.log((1 - abar) / abar)
    td = np.clip(t.double().numpy(), 1 / (1 + np.exp(log_sig[-1])), 1 / (1 + np.exp(log_sig[0])))
    sigma = (1 - td) / td
    n = np.interp(np.log(sigma), log_sig, np.arange(len(abar), dtype=np.float64))
    bc = lambda a: torch.from_numpy(a)[:, None, None, None]  # noqa: E731
    a, s = bc(1 / np.sqrt(1 + sigma ** 2)), bc(sigma / np.sqrt(1 + sigma ** 2))
    dtype = next(model.parameters()).dtype
    x_vp = (x.double() * a / bc(td)).to(dtype)
    with torch.no_grad():
        out = model(x_vp, torch.from_numpy(n), class_labels=y).sample[:, :C].double()
    x_vp = x_vp.double()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        x1, eps = (x_vp - s * out) / a, out
    elif kind == "v_prediction":
        x1, eps = a * x_vp - s * out, a * out + s * x_vp
    else:
        x1, eps = out, (x_vp - a * out) / s
    return x1 - eps


def grid_and_between(scheduler):
    """slimstep times at the timesteps n = 0, N/2, N-1 (no interpolation) and three between."""
    abar = scheduler.alphas_cumprod.double()
    n = [0, len(abar) // 2, len(abar) - 1]
    grid = [1 / (1 + math.sqrt((1 - abar[i]) / abar[i])) for i in n]
    return torch.tensor(grid + [0.3, 0.77, 0.05], dtype=torch.float32)


def inputs(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, SIDE, SIDE, generator=g), torch.randint(K, (n,), generator=g)


def compare(gen, model, scheduler, x, t, y=None, label=""):
    """(float32 max |Δv|, max |v|, float64 max |Δv|) of the imported net against the reference."""
    with torch.no_grad():
        v = gen.net(x, t, y)
    want = reference_velocity(model, scheduler, x, t, y)
    diff, scale = (v.double() - want).abs().max().item(), want.abs().max().item()
    model.double()
    gen.net.double()
    with torch.no_grad():
        v64 = gen.net(x.double(), t.double(), y)
    diff64 = (v64 - reference_velocity(model, scheduler, x, t, y)).abs().max().item()
    model.float()
    gen.net.float()
    print(f"{label}: max |dv| = {diff:.2e} (max |v| = {scale:.1f}), float64 {diff64:.2e}")
    return diff, scale, diff64


# ----------------------------------------------------------------------------- ᾱ tables


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_alphas_cumprod_equal_every_vp_schedulers_own(schedule, tmp_path):
    """Bit for bit: the same float32 arithmetic as diffusers, for every scheduler class the
    importer accepts, through the scheduler_config.json route the importer reads."""
    for name in VP_SCHEDULERS:
        sched = getattr(diffusers, name)(num_train_timesteps=1000, beta_schedule=schedule,
                                         beta_start=0.00085, beta_end=0.012)
        sched.save_config(tmp_path / name)
        kwargs, prediction, record = read_scheduler(tmp_path / name / "scheduler_config.json")
        table = diffusers_alphas_cumprod(**kwargs)
        assert torch.equal(table, sched.alphas_cumprod.double()), (name, schedule)
        assert record["class"] == name and prediction == "epsilon"


def test_trained_betas_and_short_schedules(tmp_path):
    betas = np.linspace(1e-3, 0.05, 50).tolist()
    sched = diffusers.DDPMScheduler(num_train_timesteps=50, trained_betas=betas)
    assert torch.equal(diffusers_alphas_cumprod(50, trained_betas=betas), sched.alphas_cumprod.double())
    sched.save_config(tmp_path)
    kwargs, _, _ = read_scheduler(tmp_path / "scheduler_config.json")
    assert kwargs["trained_betas"] == pytest.approx(betas)
    assert torch.equal(diffusers_alphas_cumprod(**kwargs), sched.alphas_cumprod.double())


# ----------------------------------------------------------------------------- UNet2DModel


@pytest.mark.parametrize("prediction, schedule", [("epsilon", "linear"),
                                                  ("v_prediction", "squaredcos_cap_v2"),
                                                  ("sample", "scaled_linear")])
def test_unet_velocity_matches_diffusers_forward(tmp_path, prediction, schedule):
    model = unet(seed=3)
    sched_kw = dict(prediction_type=prediction, beta_schedule=schedule)
    if schedule == "scaled_linear":
        sched_kw.update(beta_start=0.00085, beta_end=0.012)
    src = ddpm_pipeline(tmp_path / "pipe", model, **sched_kw)
    out = tmp_path / "ckpt"
    assert main(["import", "--format", "diffusers", str(src), "--out", str(out)]) == 0
    cfg = ckpt.read_config(out)
    imp = cfg["import"]
    assert cfg["net"]["name"] == "diffusers_vp" and cfg["net"]["model_class"] == "UNet2DModel"
    assert cfg["net"]["model_config"]["block_out_channels"] == [16, 32]  # the diffusers config
    assert cfg["net"]["prediction"] == prediction and cfg["net"]["schedule"]["beta_schedule"] == schedule
    assert imp["tensors"] == imp["tensors_used"] == len(model.state_dict())
    assert imp["pipeline"] == "DDPMPipeline" and imp["adapter"]["prediction"] == prediction
    assert imp["scheduler"]["sampling_only"]["clip_sample"] is True  # recorded, not refused
    assert cfg["generator"]["kind"] == "velocity"
    gen = slimstep.load(out)
    for k, v in model.state_dict().items():  # every tensor where diffusers has it, unchanged
        assert torch.equal(gen.net.model.state_dict()[k], v)
    scheduler = diffusers.DDPMScheduler.from_config(json.loads((src / "scheduler" / "scheduler_config.json")
                                                               .read_text()))
    x, _ = inputs()
    t = grid_and_between(scheduler)
    diff, scale, diff64 = compare(gen, model, scheduler, x, t, label=f"UNet {prediction} {schedule}")
    assert diff <= 1e-5 * max(1.0, scale)
    assert diff64 <= 1e-12 * max(1.0, scale)
    # outside the trained range t is clamped: t = 0 is the velocity at t_min, finite
    with torch.no_grad():
        v0 = gen.net(x, torch.zeros(len(x)))
        vmin = gen.net(x, torch.full((len(x),), gen.net.vp.t_min))
    assert torch.equal(v0, vmin) and torch.isfinite(v0).all()


def test_bare_model_folder_with_scheduler_option(tmp_path, capsys):
    model = unet(seed=4)
    model.save_pretrained(tmp_path / "unet")
    sched = diffusers.DDIMScheduler(prediction_type="v_prediction", thresholding=True)
    sched.save_config(tmp_path / "sched")
    x, _ = inputs()
    t = grid_and_between(sched)
    vs = []
    for i, where in enumerate([tmp_path / "sched", tmp_path / "sched" / "scheduler_config.json"]):
        out = tmp_path / f"ckpt{i}"
        assert main(["import", "--format", "diffusers", str(tmp_path / "unet"), "--scheduler", str(where),
                     "--out", str(out), "steps=4", "solver=euler"]) == 0
        cfg = ckpt.read_config(out)
        assert cfg["import"]["pipeline"] is None and cfg["import"]["scheduler"]["class"] == "DDIMScheduler"
        assert cfg["import"]["scheduler"]["sampling_only"]["thresholding"] is True
        assert cfg["generator"]["steps"] == 4 and cfg["generator"]["solver"] == "euler"
        gen = slimstep.load(out)
        diff, scale, _ = compare(gen, model, sched, x, t, label="bare UNet + --scheduler")
        assert diff <= 1e-5 * max(1.0, scale)
        vs.append(gen.net(x, t).detach())
    assert torch.equal(vs[0], vs[1])
    # a .bin weights file (torch.save, read with weights_only=True) gives the same checkpoint
    sd = load_file(str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(sd, tmp_path / "unet" / "diffusion_pytorch_model.bin")
    out = import_teacher("diffusers", tmp_path / "unet", tmp_path / "bin", scheduler=tmp_path / "sched")
    assert torch.equal(slimstep.load(out).net(x, t).detach(), vs[0])
    # a half-precision variant (save_pretrained(variant="fp16")) loads into float32
    model.half().save_pretrained(tmp_path / "unet", variant="fp16")
    out = import_teacher("diffusers", tmp_path / "unet", tmp_path / "fp16", scheduler=tmp_path / "sched",
                         options={"variant": "fp16"})
    net = slimstep.load(out).net
    assert ckpt.read_config(out)["import"]["weights"].endswith("diffusion_pytorch_model.fp16.safetensors")
    assert all(v.dtype == torch.float32 and torch.equal(v, model.state_dict()[k].float())
               for k, v in net.model.state_dict().items())


# ----------------------------------------------------------------------------- DiTTransformer2DModel


def test_dit_class_conditional_learn_sigma_and_guidance(tmp_path):
    model = dit(seed=5)
    src = dit_pipeline(tmp_path / "pipe", model)
    out = import_teacher("diffusers", src, tmp_path / "ckpt", options={"cfg_scale": 1.5})
    cfg = ckpt.read_config(out)
    imp = cfg["import"]
    assert imp["pipeline"] == "DiTPipeline" and imp["component"] == "transformer"
    assert imp["not_imported"] == ["vae"] and imp["vae_scaling_factor"] == pytest.approx(0.18215)
    assert imp["tensors"] == imp["tensors_used"] == len(model.state_dict())
    assert cfg["net"]["num_classes"] == K and cfg["data"]["num_classes"] == K
    assert "learned-variance channels dropped" in imp["adapter"]["formula"]
    gen = slimstep.load(out)
    scheduler = diffusers.DDIMScheduler.from_config(json.loads((src / "scheduler" / "scheduler_config.json")
                                                               .read_text()))
    x, y = inputs()
    t = grid_and_between(scheduler)
    diff, scale, diff64 = compare(gen, model, scheduler, x, t, y, label="DiT eps (class-conditional)")
    assert diff <= 1e-5 * max(1.0, scale)
    assert diff64 <= 1e-12 * max(1.0, scale)
    # y=None is the null class: diffusers' dropout row, index num_embeds_ada_norm (DiTPipeline's 1000)
    null = torch.full((len(x),), K)
    with torch.no_grad():
        assert torch.equal(gen.net(x, t), gen.net(x, t, null))
    # slimstep's guidance on v = DiTPipeline's guidance on ε (v is affine in ε at fixed x_t, t)
    w = 1.5
    eps_c = reference_velocity(model, scheduler, x, t, y)
    eps_u = reference_velocity(model, scheduler, x, t, null)
    with torch.no_grad():
        v_g = guided(gen.net, y, w, gen.num_classes)(x, t)
    assert (v_g.double() - (eps_u + w * (eps_c - eps_u))).abs().max().item() <= 1e-5 * max(1.0, scale)


# ----------------------------------------------------------------------------- bad inputs


def _edit_json(path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.fixture
def pipe(tmp_path):
    return ddpm_pipeline(tmp_path / "pipe", unet(seed=1))


@pytest.mark.parametrize("edit, message", [
    (lambda p: _edit_json(p / "unet" / "config.json", _class_name="UNet2DConditionModel"),
     "'UNet2DConditionModel' is not supported: --format diffusers imports UNet2DModel and DiTTransformer2DModel"),
    (lambda p: _edit_json(p / "scheduler" / "scheduler_config.json", prediction_type="flow_prediction"),
     "prediction_type 'flow_prediction' is not supported"),
    (lambda p: _edit_json(p / "scheduler" / "scheduler_config.json", _class_name="FlowMatchEulerDiscreteScheduler"),
     "scheduler 'FlowMatchEulerDiscreteScheduler' is not supported"),
    (lambda p: _edit_json(p / "scheduler" / "scheduler_config.json", beta_schedule="sigmoid"),
     "beta_schedule 'sigmoid' is not supported"),
    (lambda p: _edit_json(p / "scheduler" / "scheduler_config.json", rescale_betas_zero_snr=True),
     "rescale_betas_zero_snr=True is not supported"),
    (lambda p: _edit_json(p / "unet" / "config.json", num_class_embeds=10),
     "class-conditional UNet2DModel"),
    (lambda p: _edit_json(p / "unet" / "config.json", time_embedding_type="fourier"),
     "time_embedding_type 'fourier'"),
    (lambda p: _edit_json(p / "model_index.json", unet=["my_pipeline", "MyUNet"]),
     "comes from 'my_pipeline', not diffusers"),
    (lambda p: (p / "scheduler" / "scheduler_config.json").unlink(), "no such scheduler config"),
    (lambda p: _edit_json(p / "model_index.json", scheduler=None), "no scheduler component"),
    (lambda p: (p / "unet" / "diffusion_pytorch_model.safetensors").unlink(),
     "no diffusion_pytorch_model.safetensors or .bin"),
    (lambda p: (p / "scheduler" / "scheduler_config.json").write_text("{not json"), "unreadable scheduler config"),
])
def test_bad_folders_are_one_line_and_write_nothing(pipe, tmp_path, capsys, edit, message):
    edit(pipe)
    out = tmp_path / "out"
    assert main(["import", "--format", "diffusers", str(pipe), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert message in line, line
    nothing_written(out)


def test_bad_arguments_and_tensors_are_one_line(pipe, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        (["import", "--format", "diffusers", str(pipe / "unet"), "--out", str(out)], "pass --scheduler"),
        (["import", "--format", "diffusers", str(pipe / "model_index.json"), "--out", str(out)],
         "no such folder"),
        (["import", "--format", "diffusers", str(tmp_path), "--out", str(out)], "neither a diffusers pipeline"),
        (["import", "--format", "sit", str(pipe / "unet" / "diffusion_pytorch_model.safetensors"),
          "--scheduler", str(pipe / "scheduler"), "--out", str(out)], "--scheduler is for --format diffusers"),
        (["import", "--format", "diffusers", str(pipe), "--out", str(out), "num_heads=4"],
         "takes no option 'num_heads'"),
        (["import", "--format", "diffusers", str(pipe), "--out", str(out), "variant=fp16"],
         "no diffusion_pytorch_model.fp16.safetensors"),
        (["import", "--format", "diffusers", str(pipe), "--out", str(out), "--data", "toy2d:moons"], "shape"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        line = one_error_line(capsys)
        assert message in line, line
        nothing_written(out)
    weights = pipe / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(weights))
    sd["extra.weight"] = torch.zeros(2)
    del sd["conv_out.bias"]
    save_file(sd, str(weights))
    assert main(["import", "--format", "diffusers", str(pipe), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "unused: extra.weight" in line and "missing: conv_out.bias" in line
    nothing_written(out)


def test_without_diffusers_installed_one_line(pipe, tmp_path, capsys, monkeypatch):
    out = import_teacher("diffusers", pipe, tmp_path / "ckpt")
    for name in [m for m in sys.modules if m == "diffusers" or m.startswith("diffusers.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    assert main(["sample", "--ckpt", str(out), "--n", "2", "--out", str(tmp_path / "s.npz")]) == 2
    assert "pip install slimstep[diffusers]" in one_error_line(capsys)
    assert main(["import", "--format", "diffusers", str(pipe), "--out", str(tmp_path / "o")]) == 2
    assert "pip install slimstep[diffusers]" in one_error_line(capsys)
    nothing_written(tmp_path / "o")


# ----------------------------------------------------------------------------- every command


@pytest.fixture
def unet_teacher(tmp_path):
    src = ddpm_pipeline(tmp_path / "pipe", unet(seed=2))
    return import_teacher("diffusers", src, tmp_path / "teacher", data="digits",
                          options={"steps": 2, "solver": "euler"})


def test_sample_pairs_eval_info_take_the_imported_folder(unet_teacher, tmp_path, capsys):
    data = ckpt.read_config(unet_teacher)["data"]  # an unconditional teacher ignores the labels
    assert data["spec"] == "digits" and data["num_classes"] == 0
    assert main(["sample", "--ckpt", str(unet_teacher), "--n", "3", "--out", str(tmp_path / "s.npz"),
                 "--device", "cpu"]) == 0
    assert "NFE 2" in capsys.readouterr().out
    assert np.isfinite(np.load(tmp_path / "s.npz")["samples"]).all()
    assert main(["pairs", "--teacher", str(unet_teacher), "--n", "4", "--out", str(tmp_path / "pairs"),
                 "--solver", "euler", "--steps", "2", "--quiet"]) == 0
    assert main(["eval", "--ckpt", str(unet_teacher), "--n", "16", "--steps", "1"]) == 0
    assert main(["info", "--ckpt", str(unet_teacher)]) == 0
    assert "diffusers_vp" in capsys.readouterr().out


def test_pair_methods_train_from_an_imported_unet(unet_teacher, runs_pair_methods):
    runs_pair_methods(unet_teacher, (1, 8, 8))


@pytest.mark.parametrize("method, extra", [("gdd", []), ("gdd-i", []),
                                           ("gdd", ["method.disc=teacher", "method.r1_every=1"])])
def test_gdd_and_gdd_i_train_from_an_imported_unet(unet_teacher, tmp_path, capsys, method, extra):
    """The generator starts as the teacher's network (G = z + v(z, 0)); GDD-I freezes the
    3x3 convolutions of the blocks and the attention output projections; the teacher-feature
    discriminator reads the wrapped UNet's block outputs (and R1 differentiates through them)."""
    out = tmp_path / method
    assert main(["distill", "--method", method, "--config", f"configs/digits/{method}.yaml",
                 "--teacher", str(unet_teacher), "--out", str(out), "--quiet", "train.steps=2",
                 "train.batch_size=8", "train.ckpt_every=2", *extra]) == 0, capsys.readouterr().err
    gen = slimstep.load(out)
    x, _ = gen.generate(4, seed=0)
    assert x.shape == (4, C, SIDE, SIDE) and torch.isfinite(x).all() and gen.nfe == 1
    cfg = ckpt.read_config(out)
    assert cfg["net"]["name"] == "diffusers_vp"
    if method == "gdd-i":
        teacher = slimstep.load(unet_teacher).net.state_dict()
        frozen = gdd_i_frozen(gen.net)
        assert frozen and all(torch.equal(gen.net.state_dict()[k], teacher[k]) for k in frozen)
        assert cfg["params"]["frozen"] == sum(gen.net.get_parameter(k).numel() for k in frozen)


def test_gdd_i_rule_on_diffusers_modules():
    spec = {"name": "diffusers_vp", "schedule": {}}
    net = build_net({**spec, "model_class": "UNet2DModel", "model_config": UNET})
    frozen = set(gdd_i_frozen(net, 1))
    assert "model.down_blocks.0.resnets.0.conv1.weight" in frozen
    assert "model.down_blocks.0.downsamplers.0.conv.weight" in frozen
    assert "model.mid_block.attentions.0.to_out.0.weight" in frozen
    for kept in ("model.conv_in.weight", "model.conv_out.weight", "model.up_blocks.0.resnets.0.conv_shortcut.weight",
                 "model.mid_block.attentions.0.to_q.weight", "model.down_blocks.0.resnets.0.time_emb_proj.weight",
                 "model.down_blocks.0.resnets.0.norm1.weight", "model.time_embedding.linear_1.weight"):
        assert kept not in frozen
    qkv = set(gdd_i_frozen(net, 2)) - frozen
    assert qkv and all(n.split(".")[-2] in ("to_q", "to_k", "to_v") for n in qkv)
    # the DDPM CIFAR-10 layout (Ho et al.; diffusers' UNet2DModel for it): 35.7M, ~85% frozen
    cifar = {"sample_size": 32, "block_out_channels": [128, 256, 256, 256], "layers_per_block": 2,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}
    big = build_net({**spec, "model_class": "UNet2DModel", "model_config": cifar})
    print(f"GDD-I on the DDPM CIFAR-10 UNet2DModel: {frozen_fraction(big, 1):.3f} frozen "
          f"(level 2: {frozen_fraction(big, 2):.3f})")
    assert 0.83 < frozen_fraction(big, 1) < 0.87
    d = build_net({**spec, "model_class": "DiTTransformer2DModel", "model_config": DIT})
    frozen = set(gdd_i_frozen(d, 1))
    assert frozen == {f"model.transformer_blocks.{i}.{layer}.{w}" for i in range(2)
                      for layer in ("attn1.to_out.0", "ff.net.0.proj", "ff.net.2") for w in ("weight", "bias")}


def test_flowmap_and_meanflow_refuse_a_vp_adapted_network(unet_teacher, tmp_path, capsys):
    for method in ("flowmap", "meanflow"):
        assert main(["distill", "--method", method, "--config", f"configs/digits/{method}.yaml",
                     "--teacher", str(unet_teacher), "--out", str(tmp_path / method), "--quiet"]) == 2
        assert "diffusers_vp" in one_error_line(capsys)


@pytest.mark.parametrize("method", ["dmd2", "ect"])
def test_dmd2_and_ect_train_from_an_imported_unet(unet_teacher, trains_one_step, method):
    """The generator / consistency function is a copy of the wrapped diffusers UNet."""
    trains_one_step(unet_teacher, method, (C, SIDE, SIDE))


def test_scd_refuses_a_vp_adapted_network(unet_teacher, tmp_path, capsys):
    """sCD differentiates along t; a diffusers UNet embeds t on DDPM's 0..999 scale."""
    assert main(["distill", "--method", "scd", "--config", "digits/scd", "--teacher", str(unet_teacher),
                 "--out", str(tmp_path / "scd"), "--quiet"]) == 2
    assert "time_scale" in one_error_line(capsys)
