"""Gradient accumulation weights: how much each micro-batch's mean loss counts in its minibatch's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch


def micro_batch_weights(
    masks: Sequence[torch.Tensor], averaging: Literal["token", "sequence"] = "token"
) -> list[float]:
    """Weights ``w_i`` such that ``sum_i w_i * loss_i`` equals the loss of the whole minibatch, when each ``loss_i``
    is a mean over micro-batch ``i`` (so the summed gradients equal the unaccumulated gradient).

    Args:
        masks: one ``(rows_i, response_len_i)`` response mask per micro-batch.
        averaging: ``token``: each loss is a mean over its response tokens, so ``w_i`` is the micro-batch's share of
            the minibatch's tokens; ``sequence``: a mean over its responses, so ``w_i`` is its share of the rows.

    Returns:
        One float per micro-batch, summing to 1.
    """
    if averaging == "token":
        sizes = [float(mask.sum()) for mask in masks]
    elif averaging == "sequence":
        sizes = [float(mask.size(0)) for mask in masks]
    else:
        raise ValueError(f"averaging must be 'token' or 'sequence', got {averaging!r}")
    total = sum(sizes)
    if total <= 0:
        raise ValueError("micro-batches without any response token or row")
    return [size / total for size in sizes]
