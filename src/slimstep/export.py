r"""Export a one-step generator as a self-contained file: TorchScript or ONNX.

``export(ckpt_or_generator, "gen.pt")`` writes the checkpoint's *whole*
noise → sample map — the network plus the sampling rule around it (the
times ``t`` / ``s`` the kind feeds, the residual ``z + ...``, classifier-free
guidance) — as one module with the signature

* ``forward(z) -> x`` for an unconditional model,
* ``forward(z, y) -> x`` for a class-conditional one (``y`` int64 ``[B]``;
  ``y = num_classes`` is the null class, which :class:`~slimstep.Generator`
  uses when it is given no labels).

``z`` is ``[B, *data shape]`` noise, any batch size; ``x`` is in data space
(the generator's own output space: slimstep applies no conversion after the
network). For the same ``z`` (and ``y``), the exported model gives what
``Generator(z, y)`` gives. The file needs torch (TorchScript:
``torch.jit.load``) or any ONNX runtime, but no slimstep.

Only one-step generators (NFE 1) export:

* ``velocity`` (flow-matching teacher, reflow / slimflow / distill / gdd
  students) sampled with ``solver=euler, steps=1``:
  :math:`x = z + v(z, 0, y)`, with guidance
  :math:`v = v_\varnothing + w(v_y - v_\varnothing)` when ``cfg_scale`` ≠ 1;
* ``flowmap``, ``meanflow``, ``slt``: :math:`x = z + \mathrm{net}(z, t, y, s)`
  with the checkpoint's ``t`` and ``s``.

A multi-step or adaptive sampler raises :class:`ExportError`. Before writing,
:func:`export` (``check=True``) runs the exported graph at a second batch size
against the generator, so a rule that does not trace to a batch-size
independent graph is refused rather than written silently wrong.

ONNX uses ``torch.onnx.export``'s torch.export-based exporter, which needs the
optional packages ``onnx`` and ``onnxscript`` (``pip install onnx onnxscript``;
``onnxruntime`` to run the file). The batch axis is dynamic; inputs are named
``z`` (and ``y``), the output ``x``. Attention is exported on its explicit
softmax path (the exporter translates the fused kernel only for 4-D inputs), so
an ONNX file agrees with the generator to float rounding, not bit for bit.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from slimstep.errors import SlimstepError
from slimstep.files import atomic_write, write_bytes
from slimstep.generator import Generator, load
from slimstep.nets.dit import math_attention
from slimstep.onestep import euler_step, two_time_step
from slimstep.spec.sampling import VelocityRule

FORMATS = ("torchscript", "onnx")


class ExportError(SlimstepError, ValueError):
    """The generator cannot be exported (multi-step sampler, unknown kind, missing package)."""


class OneStepMap(nn.Module):
    """The one-step sampling map ``forward(z[, y]) -> x`` of a generator, as a plain module
    that traces to a batch-size independent graph.

    ``rule``: ``"euler"`` — :math:`z + v(z, 0, y)` (guided when ``cfg_scale != 1`` and the
    model is conditional); ``"two_time"`` — :math:`z + \\mathrm{net}(z, t, y, s)`.
    """

    def __init__(self, net: nn.Module, rule: str, *, num_classes: int = 0, cfg_scale: float = 1.0,
                 t: float = 0.0, s: float = 1.0):
        super().__init__()
        if rule not in ("euler", "two_time"):
            raise ValueError(f"unknown one-step rule '{rule}'")
        self.net, self.rule = net, rule
        self.num_classes, self.cfg_scale = int(num_classes), float(cfg_scale)
        self.t, self.s = float(t), float(s)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.rule == "two_time":
            return two_time_step(self.net, z, y, t=self.t, s=self.s)
        # slimstep.generator._velocity with solver=euler, steps=1: t = 0, h = 1
        return euler_step(self.net, z, y, cfg_scale=self.cfg_scale, num_classes=self.num_classes)


def one_step_map(gen: Generator) -> OneStepMap:
    """The :class:`OneStepMap` of ``gen`` (sharing its network), or :class:`ExportError` when
    ``gen`` does not sample in one network evaluation."""
    s = gen.sampling
    if isinstance(s, VelocityRule):
        if not s.one_step:
            how = ("adaptive dopri5 (NFE varies)" if s.nfe is None else
                   f"{s.solver} {s.steps} step(s) (NFE {s.nfe})")
            raise ExportError(f"export needs a one-step generator, this checkpoint samples with {how}: "
                              f"pass a one-step checkpoint or use --steps 1 --solver euler")
        return OneStepMap(gen.net, "euler", num_classes=gen.num_classes, cfg_scale=s.cfg_scale)
    if s.kind == "slt" and s.steps is not None:
        raise ExportError(f"export writes the {s.kind} student with its own depth steps: drop --steps")
    if s.nfe != 1:
        raise ExportError(f"export needs a one-step generator, this checkpoint's NFE is {s.nfe}: "
                          f"pass a one-step checkpoint or use --steps 1")
    return OneStepMap(gen.net, "two_time", num_classes=gen.num_classes, t=s.t, s=s.s)


def example_inputs(gen: Generator, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(z,)`` or ``(z, y)`` on the CPU: what the exported model takes."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, *gen.info.shape, generator=g)
    if not gen.num_classes:
        return (z,)
    return z, torch.randint(gen.num_classes + 1, (batch,), generator=g)  # includes the null class


def export(gen_or_path: Generator | str | Path, out_path: str | Path, fmt: str = "torchscript",
           *, check: bool = True) -> Path:
    """Write the one-step sampling map of a generator (or a checkpoint directory) to
    ``out_path`` as TorchScript (``torch.jit.load``) or ONNX; returns ``out_path``.

    The file is written atomically and holds CPU weights whatever device ``gen`` is on.
    ``check`` first runs the exported graph on fresh noise at another batch size and
    raises :class:`ExportError` (writing nothing) if it disagrees with the generator.
    """
    if fmt not in FORMATS:
        raise ExportError(f"export format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    gen = load(gen_or_path) if isinstance(gen_or_path, (str, Path)) else gen_or_path
    if next(gen.net.parameters()).device.type != "cpu":
        gen = Generator(copy.deepcopy(gen.net).cpu(), gen.info, gen.sampling, gen.config)
    module = one_step_map(gen).eval()
    out_path = Path(out_path)
    args = example_inputs(gen, batch=2)
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            # e.g. "iterating over a tensor" for a fixed q/k/v split: _check tests the trace instead
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(module, args, check_trace=False)
        if check:
            _check(gen, traced)
        write_bytes(out_path, _jit_bytes(traced))
    else:
        program, run = _export_onnx(module, args)
        if check:
            _check(gen, run)
        atomic_write(out_path, lambda p: program.save(p, external_data=False))
    return out_path


def _jit_bytes(module: torch.jit.ScriptModule) -> memoryview:
    """The TorchScript file in memory: torch.jit.save onto a path aborts the whole process
    (SIGABRT) on a full disk; our own write of these bytes fails with one line."""
    buf = io.BytesIO()
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the format is asked for
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=DeprecationWarning)
        torch.jit.save(module, buf)
    return buf.getbuffer()


def _export_onnx(module: nn.Module, args: tuple[torch.Tensor, ...]):
    """(ONNXProgram, a runner through onnxruntime or None when it is not installed)."""
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"ONNX export needs the optional package(s) {', '.join(missing)}: "
                          f"pip install {' '.join(missing)} (or use --format torchscript)")
    names = ["z", "y"][:len(args)]
    dynamic = {n: {0: torch.export.Dim("batch")} for n in names}
    # the math attention path: onnxscript translates fused SDPA only for 4-D q/k/v (not the UNet's)
    with torch.no_grad(), math_attention(), _quiet_onnx():
        try:
            program = torch.onnx.export(module, args, dynamo=True, input_names=names,
                                        output_names=["x"], dynamic_shapes=dynamic, verbose=False)
        except Exception as e:  # the exporter raises many error types: report the root cause
            root = e
            while root.__cause__ is not None:
                root = root.__cause__
            first = re.sub(r"\x1b\[[0-9;]*m", "", (str(root).strip().splitlines() or [""])[0])
            raise ExportError(f"ONNX export failed: {type(root).__name__}: {first}") from e
    if importlib.util.find_spec("onnxruntime") is None:
        return program, None

    import onnxruntime

    sess = onnxruntime.InferenceSession(program.model_proto.SerializeToString(),
                                        providers=["CPUExecutionProvider"])

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        feed = {n: v.numpy() for n, v in zip(names, inputs, strict=True)}
        return torch.from_numpy(sess.run(["x"], feed)[0])

    return program, run


@contextmanager
def _quiet_onnx() -> Iterator[None]:
    """Mute the exporter's chatter that says nothing about this model (torchvision ops not
    registered, deprecations inside torch, dynamic-axis renames)."""
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*axis name", category=UserWarning)
            yield
    finally:
        log.setLevel(level)


@torch.no_grad()
def _check(gen: Generator, run) -> None:
    """Compare the exported graph with the generator at a batch size other than the traced one."""
    if run is None:  # ONNX without onnxruntime: nothing here can run the graph
        return
    args = example_inputs(gen, batch=3, seed=1)
    want = gen(*args).float()
    got = run(*args).float()
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        err = f"max abs error {(got - want).abs().max().item():.3g}" if got.shape == want.shape \
            else f"shape {tuple(got.shape)} != {tuple(want.shape)}"
        raise ExportError(f"the exported model disagrees with the generator ({err}); nothing written")
