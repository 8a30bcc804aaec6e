"""The one shape of a training step, shared by every trainer:

    train_step(state, batch, step, accelerator) -> StepResult

`state` is the trainer's dataclass of what a step updates (models, optimizers, schedules, EMA),
`batch` a dict from its data loader, `step` the 1-based global step the update makes (loss
warm-ups and start steps read it). The scripts around the steps only loop, log and checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepResult:
    """What one step reports.

    Args:
        loss: the (main) training loss of this micro-batch, as a float.
        logs: every scalar worth logging (losses, learning rate, gradient norm, ...).
        synced: whether the optimizers stepped (`False` inside a gradient-accumulation cycle).
    """

    loss: float
    logs: dict[str, float] = field(default_factory=dict)
    synced: bool = True


__all__ = ["StepResult"]
