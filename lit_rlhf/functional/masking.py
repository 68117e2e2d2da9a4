"""Masked reductions over token dimensions."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
"""Label value that marks a position as excluded from the loss (prompt and padding tokens)."""


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is true.

    Args:
        values: any shape, e.g. ``(batch, seq_len)``.
        mask: same shape as ``values``; bool or 0/1.
        dim: dimension to reduce; ``None`` reduces everything to a scalar.

    Returns:
        The masked sum, reduced over ``dim``.
    """
    masked = values * mask.to(values.dtype)
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is true.

    A reduction with no true position returns 0 rather than NaN, so an empty slice never poisons a loss.

    Args:
        values: any shape, e.g. ``(batch, seq_len)``.
        mask: same shape as ``values``; bool or 0/1.
        dim: dimension to reduce; ``None`` reduces everything to a scalar.

    Returns:
        The masked mean, reduced over ``dim``.
    """
    count = mask.to(values.dtype).sum() if dim is None else mask.to(values.dtype).sum(dim=dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def mask_after_eos(tokens: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Mask of generated tokens up to and including the first EOS of each row.

    Args:
        tokens: ``(batch, response_len)`` generated ids.
        eos_token_id: the id that ends a response.

    Returns:
        ``(batch, response_len)`` bool mask: true before and at the first EOS, false after it; rows without EOS
        are all true (they were cut by ``max_new_tokens``).
    """
    is_eos = tokens == eos_token_id
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return eos_before == 0
