"""Cost of a generator: parameters, MACs, throughput and single-sample latency.

Timings run under ``torch.no_grad`` after warm-up calls, and synchronise CUDA before
reading the clock when inputs or outputs live on a GPU (kernels launch asynchronously).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from slimstep.nets import count_params
from slimstep.nets.dit import math_attention


def count_macs(fn: Callable[..., Any], *inputs: Any, **kwargs: Any) -> int:
    """Multiply-accumulates of one call ``fn(*inputs, **kwargs)``: FLOPs / 2 as counted
    by ``torch.utils.flop_counter.FlopCounterMode``. It counts matmuls, convolutions and
    attention (the ops that dominate); element-wise ops and norms are not counted.

    slimstep's attention layers run their math path while counting: the counter has no
    formula for the CPU kernel of ``scaled_dot_product_attention`` and counted it as 0
    (issue 24: a DiT block's 2T²D attention MACs were missing from every figure before).
    A wrapped diffusers network's own attention processors are outside that switch."""
    with torch.no_grad(), math_attention(), FlopCounterMode(display=False) as counter:
        fn(*inputs, **kwargs)
    return int(counter.get_total_flops()) // 2


def sample_macs(gen) -> int:
    """Multiply-accumulates of one sample of ``gen`` (every network call, every block pass)."""
    return count_macs(gen, torch.randn(1, *gen.info.shape, device=next(gen.net.parameters()).device))


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _sync(*objs: Any) -> None:
    devices = {t.device for o in objs for t in _tensors(o) if t.device.type == "cuda"}
    for d in devices:
        torch.cuda.synchronize(d)


def _as_args(x: Any) -> tuple:
    return tuple(x) if isinstance(x, tuple) else (x,)


def measure_throughput(
    fn: Callable[..., Any],
    make_input: Callable[[int], Any],
    batch_size: int = 256,
    warmup: int = 3,
    iters: int = 10,
) -> float:
    """Samples per second of ``fn(make_input(batch_size))`` (a tuple input is unpacked
    into arguments). The input is built once, outside the clock; the figure is
    ``batch_size · iters / elapsed`` over ``iters`` timed calls after ``warmup``."""
    args = _as_args(make_input(batch_size))
    with torch.no_grad():
        for _ in range(warmup):
            out = fn(*args)
        _sync(args)
        t0 = time.perf_counter()
        for _ in range(iters):
            out = fn(*args)
        _sync(args, out)
        elapsed = time.perf_counter() - t0
    return batch_size * iters / elapsed


def measure_latency(
    fn: Callable[..., Any],
    make_input: Callable[[int], Any],
    warmup: int = 3,
    repeats: int = 20,
) -> float:
    """Seconds for one sample: median over ``repeats`` timed calls of
    ``fn(make_input(1))`` after ``warmup`` calls (the median ignores scheduler hiccups)."""
    args = _as_args(make_input(1))
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            fn(*args)
        for _ in range(repeats):
            _sync(args)
            t0 = time.perf_counter()
            out = fn(*args)
            _sync(args, out)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_generator(gen, batch_size: int = 256, iters: int = 10) -> dict:
    """Speed of a :class:`slimstep.generator.Generator` with its sampling rule:
    samples/s at ``batch_size``, one-sample latency, NFE, parameters and MACs
    per sample (every network evaluation of one sample, guidance included)."""
    device = next(gen.net.parameters()).device
    shape = tuple(gen.info.shape)

    def make(b):
        return (torch.randn(b, *shape, device=device),)

    return {
        "parameters": count_params(gen.net),
        "nfe": gen.nfe,
        "macs": count_macs(gen, *make(1)),
        "batch_size": batch_size,
        "samples_per_s": round(measure_throughput(gen, make, batch_size, warmup=2, iters=iters), 2),
        "latency_s": round(measure_latency(gen, make, warmup=2, repeats=max(iters, 5)), 6),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


__all__ = ["bench_generator", "count_macs", "count_params", "measure_latency", "measure_throughput",
           "sample_macs"]
