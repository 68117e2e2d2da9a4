"""Learning-rate schedule factors (multipliers of the base LR) as pure functions of the step."""

from __future__ import annotations

import math
from typing import Literal

ScheduleName = Literal["constant", "linear", "cosine"]


def warmup_decay_factor(
    step: int,
    warmup_steps: int,
    total_steps: int,
    schedule: ScheduleName = "cosine",
    min_factor: float = 0.0,
) -> float:
    """LR multiplier: linear warmup from ~0 to 1, then constant, linear or cosine decay to ``min_factor``.

    Step ``s`` of warmup (0-based) gives ``(s + 1) / (warmup_steps + 1)`` so the first step is never a zero LR.

    Args:
        step: optimizer steps taken so far (0-based).
        warmup_steps: steps of linear warmup.
        total_steps: steps at which the decay reaches ``min_factor``; later steps stay there.
        schedule: shape after warmup.
        min_factor: floor of the decay, as a fraction of the base LR.

    Returns:
        The factor to multiply the base learning rate by.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "linear":
        shape = 1.0 - progress
    elif schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown schedule {schedule!r}; expected 'constant', 'linear' or 'cosine'")
    return min_factor + (1.0 - min_factor) * shape
