"""Learning-rate schedules, one helper for every trainer (`make_schedule`).

The two DetailFlow trainers keep the original's schedules exactly (resumed runs and parity depend on
the numbers), and neither is one of diffusers' (their warm-up starts from 0 and their cosine decays to
0); the fine-tuning examples use diffusers' `get_scheduler` by name. All are stepped once per optimizer
step and are plain `LambdaLR`s, so a checkpoint restores them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

GENERATOR = "detailflow-generator"
TOKENIZER = "detailflow-tokenizer"


def generator_factor(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The generator's (`train_c2i.py`): `0.005 + 0.995 s/W` over `W` warm-up steps, then
    `0.01 + 0.99 * (1 + cos(pi (s - W) / (S - W))) / 2`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.005 + 0.995 * step / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def tokenizer_factor(
    total_steps: int, warmup_steps: int, warmup_ratio: float, min_ratio: float
) -> Callable[[int], float]:
    """The tokenizer's (timm `CosineLRScheduler`, one cycle, `warmup_prefix=False`): linear from
    `warmup_ratio` to 1 over `warmup_steps`, then `min + (1 - min) * (1 + cos(pi s / S)) / 2` with `s`
    counted from 0 (warm-up included) and `S = total_steps`; `min_ratio` after `S`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_ratio + step * (1.0 - warmup_ratio) / warmup_steps
        if step >= total_steps:
            return min_ratio
        return min_ratio + 0.5 * (1.0 - min_ratio) * (1.0 + math.cos(math.pi * step / total_steps))

    return factor


def make_schedule(
    name: str,
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_ratio: float = 0.0,
    min_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """`name`: `"detailflow-generator"`, `"detailflow-tokenizer"` (`warmup_ratio`, `min_ratio`: its
    start and floor as fractions of the base lr) or any diffusers schedule (`"constant"`, `"cosine"`, ...)."""
    if name == GENERATOR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, generator_factor(total_steps, warmup_steps))
    if name == TOKENIZER:
        factor = tokenizer_factor(total_steps, warmup_steps, warmup_ratio, min_ratio)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    from diffusers.optimization import get_scheduler

    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def schedule_names() -> list[str]:
    """Every name `make_schedule` takes."""
    from diffusers.optimization import SchedulerType

    return [GENERATOR, TOKENIZER, *(s.value for s in SchedulerType)]


__all__ = ["GENERATOR", "TOKENIZER", "generator_factor", "make_schedule", "schedule_names", "tokenizer_factor"]
