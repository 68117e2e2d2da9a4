"""Teacher-forced passes over prompt + response for PPO and GRPO: log-probabilities and values of response tokens.

Prompts are left-padded and responses right-padded (after their first EOS), so the sequence ``[prompt | response]``
has padding on both sides. Positions are counted from the first real token (:func:`position_ids_from_mask`), as
``generate`` does, so the log-probabilities of a forward pass equal those of the sampling pass.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel

from lit_rlhf.functional.logprobs import logprobs_from_logits
from lit_rlhf.functional.padding import (
    PackedRows,
    pack_prompt_responses,
    pack_rows,
    position_ids_from_mask,
    response_predictors,
)
from lit_rlhf.functional.ppo import entropy_from_logits
from lit_rlhf.models.padding_free import packed_forward, packed_prompt_forward
from lit_rlhf.models.scoring import packed_token_scores, token_scores
from lit_rlhf.models.shared_prompt import prompt_then_responses


def padding_trim(prompt_mask: torch.Tensor, response_mask: torch.Tensor) -> tuple[int, int]:
    """Columns a sub-batch of ``[prompt | response]`` rows actually needs: ``(first prompt column, response length)``.

    Prompts are left-padded and responses right-padded for the whole rollout batch; a minibatch of it can drop the
    prompt columns that are padding in all its rows (on the left) and the response columns past its longest
    response. Positions count from each row's first real token, so the trimmed rows compute exactly the same.

    Args:
        prompt_mask: ``(batch, prompt_len)`` attention mask of left-padded prompts.
        response_mask: ``(batch, response_len)`` mask of right-padded responses.

    Returns:
        ``(start, length)``: keep ``prompt[:, start:]`` and ``response[:, :length]`` (at least one column each).
    """
    used = prompt_mask.bool().any(dim=0)
    start = int(used.int().argmax()) if bool(used.any()) else prompt_mask.size(1) - 1
    length = int(response_mask.bool().any(dim=0).nonzero().max()) + 1 if bool(response_mask.any()) else 1
    return start, length


def select_rows(experience: Any, rows: torch.Tensor) -> Any:
    """The rows ``rows`` of a batch of experience, without the padding columns none of them needs.

    Args:
        experience: a ``NamedTuple`` whose first two fields are the left-padded ``prompt_ids`` and ``prompt_mask``
            ``(batch, prompt_len)`` and whose other fields are ``(batch, response_len)`` tensors (``response_mask``
            among them) or per-row ``(batch,)`` tensors.
        rows: ``(n,)`` row indices.

    Returns:
        The same type with ``n`` rows, prompts cut to ``prompt[:, start:]`` and responses to ``[:, :length]`` of
        :func:`padding_trim` (the computation on them is unchanged).
    """
    start, length = padding_trim(experience.prompt_mask[rows], experience.response_mask[rows])
    prompt = [t[rows, start:] for t in experience[:2]]
    rest = [t[rows] if t.dim() == 1 else t[rows, :length] for t in experience[2:]]
    return type(experience)(*prompt, *rest)


def join(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[prompt | response]`` ids and attention mask, both ``(batch, prompt_len + response_len)``."""
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)
    return ids, mask


