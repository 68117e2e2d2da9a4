"""Direct preference optimisation losses (DPO and its variants) on per-sequence log-probabilities.

Every function takes the summed log-probabilities of each pair's two responses (response tokens only, prompt and
padding excluded) and returns per-pair values; the caller averages over the pairs it holds.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

DPOLossType = Literal["sigmoid", "ipo", "hinge", "robust", "simpo"]
DPO_LOSS_TYPES: tuple[str, ...] = ("sigmoid", "ipo", "hinge", "robust", "simpo")
REFERENCE_FREE_LOSSES: frozenset[str] = frozenset({"simpo"})


class DPOStats(NamedTuple):
    """Per-batch statistics of a DPO loss (0-dim tensors, detached).

    Attributes:
        chosen_reward: mean implicit reward of the chosen responses, ``beta * (log pi - log ref)`` (for ``simpo``,
            ``beta`` times the mean per-token log-probability).
        rejected_reward: the same for the rejected responses.
        margin: mean of ``chosen_reward - rejected_reward`` over pairs.
        accuracy: fraction of pairs whose chosen reward is above the rejected one.
        chosen_logps: mean summed log-probability of the chosen responses under the policy.
        rejected_logps: the same for the rejected responses.
    """

    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor
    margin: torch.Tensor
    accuracy: torch.Tensor
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the log-probabilities of the masked (response) tokens of each sequence, and how many there are.

    Args:
        token_logps: ``(batch, seq_len)`` log-probability of each token.
        mask: ``(batch, seq_len)`` true (or 1) at the response tokens to count.

    Returns:
        ``(batch,)`` float32 sums and ``(batch,)`` float32 token counts.
    """
    mask = mask.to(torch.float32)
    return (token_logps.float() * mask).sum(dim=-1), mask.sum(dim=-1)


def dpo_losses(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    *,
    beta: float,
    loss_type: DPOLossType = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    simpo_gamma: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss and implicit rewards.

    With ``h = (log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r))`` (summed log-probabilities):

    - ``sigmoid`` (Rafailov et al. 2023): ``-log sigmoid(beta h)``; with ``label_smoothing = e`` the conservative
      DPO of Mitchell 2023, ``-(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h)``.
    - ``robust`` (Chowdhury et al. 2024): ``(-(1 - e) log sigmoid(beta h) + e log sigmoid(-beta h)) / (1 - 2e)``,
      an unbiased loss under label noise of rate ``e = label_smoothing`` (in ``[0, 0.5)``).
    - ``hinge`` (SLiC): ``max(0, 1 - beta h)``.
    - ``ipo`` (Azar et al. 2023): ``(h' - 1 / (2 beta))^2`` where ``h'`` uses per-token mean log-ratios (each side's
      log-ratio divided by its response length, as TRL and the IPO authors do); needs the lengths.
    - ``simpo`` (Meng et al. 2024), reference-free: ``-log sigmoid(beta (mean log pi(y_c) - mean log pi(y_r)) -
      simpo_gamma)`` with per-token mean log-probabilities; the reference arguments are ignored (may be ``None``).

    Args:
        chosen_logps: ``(pairs,)`` summed response log-probabilities of the chosen responses under the policy.
        rejected_logps: ``(pairs,)`` the same for the rejected responses.
        ref_chosen_logps: ``(pairs,)`` under the reference (``None`` only for ``simpo``).
        ref_rejected_logps: ``(pairs,)`` under the reference (``None`` only for ``simpo``).
        beta: inverse temperature of the implicit reward (the IPO regulariser for ``ipo``).
        loss_type: one of :data:`DPO_LOSS_TYPES`.
        label_smoothing: assumed rate of flipped labels (``sigmoid``, ``robust``).
        chosen_lengths: ``(pairs,)`` response token counts of the chosen responses (``ipo``, ``simpo``).
        rejected_lengths: ``(pairs,)`` the same for the rejected responses.
        simpo_gamma: target reward margin of ``simpo``.

    Returns:
        ``(pairs,)`` losses, ``(pairs,)`` chosen rewards and ``(pairs,)`` rejected rewards (the rewards detached).

    Raises:
        ValueError: an unknown ``loss_type``, a missing reference or length, or ``label_smoothing`` out of range.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r} is not one of {', '.join(DPO_LOSS_TYPES)}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")
    needs_lengths = loss_type in ("ipo", "simpo")
    if needs_lengths and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError(f"loss_type {loss_type!r} needs chosen_lengths and rejected_lengths")
    if loss_type == "simpo":
        chosen = chosen_logps / chosen_lengths.clamp(min=1)
        rejected = rejected_logps / rejected_lengths.clamp(min=1)
        logits = beta * (chosen - rejected) - simpo_gamma
        losses = -F.logsigmoid(logits)
        return losses, (beta * chosen).detach(), (beta * rejected).detach()
    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError(f"loss_type {loss_type!r} needs the reference log-probabilities")
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * h) + label_smoothing * F.logsigmoid(-beta * h)) / (
            1 - 2 * label_smoothing
        )
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:  # ipo
        h_mean = chosen_ratio / chosen_lengths.clamp(min=1) - rejected_ratio / rejected_lengths.clamp(min=1)
        losses = (h_mean - 1 / (2 * beta)) ** 2
    return losses, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    **kwargs: object,
) -> tuple[torch.Tensor, DPOStats]:
    """Mean of :func:`dpo_losses` over the pairs, with its statistics.

    Args:
        chosen_logps: ``(pairs,)`` as in :func:`dpo_losses`.
        rejected_logps: ``(pairs,)``.
        ref_chosen_logps: ``(pairs,)`` or ``None`` (``simpo``).
        ref_rejected_logps: ``(pairs,)`` or ``None`` (``simpo``).
        **kwargs: the keyword arguments of :func:`dpo_losses`.

    Returns:
        The scalar loss and :class:`DPOStats`.
    """
    losses, chosen_reward, rejected_reward = dpo_losses(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, **kwargs
    )
    margins = chosen_reward - rejected_reward
    stats = DPOStats(
        chosen_reward=chosen_reward.mean(),
        rejected_reward=rejected_reward.mean(),
        margin=margins.mean(),
        accuracy=(margins > 0).float().mean(),
        chosen_logps=chosen_logps.detach().mean(),
        rejected_logps=rejected_logps.detach().mean(),
    )
    return losses.mean(), stats
