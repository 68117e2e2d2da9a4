"""GRPO math: group-normalised advantages and the per-token clipped surrogate with a k3 KL term (pure torch)."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from lit_rlhf.functional.kl import kl_penalty
from lit_rlhf.functional.masking import masked_mean, masked_sum

LossAveraging = Literal["token", "sequence"]
"""``token``: every response token of the batch weighs the same (DAPO, TRL's default ``dapo``/``bnpo`` style);
``sequence``: mean over each response's tokens, then over responses (the GRPO paper)."""


class GroupStats(NamedTuple):
    """Statistics of the rewards within each group of generations of one prompt.

    Attributes:
        std: ``(num_groups,)`` unbiased standard deviation of each group's rewards.
        mean_std: mean over groups of ``std`` (``reward_std`` in logs).
        zero_std_fraction: fraction of groups whose rewards are all equal (no learning signal from them).
    """

    std: torch.Tensor
    mean_std: torch.Tensor
    zero_std_fraction: torch.Tensor


class GRPOLossStats(NamedTuple):
    """Per-minibatch statistics of :func:`grpo_loss` (scalars, detached).

    Attributes:
        clipfrac: fraction of response tokens whose clipped term was the one used (the ratio left the clip range in
            the direction the advantage pushes).
        ratio_mean: mean ratio ``pi / pi_old`` over response tokens.
        kl: mean per-token k3 estimate of ``KL(pi || pi_ref)`` (0 without a reference).
    """

    clipfrac: torch.Tensor
    ratio_mean: torch.Tensor
    kl: torch.Tensor


def group_advantages(
    rewards: torch.Tensor, num_generations: int, scale_by_std: bool = True, eps: float = 1e-4
) -> tuple[torch.Tensor, GroupStats]:
    """Advantages of GRPO: each reward minus its group's mean, divided by the group's std unless ``scale_by_std`` is
    false (Dr. GRPO, which drops the division to avoid favouring groups whose rewards barely differ).

    Args:
        rewards: ``(num_groups * num_generations,)`` rewards, the generations of one prompt adjacent.
        num_generations: group size ``G`` (at least 2: one sample has no baseline).
        scale_by_std: divide by the group's unbiased std (``+ eps``).
        eps: added to the std.

    Returns:
        ``(num_groups * num_generations,)`` advantages (one per response) and :class:`GroupStats`.

    Raises:
        ValueError: ``num_generations < 2`` or a batch that does not divide into whole groups.
    """
    if num_generations < 2:
        raise ValueError(f"num_generations must be >= 2 (a group needs a baseline), got {num_generations}")
    if rewards.dim() != 1 or rewards.numel() % num_generations:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not form groups of {num_generations}")
    grouped = rewards.float().view(-1, num_generations)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    advantages = grouped - mean
    if scale_by_std:
        advantages = advantages / (std + eps)
    std = std.squeeze(1)
    stats = GroupStats(std=std, mean_std=std.mean(), zero_std_fraction=(std == 0).float().mean())
    return advantages.reshape(-1), stats


def minibatch_rows(order: torch.Tensor, num_minibatches: int, group_size: int = 1) -> list[torch.Tensor]:
    """Row indices of the minibatches of one pass over a generation batch, in a given order of its rows or groups.

    The rows are laid out in ``order``, each unit's ``group_size`` rows adjacent (unit ``u`` holds rows
    ``u * group_size .. (u + 1) * group_size - 1``), then split into ``num_minibatches`` near-equal runs of rows, so
    the number of minibatches never depends on ``group_size``; a group straddles two minibatches only when the
    groups do not divide evenly among them.

    Args:
        order: ``(num_units,)`` a permutation of the units: the rows (``group_size`` 1) or the groups.
        num_minibatches: minibatches (optimizer steps) per pass.
        group_size: rows per unit (GRPO's ``G`` to keep each prompt's responses together).

    Returns:
        The non-empty ``(rows,)`` index tensors, in order.
    """
    rows = (order[:, None] * group_size + torch.arange(group_size, device=order.device)).reshape(-1)
    return [m for m in rows.tensor_split(num_minibatches) if len(m)]


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    clip_range_high: float | None = None,
    beta: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    averaging: LossAveraging = "token",
) -> tuple[torch.Tensor, GRPOLossStats]:
    """The GRPO objective as a loss: ``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) + beta * k3`` per token,
    averaged over response tokens as ``averaging`` says.

    Args:
        logprobs: ``(batch, response_len)`` log-probabilities of the sampled tokens under the policy being trained.
        old_logprobs: ``(batch, response_len)`` the same under the policy that sampled them (detached).
        advantages: ``(batch,)`` one advantage per response, applied to each of its tokens.
        mask: ``(batch, response_len)`` response tokens (true up to and including EOS).
        clip_range: ``eps_low``.
        clip_range_high: ``eps_high`` (DAPO's clip-higher); ``None`` = ``clip_range``.
        beta: coefficient of the k3 KL to the reference; 0 leaves it out.
        ref_logprobs: ``(batch, response_len)`` reference log-probabilities (needed when ``beta > 0``).
        averaging: ``token`` or ``sequence`` (see :data:`LossAveraging`).

    Returns:
        The scalar loss and :class:`GRPOLossStats`.
    """
    if averaging not in ("token", "sequence"):
        raise ValueError(f"averaging must be 'token' or 'sequence', got {averaging!r}")
    if beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs")
    mask = mask.bool()
    high = clip_range if clip_range_high is None else clip_range_high
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.float().unsqueeze(1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(per_token)
    if beta > 0:
        kl = kl_penalty(logprobs, ref_logprobs, "k3")
        per_token = per_token + beta * kl
    if averaging == "token":
        loss = masked_sum(per_token, mask) / mask.sum().clamp(min=1)
    else:
        per_sequence = masked_sum(per_token, mask, dim=1) / mask.sum(dim=1).clamp(min=1)
        loss = per_sequence.mean()
    with torch.no_grad():
        stats = GRPOLossStats(
            clipfrac=masked_mean((clipped < unclipped).float(), mask),
            ratio_mean=masked_mean(ratio, mask),
            kl=masked_mean(kl, mask),
        )
    return loss, stats
