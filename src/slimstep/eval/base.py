"""The evaluation's own types, below every metric module: its error, and the checks and
clamping every protocol applies to samples before scoring them."""

from __future__ import annotations

from typing import Any

import torch

from slimstep.errors import SlimstepError
from slimstep.spec.results import Note


class EvalError(SlimstepError, ValueError):
    """An evaluation input (samples, spec, weights or stats file) is unusable (one clear line)."""


DIGITS_FLOOR_N = 597  # size of the digits test split (slimstep.data.digits.N_TEST)
HEADLINE = ("fd", "fid", "kid", "swd", "w2", "mmd", "precision", "recall")  # shown with their floor


def as_samples(samples: Any, shape: tuple[int, ...] | None, what: str) -> torch.Tensor:
    x = torch.as_tensor(samples).detach().cpu().float()
    if shape is not None and (x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape):
        raise EvalError(f"{what} samples must be [N, {', '.join(map(str, shape))}], got {tuple(x.shape)}")
    if len(x) < 5:
        raise EvalError(f"evaluate needs at least 5 samples, got {len(x)}")
    if not torch.isfinite(x).all():
        raise EvalError(f"{int((~torch.isfinite(x)).sum())} sample values are NaN or inf")
    return x


def clamp(x: torch.Tensor, notes: list[str | Note]) -> torch.Tensor:
    out = (x.abs() > 1).float().mean().item()
    if out > 0:
        notes.append(Note.clamped(out))
    return x.clamp(-1, 1)
