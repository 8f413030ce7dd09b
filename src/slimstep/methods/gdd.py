r"""GDD and GDD-I: "Diffusion Models Are Innate One-Step Generators" (Zheng & Yang 2024).

**Generator.** The teacher's own network, initialised from the teacher's EMA
weights and called once at the noise end. In slimstep's convention (t = 0 is
noise) the one-step map is the Euler step over the whole path,

.. math:: G(z, y) = z + v_\theta(z, 0, y), \qquad z \sim \mathcal N(0, I),

read as a direct data prediction, so at step 0 ``G`` *is* the teacher's 1-step
Euler sampler; the checkpoint exports ``kind=velocity, solver=euler, steps=1``.
(EDM's version is σ = 80 on 80·z; an imported EDM teacher, read through the
σ-clamped adapter at t_min = 1/81, gives ``(81·D(81z; 80) − z)/80``: docs/gdd.md.)

**Loss: GAN only** (distribution level, no distillation term), the
non-saturating logistic loss with ``softplus``, against real data::

    disc:  L_D = E softplus(D(G(z), y)) + E softplus(-D(x, y))  [+ lazy R1]
    gen:   L_G = E softplus(-D(G(z), y))                          [+ λ_inst · d(G(z), x̂(z))]

``D`` returns ``[B, K]`` logits, the patch logits of its heads ``h`` (one head
of one logit for ``conv`` / ``mlp``); ``E softplus(D)`` stands for
``E_b Σ_h mean_{k∈h} softplus(D_k)``: every head weighs the same, whatever its
patch count (the official code's projected-GAN heads, :func:`sum_head_means`).
Class-conditional runs generate with the real batch's labels ``y``, and ``D`` is
a projection discriminator in ``y``.

**Lazy R1** (StyleGAN2's form) on real data: on steps with
``step % r1_every == 0`` the discriminator loss gains

.. math:: r_{\rm every}\cdot\frac{\gamma}{2}\,
          \mathbb E_x \big\lVert \nabla_x \textstyle\sum_h \operatorname{mean}_{k\in h}
          D_k(x, y) \big\rVert^2 ,

i.e. the penalty ``γ/2·E‖∇D‖²`` applied every step, paid once every
``r1_every`` steps at ``r1_every`` times the weight (same expected gradient,
1/16 of the double-backward cost). With DiffAugment on, the gradient is taken
with respect to the un-augmented real image.

**Separate lazy R1** (``r1_step: separate``, the official code's schedule, StyleGAN2's
lazy regularisation): per step the generator steps first, then the discriminator on the GAN
loss alone; on steps with ``step % r1_every == 0`` a third phase ``r1`` steps the
discriminator once more on ``r1_every·γ/2·E‖∇D‖²`` alone, with a fresh forward on the real
batch. Both discriminator phases share one Adam whose lr and betas are scaled for the
extra steps, ``lr·c`` and ``β^c`` with ``c = r1_every / (r1_every + 1)`` (16/17 by default).
``r1_step: joint`` (the default) adds the penalty to that step's disc loss, disc before gen.

**Preconditioning** (``precond``). ``teacher`` (default) reads the teacher's network as it
is: an imported EDM teacher through its own σ-preconditioning (VE for the ``*-ve.pkl``
teachers), ``G(z) = z + v(z, 0) = (81·D(81z; 80) − z)/80``. ``official`` is what the GDD
code runs: it always wraps the teacher's ``F`` in ``GDDPrecond`` — EDM's coefficients with
σ − 2e-3 in c_skip and c_out (:data:`slimstep.nets.edm_unet.PRECONDS` ``gdd``) — and calls
it at EDM's sampler start, ``G(z) = D(80·z; 80)``. For an EDMPrecond teacher (the ImageNet-64
ADM) the two nearly agree; for a VE teacher ``official`` starts from a different function.
It needs an EDM teacher (``slimstep import --format edm``): other networks have no ``F``.

**Dropout.** The generator runs with dropout 0 whatever the network (every official run
passes ``--dropout=0``): the rebuilt network's ``dropout`` / ``class_dropout_prob`` options
are set to 0 where the teacher's are not, and any remaining dropout module is switched off.

**Instance-level term** (default weight 0): ``d(G(z), x̂)`` with ``x̂`` the
teacher's ODE solution from the same ``(z, y)`` (computed online, no gradient),
``d`` = mean squared error or the pseudo-Huber distance
``sqrt(|a − b|² + c²) − c`` with ``c = 0.00054·sqrt(dim)`` (Song & Dhariwal
2023). With ``gan_weight=0`` this is plain one-step distillation: the paper's
instance- vs distribution-level comparison.

**Optimisation** (the loop): two phases, disc then gen, each with its own Adam,
betas (0, 0.99); frozen generator parameters (GDD-I) are not handed to the
optimizer and, having no gradient, never enter the gradient all-reduce. The
EMA of the generator (``train.ema.half_life_images`` ≈ 5% of all images, with
the loop's ramp-up capping it at 5% of the images seen so far) is what is
exported.

**GDD-I** freezes, before the optimizer is built, the parameters named by
:func:`gdd_i_frozen` (option ``freeze_level``, the official code's ``--freeze``):
level 1 (default), in every block the 3x3 convolutions and the attention output
projection of the UNet (~83% of the NCSN++ CIFAR UNet) and of an imported EDM
U-Net (85.4% of EDM's CIFAR-10 DDPM++), the 3x3 convolutions and attention output
projection of an imported EDM2 U-Net (83.9% of EDM2-S), and the attention output projection
and MLP matrices of every DiT block (the same two rules on a wrapped diffusers
UNet2DModel / DiTTransformer2DModel); level 2 also the qkv.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slimstep.methods.base import NON_NEGATIVE, POSITIVE_OR_NULL, Method, MethodError, OptimizerSettings
from slimstep.nets import build_net, net_class
from slimstep.nets.diffusers_vp import DiffusersVP
from slimstep.nets.discriminators import (
    KINDS,
    DiscriminatorError,
    build_discriminator,
    sum_head_means,
)
from slimstep.nets.dit import DiT, DiTBlock
from slimstep.nets.edm2_unet import Block as EDM2Block
from slimstep.nets.edm2_unet import EDM2UNet
from slimstep.nets.edm_unet import EDMUNet
from slimstep.nets.edm_unet import UNetBlock as EDMBlock
from slimstep.nets.unet import AttnBlock, ResBlock, UNet
from slimstep.onestep import euler_step
from slimstep.spec.rules import non_negative, positive, rule
from slimstep.spec.sampling import VelocityRule

# ----------------------------------------------------------------------------- GDD-I freeze rule


FREEZE_LEVELS = (1, 2)


def gdd_i_frozen(net: nn.Module, level: int = 1) -> list[str]:
    """Names of the parameters GDD-I freezes in ``net`` at ``freeze_level`` ``level``.

    The official code (``--freeze``) freezes every block parameter whose name holds
    ``conv`` or ``proj`` (level 1), plus ``qkv`` (level 2). On our networks:

    * UNet, level 1: in every ``ResBlock`` (including the resampling ones) ``conv1`` and
      ``conv2`` (the 3x3 convolutions), in every ``AttnBlock`` ``proj_out``. Trainable:
      GroupNorms, ``emb_proj`` (time/class modulation), ``skip`` (1x1), ``qkv``,
      ``time_embed``, ``class_embed``, ``conv_in``, ``norm_out``, ``conv_out``.
      Level 2 adds the ``AttnBlock`` ``qkv``.
    * DiT, level 1: in every block ``attn.proj``, ``mlp.fc1``, ``mlp.fc2`` (the MLP is the
      DiT's counterpart of the 3x3 convolutions). Trainable: ``attn.qkv``,
      ``adaLN_modulation``, embedders, ``final_layer`` (its LayerNorms have no
      parameters). Level 2 adds ``attn.qkv``.
    * a wrapped diffusers network (``diffusers_vp``, :func:`_diffusers_frozen`): the same
      two rules on diffusers' modules.
    * EDM's SongUNet / DhariwalUNet (``edm_unet``, imported EDM teachers: the paper's own
      networks), level 1: in every ``UNetBlock`` (``_block{i}``, ``_down``, ``_up``, ``_in0``,
      ``_in1``) ``conv0``
      and ``conv1`` (3x3) and, in attention blocks, ``proj``. That is the official rule
      itself — freeze a parameter whose EDM name holds ``block`` / ``up`` / ``down`` / ``in``
      and ``conv`` / ``proj`` (tests/test_gdd.py checks the two agree). Trainable:
      GroupNorms, ``affine`` (embedding), ``skip`` (1x1), ``qkv``, the mapping MLP and label
      map, the stem ``enc.*_conv``, NCSN++'s ``aux_residual``, the output (``dec.*_aux_*``,
      ADM's ``out_norm`` / ``out_conv``). Frozen: 85.4% of the parameters of EDM's CIFAR-10
      DDPM++, 84.4% of its NCSN++ (the paper: "85%"), 78.8% of its ImageNet-64 ADM. Level 2
      adds ``qkv`` (87.5% / 86.5% / 87.0%).

    * EDM2's magnitude-preserving UNet (``edm2_unet``, imported EDM2 teachers), level 1: in
      every ``Block`` (``_block{i}``, ``_down``, ``_up``, ``_in0``, ``_in1``) the 3x3
      ``conv_res0`` and ``conv_res1`` and, in attention blocks, ``attn_proj``: the paper's
      rule by *kind* of layer. The official string rule (``conv`` / ``proj`` in a block's
      name) would also catch EDM2's 1x1 ``conv_skip``, a skip the paper keeps trainable.
      Trainable: ``emb_linear`` and ``emb_gain`` (the embedding's modulation), ``conv_skip``
      (1x1), ``attn_qkv``, ``emb_noise`` / ``emb_label``, the stem ``enc.RxR_conv``, the
      output ``out_conv`` and ``out_gain`` (EDM2 has no GroupNorms: its normalisations have
      no parameters). Frozen at level 1: 83.9% of EDM2-S (280.2M, 512 px or 64 px), 83.7% of
      EDM2-XS (124.7M); level 2 adds ``attn_qkv`` (91.4% / 91.3%). The string rule would
      freeze 87.2% / 87.1%.

    Weights and biases of a frozen layer are both frozen.
    """
    if isinstance(level, bool) or level not in FREEZE_LEVELS:
        raise MethodError(f"freeze_level must be one of {FREEZE_LEVELS}, not {level!r}")
    qkv = level >= 2
    if isinstance(net, DiffusersVP):
        return _diffusers_frozen(net, qkv)
    if isinstance(net, UNet):
        rule = {ResBlock: ("conv1", "conv2"), AttnBlock: ("proj_out",) + (("qkv",) if qkv else ())}
    elif isinstance(net, DiT):
        rule = {DiTBlock: (("attn.qkv",) if qkv else ()) + ("attn.proj", "mlp.fc1", "mlp.fc2")}
    elif isinstance(net, EDMUNet):
        rule = {EDMBlock: ("conv0", "conv1", "proj") + (("qkv",) if qkv else ())}
    elif isinstance(net, EDM2UNet):
        rule = {EDM2Block: ("conv_res0", "conv_res1", "attn_proj") + (("attn_qkv",) if qkv else ())}
    else:
        raise MethodError(f"gdd-i has a freeze rule for the unet and the dit (a wrapped diffusers "
                          f"network, EDM's and EDM2's U-Nets), not for {type(net).__name__}")
    names = []
    for prefix, m in net.named_modules():
        for cls, layers in rule.items():
            if isinstance(m, cls):
                for layer in layers:
                    sub = getattr(m, layer, None) if "." not in layer else m.get_submodule(layer)
                    if sub is None:  # an EDM / EDM2 block without attention has no proj / qkv
                        continue
                    names += [f"{prefix}.{layer}.{n}" for n, _ in sub.named_parameters()]
    return names


def _diffusers_frozen(net: nn.Module, qkv: bool) -> list[str]:
    """GDD-I's rule on a wrapped diffusers model (names under ``model.``):

    * UNet2DModel: every 3x3 ``Conv2d`` inside ``down_blocks`` / ``mid_block`` / ``up_blocks``
      (the ResnetBlock2D ``conv1`` / ``conv2`` and the down- / upsamplers' convolutions — EDM's
      resampling blocks hold theirs inside the block too) and every attention's output
      projection ``to_out.0``; level 2 adds ``to_q`` / ``to_k`` / ``to_v``. Trainable: GroupNorms,
      ``time_emb_proj``, the 1x1 ``conv_shortcut``, ``conv_in``, ``time_embedding``,
      ``conv_norm_out``, ``conv_out``.
    * DiTTransformer2DModel: in every transformer block ``attn1.to_out.0``, ``ff.net.0.proj``
      and ``ff.net.2`` (DiT's attn.proj, mlp.fc1, mlp.fc2); level 2 adds ``attn1.to_q/k/v``.
      Trainable: ``norm1`` (adaLN and the block's embedders), ``pos_embed.proj``, ``proj_out_*``.
    """
    from diffusers.models.attention_processor import Attention

    attn = ["to_out.0", *(["to_q", "to_k", "to_v"] if qkv else [])]
    layers: list[str] = []
    for prefix, m in net.model.named_modules():
        if net.model_class == "UNet2DModel":
            in_block = prefix.startswith(("down_blocks.", "mid_block.", "up_blocks."))
            if in_block and isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3):
                layers.append(prefix)
            elif isinstance(m, Attention):
                layers += [f"{prefix}.{a}" for a in attn]
        elif re.fullmatch(r"transformer_blocks\.\d+", prefix):
            layers += [f"{prefix}.attn1.{a}" for a in attn] + [f"{prefix}.ff.net.0.proj", f"{prefix}.ff.net.2"]
    return [f"model.{layer}.{n}" for layer in layers
            for n, _ in net.model.get_submodule(layer).named_parameters()]


def frozen_fraction(net: nn.Module, level: int = 1) -> float:
    """Fraction of ``net``'s parameters that GDD-I freezes at ``level``."""
    frozen = set(gdd_i_frozen(net, level))
    total = sum(p.numel() for p in net.parameters())
    return sum(p.numel() for n, p in net.named_parameters() if n in frozen) / total


# ----------------------------------------------------------------------------- DiffAugment


AUGMENTS = ("color", "translation", "cutout")


def diff_augment(x: torch.Tensor, policy: str) -> torch.Tensor:
    """Differentiable augmentation (Zhao et al. 2020) of images in [-1, 1].

    ``policy`` is a comma list of ``color`` (brightness ±0.5, saturation ×[0, 2],
    contrast ×[0.5, 1.5]), ``translation`` (shift by up to 1/8 of the size, zero
    padding), ``cutout`` (a zeroed square of half the size). One draw per sample,
    from the global RNG; the same function must be applied to real and fake images.
    """
    for p in [s.strip() for s in policy.split(",") if s.strip()]:
        b = x.shape[0]
        if p == "color":
            r = torch.rand(3, b, 1, 1, 1, device=x.device, dtype=x.dtype)
            x = x + (r[0] - 0.5)
            m = x.mean(1, keepdim=True)
            x = (x - m) * (2 * r[1]) + m
            m = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - m) * (r[2] + 0.5) + m
        elif p == "translation":
            h, w = x.shape[2:]
            sh, sw = max(1, round(h / 8)), max(1, round(w / 8))
            dy = torch.randint(-sh, sh + 1, (b,), device=x.device)
            dx = torch.randint(-sw, sw + 1, (b,), device=x.device)
            rows = (torch.arange(h, device=x.device)[None] - dy[:, None])  # [B, H] source row
            cols = (torch.arange(w, device=x.device)[None] - dx[:, None])
            ok = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :])
            ri, ci = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
            idx = (ri[:, :, None] * w + ci[:, None, :]).flatten(1)  # [B, H*W]
            flat = x.flatten(2).gather(2, idx[:, None, :].expand(-1, x.shape[1], -1))
            x = flat.view_as(x) * ok[:, None].to(x.dtype)
        elif p == "cutout":
            h, w = x.shape[2:]
            ch, cw = max(1, h // 2), max(1, w // 2)
            cy = torch.randint(0, h + 1 - ch % 2, (b,), device=x.device)
            cx = torch.randint(0, w + 1 - cw % 2, (b,), device=x.device)
            yy = torch.arange(h, device=x.device)[None]
            xx = torch.arange(w, device=x.device)[None]
            iny = ((yy >= cy[:, None] - ch // 2) & (yy < cy[:, None] - ch // 2 + ch))
            inx = ((xx >= cx[:, None] - cw // 2) & (xx < cx[:, None] - cw // 2 + cw))
            x = x * (~(iny[:, :, None] & inx[:, None, :]))[:, None].to(x.dtype)
        else:
            raise MethodError(f"diffaugment: unknown policy '{p}' (color, translation, cutout)")
    return x


# ----------------------------------------------------------------------------- the method


PRECOND_CHOICES = ("teacher", "official")
R1_STEPS = ("joint", "separate")
#: network options that switch a dropout on (constructor keyword -> its "off" value)
DROPOUT_KEYS = ("dropout", "class_dropout_prob")


def official_r1_gamma(gamma: float, batch_per_gpu: int, patches: int = 25) -> float:
    """The official code's R1 weight ``gamma`` on slimstep's scale (docs/gdd.md): its
    penalty differentiates the *sum* of ``patches`` logits per head (``patches²`` times our
    per-head mean on the square) and its GAN term is ``batch_per_gpu / 4`` times ours, so
    ``γ_ours = 4·patches²·γ / B``; CIFAR-10's 1e-4 at 64 per GPU is 3.9e-3."""
    return 4 * patches ** 2 * gamma / batch_per_gpu


def generator_spec(teacher_spec: dict, precond: str = "teacher") -> dict:
    """The generator's network spec: the teacher's, with every dropout option at 0 and, for
    ``precond="official"``, an EDM teacher's preconditioning replaced by GDDPrecond's."""
    spec = dict(teacher_spec)
    try:
        accepted = inspect.signature(net_class(spec.get("name", "")).__init__).parameters
    except Exception:  # an unknown name: build_net says so in its own words
        accepted = {}
    for key in DROPOUT_KEYS:
        if key in accepted:
            default = accepted[key].default
            if spec.get(key, default) not in (0, 0.0, None, inspect.Parameter.empty):
                spec[key] = 0.0
    if precond == "official":
        if spec.get("name") != "edm_unet":
            raise MethodError(f"method.precond=official wraps an EDM teacher's F in GDDPrecond; "
                              f"the teacher's net is '{spec.get('name')}' (import an EDM pickle with "
                              f"slimstep import --format edm, or use precond=teacher)")
        spec["precond"] = "gdd"
    return spec


def no_dropout(net: nn.Module) -> None:
    """Switch off whatever dropout the spec could not: ``nn.Dropout`` modules, EDM blocks'
    ``dropout`` rates, a DiT's label dropout."""
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        for attr in ("dropout", "dropout_prob"):  # own attributes (not a diffusers config proxy)
            if isinstance(vars(m).get(attr), float):
                setattr(m, attr, 0.0)


def r1_penalty(disc, x: torch.Tensor, y: torch.Tensor | None,
               augment=None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(logits, E_x ‖∇_x Σ_h mean_{k∈h} D_k(x, y)‖²)`` with the graph kept for
    backward: the gradient of the per-sample score the GAN loss weighs heads by
    (for a one-logit discriminator, ``‖∇_x D(x, y)‖²``)."""
    x = x.detach().requires_grad_(True)
    logits = disc(augment(x) if augment else x, y)
    score = sum_head_means(logits, disc.head_sizes)
    (g,) = torch.autograd.grad(score.sum(), x, create_graph=True)
    return logits, g.float().pow(2).flatten(1).sum(1).mean()


class GDD(Method):
    name = "gdd"
    phases = ("disc", "gen")
    style = ("#2ca02c", "P")
    starts_from_teacher = True  # the generator loads the teacher's state dict

    @dataclass(frozen=True)
    class Options(Method.Options):
        disc: str = "auto"  # auto (conv for images, mlp for points) | conv | mlp | teacher | projected
        disc_options: dict | None = rule({})  # {kind: keyword arguments}; only the chosen kind's are used
        lr_g: float | None = rule(None, positive, POSITIVE_OR_NULL)  # null = train.lr
        lr_d: float | None = rule(None, positive, POSITIVE_OR_NULL)  # the discriminator's; null = train.lr
        betas: list[float] = rule([0.0, 0.99])  # both phases' Adam betas
        r1_gamma: float = rule(1e-4, non_negative, NON_NEGATIVE)  # the paper's CIFAR-10 value
        r1_every: int = rule(16, non_negative, NON_NEGATIVE)  # lazy regularisation interval (0 = no R1)
        gan_weight: float = rule(1.0, non_negative, NON_NEGATIVE)  # the generator's GAN term
        instance_weight: float = rule(0.0, non_negative, NON_NEGATIVE)  # d(G(z), teacher ODE(z)); 0 = the paper's GDD
        instance_distance: str = "pseudo-huber"  # pseudo-huber | l2
        instance_solver: str | None = None  # null = the teacher's own sampler
        instance_steps: int | None = None  # null = the teacher's own sampler's
        diffaugment: str = ""  # "" (the paper) or e.g. "color,translation,cutout"
        precond: str = "teacher"  # teacher (the teacher's own) | official (GDDPrecond, EDM teachers)
        r1_step: str = "joint"  # joint (in the disc step) | separate (official: lazy extra D step)

    def __init__(self, cfg, info, *, device, teacher=None):
        super().__init__(cfg, info, device=device, teacher=teacher)
        o = self.opts
        if teacher is None or not getattr(teacher, "config", {}).get("net"):
            raise MethodError(f"method '{self.name}' needs a teacher checkpoint (--teacher DIR) "
                              f"whose config.json has a 'net' section")
        if o.precond not in PRECOND_CHOICES:
            raise MethodError(f"method.precond must be one of {', '.join(PRECOND_CHOICES)}, "
                              f"not {o.precond!r} ({self.name})")
        if o.r1_step not in R1_STEPS:
            raise MethodError(f"method.r1_step must be one of {', '.join(R1_STEPS)}, "
                              f"not {o.r1_step!r} ({self.name})")
        self.spec = generator_spec(teacher.config["net"], o.precond)
        shape = tuple(self.spec.get("in_shape", ()))
        if shape != tuple(info.shape):
            raise MethodError(f"the teacher's network takes {shape}, the data is {tuple(info.shape)}")
        net = build_net(self.spec)
        net.load_state_dict(teacher.net.state_dict())  # the teacher's EMA weights
        no_dropout(net)
        self.net = net.to(device)
        self._separate_r1 = (o.r1_step == "separate" and o.r1_every > 0
                             and o.r1_gamma > 0)
        self.phases = ("gen", "disc", "r1") if self._separate_r1 else type(self).phases
        self.num_classes = getattr(net, "num_classes", 0) or 0
        if self.num_classes and info.num_classes != self.num_classes:
            raise MethodError(f"the teacher has {self.num_classes} classes, the data "
                              f"{info.num_classes}: GDD generates with the real batch's labels")
        self.freeze()
        if o.diffaugment and info.kind != "image":
            raise MethodError("diffaugment works on images only")
        bad = set(filter(None, (p.strip() for p in o.diffaugment.split(",")))) - set(AUGMENTS)
        if bad:
            raise MethodError(f"diffaugment: unknown policy {sorted(bad)} ({', '.join(AUGMENTS)})")
        if o.instance_distance not in ("pseudo-huber", "l2"):
            raise MethodError(f"instance_distance must be pseudo-huber or l2, "
                              f"not '{o.instance_distance}'")
        if int(o.r1_every) < 0 or float(o.r1_gamma) < 0:
            raise MethodError("r1_every and r1_gamma must be >= 0")
        spatial = info.kind in ("image", "latent")  # a conv discriminator fits any NCHW grid
        kind = o.disc if o.disc != "auto" else ("conv" if spatial else "mlp")
        per_kind = dict(o.disc_options or {})
        unknown = sorted(set(per_kind) - set(KINDS))
        if unknown:
            raise MethodError(f"disc_options is keyed by discriminator kind ({', '.join(KINDS)}), "
                              f"not {', '.join(unknown)}")
        try:
            self.disc = build_discriminator(
                kind, list(info.shape), self.num_classes, teacher=teacher.net,
                **dict(per_kind.get(kind) or {})).to(device)
        except DiscriminatorError as e:
            raise MethodError(str(e)) from None
        self._disc_params = [p for p in self.disc.parameters() if p.requires_grad]
        self._instance = None
        if float(o.instance_weight) > 0:
            self._instance = teacher.with_sampling(solver=o.instance_solver,
                                                   steps=o.instance_steps)

    def freeze(self) -> None:
        """GDD trains every generator parameter; GDD-I overrides this."""

    # -- the contract
    def modules(self):
        return {"net": self.net, "disc": self.disc}

    def compiled_modules(self):
        # R1 differentiates D's input gradient (create_graph): D stays eager when it is on
        r1 = self.opts.r1_every > 0 and self.opts.r1_gamma > 0
        return {"net": self.net} if r1 else self.modules()

    def parameters(self, phase):
        mod = self.disc if phase in ("disc", "r1") else self.net
        return [p for p in mod.parameters() if p.requires_grad]

    def optimizer_options(self, phase):
        lr = self.opts.lr_d if phase == "disc" else self.opts.lr_g  # None: train.lr
        betas = [float(b) for b in self.opts.betas]
        if phase == "disc" and self._separate_r1:  # StyleGAN2's lazy-regularisation ratio
            c = self.opts.r1_every / (self.opts.r1_every + 1)
            return OptimizerSettings(lr=lr, betas=tuple(b ** c for b in betas), lr_scale=c)
        return OptimizerSettings(lr=lr, betas=tuple(betas))

    def phase_active(self, phase, step):
        return phase != "r1" or step % self.opts.r1_every == 0

    def shared_optimizer(self, phase):
        return "disc" if phase == "r1" else None

    def export(self):
        return VelocityRule(solver="euler", steps=1)

    # -- the math
    def generate(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The one-step generator ``G(z, y) = z + v(z, 0, y)``."""
        return euler_step(self.net, z, y)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.opts.diffaugment) if self.opts.diffaugment else x

    def _d(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.disc(self._augment(x), y).float()

    def _heads(self, v: torch.Tensor) -> torch.Tensor:
        """``E_b Σ_h mean_{k∈h} v_k``: a batch mean in which every head weighs the same."""
        return sum_head_means(v, self.disc.head_sizes).mean()

    def loss(self, batch, step, phase):
        x = batch[0]
        y = batch[1] if self.num_classes else None
        o = self.opts
        z = torch.randn_like(x)
        if phase == "r1":  # the separate lazy R1 step (r1_step: separate)
            for p in self._disc_params:
                p.requires_grad_(True)
            _, pen = r1_penalty(self.disc, x, y, self._augment if o.diffaugment else None)
            return {"loss": o.r1_every * float(o.r1_gamma) / 2 * pen, "r1": pen.detach()}
        if phase == "disc":
            for p in self._disc_params:
                p.requires_grad_(True)
            with torch.no_grad():
                fake = self.generate(z, y)
            r1_now = (o.r1_every > 0 and o.r1_gamma > 0 and step % o.r1_every == 0
                      and not self._separate_r1)
            if r1_now:
                real_logits, pen = r1_penalty(self.disc, x, y, self._augment if o.diffaugment
                                              else None)
                real_logits = real_logits.float()
            else:
                real_logits, pen = self._d(x, y), None
            fake_logits = self._d(fake, y)
            gan = self._heads(F.softplus(fake_logits)) + self._heads(F.softplus(-real_logits))
            n = len(self.disc.head_sizes)  # logs: the mean over heads, each head's patch mean
            out = {"gan": gan.detach(), "d_real": self._heads(real_logits).detach() / n,
                   "d_fake": self._heads(fake_logits).detach() / n,
                   "acc": 0.5 * (self._heads((real_logits > 0).float())
                                 + self._heads((fake_logits < 0).float())) / n}
            loss = gan
            if pen is not None:
                loss = gan + o.r1_every * float(o.r1_gamma) / 2 * pen
                out["r1"] = pen.detach()
            return {"loss": loss, **out}

        # gen phase: the discriminator is a fixed function here (no weight gradients)
        for p in self._disc_params:
            p.requires_grad_(False)
        fake = self.generate(z, y)
        loss = float(o.gan_weight) * self._heads(F.softplus(-self._d(fake, y)))
        out = {"gan": loss.detach()}
        if self._instance is not None:
            with torch.no_grad():
                target = self._instance(z, y)
            d = (fake.float() - target.float()).pow(2).flatten(1).sum(1)
            if o.instance_distance == "pseudo-huber":
                c = 0.00054 * math.sqrt(fake[0].numel())
                d = (d + c * c).sqrt() - c
            else:
                d = d / fake[0].numel()
            inst = d.mean()
            loss = loss + float(o.instance_weight) * inst
            out["instance"] = inst.detach()
        return {"loss": loss, **out}


class GDDI(GDD):
    """GDD with the block convolutions and attention output projections (UNet) / the
    attention output and MLP matrices (DiT) frozen; ``freeze_level`` 2 adds qkv."""

    name = "gdd-i"
    style = ("#bcbd22", "X")

    @dataclass(frozen=True)
    class Options(GDD.Options):
        freeze_level: int = 1  # 1: convs + attention out-proj (the official level 1); 2: + qkv

    def freeze(self) -> None:
        frozen = set(gdd_i_frozen(self.net, self.opts.freeze_level))
        for n, p in self.net.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
