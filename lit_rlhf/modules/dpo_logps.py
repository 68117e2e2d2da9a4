"""Summed response log-probabilities of the two sides of preference pairs (DPO's per-sequence inputs)."""

from __future__ import annotations

from typing import Any

import torch

from lit_rlhf.functional.dpo import sequence_logps
from lit_rlhf.functional.logprobs import logprobs_from_logits
from lit_rlhf.functional.padding import pack_prompt_responses, response_predictors
from lit_rlhf.models.padding_free import packed_prompt_forward
from lit_rlhf.rollout import response_logprobs, takes_logits_to_keep


def pair_response_logps(
    model: torch.nn.Module, batch: dict[str, Any], padding_free: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of the responses of a pair batch under ``model``, response tokens only.

    The prompt and the padding are excluded; the EOS that ends a response counts. Without ``padding_free`` the rows
    ``[prompt | response]`` (left-padded prompts, right-padded responses) run as one padded batch with the LM head
    only on the response positions (``logits_to_keep``). With ``padding_free`` each pair's prompt runs once, followed
    by both its responses, all packed into one row without padding
    (:func:`~lit_rlhf.models.padding_free.packed_prompt_forward`), and the LM head runs only where a response token
    is predicted: the same values up to float rounding.

    Args:
        model: a causal LM (or :class:`~lit_rlhf.models.adapters.AdaptersDisabled`); gradients flow when enabled.
        batch: from :class:`~lit_rlhf.data.collate.PairCollator`: ``prompt_input_ids``/``prompt_attention_mask``
            ``(pairs, prompt_len)`` left-padded, ``response_input_ids``/``response_attention_mask``
            ``(2 * pairs, response_len)`` right-padded, chosen responses first, then rejected.
        padding_free: pack the real tokens (see above).

    Returns:
        ``(2 * pairs,)`` float32 summed log-probabilities and ``(2 * pairs,)`` float32 response token counts, chosen
        first then rejected.
    """
    prompt_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    response_ids, response_mask = batch["response_input_ids"], batch["response_attention_mask"]
    num_pairs = prompt_ids.size(0)
    prompt_index = torch.arange(num_pairs, device=prompt_ids.device).repeat(2)
    if not padding_free:
        token_logps = response_logprobs(
            model, prompt_ids[prompt_index], prompt_mask[prompt_index], response_ids, response_mask
        )
        return sequence_logps(token_logps, response_mask)
    layout = pack_prompt_responses(prompt_mask, response_mask, prompt_index)
    predictors = response_predictors(layout)
    args = (model, prompt_ids, prompt_mask, prompt_index, response_ids, response_mask, layout)
    if takes_logits_to_keep(model):
        logits = packed_prompt_forward(*args, logits_to_keep=predictors)[0].logits[0]
    else:
        logits = packed_prompt_forward(*args)[0].logits[0, predictors]
    targets = response_ids.flatten().index_select(0, layout.response_token_index)
    token_logps = logprobs_from_logits(logits, targets)  # (num_response_tokens,)
    counts = response_mask.long().sum(dim=1)
    rows = torch.arange(counts.numel(), device=counts.device).repeat_interleave(counts)
    sums = token_logps.new_zeros(counts.numel()).index_add(0, rows, token_logps)
    return sums, counts.float()