def response_logprobs(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    padding_free: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the response tokens under ``model`` (with grad if enabled by the caller).

    Only the logits that predict response tokens are computed when the model takes ``logits_to_keep`` (Hugging Face
    decoders do): ``(batch, response_len + 1, vocab)`` instead of ``(batch, prompt_len + response_len, vocab)``,
    which for long prompts and large vocabularies is most of the memory of a PPO or GRPO minibatch. With
    ``padding_free`` the rows' real tokens run packed into one row
    (:func:`~lit_rlhf.models.padding_free.packed_forward`) and only the logits that predict real response tokens
    are computed: the same result, no work on the padding left of the prompts and right of the responses.

    Args:
        model: a causal LM.
        prompt_ids: ``(batch, prompt_len)`` left-padded prompts.
        prompt_mask: ``(batch, prompt_len)`` their attention mask.
        response_ids: ``(batch, response_len)`` responses (padding after the first EOS).
        response_mask: ``(batch, response_len)`` bool, true up to and including the first EOS.
        temperature: the sampling temperature; logits are divided by it, so the log-probabilities are those of the
            distribution the responses were sampled from.
        with_entropy: also return the entropy of each position's (tempered) distribution, without grad.
        padding_free: compute on the packed real tokens (see above).

    Returns:
        ``(batch, response_len)`` float32 log-probabilities, 0 on response padding; with ``with_entropy`` a pair
        ``(logprobs, entropy)``, both that shape.
    """
    ids, mask = join(prompt_ids, prompt_mask, response_ids, response_mask)
    if padding_free:
        logits = _packed_response_logits(model, ids, mask, prompt_ids.size(1), response_mask)
        return _response_logprobs(logits, response_ids, response_mask, temperature, with_entropy)
    keep = response_ids.size(1) + 1  # logits at t predict token t + 1: positions prompt_len - 1 .. the end
    kwargs = {"logits_to_keep": keep} if takes_logits_to_keep(model) else {}
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False, **kwargs
    ).logits
    return _response_logprobs(logits[:, -keep:-1], response_ids, response_mask, temperature, with_entropy)


def _packed_response_logits(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, prompt_len: int, response_mask: torch.Tensor
) -> torch.Tensor:
    """Logits that predict each response token ``(batch, response_len, vocab)`` from one packed forward pass over
    the real tokens of ``[prompt | response]`` rows ``ids``/``mask``; zeros where the response is padding."""
    response_len = response_mask.size(1)
    layout = pack_rows(mask)
    packed_of_slot = torch.full((ids.numel(),), -1, dtype=torch.long, device=ids.device)
    packed_of_slot[layout.token_index] = torch.arange(layout.token_index.numel(), device=ids.device)
    rows, columns = response_mask.bool().nonzero(as_tuple=True)  # real response tokens, row by row
    # Response token j of row b is predicted at column prompt_len + j - 1 of [prompt | response].
    predicting = packed_of_slot[rows * ids.size(1) + prompt_len + columns - 1]
    kept = packed_logits_at(model, ids, mask, layout, predicting)
    return _response_grid(kept, rows * response_len + columns, response_mask)


def _response_grid(kept: torch.Tensor, token_index: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The logits ``kept`` ``(num_real_tokens, vocab)`` of the real response tokens at ``token_index`` of the
    flattened ``(batch, response_len)`` responses, laid out as ``(batch, response_len, vocab)``, zeros at padding."""
    batch, response_len = response_mask.shape
    dense = kept.new_zeros(batch * response_len, kept.size(-1))
    return dense.index_copy(0, token_index, kept).view(batch, response_len, -1)


def packed_logits_at(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, layout: PackedRows, positions: torch.Tensor
) -> torch.Tensor:
    """Logits ``(num_positions, vocab)`` at the packed ``positions`` of one packed forward pass over the real tokens
    of ``ids``/``mask`` (``layout``: their :func:`~lit_rlhf.functional.padding.pack_rows`); where the model takes
    ``logits_to_keep``, only those positions go through the LM head."""
    return _logits_at(model, positions, lambda **kwargs: packed_forward(model, ids, mask, layout, **kwargs)[0])


def _logits_at(model: PreTrainedModel, positions: torch.Tensor, forward: Callable[..., Any]) -> torch.Tensor:
    """Logits ``(num_positions, vocab)`` at the packed ``positions`` of ``forward(**kwargs)``'s one-row outputs,
    asking it for those positions only (``logits_to_keep``) where ``model`` takes that."""
    if takes_logits_to_keep(model):
        return forward(logits_to_keep=positions).logits[0]
    return forward().logits[0, positions]


def takes_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether ``model``'s forward takes ``logits_to_keep`` (compute the LM head on the last positions only)."""
    return _forward_takes(type(model), "logits_to_keep")


@functools.cache
def _forward_takes(model_class: type, name: str) -> bool:
    """Whether ``model_class.forward`` has a parameter ``name`` (looked up once per class)."""
    return name in inspect.signature(model_class.forward).parameters


def shared_prompt_response_logprobs(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_index: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    padding_free: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """:func:`response_logprobs` of responses that share prompts, each distinct prompt computed once.

    The model runs on the distinct prompts with a KV cache and on the responses on top of it
    (:func:`~lit_rlhf.models.shared_prompt.prompt_then_responses`); the first response token is predicted by the
    prompt's last logits. The same log-probabilities and gradients as :func:`response_logprobs` on the full rows
    ``[prompt_ids[prompt_index] | response_ids]``, with ``num_prompts * prompt_len + n * response_len`` positions
    instead of ``n * (prompt_len + response_len)``: for GRPO's ``G`` samples per prompt, about ``G`` times fewer
    prompt positions. With ``padding_free`` the distinct prompts and the responses run packed into one row instead,
    without KV cache or padding (:func:`~lit_rlhf.models.padding_free.packed_prompt_forward`), and the LM head runs
    only where a real response token is predicted.

    Args:
        model: a causal LM that takes ``position_ids`` and ``past_key_values`` (Hugging Face decoders do), not
            under gradient checkpointing.
        prompt_ids: ``(num_prompts, prompt_len)`` left-padded distinct prompts.
        prompt_mask: ``(num_prompts, prompt_len)`` their attention mask.
        prompt_index: ``(n,)`` the prompt row of each response.
        response_ids: ``(n, response_len)`` responses (padding after the first EOS; at least one token each).
        response_mask: ``(n, response_len)`` bool, true up to and including the first EOS.
        temperature, with_entropy: as in :func:`response_logprobs`.
        padding_free: pack prompts and responses into one row (see above).

    Returns:
        As :func:`response_logprobs`: ``(n, response_len)`` log-probabilities (and entropies).
    """
    if padding_free:
        logits = _packed_shared_response_logits(
            model, prompt_ids, prompt_mask, prompt_index, response_ids, response_mask
        )
        return _response_logprobs(logits, response_ids, response_mask, temperature, with_entropy)
    kwargs = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}  # the prompts' last logits are enough
    prompts, responses = prompt_then_responses(
        model, prompt_ids, prompt_mask, prompt_index, response_ids, response_mask, **kwargs
    )
    logits = torch.cat([prompts.logits[:, -1:][prompt_index], responses.logits[:, :-1]], dim=1)
    return _response_logprobs(logits, response_ids, response_mask, temperature, with_entropy)


def grouped_response_logprobs(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    num_samples: int,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    *,
    share_prompt: bool = False,
    padding_free: bool = False,
) -> torch.Tensor:
    """Log-probabilities of ``num_samples`` responses per distinct prompt (prompt-major), each prompt computed once
    for its responses with ``share_prompt`` (:func:`shared_prompt_response_logprobs`), else repeated on every row
    (:func:`response_logprobs`).

    Args:
        model: a causal LM.
        prompt_ids: ``(num_prompts, prompt_len)`` left-padded distinct prompts; ``prompt_mask`` their attention mask.
        num_samples: responses per prompt.
        response_ids: ``(num_prompts * num_samples, response_len)``; ``response_mask`` true up to the first EOS.
        temperature, padding_free: as in :func:`response_logprobs`.
        share_prompt: compute each prompt once (the same values up to float rounding).

    Returns:
        ``(num_prompts * num_samples, response_len)`` float32 log-probabilities, 0 on response padding.
    """
    if share_prompt:
        index = torch.arange(prompt_ids.size(0), device=prompt_ids.device).repeat_interleave(num_samples)
        return shared_prompt_response_logprobs(
            model, prompt_ids, prompt_mask, index, response_ids, response_mask, temperature, padding_free=padding_free
        )
    return response_logprobs(
        model,
        prompt_ids.repeat_interleave(num_samples, dim=0),
        prompt_mask.repeat_interleave(num_samples, dim=0),
        response_ids,
        response_mask,
        temperature,
        padding_free=padding_free,
    )


def _packed_shared_response_logits(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_index: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """Logits that predict each response token ``(n, response_len, vocab)`` from one packed pass over the distinct
    prompts and the responses; zeros where the response is padding."""
    layout = pack_prompt_responses(prompt_mask, response_mask, prompt_index)
    args = (model, prompt_ids, prompt_mask, prompt_index, response_ids, response_mask, layout)
    kept = _logits_at(model, response_predictors(layout), lambda **kwargs: packed_prompt_forward(*args, **kwargs)[0])
    return _response_grid(kept, layout.response_token_index, response_mask)


def _response_logprobs(
    logits: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
    with_entropy: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Masked log-probabilities (and entropies) of ``response_ids`` from the logits that predict them
    ``(batch, response_len, vocab)``, tempered."""
    logits = logits / temperature
    logprobs = logprobs_from_logits(logits, response_ids)
    real = response_mask.bool()
    logprobs = torch.where(real, logprobs, torch.zeros_like(logprobs))
    if not with_entropy:
        return logprobs
    with torch.no_grad():
        entropy = torch.where(real, entropy_from_logits(logits), torch.zeros_like(logprobs))
    return logprobs, entropy


def response_values(
    critic: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    padding_free: bool = False,
) -> torch.Tensor:
    """Critic values of the states before each response token: ``V_t`` read at the position that predicts token t.

    Args:
        critic: a sequence-classification model with one label (scored per token).
        prompt_ids, prompt_mask, response_ids, response_mask: as in :func:`response_logprobs`.
        padding_free: run the real tokens packed into one row
            (:func:`~lit_rlhf.models.scoring.packed_token_scores`): the same values, no work on padding.

    Returns:
        ``(batch, response_len)`` float32 values, 0 on response padding.
    """
    ids, mask = join(prompt_ids, prompt_mask, response_ids, response_mask)
    if padding_free:
        values = packed_token_scores(critic, ids, mask)
    else:
        values = token_scores(critic, ids, mask, position_ids=position_ids_from_mask(mask))
    values = values[:, prompt_ids.size(1) - 1 : -1]
    return torch.where(response_mask.bool(), values, torch.zeros_like(values))
