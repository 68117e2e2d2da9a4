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


def prefix_pair_loss(
    chosen_token_rewards: torch.Tensor,
    rejected_token_rewards: torch.Tensor,
    chosen_ids: torch.Tensor,
    rejected_ids: torch.Tensor,
    chosen_last: torch.Tensor,
    rejected_last: torch.Tensor,
    chosen_correct: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bradley-Terry loss on every aligned prefix after two responses part, for pairs whose chosen side is correct.

    A causal reward model's score at position ``t`` is its score of the sequence cut after ``t``. When the chosen
    response is known to be right (not merely better) and both sides share the prompt, every prefix of the chosen
    response is a right start, and every prefix of the rejected one from the first differing token on contains its
    mistake. So each aligned position ``t`` in ``[first difference, min(chosen_last, rejected_last)]`` is one more
    pair, ``-log sigmoid(r_chosen[t] - r_rejected[t])``: a dense signal that teaches the model where answers go wrong.

    Args:
        chosen_token_rewards: ``(batch, seq_len)`` score at every position of the chosen sequences.
        rejected_token_rewards: ``(batch, seq_len)`` the same for the rejected sequences.
        chosen_ids: ``(batch, seq_len)`` right-padded chosen ids (prompt then response, or the response alone).
        rejected_ids: ``(batch, seq_len)`` right-padded rejected ids, laid out as ``chosen_ids``.
        chosen_last: ``(batch,)`` position of each chosen sequence's last real token.
        rejected_last: ``(batch,)`` the same for rejected.
        chosen_correct: ``(batch,)`` bool, pairs whose chosen response is correct; others are left out.

    Returns:
        ``(loss, num_positions)``: the mean over all selected positions (0 when there are none) and their count.
    """
    positions = torch.arange(chosen_ids.size(1), device=chosen_ids.device)
    differ = chosen_ids != rejected_ids
    first = torch.where(differ.any(dim=1), differ.long().argmax(dim=1), torch.full_like(chosen_last, differ.size(1)))
    end = torch.minimum(chosen_last, rejected_last)
    region = (positions >= first[:, None]) & (positions <= end[:, None]) & chosen_correct.bool()[:, None]
    count = region.sum()
    if count == 0:
        return chosen_token_rewards.sum() * 0.0, count
    logits = chosen_token_rewards.float() - rejected_token_rewards.float()
    return -F.logsigmoid(logits[region]).mean(), count
