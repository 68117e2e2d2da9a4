"""Log-probabilities of chosen tokens."""

from __future__ import annotations

import torch


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token under the distribution given by its logits.

    The caller aligns the two: for a causal LM, ``logits[:, t]`` predicts ``tokens[:, t]`` after shifting
    (``logits[:, :-1]`` with ``input_ids[:, 1:]``). Computed in float32 for stability under bf16.

    Args:
        logits: ``(batch, seq_len, vocab)``.
        tokens: ``(batch, seq_len)`` token ids; negative ids (e.g. -100) give 0.

    Returns:
        ``(batch, seq_len)`` float32 log-probabilities.
    """
    logits = logits.float()
    safe_tokens = tokens.clamp(min=0)
    picked = torch.gather(logits, -1, safe_tokens.unsqueeze(-1)).squeeze(-1)
    logp = picked - torch.logsumexp(logits, dim=-1)
    return torch.where(tokens >= 0, logp, torch.zeros_like(logp))


def engine_logprob_gap(
    engine_logprobs: torch.Tensor, policy_logprobs: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """How far a sampling engine's log-probabilities of its samples are from the training policy's.

    Args:
        engine_logprobs: ``(rows, response_len)`` from the engine's sampling pass.
        policy_logprobs: ``(rows, response_len)`` recomputed by the training policy.
        mask: ``(rows, response_len)`` bool, the response tokens.

    Returns:
        ``engine/logprob_gap_mean`` (mean absolute difference per response token) and ``engine/logprob_gap_max``
        (0-dim tensors).
    """
    gap = torch.where(mask, (engine_logprobs - policy_logprobs).abs(), torch.zeros((), device=mask.device))
    return {
        "engine/logprob_gap_mean": gap.sum() / mask.sum().clamp(min=1),
        "engine/logprob_gap_max": gap.max(),
    }
