"""Batched generation from left-padded prompts, with KV cache, cut after the first EOS."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_rlhf.errors import ConfigError
from lit_rlhf.functional.logprobs import logprobs_from_logits
from lit_rlhf.functional.masking import mask_after_eos
from lit_rlhf.functional.padding import pad_left, position_ids_from_mask
from lit_rlhf.sharding import gathered_for_sampling, is_sharded


class Generation(NamedTuple):
    """Responses sampled for a batch of prompts.

    Attributes:
        response_ids: ``(batch, response_len)`` generated ids; positions after the first EOS hold the pad id.
        response_mask: ``(batch, response_len)`` bool, true up to and including the first EOS.
        has_eos: ``(batch,)`` bool, whether the response ended with EOS (false: cut by ``max_new_tokens``).
        logprobs: ``(batch, response_len)`` float32 log-probabilities of the generated tokens under the
            temperature-scaled distribution of the sampling pass (0 on padding), if asked for; else ``None``.
    """

    response_ids: torch.Tensor
    response_mask: torch.Tensor
    has_eos: torch.Tensor
    logprobs: torch.Tensor | None = None


def check_sampling(
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    *,
    do_sample: bool = True,
    prefix: str = "",
) -> None:
    """Refuse sampling settings that cannot sample (before transformers fails on them mid-run).

    Args:
        max_new_tokens: must be >= 1.
        temperature, top_k, top_p: checked only with ``do_sample``: ``temperature > 0`` (the log-probabilities of
            a sample are read from the logits divided by it), ``top_k >= 0``, ``top_p`` in ``(0, 1]``.
        do_sample: sampling (else greedy, which ignores the three).
        prefix: prepended to the option names in the message (``model.init_args.``).

    Raises:
        ConfigError: naming the option, the value given and the accepted range.
    """
    checks = [("max_new_tokens", max_new_tokens, _whole(max_new_tokens) and max_new_tokens >= 1, ">= 1")]
    if do_sample:
        checks += [
            (
                "temperature",
                temperature,
                _real(temperature) and temperature > 0,
                "> 0 to sample (greedy decoding has no temperature: validation answers greedily)",
            ),
            ("top_k", top_k, _whole(top_k) and top_k >= 0, ">= 0 (0 keeps every token)"),
            ("top_p", top_p, _real(top_p) and 0 < top_p <= 1, "in (0, 1] (1 keeps every token)"),
        ]
    for name, value, ok, requirement in checks:
        if not ok:
            fix = f"; set it in the config file or with --{prefix}{name}" if prefix else ""
            raise ConfigError(f"sampling {prefix}{name} must be {requirement}, got {value!r}{fix}")


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    return_logprobs: bool = False,
    num_samples: int = 1,
    share_prompt: bool = False,
    gather_sharded: bool = True,
) -> Generation:
    """Generate responses in eval mode (dropout off), restoring the model's train/eval mode afterwards.

    Pass the unwrapped Hugging Face model (not a DDP wrapper): each rank generates for its own prompts.

    Args:
        model: a causal LM.
        prompt_ids: ``(batch, prompt_len)`` left-padded prompt ids.
        prompt_mask: ``(batch, prompt_len)`` attention mask of the prompts.
        max_new_tokens: most tokens to generate.
        eos_token_id: id that ends a response.
        pad_token_id: id written after EOS.
        do_sample: sample (``True``) or greedy (``False``).
        temperature, top_k, top_p: sampling parameters (``top_k=0`` and ``top_p=1`` disable those filters).
        return_logprobs: also return the log-probabilities of the generated tokens, read from the sampling pass's
            own logits (``log_softmax(logits / temperature)``, before top-k/top-p filtering, as a teacher-forced
            pass computes them), which saves a forward pass over the batch.
        num_samples: responses per prompt; the output has ``batch * num_samples`` rows, prompt-major (prompt 0's
            samples first).
        share_prompt: with ``num_samples > 1``, compute each prompt once: all but its last token run with a KV
            cache that is repeated for the prompt's samples, so generation starts from ``num_samples`` copies of
            the cache instead of recomputing the prompt for each (the same logits up to float rounding). Needs a
            model whose ``generate`` takes a ``DynamicCache`` in ``past_key_values`` (Hugging Face decoders do).
        gather_sharded: for a model sharded with FSDP2, gather its whole weights once and keep them until the end of
            generation (``False``: gather each block at every generated token, holding one block at a time). Every
            process of a sharded model must call this together; each keeps stepping until all have finished.

    Returns:
        :class:`Generation` with the response part only, ``batch * num_samples`` rows.

    Raises:
        ConfigError: sampling settings it cannot sample with (:func:`check_sampling`).
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p, do_sample=do_sample)
    synced = is_sharded(model) and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    share = num_samples > 1 and share_prompt and _on_every_process(prompt_ids.size(1) > 1, synced)
    prefix_ids, prefix_mask = prompt_ids[:, :-1], prompt_mask[:, :-1]
    prompt_ids = prompt_ids.repeat_interleave(num_samples, dim=0)
    prompt_mask = prompt_mask.repeat_interleave(num_samples, dim=0)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p}
        if do_sample
        else {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
    )
    was_training = model.training
    model.eval()
    try:
        with gathered_for_sampling(model, enabled=synced and gather_sharded):
            cache = _prefix_cache(model, prefix_ids, prefix_mask, num_samples) if share else None
            output = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos_token_id,
                pad_token_id=pad_token_id,
                use_cache=True,
                return_dict_in_generate=True,
                output_logits=return_logprobs,
                synced_gpus=synced,  # sharded: every process steps until all are done (each step is a collective)
                **({} if cache is None else {"past_key_values": cache}),
                **sampling,
            )
    finally:
        model.train(was_training)
    response = output.sequences[:, prompt_ids.size(1) :]
    empty = response.size(1) == 0
    if empty:
        response = torch.full((prompt_ids.size(0), 1), pad_token_id, dtype=torch.long, device=prompt_ids.device)
    mask = mask_after_eos(response, eos_token_id)
    has_eos = ((response == eos_token_id) & mask).any(dim=1)
    response = torch.where(mask, response, torch.full_like(response, pad_token_id))
    logprobs = None
    if return_logprobs:
        if empty:
            logprobs = torch.zeros(response.shape, device=response.device)
        else:
            logits = torch.stack(output.logits, dim=1) / (temperature if do_sample else 1.0)
            logprobs = torch.where(mask, logprobs_from_logits(logits, response), torch.zeros((), device=mask.device))
    return Generation(response_ids=response, response_mask=mask, has_eos=has_eos, logprobs=logprobs)


