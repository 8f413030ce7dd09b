"""Turn a checkpoint into samples: ``slimstep.load(path).generate(n, seed=0)``.

**Per-seed sampling** (EDM's rule): sample ``i`` of a call with ``seed`` draws
its noise — and, for a class-conditional model without given labels, its
class — from a CPU generator seeded with ``seed + i``. A sample therefore never
depends on batch size, device or the number of processes.

The sampling rule (``config.json["generator"]``, a :data:`~slimstep.spec.sampling.SamplingRule`)
is one of a closed set, dispatched on its type to a function ``(generator, z, y) -> (x, nfe)``:

* ``velocity`` — a velocity field ``v(x, t, y)`` integrated from ``t = 0`` to
  ``1`` (:mod:`slimstep.solvers`); with ``solver=euler, steps=1`` this is the
  one-step map ``x = z + v(z, 0)``.
* ``flowmap``, ``meanflow``, ``slt`` — :func:`slimstep.onestep.two_time_step` with the
  checkpoint's ``t`` and ``s`` (and, for a depth-gap SLT student, ``steps``).

The generator imports no method: the rules live in :mod:`slimstep.onestep`.
"""

from __future__ import annotations

import dataclasses
import operator
from pathlib import Path

import torch
from torch import nn

from slimstep import checkpoint as ckpt
from slimstep.data import DataInfo
from slimstep.errors import ConfigError
from slimstep.nets import build_net, count_params
from slimstep.onestep import two_time_step
from slimstep.solvers import guided, integrate
from slimstep.spec.sampling import SamplingRule, VelocityRule, rule_dict, sampling_rule


