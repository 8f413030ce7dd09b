r"""A diffusers VP model (``UNet2DModel`` or ``DiTTransformer2DModel``) as a slimstep velocity.

The network is *wrapped*, not mapped: ``self.model`` is built by diffusers from the
recorded diffusers config (``cls.from_config(model_config)``, random weights, no file and
no remote code), and the checkpoint's ``model.safetensors`` holds its state dict under
``model.<diffusers name>``. Its forward is diffusers' own; the time / parametrisation map
around it is :class:`slimstep.nets.vp.VPAdapter` (ε, v or x0 prediction, the scheduler's
ᾱ table), so sampling and training read the same map from config.json.

Why wrapped (docs/teachers.md): a diffusers DiT is not the DiT / SiT layout of
:mod:`slimstep.nets.dit`. Each of its N blocks carries its own timestep and class
embedder (``transformer_blocks.i.norm1.emb``: equal copies in a checkpoint converted from
the original DiT, independent ones in a model trained with diffusers), the final layer
reads block 0's copy, its sinusoid divides by ``half − 1`` (``downscale_freq_shift=1``)
and its second LayerNorm takes ``norm_eps`` from the config. Mapping it onto slimstep's DiT
would drop N − 1 embedders or need a second DiT; slimstep's UNet has another layout
altogether.

Conventions: ``t`` in [0, 1] (0 noise), ``y`` int64 with ``num_classes`` the null class —
diffusers' DiT has exactly that row (``LabelEmbedding``'s dropout row, index
``num_embeds_ada_norm``, which DiTPipeline feeds for guidance), so ``y`` is passed as
``class_labels`` unchanged and ``y=None`` means the null class. A class-conditional
``UNet2DModel`` (``num_class_embeds``) has no null row and is refused. Output channels
beyond the input's (learned variance, ``out_channels = 2C``) are dropped, as DiTPipeline
does.

diffusers is an optional dependency (``pip install slimstep[diffusers]``), imported
when such a network is built.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from slimstep.errors import ConfigError
from slimstep.nets.vp import VPAdapter, diffusers_alphas_cumprod

#: the diffusers model classes this network wraps
SUPPORTED_MODELS = ("UNet2DModel", "DiTTransformer2DModel")


def require_diffusers():
    """The ``diffusers`` module, or one line saying how to install it."""
    try:
        import diffusers
    except ImportError as e:
        raise ConfigError(f"a diffusers network needs the optional package diffusers: "
                          f"pip install slimstep[diffusers] (import failed: {e})") from None
    return diffusers


def _side(size, what: str) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
        return int(size[0]), int(size[1])
    raise ValueError(f"{what}: sample_size {size!r} is not an image side (or [height, width])")


def describe_model(model_class: str, config: dict) -> dict:
    """``{"in_shape", "num_classes", "learn_sigma"}`` of a diffusers model config, or a
    ``ValueError`` naming what this wrapper does not support (checked before any weight
    is read, and again when the network is built)."""
    if model_class not in SUPPORTED_MODELS:
        raise ValueError(f"a {model_class} is not supported: --format diffusers imports "
                         f"{' and '.join(SUPPORTED_MODELS)}")
    c = config.get("in_channels", 3 if model_class == "UNet2DModel" else 4)
    if not isinstance(c, int) or c < 1:
        raise ValueError(f"{model_class}: in_channels {c!r}")
    if model_class == "UNet2DModel":
        kind = config.get("time_embedding_type", "positional")
        if kind != "positional":
            why = ("a noise-level (VE score-SDE) embedding" if kind == "fourier" else
                   "a table of integer timesteps: fractional ones cannot be fed")
            raise ValueError(f"UNet2DModel time_embedding_type {kind!r} ({why}) is not supported; "
                             "positional is")
        if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
            raise ValueError("a class-conditional UNet2DModel (num_class_embeds / class_embed_type) "
                             "has no null class for guidance: not supported")
        h, w = _side(config.get("sample_size"), model_class)
        out, classes = config.get("out_channels", 3), 0
    else:
        if config.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
            raise ValueError(f"DiTTransformer2DModel norm_type {config.get('norm_type')!r}: diffusers "
                             "runs ada_norm_zero only")
        classes = config.get("num_embeds_ada_norm", 1000)
        if not isinstance(classes, int) or classes < 1:
            raise ValueError(f"DiTTransformer2DModel num_embeds_ada_norm {classes!r}: need the class count")
        h, w = _side(config.get("sample_size", 32), model_class)
        out = config.get("out_channels") or c
    if out not in (c, 2 * c):
        raise ValueError(f"{model_class}: out_channels {out} is neither in_channels {c} nor twice it "
                         "(the prediction plus learned-variance channels)")
    return {"in_shape": [c, h, w], "num_classes": classes, "learn_sigma": out == 2 * c}


class DiffusersVP(nn.Module):
    """A diffusers VP model read as a slimstep velocity (module docstring).

    ``model_class`` / ``model_config``: the diffusers class and its config.json as read;
    ``prediction``: the scheduler's ``prediction_type``; ``schedule``: the keyword
    arguments of :func:`slimstep.nets.vp.diffusers_alphas_cumprod`; ``in_shape`` and
    ``num_classes`` restate what the config gives (checked), so code that reads a
    checkpoint's net section finds them as for every slimstep network.
    """

    def __init__(self, model_class: str = "UNet2DModel", model_config: dict | None = None,
                 prediction: str = "epsilon", schedule: dict | None = None,
                 in_shape: list[int] | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        config = dict(model_config or {})
        shape = describe_model(model_class, config)
        if in_shape is not None and list(in_shape) != shape["in_shape"]:
            raise ValueError(f"in_shape {list(in_shape)} disagrees with the diffusers config "
                             f"({shape['in_shape']})")
        if num_classes is not None and num_classes != shape["num_classes"]:
            raise ValueError(f"num_classes {num_classes} disagrees with the diffusers config "
                             f"({shape['num_classes']})")
        self.model_class = model_class
        self.in_shape, self.num_classes = tuple(shape["in_shape"]), shape["num_classes"]
        self.in_channels = shape["in_shape"][0]
        self.vp = VPAdapter(diffusers_alphas_cumprod(**(schedule or {})), prediction)
        # t reaches the model as a DDPM timestep on 0..T-1 (piecewise linear in log σ): the
        # scale the JVP-along-t methods (meanflow, scd) read to refuse a sharp time input
        self.time_scale = float(self.vp.num_timesteps)
        cls = getattr(require_diffusers(), model_class)
        self.model = cls.from_config(config)

    def feature_modules(self) -> list[nn.Module]:
        """The modules whose outputs ``return_features`` lists: the UNet's down blocks, mid
        block and up blocks (maps ``[B, C, H, W]``), the DiT's transformer blocks (tokens)."""
        m = self.model
        if self.model_class == "UNet2DModel":
            return [*m.down_blocks, *([m.mid_block] if m.mid_block is not None else []), *m.up_blocks]
        return list(m.transformer_blocks)

    @contextmanager
    def _collect(self, on: bool):
        feats: list[torch.Tensor] = []
        hooks = []
        if on:  # a down block returns (hidden states, skip connections): keep the first
            keep = lambda _m, _i, out: feats.append(out[0] if isinstance(out, tuple) else out)  # noqa: E731
            hooks = [m.register_forward_hook(keep) for m in self.feature_modules()]
        try:
            yield feats
        finally:
            for h in hooks:
                h.remove()

    def set_attention(self, mode: str) -> nn.Module:
        """"sdpa" (diffusers' default processor) or "math" (explicit softmax(QKᵀ)V: has a
        double backward, which R1 through a teacher-feature discriminator needs)."""
        from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

        if mode not in ("sdpa", "math"):
            raise ValueError(f"attention mode must be 'sdpa' or 'math', got {mode!r}")
        for m in self.model.modules():  # UNet2DModel has no set_attn_processor of its own
            if isinstance(m, Attention):
                m.set_processor(AttnProcessor() if mode == "math" else AttnProcessor2_0())
        return self

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                return_features: bool = False, **cond: torch.Tensor):
        if cond:
            raise TypeError(f"a diffusers network takes no conditioning {sorted(cond)}")
        labels = None
        if self.num_classes:  # slimstep's null class is diffusers' dropout row: same index
            labels = y if y is not None else torch.full((x.shape[0],), self.num_classes,
                                                        dtype=torch.long, device=x.device)

        def predict(x_vp: torch.Tensor, n: torch.Tensor):
            with self._collect(return_features) as feats:
                out = self.model(x_vp, n, class_labels=labels, return_dict=False)[0]
            out = out[:, : self.in_channels]  # learned-variance channels dropped
            return (out, feats) if return_features else out

        return self.vp.velocity(x, t, predict, return_features)