def _on_every_process(flag: bool, synced: bool) -> bool:
    """``flag`` when it holds on every process of a synced (sharded) generation, else on this one only: a forward
    that some processes would skip must be skipped by all."""
    if not synced:
        return flag
    value = torch.tensor([int(flag)], device="cpu" if dist.get_backend() == "gloo" else torch.cuda.current_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def _prefix_cache(model: PreTrainedModel, prefix_ids: torch.Tensor, prefix_mask: torch.Tensor, num_samples: int) -> Any:
    """KV cache of each left-padded prompt without its last token (``prefix_ids``), repeated ``num_samples`` times
    (prompt-major); ``generate`` then runs only the last prompt token of each row before sampling."""
    cache = model(
        input_ids=prefix_ids,
        attention_mask=prefix_mask,
        position_ids=position_ids_from_mask(prefix_mask),
        use_cache=True,
    ).past_key_values
    cache.batch_repeat_interleave(num_samples)
    return cache


def decode_responses(tokenizer: PreTrainedTokenizerBase, generation: Generation) -> list[str]:
    """Response texts without special tokens (EOS, padding)."""
    return tokenizer.batch_decode(generation.response_ids, skip_special_tokens=True)


def responses_in_batches(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    sort_by_length: bool = True,
    **sampling: Any,
) -> list[str]:
    """Response texts (special tokens removed) of ``model`` to each prompt, in prompt order.

    Prompts go in batches of ``batch_size``, left-padded, on the model's device, through :func:`generate` (eval mode,
    KV cache, cut after the first EOS).

    Args:
        model: a causal LM (unwrapped, not a DDP wrapper).
        tokenizer: its tokenizer (pad and EOS ids).
        prompt_ids: each prompt's ids, none empty.
        max_new_tokens: longest response.
        batch_size: prompts per generation batch.
        sort_by_length: batch prompts of similar length together (less padding). Off keeps the given order, which
            fixes which random numbers each prompt's samples draw.
        **sampling: ``do_sample``, ``temperature``, ``top_k``, ``top_p`` of :func:`generate` (default greedy).

    Returns:
        ``len(prompt_ids)`` response texts.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(len(ids) == 0 for ids in prompt_ids):
        raise ValueError("an empty prompt (no tokens) cannot be answered; give every prompt some text")
    device = next(model.parameters()).device
    order = list(range(len(prompt_ids)))
    if sort_by_length:
        order.sort(key=lambda i: len(prompt_ids[i]))
    responses = [""] * len(prompt_ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = pad_left([prompt_ids[i] for i in chunk], tokenizer.pad_token_id)
        generation = generate(
            model,
            ids.to(device),
            mask.to(device),
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
        for i, text in zip(chunk, decode_responses(tokenizer, generation)):
            responses[i] = text
    return responses


def generate_for_batch(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch: dict, max_new_tokens: int
) -> tuple[Generation, list[str]]:
    """Greedy responses for a validation batch (its left-padded ``prompt_input_ids``) and their texts."""
    generation = generate(
        model,
        batch["prompt_input_ids"],
        batch["prompt_attention_mask"],
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return generation, decode_responses(tokenizer, generation)