def seeded_noise(shape: tuple[int, ...], seeds: list[int], num_classes: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Noise ``[len(seeds), *shape]`` (and uniform class labels when
    ``num_classes > 0``), each sample from its own CPU generator."""
    zs, ys = [], []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        zs.append(torch.randn(shape, generator=g))
        if num_classes:
            ys.append(int(torch.randint(num_classes, (1,), generator=g)))
    return torch.stack(zs), (torch.tensor(ys, dtype=torch.long) if num_classes else None)


def _velocity(gen: Generator, z: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    s = gen.sampling
    v = guided(gen.net, y, float(s.cfg_scale), gen.num_classes)
    return integrate(v, z, solver=s.solver, steps=s.steps,
                     rtol=1e-5 if s.rtol is None else s.rtol, atol=1e-5 if s.atol is None else s.atol)


def _two_time(gen: Generator, z: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    s = gen.sampling
    steps = s.steps if s.kind == "slt" else None  # a depth-gap student's jumps
    if steps is not None and getattr(gen.net, "depth", "table") != "gap":
        raise ConfigError(f"--steps {steps}: only a depth-gap SLT student (net.depth: gap) runs "
                          "another number of depth steps than its K")
    return two_time_step(gen.net, z, y, t=s.t, s=s.s, steps=steps), 1


class Generator(nn.Module):
    """A trained model with the sampling rule its checkpoint prescribes.

    ``forward(z, y=None) -> x`` maps noise to data space; :meth:`generate`
    adds per-seed noise, batching and device handling. ``last_nfe`` holds the
    network evaluations per sample of the latest call.
    """

    def __init__(self, net: nn.Module, info: DataInfo, sampling: SamplingRule | dict,
                 config: dict | None = None):
        super().__init__()
        if isinstance(sampling, dict):  # a config.json section, or one written by hand
            sampling = sampling_rule(sampling, "sampling", ConfigError)
        self.net, self.info, self.sampling = net.eval(), info, sampling
        self.config = config or {}  # the checkpoint's config.json
        self.source: Path | None = None  # the checkpoint directory, when load() made it
        self.num_classes = getattr(net, "num_classes", 0) or 0
        self.last_nfe = 0

    @property
    def params(self) -> int:
        return count_params(self.net)

    @property
    def nfe(self) -> int:
        """Network evaluations per sample (the latest call's, for adaptive rules)."""
        s = self.sampling
        if isinstance(s, VelocityRule) and s.nfe is not None:
            return s.nfe
        return self.last_nfe or (s.nfe or 0)

    def with_sampling(self, **over) -> Generator:
        """The same network with other sampling settings (None values ignored), checked by
        the rules config.json's are (``steps=0`` is a :class:`~slimstep.errors.ConfigError`).
        A key of another kind (the solver of a flow map) is not read."""
        known = {f.name: f for f in dataclasses.fields(self.sampling)}
        given = {k: v for k, v in over.items() if v is not None and k in known}
        for k, v in given.items():
            try:
                type(self.sampling).from_dict({k: v}, "sampling")
            except ConfigError:
                raise ConfigError(f"{k}: must be {known[k].metadata.get('need') or 'a ' + str(known[k].type)}, "
                                  f"got {v!r}") from None
        return Generator(self.net, self.info, dataclasses.replace(self.sampling, **given), self.config)

    def compiled(self) -> Generator:
        """The same model with its network under ``torch.compile`` (static shapes: a
        protocol draws full batches and one remainder, so two compilations), for long
        multi-call sampling: a Fashion-MNIST teacher's network call ran 1.57x faster on one CPU
        thread (UNet; 1.35x the DiT) after ~1.5 min of compiling per batch shape. Outputs differ
        from the plain network's by float summation order only (<= 7e-6 here). MACs and speed are measured on
        the plain network (:func:`slimstep.eval.speed.sample_macs` traces it)."""
        gen = Generator(torch.compile(self.net, dynamic=False), self.info, self.sampling, self.config)
        gen.source = self.source
        return gen

    @torch.no_grad()
    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and y is None:
            y = torch.full((len(z),), self.num_classes, dtype=torch.long, device=z.device)
        step = _velocity if isinstance(self.sampling, VelocityRule) else _two_time
        x, self.last_nfe = step(self, z, y)
        return x

    @torch.no_grad()
    def generate(self, n: int, seed: int = 0, y: torch.Tensor | None = None,
                 batch_size: int = 256, labels: str = "random"
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` samples (CPU, data space) from seeds ``seed .. seed + n - 1``.

        For a conditional model without ``y``: ``labels="random"`` draws each
        sample's class from its seed; ``"null"`` samples unconditionally.
        """
        _at_least("n", n, 1)  # the command line's words for the same mistakes
        _at_least("seed", seed, 0)
        _at_least("batch_size", batch_size, 1)
        if labels not in ("random", "null", "given"):
            raise ConfigError(f"labels takes random or null, not {labels!r}")
        seeds = list(range(seed, seed + n))
        z, ys = seeded_noise(tuple(self.info.shape), seeds,
                             self.num_classes if labels == "random" else 0)
        if y is not None:
            ys = y.to(torch.long).reshape(-1)
            if len(ys) != n:
                raise ConfigError(f"y has {len(ys)} labels for {n} samples")
        return self.sample_from(z, ys, batch_size), ys

    @torch.no_grad()
    def sample_from(self, z: torch.Tensor, y: torch.Tensor | None = None,
                    batch_size: int = 256) -> torch.Tensor:
        """Map given noise (any device) to samples on the CPU, in batches."""
        device = next(self.net.parameters()).device
        out = []
        for i in range(0, len(z), batch_size):
            yb = y[i:i + batch_size].to(device) if y is not None else None
            out.append(self(z[i:i + batch_size].to(device), yb).float().cpu())
        return torch.cat(out) if out else z[:0].cpu()


def _at_least(name: str, v, low: int) -> None:
    try:  # any integer type (numpy's too), not a float or a bool
        if isinstance(v, bool):
            raise TypeError
        v = operator.index(v)
    except TypeError:
        raise ConfigError(f"{name}: expected a whole number, got {v!r}") from None
    if v < low:
        raise ConfigError(f"{name}: must be at least {low}, got {v}")


def load_net(path: str | Path, weights: str = "ema") -> tuple[nn.Module, dict]:
    """A checkpoint's network and config. ``weights="ema"`` reads
    ``model.safetensors``; ``"raw"`` reads the optimised (non-averaged) weights
    from the newest training snapshot (SlimFlow's student starts from those)."""
    cfg = ckpt.read_model_config(path)
    try:
        net = build_net(cfg["net"])
    except ConfigError as e:  # the network section names an unknown net or option
        raise ckpt.CheckpointError(f"{path}/config.json: {e}") from None
    if weights == "ema":
        sd = ckpt.load_weights(path)
    elif weights == "raw":
        snaps = ckpt.list_snapshots(path)
        if not snaps:
            raise ckpt.CheckpointError(f"{path}: no training snapshot holds raw weights")
        sd = ckpt.load_training_state(snaps[-1])["modules"]["net"]
    else:
        raise ValueError(f"weights must be ema or raw, not '{weights}'")
    ckpt.check_fits(net, sd, str(path))
    net.load_state_dict(sd)
    return net, cfg


def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` itself when it holds a checkpoint; a ``slimstep run`` stage folder
    (``DIR/<stage>``, whose model lives in ``model-<hash>/``) gives its one model."""
    p = Path(path)
    if (p / ckpt.CONFIG).is_file() or not p.is_dir():
        return p
    models = sorted(d for d in p.glob("model-*") if (d / ckpt.CONFIG).is_file())
    if len(models) == 1:
        return models[0]
    if models:
        raise ckpt.CheckpointError(f"{p} is a stage folder with {len(models)} models "
                                   f"({', '.join(m.name for m in models)}): name one")
    return p  # load_net says what is missing


def compile_problem() -> str | None:
    """Why ``torch.compile`` cannot build kernels on this machine (no C++ compiler, an
    unsupported platform), or None when it can: asked once before a run that compiles, so
    a missing compiler is one error line, not a failure hours in."""
    try:
        with torch.no_grad():  # a pointwise op: inductor must generate and build code for it
            torch.compile(lambda x: x.sin() + 1, dynamic=False)(torch.zeros(4))
    except Exception as e:  # noqa: BLE001 - inductor raises many kinds; the line names it
        inner = getattr(e, "inner_exception", None) or e  # BackendCompilerFailed wraps the cause
        text = str(inner).strip()
        return f"{type(inner).__name__}: {text.splitlines()[0]}" if text else type(inner).__name__
    return None


def load(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Load a checkpoint directory (``config.json`` + ``model.safetensors``), or a
    ``slimstep run`` stage folder holding one."""
    path = resolve_checkpoint(path)
    net, cfg = load_net(path)  # config.json's sections were checked there
    gen = Generator(net.to(device), DataInfo.from_dict(cfg["data"]), cfg["generator"], cfg)
    gen.source = Path(path).resolve()
    return gen


def save(gen: Generator, path: str | Path) -> Path:
    """Write ``gen`` as a checkpoint (``config.json`` + ``model.safetensors``) that every
    command reads; refuses a directory that already holds one."""
    p = Path(path)
    if (p / ckpt.CONFIG).exists() or (p / ckpt.WEIGHTS).exists():
        raise ckpt.CheckpointError(f"{p} already holds a checkpoint: choose another path")
    config = {**gen.config, "data": gen.info.to_dict(), "generator": rule_dict(gen.sampling)}
    config.setdefault("format", ckpt.FORMAT)
    ckpt.save_model(p, gen.net, config)
    return p
