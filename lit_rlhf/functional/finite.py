"""Finiteness checks of losses and gradients, and the count of optimizer steps skipped for them.

A step whose loss or gradient holds an ``inf`` or ``NaN`` would write it into the weights (and the optimizer's
moments) for good. The modules check both before each optimizer step, skip the step when either is non-finite, and
count the skipped steps with :class:`NonFiniteCounter`, which also says when too many training steps in a row had
one. Nothing here communicates across processes: the modules reduce the flags themselves, so every process skips
the same steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch


def all_finite(tensors: Iterable[torch.Tensor | None]) -> torch.Tensor:
    """Whether every element of every tensor is finite (neither ``inf`` nor ``NaN``).

    Args:
        tensors: tensors of any shapes and float dtypes (e.g. the gradients of a model); ``None`` entries (a parameter
            without a gradient) are left out.

    Returns:
        A 0-dim bool tensor on the tensors' device (true when there are none), so that the caller decides when to
        synchronise with the device.
    """
    flags = [torch.isfinite(t).all() for t in tensors if t is not None]
    if not flags:
        return torch.tensor(True)
    return torch.stack([f.to(flags[0].device) for f in flags]).all()


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor | None]]) -> str | None:
    """The name of the first tensor that holds a non-finite element, ``None`` when all are finite.

    Args:
        named: ``(name, tensor)`` pairs, e.g. ``(parameter name, its gradient)``; ``None`` tensors are skipped.
    """
    for name, tensor in named:
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            return name
    return None


class NonFiniteCounter:
    """Skipped optimizer steps per optimizer, and the training steps in a row that had one.

    A training step is one batch (SFT, reward model) or one iteration (PPO, GRPO: several optimizer steps). Call
    :meth:`skip` for each optimizer step skipped because of a non-finite loss or gradient, then :meth:`end_step` once
    at the end of the training step: a training step with no skip resets the run of bad steps.

    Args:
        names: the optimizers counted (``("model",)``, ``("actor", "critic")``).
        limit: how many training steps in a row may have a skipped optimizer step before :meth:`end_step` says to
            stop; ``None`` never stops.

    Attributes:
        skipped: ``{name: optimizer steps skipped since the start of the run}``.
        in_a_row: training steps in a row, up to the last one ended, that had a skipped optimizer step.
        last: what the last skipped step found (a description for the error message), ``None`` before any.
    """

    def __init__(self, names: Sequence[str], limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        self.limit = limit
        self.skipped: dict[str, int] = {name: 0 for name in names}
        self.in_a_row = 0
        self.last: str | None = None
        self._skipped_this_step = False

    def skip(self, name: str, description: str) -> None:
        """Count one skipped optimizer step of optimizer ``name``, described by ``description``."""
        self.skipped[name] = self.skipped.get(name, 0) + 1
        self.last = description
        self._skipped_this_step = True

    def end_step(self) -> bool:
        """End one training step: whether the run has reached ``limit`` training steps in a row with a skip."""
        self.in_a_row = self.in_a_row + 1 if self._skipped_this_step else 0
        self._skipped_this_step = False
        return self.limit is not None and self.in_a_row >= self.limit

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": dict(self.skipped), "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped.update({name: int(count) for name, count in state.get("skipped", {}).items()})
        self.in_a_row = int(state.get("in_a_row", 0))
        self._skipped_this_step = False
