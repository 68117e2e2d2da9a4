"""Supervised fine-tuning loss: next-token cross-entropy on response tokens only."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from lit_rlhf.functional.masking import IGNORE_INDEX
from lit_rlhf.functional.padding import PackedRows


class SFTStats(NamedTuple):
    """Detached statistics of one SFT batch.

    Attributes:
        loss: scalar, mean cross-entropy per supervised token (the value that is differentiated, detached).
        num_tokens: scalar, number of supervised (non-ignored) target tokens.
        num_correct: scalar, how many of them the argmax prediction got right.
    """

    loss: torch.Tensor
    num_tokens: torch.Tensor
    num_correct: torch.Tensor


def num_target_tokens(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Scalar count of the supervised targets of ``labels`` ``(batch, seq_len)``: positions 1.. not ignored."""
    return (labels[:, 1:] != ignore_index).sum()


def supervised_window(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """How many trailing positions of a padded batch's logits :func:`sft_loss` needs.

    Position ``t`` predicts ``labels[:, t + 1]``, so the logits before the position that predicts the batch's first
    supervised label (over all rows) meet only ignored targets. A model that takes ``logits_to_keep=window`` then
    computes its LM head on ``window`` positions instead of ``seq_len``, and
    ``sft_loss(logits, labels[:, -window:])`` equals the loss over every position. With long prompts and a large
    vocabulary that skips most of the batch's logits.

    Args:
        labels: ``(batch, seq_len)`` as for :func:`sft_loss`.
        ignore_index: label value to skip.

    Returns:
        ``seq_len - t`` where position ``t`` predicts the first supervised label; ``seq_len`` when no label is
        supervised (nothing to save).
    """
    supervised = (labels[:, 1:] != ignore_index).any(dim=0)
    if not bool(supervised.any()):
        return labels.size(1)
    return labels.size(1) - int(supervised.nonzero()[0])


def packed_labels(labels: torch.Tensor, layout: PackedRows, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labels of a padded batch in the packed order of ``layout``, each row's first label ignored.

    In one packed row the last token of a row sits right before the next row's first token, so :func:`sft_loss`
    would ask it to predict that token; ignoring every row's first label (which a causal LM never predicts within
    its own row anyway) keeps the loss the padded batch's.

    Args:
        labels: ``(batch, seq_len)`` as for :func:`sft_loss`.
        layout: :func:`~lit_rlhf.functional.padding.pack_rows` of the batch's attention mask.
        ignore_index: label value to skip.

    Returns:
        ``(num_tokens,)`` labels of the packed row.
    """
    packed = labels.flatten().index_select(0, layout.token_index).clone()
    starts = layout.lengths.cumsum(dim=0) - layout.lengths
    packed[starts] = ignore_index
    return packed


def packed_targets(
    labels: torch.Tensor, layout: PackedRows, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a packed row's logits predict a supervised token, and that token: the only logits an SFT loss needs.

    Args:
        labels: ``(batch, seq_len)`` as for :func:`sft_loss`.
        layout: :func:`~lit_rlhf.functional.padding.pack_rows` of the batch's attention mask.
        ignore_index: label value to skip.

    Returns:
        ``(positions, targets)``, both ``(num_targets,)``: packed position ``positions[i]`` predicts ``targets[i]``
        (the next packed label, never a row's first one: see :func:`packed_labels`).
    """
    following = packed_labels(labels, layout, ignore_index)[1:]
    positions = (following != ignore_index).nonzero().squeeze(1)
    return positions, following[positions]


def token_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    normalizer: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, SFTStats]:
    """Cross-entropy of ``logits`` ``(num_positions, vocab)`` against ``targets`` ``(num_positions,)``, summed over
    the targets that are not ``ignore_index`` and divided by their count (or by ``normalizer``; see
    :func:`sft_loss`). Computed in float32. Returns ``(loss, stats)`` as :func:`sft_loss`."""
    logits = logits.float()
    loss_sum = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    supervised = targets != ignore_index
    num_tokens = supervised.sum()
    denominator = num_tokens if normalizer is None else normalizer
    loss = loss_sum / (denominator.clamp(min=1) if torch.is_tensor(denominator) else max(denominator, 1))
    with torch.no_grad():
        num_correct = ((logits.argmax(dim=-1) == targets) & supervised).sum()
    return loss, SFTStats(loss=loss.detach(), num_tokens=num_tokens, num_correct=num_correct)


def sft_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    normalizer: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, SFTStats]:
    """Causal-LM cross-entropy where prompt and padding positions are ignored.

    Position ``t`` of ``logits`` predicts ``labels[:, t + 1]``; labels equal to ``ignore_index`` (prompt, padding)
    contribute nothing. The loss is the mean over supervised tokens of the whole batch, so every token weighs
    the same whatever its sequence length.

    Args:
        logits: ``(batch, seq_len, vocab)`` from the causal LM on ``input_ids``.
        labels: ``(batch, seq_len)``: ``input_ids`` with prompt and padding replaced by ``ignore_index``.
        ignore_index: label value to skip.
        normalizer: divide the summed cross-entropy by this instead of these rows' own supervised-token count:
            the whole batch's :func:`num_target_tokens` when a batch is computed in parts, so that the parts'
            losses add up to the batch's loss.

    Returns:
        ``(loss, stats)``: the scalar loss to differentiate and detached :class:`SFTStats`.
    """
    return token_cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index, normalizer
    )
