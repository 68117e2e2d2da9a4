"""Pairwise (Bradley-Terry) reward-model loss and the last-token scoring index."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class RewardStats(NamedTuple):
    """Detached statistics of one batch of preference pairs (all scalars).

    Attributes:
        accuracy: fraction of pairs with ``r_chosen > r_rejected`` (ties count as wrong).
        margin: mean of ``r_chosen - r_rejected``.
        chosen_mean, chosen_std, rejected_mean, rejected_std: moments of the two reward vectors.
    """

    accuracy: torch.Tensor
    margin: torch.Tensor
    chosen_mean: torch.Tensor
    chosen_std: torch.Tensor
    rejected_mean: torch.Tensor
    rejected_std: torch.Tensor


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, RewardStats]:
    """``mean(-log sigmoid(r_chosen - r_rejected - margin)) + center_coef * mean((r_chosen + r_rejected)^2)``.

    The centring term (as TRL's ``center_rewards_coefficient``) pulls the rewards of each pair towards a zero
    sum, so the reward model's output stays centred without changing its preferences.

    Args:
        chosen_rewards: ``(batch,)`` scores of the preferred responses.
        rejected_rewards: ``(batch,)`` scores of the other responses.
        margin: optional ``(batch,)`` required gap per pair (e.g. from a rating difference).
        center_coef: weight of the centring term; 0 disables it.

    Returns:
        ``(loss, stats)``: the scalar loss and detached :class:`RewardStats`.
    """
    diff = chosen_rewards.float() - rejected_rewards.float()
    logits = diff if margin is None else diff - margin.float()
    loss = -F.logsigmoid(logits).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen_rewards.float() + rejected_rewards.float()) ** 2).mean()
    with torch.no_grad():
        stats = RewardStats(
            accuracy=(diff > 0).float().mean(),
            margin=diff.mean(),
            chosen_mean=chosen_rewards.float().mean(),
            chosen_std=chosen_rewards.float().std(unbiased=False),
            rejected_mean=rejected_rewards.float().mean(),
            rejected_std=rejected_rewards.float().std(unbiased=False),
        )
    return loss, stats


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last non-pad token of each row, under right or left padding.

    Args:
        attention_mask: ``(batch, seq_len)`` 0/1 mask; every row needs at least one 1.

    Returns:
        ``(batch,)`` long indices.
    """
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)
