"""The one interface every reward source follows: prompts, completions and row fields in, one float per sample out."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from lit_rlhf.errors import UserError


class RewardError(UserError):
    """A reward source returned something unusable; the message names the source and the sample."""


class RewardSource:
    """Base of reward sources (rule functions, learned reward models, LLM judges).

    Subclasses implement :meth:`score`. Call the source (``source(prompts, completions, rows)``) to get a checked
    ``(batch,)`` float tensor: one finite number per sample, or a :class:`RewardError` naming the source, the sample
    and its prompt.

    Attributes:
        name: how logs and errors name the source (``reward/<name>``); defaults to the class name.
    """

    name: str = ""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.name or type(self).__name__

    def models(self) -> list[torch.nn.Module]:
        """The frozen models this source runs (a reward model, a judge), for the training module to place on its
        device or shard with the policy under FSDP2; none for a rule."""
        return []

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        rows: Sequence[dict[str, Any]],
        finished: Sequence[bool] | None = None,
    ) -> Sequence[float] | torch.Tensor:
        """One reward per sample.

        Args:
            prompts: the prompt texts, ``batch`` of them.
            completions: the generated texts (special tokens removed).
            rows: each sample's dataset row (e.g. ``answer`` for a verifier).
            finished: whether each completion ended with EOS (``None``: unknown, treat all as finished).

        Returns:
            ``batch`` numbers (a list or a ``(batch,)`` tensor).
        """
        raise NotImplementedError

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        rows: Sequence[dict[str, Any]],
        finished: Sequence[bool] | None = None,
    ) -> torch.Tensor:
        """:meth:`score`, checked (see :func:`check_rewards`), as a float32 ``(batch,)`` CPU tensor."""
        if not len(prompts) == len(completions) == len(rows):
            raise RewardError(
                f"{self.name}: got {len(prompts)} prompts, {len(completions)} completions and {len(rows)} rows"
            )
        return check_rewards(self.score(prompts, completions, rows, finished), prompts, self.name)


def check_rewards(values: Any, prompts: Sequence[str], source: str) -> torch.Tensor:
    """Check a reward source's output: exactly one finite real number per prompt.

    Args:
        values: what the source returned.
        prompts: the prompts it was given (for the length and the message).
        source: the source's name for the message.

    Returns:
        ``(batch,)`` float32 CPU tensor.

    Raises:
        RewardError: e.g. ``"arithmetic_verifier returned 3 rewards for 4 samples"`` or ``"... returned nan for
        sample 2 (prompt 'make a series ...')"``.
    """
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise RewardError(f"{source} returned a tensor of shape {tuple(values.shape)}; expected ({len(prompts)},)")
        values = values.detach().float().cpu().tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise RewardError(f"{source} returned {type(values).__name__}; expected a list of {len(prompts)} numbers")
    if len(values) != len(prompts):
        raise RewardError(f"{source} returned {len(values)} rewards for {len(prompts)} samples")
    for i, value in enumerate(values):
        where = f"for sample {i} (prompt {prompts[i]!r:.60})"
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise RewardError(f"{source} returned {type(value).__name__} {value!r:.40} {where}; expected a number")
        if not math.isfinite(value):
            raise RewardError(f"{source} returned {value} {where}; rewards must be finite")
    return torch.tensor([float(v) for v in values], dtype=torch.float32)
