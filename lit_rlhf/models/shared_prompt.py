"""Teacher-forced passes where several responses share a prompt: the prompt computed once, the responses on its cache.

A causal model's state at a response token depends on its prompt only through attention to the prompt's keys and
values. So instead of ``n`` full ``[prompt | response]`` rows, the model runs once on the distinct prompts with a KV
cache, the cache rows are gathered for each response, and the responses run on top of them: ``num_prompts * P +
n * R`` token positions instead of ``n * (P + R)``. The outputs at response positions equal those of the full rows
(up to float rounding), and gradients flow through the gathered cache back into the prompt computation.
"""

from __future__ import annotations

from typing import Any

import torch

from lit_rlhf.functional.padding import position_ids_from_mask


def prompt_then_responses(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_index: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    **prompt_kwargs: Any,
) -> tuple[Any, Any]:
    """Run ``model`` on the prompts with a KV cache, then each response on the cache of its prompt.

    Args:
        model: a Hugging Face decoder (a ``*ForCausalLM``, or the body of a ``*ForSequenceClassification``) that
            takes ``position_ids`` and ``past_key_values``. Not under gradient checkpointing, which turns the
            cache off in training.
        prompt_ids: ``(num_prompts, prompt_len)`` left-padded distinct prompts.
        prompt_mask: ``(num_prompts, prompt_len)`` their 0/1 attention mask.
        prompt_index: ``(n,)`` the prompt row each response continues (any order, repeats allowed).
        response_ids: ``(n, response_len)`` right-padded responses.
        response_mask: ``(n, response_len)`` their 0/1 (or bool) mask; every row needs at least one real token.
        **prompt_kwargs: extra arguments of the prompt pass only (e.g. ``logits_to_keep=1``).

    Returns:
        ``(prompt_output, response_output)``: the model's outputs on the prompts ``(num_prompts, prompt_len, ...)``
        and on the responses ``(n, response_len, ...)``, the latter equal to the response positions of full rows.
        The prompt output's ``past_key_values`` is used up (gathered and extended by the response pass).
    """
    prompts = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=position_ids_from_mask(prompt_mask),
        use_cache=True,
        **prompt_kwargs,
    )
    past = prompts.past_key_values  # consumed: gathered per response, then extended by the response pass
    past.batch_select_indices(prompt_index)  # one cache row per response, gathered (differentiably) from its prompt
    lengths = prompt_mask.long().sum(dim=-1)[prompt_index]
    positions = lengths[:, None] + torch.arange(response_ids.size(1), device=response_ids.device)
    mask = torch.cat([prompt_mask.long()[prompt_index], response_mask.long()], dim=1)
    responses = model(
        input_ids=response_ids, attention_mask=mask, position_ids=positions, past_key_values=past, use_cache=True
    )
    return prompts, responses


def first_rows(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct values of ``keys`` ``(n,)``: one row holding each, and each row's index into those.

    Returns:
        ``(rows, index)``: ``rows`` ``(num_distinct,)`` a row of ``keys`` for each distinct value (ascending value),
        ``index`` ``(n,)`` with ``keys[rows][index] == keys``.
    """
    values, index = torch.unique(keys, return_inverse=True)
    rows = torch.zeros_like(values).scatter_reduce(
        0, index, torch.arange(keys.numel(), device=keys.device), reduce="amin", include_self=False
    )
    return rows, index
