"""PPO math for RLHF: per-token rewards, GAE, whitening, the clipped policy and value losses, entropy.

After InstructGPT, "The N+ implementation details of RLHF with PPO" and TRL's PPO trainer. Every tensor of
shape ``(batch, response_len)`` is aligned with the generated response tokens; ``response_mask`` is true on the
real tokens (a prefix of each row: up to and including the first EOS) and false on the right padding.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lit_rlhf.functional.masking import masked_mean, masked_sum
from lit_rlhf.functional.reward import last_token_index


class PolicyStats(NamedTuple):
    """Detached statistics of one clipped-surrogate minibatch (all scalars, over real response tokens).

    Attributes:
        clipfrac: fraction of tokens where the clipped term is the larger (binding) one.
        approxkl: ``0.5 * mean((logp - old_logp)^2)``, an estimate of ``KL(old || new)``.
        ratio_mean: mean of ``exp(logp - old_logp)``.
        ratio_var: unbiased variance of the ratio.
    """

    clipfrac: torch.Tensor
    approxkl: torch.Tensor
    ratio_mean: torch.Tensor
    ratio_var: torch.Tensor


class ValueStats(NamedTuple):
    """Detached statistics of one clipped value-loss minibatch (all scalars, over real response tokens).

    Attributes:
        clipfrac: fraction of tokens where the clipped squared error is the larger one.
        explained_variance: ``1 - var(returns - values) / var(returns)``; 1 is a perfect critic, 0 is no better
            than predicting the mean, NaN when the returns have no variance.
    """

    clipfrac: torch.Tensor
    explained_variance: torch.Tensor


def per_token_rewards(
    scores: torch.Tensor,
    kl: torch.Tensor,
    kl_coef: float | torch.Tensor,
    response_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PPO reward: a KL penalty on every response token plus the sequence score on the last one.

    Args:
        scores: ``(batch,)`` score of each prompt+response (after any missing-EOS penalty).
        kl: ``(batch, response_len)`` per-token KL estimates (see :func:`~lit_rlhf.functional.kl.kl_penalty`).
        kl_coef: the KL coefficient.
        response_mask: ``(batch, response_len)`` bool (or 0/1), true on a non-empty prefix of each row.

    Returns:
        ``(rewards, non_score_reward)``, both ``(batch, response_len)`` float32 and 0 on padding:
        ``non_score_reward = -kl_coef * kl`` and ``rewards`` is that plus ``scores`` at each row's last real token.

    Raises:
        ValueError: if a row of ``response_mask`` has no true position (there is no token to put its score on).
    """
    mask = response_mask.bool()
    if not bool(mask.any(dim=1).all()):
        raise ValueError("Every response needs at least one real token to carry its score; got an empty row.")
    # torch.where rather than a product, so that a non-finite KL on padding cannot leak in as NaN.
    non_score_reward = torch.where(mask, -kl_coef * kl.float(), torch.zeros((), device=kl.device))
    last = last_token_index(mask)
    score_at_last = torch.zeros_like(non_score_reward).scatter(1, last[:, None], scores.float()[:, None])
    return non_score_reward + score_at_last, non_score_reward


