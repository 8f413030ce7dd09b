"""Data parallelism under ``torchrun`` (NCCL on GPU, gloo on CPU).

slimstep does not wrap modules in ``DistributedDataParallel``. Methods call
their networks in ways DDP's forward hooks do not follow — ``torch.func.jvp``
(MeanFlow, FreeFlow), several optimizers in one step (GDD), frozen
parameters (GDD-I) — so the loop instead averages the gradients itself after
the last micro-batch, in flat buckets: one mechanism that is correct for all
of them, and that a test checks against a single process. Parameters with no
gradient (frozen) never enter the all-reduce.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from slimstep.spec import resolve_device


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Context:
    """Initialise the process group when launched by torchrun, else one process."""
    dev = resolve_device(device)  # a device that is not there is one error line
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context(device=dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Context(rank=rank, world=world, local_rank=local, device=dev)


def barrier(world: int) -> None:
    """Wait for every rank (e.g. while rank 0 writes the last checkpoint): a rank
    that tears gloo down while a peer still works makes that peer abort."""
    if world > 1:
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def allreduce_grads(params, world: int, bucket_bytes: int = 32 << 20) -> None:
    """Average ``.grad`` of ``params`` over all ranks, in flat buckets."""
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0

    def flush():
        if not bucket:
            return
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in bucket:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        bucket.clear()

    for g in grads:
        bucket.append(g)
        size += g.numel() * g.element_size()
        if size >= bucket_bytes:
            flush()
            size = 0
    flush()


def allreduce_mean(x: torch.Tensor, world: int) -> torch.Tensor:
    if world == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world


def broadcast_module(module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's weights."""
    if dist.is_available() and dist.is_initialized():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, 0)