def masked_mean_var(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, unbiased (Bessel-corrected) variance and count of ``values`` over the positions where ``mask`` is true.

    To combine the statistics of several ranks, all-reduce (sum) :func:`mean_var_to_sums` of each and read the
    total with :func:`mean_var_from_sums`.

    Args:
        values: any shape, e.g. ``(batch, response_len)``.
        mask: same shape; bool or 0/1.

    Returns:
        ``(mean, var, count)``, float32 scalars. With no true position the mean is 0; with fewer than two the
        variance is 0.
    """
    values = values.float()
    count = mask.float().sum()
    mean = masked_mean(values, mask)
    sum_sq = masked_sum((values - mean) ** 2, mask)
    var = torch.where(count > 1, sum_sq / (count - 1).clamp(min=1), torch.zeros_like(sum_sq))
    return mean, var, count


def mean_var_to_sums(mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``(3,)`` tensor ``[count, sum, sum of squares]`` from the output of :func:`masked_mean_var`.

    Sums add up across ranks (all-reduce with sum); :func:`mean_var_from_sums` turns the total back into the
    statistics of the whole batch.
    """
    return torch.stack([count, mean * count, var * (count - 1).clamp(min=0) + mean**2 * count])


def mean_var_from_sums(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance from a ``(3,)`` ``[count, sum, sum of squares]`` (see :func:`mean_var_to_sums`).

    With no element the mean is 0; with fewer than two the variance is 0.
    """
    count, total, total_sq = sums.unbind()
    mean = total / count.clamp(min=1)
    var = torch.where(count > 1, (total_sq - count * mean**2) / (count - 1).clamp(min=1), torch.zeros_like(mean))
    return mean, var.clamp(min=0)


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    mean: torch.Tensor | float | None = None,
    var: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Normalises ``values`` to mean 0 and variance 1 over the masked positions: ``(x - mean) / sqrt(var + eps)``.

    By default ``mean`` and ``var`` are those of this tensor (:func:`masked_mean_var`, unbiased variance, as
    TRL's ``masked_whiten``). Under data parallelism the caller whitens over the global batch by passing both,
    computed from all-reduced sums (see :func:`masked_mean_var`); this function does no communication itself.

    Args:
        values: ``(batch, response_len)``, e.g. advantages.
        mask: same shape; bool or 0/1.
        shift_mean: if false the mean is added back, so only the scale changes (as TRL does for rewards).
        eps: added to the variance before the square root.
        mean: precomputed mean to use instead of this tensor's; give ``var`` with it.
        var: precomputed variance to use instead of this tensor's; give ``mean`` with it.

    Returns:
        ``(batch, response_len)`` float32 whitened values, 0 where ``mask`` is false.

    Raises:
        ValueError: if only one of ``mean`` and ``var`` is given.
    """
    if (mean is None) != (var is None):
        raise ValueError("Pass both `mean` and `var` (e.g. all-reduced over ranks) or neither.")
    values = values.float()
    if mean is None:
        mean, var, _ = masked_mean_var(values, mask)
    mean = torch.as_tensor(mean, dtype=values.dtype, device=values.device)
    var = torch.as_tensor(var, dtype=values.dtype, device=values.device)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response tokens.

    Backwards from the end: ``delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t`` and
    ``A_t = delta_t + gamma * lam * A_{t+1} * m_{t+1}``, so the state after a row's last real token is terminal
    (value 0). The inputs are treated as constants: the outputs are detached and the inputs are not modified.

    Args:
        rewards: ``(batch, response_len)`` per-token rewards (see :func:`per_token_rewards`).
        values: ``(batch, response_len)`` critic values of the rollout.
        response_mask: ``(batch, response_len)`` bool (or 0/1), true on the real tokens.
        gamma: discount factor.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, both ``(batch, response_len)`` float32 and 0 on padding;
        ``returns = advantages + values``.
    """
    rewards = rewards.detach().float()
    values = values.detach().float()
    mask = response_mask.float()
    zero_col = torch.zeros_like(values[:, :1])
    next_mask = torch.cat([mask[:, 1:], zero_col], dim=1)
    next_values = torch.cat([values[:, 1:], zero_col], dim=1) * next_mask
    deltas = rewards + gamma * next_values - values
    last_advantage = torch.zeros_like(values[:, 0])
    reversed_advantages = []
    for t in reversed(range(values.size(1))):
        last_advantage = deltas[:, t] + gamma * lam * next_mask[:, t] * last_advantage
        reversed_advantages.append(last_advantage)
    advantages = torch.stack(reversed_advantages[::-1], dim=1) * mask
    returns = (advantages + values) * mask
    return advantages, returns


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, PolicyStats]:
    """The clipped surrogate: mean over real tokens of ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))``.

    Args:
        logprobs: ``(batch, response_len)`` log-probabilities of the sampled tokens under the current policy.
        old_logprobs: ``(batch, response_len)`` the same under the rollout policy (treated as a constant).
        advantages: ``(batch, response_len)`` (whitened) advantages (treated as a constant).
        response_mask: ``(batch, response_len)`` bool (or 0/1), true on the real tokens.
        clip_range: ``eps``, how far the ratio may move from 1 before the objective stops rewarding it.

    Returns:
        ``(loss, stats)``: the scalar loss to differentiate and detached :class:`PolicyStats`.
    """
    advantages = advantages.detach().float()
    log_ratio = logprobs.float() - old_logprobs.detach().float()
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(pg_losses, pg_losses_clipped), response_mask)
    with torch.no_grad():
        ratio_mean, ratio_var, _ = masked_mean_var(ratio, response_mask)
        stats = PolicyStats(
            clipfrac=masked_mean((pg_losses_clipped > pg_losses).float(), response_mask),
            approxkl=0.5 * masked_mean(log_ratio**2, response_mask),
            ratio_mean=ratio_mean,
            ratio_var=ratio_var,
        )
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_range_value: float,
) -> tuple[torch.Tensor, ValueStats]:
    """The clipped value loss: ``0.5 * mean(max((V - R)^2, (V_clipped - R)^2))`` over real tokens.

    ``V_clipped = V_old + clamp(V - V_old, -c, c)`` keeps the new values within ``c`` of the rollout's.

    Args:
        values: ``(batch, response_len)`` current critic values.
        old_values: ``(batch, response_len)`` critic values of the rollout (treated as a constant).
        returns: ``(batch, response_len)`` GAE returns (treated as a constant).
        response_mask: ``(batch, response_len)`` bool (or 0/1), true on the real tokens.
        clip_range_value: ``c``.

    Returns:
        ``(loss, stats)``: the scalar loss to differentiate and detached :class:`ValueStats`.
    """
    values = values.float()
    old_values = old_values.detach().float()
    returns = returns.detach().float()
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    vf_losses = (values - returns) ** 2
    vf_losses_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(vf_losses, vf_losses_clipped), response_mask)
    with torch.no_grad():
        _, var_returns, _ = masked_mean_var(returns, response_mask)
        _, var_residual, _ = masked_mean_var(returns - values, response_mask)
        stats = ValueStats(
            clipfrac=masked_mean((vf_losses_clipped > vf_losses).float(), response_mask),
            explained_variance=1.0 - var_residual / var_returns,
        )
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax of each position's logits: ``logsumexp(z) - sum(softmax(z) * z)``.

    Computed in float32. The logits must be finite (``-inf`` entries would give ``0 * -inf = NaN``).

    Args:
        logits: ``(batch, seq_len, vocab)``.

    Returns:
        ``(batch, seq_len)`` entropies in nats.
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
