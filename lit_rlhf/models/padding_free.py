"""Padding-free forward passes: the real tokens of a padded batch packed into one row, on any attention kernel.

Every linear layer, norm and activation of a decoder works on each position alone, so they can run on the batch's
real tokens packed into one ``(1, num_tokens)`` row: no work on padding. Only attention needs the rows apart. Here
each attention layer copies its packed queries, keys and values into zero-padded ``(batch, width)`` rows, runs
causal PyTorch SDPA there (a real position never sees the later pad slots, so they need no mask), and gathers the
outputs back into packed order. Positions restart at 0 on every row through ``position_ids``, so rotary and
learned position embeddings see what they would see in the padded batch.

:func:`packed_prompt_forward` goes one step further for responses that share prompts (a preference pair, GRPO's
group): each distinct prompt is packed once, followed by all the responses, and each attention layer fills the
``(responses, width)`` grid of full ``[prompt | response]`` rows by gathering, a prompt token into every row that
continues it. Everything but attention then runs on ``prompt + responses`` real tokens, without a KV cache.

Unlike Hugging Face's own padding-free path (``position_ids`` with ``flash_attention_2``), this needs no flash
kernel: it runs on CPUs and with ``sdpa`` or ``eager`` models. It covers decoders whose attention layers dispatch
through ``transformers``' attention interface (Llama, Qwen2/3, Mistral, GPT-2 and most others); it refuses
attention logit soft-capping, attention sinks, and sliding windows shorter than the batch's longest row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AttentionInterface, PretrainedConfig, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from lit_rlhf.functional.padding import PackedPromptRows, PackedRows, pack_prompt_responses, pack_rows

PADDING_FREE_ATTENTION = "lit_rlhf_padding_free"
"""Name of the attention function registered with ``transformers.AttentionInterface``."""

_LAYOUT_KWARG = "lit_rlhf_packed_rows"


class _PackedCall:
    """What one packed forward hands its attention layers: the layout, and how many layers used it."""

    def __init__(self, layout: PackedRows | PackedPromptRows) -> None:
        self.layout = layout
        self.attention_calls = 0


def _padding_free_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention over packed rows: ``query`` ``(1, heads, num_tokens, head_dim)``, ``key``/``value``
    ``(1, kv_heads, num_tokens, head_dim)``; returns ``(1, num_tokens, heads, head_dim)``."""
    call: _PackedCall | None = kwargs.pop(_LAYOUT_KWARG, None)
    if call is None:
        raise RuntimeError(
            f"the {PADDING_FREE_ATTENTION!r} attention only runs inside lit_rlhf.models.padding_free.packed_forward "
            "or packed_prompt_forward"
        )
    call.attention_calls += 1
    layout = call.layout
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise ValueError("padding-free forward does not support attention soft-capping or attention sinks")
    window = kwargs.get("sliding_window")
    if window is not None and layout.width > window:
        raise ValueError(
            f"padding-free forward: the longest row ({layout.width} tokens) exceeds the model's sliding window "
            f"({window}); use padded batches"
        )
    if isinstance(layout, PackedPromptRows):  # shared prompts: a prompt token may fill several grid slots
        batch, width, output_slot = layout.rows, layout.width, layout.output_slot

        def to_grid(states: torch.Tensor) -> torch.Tensor:  # (1, h, T, d) -> (batch, h, width, d)
            padded = torch.cat([states[0], states.new_zeros(states.size(1), 1, states.size(-1))], dim=1)
            grid = padded.index_select(1, layout.grid_index)
            return grid.view(grid.size(0), batch, width, grid.size(-1)).transpose(0, 1)

    else:
        batch, width, output_slot = layout.lengths.numel(), layout.width, layout.slot_index

        def to_grid(states: torch.Tensor) -> torch.Tensor:  # (1, h, T, d) -> (batch, h, width, d), zeros past row ends
            heads, dim = states.size(1), states.size(-1)
            grid = states.new_zeros(heads, batch * width, dim).index_copy(1, layout.slot_index, states[0])
            return grid.view(heads, batch, width, dim).transpose(0, 1)

    output, _ = sdpa_attention_forward(
        module, to_grid(query), to_grid(key), to_grid(value), None, dropout=dropout, scaling=scaling, is_causal=True
    )  # (batch, width, heads, head_dim)
    return output.flatten(0, 1).index_select(0, output_slot).unsqueeze(0), None


AttentionInterface.register(PADDING_FREE_ATTENTION, _padding_free_attention)


def _configs(model: torch.nn.Module) -> list[PretrainedConfig]:
    """Every distinct ``PretrainedConfig`` the model's modules hold (their attention layers read it)."""
    found: dict[int, PretrainedConfig] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig):
            found.setdefault(id(config), config)
    return list(found.values())


@contextmanager
def _attention_swapped(model: torch.nn.Module) -> Iterator[None]:
    """Point the model's configs at the padding-free attention for the duration of one forward pass."""
    configs = _configs(model)
    saved = [config._attn_implementation for config in configs]
    try:
        for config in configs:
            config._attn_implementation = PADDING_FREE_ATTENTION
        yield
    finally:
        for config, name in zip(configs, saved):
            config._attn_implementation = name


def check_padding_free(model: torch.nn.Module) -> None:
    """Raise ``ValueError`` where a padding-free forward would be wrong: gradient checkpointing (its recomputation
    in the backward pass would run outside the packed layout) or a model whose layers do not use the attention
    interface (encoder-decoders)."""
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if checkpointing:
        raise ValueError("padding-free forward cannot be combined with gradient checkpointing")
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError("padding-free forward needs a decoder-only model")


def packed_forward(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layout: PackedRows | None = None,
    **kwargs: Any,
) -> tuple[Any, PackedRows]:
    """Run ``model`` on the real tokens of a padded batch, packed into one row.

    Args:
        model: a decoder-only ``transformers`` model (causal LM or a model with a per-token head).
        input_ids: ``(batch, seq_len)``, any padding side; each row's real tokens contiguous.
        attention_mask: ``(batch, seq_len)``, 1 on real tokens.
        layout: ``pack_rows(attention_mask)`` when the caller has it already.
        **kwargs: passed on to the model's forward (e.g. ``logits_to_keep``); ``use_cache`` is off.

    Returns:
        ``(outputs, layout)``: the model's outputs over one packed row (``logits`` ``(1, num_tokens, vocab)``)
        and the :class:`~lit_rlhf.functional.padding.PackedRows` that maps them back to the batch.

    Raises:
        ValueError: gradient checkpointing is on, the model is an encoder-decoder, or no attention layer of the
            model went through the padding-free attention (custom attention code).
    """
    layout = pack_rows(attention_mask) if layout is None else layout
    packed_ids = input_ids.flatten().index_select(0, layout.token_index)
    return _run_packed(model, packed_ids, layout, **kwargs), layout


def packed_prompt_forward(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_index: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    layout: PackedPromptRows | None = None,
    **kwargs: Any,
) -> tuple[Any, PackedPromptRows]:
    """Run ``model`` on each distinct prompt once and every response after its prompt, all packed into one row.

    The outputs at a response's tokens equal those of the full ``[prompt | response]`` row (up to float rounding):
    linear layers, norms and activations see ``num_prompt_tokens + num_response_tokens`` positions, with no padding
    and no prompt repeated, and each attention layer runs on the full rows
    (:class:`~lit_rlhf.functional.padding.PackedPromptRows`). Gradients from every response flow into its prompt's
    single computation. Unlike :func:`~lit_rlhf.models.shared_prompt.prompt_then_responses`, this needs no KV cache.

    Args:
        model: as for :func:`packed_forward`.
        prompt_ids: ``(num_prompts, prompt_len)`` distinct prompts, padded on either side.
        prompt_mask: ``(num_prompts, prompt_len)`` their 0/1 mask.
        prompt_index: ``(n,)`` the prompt each response continues (any order, repeats allowed; every prompt used).
        response_ids: ``(n, response_len)`` responses, padded on either side (a response may be empty).
        response_mask: ``(n, response_len)`` their 0/1 mask.
        layout: ``pack_prompt_responses(prompt_mask, response_mask, prompt_index)`` when the caller has it already.
        **kwargs: passed on to the model's forward (e.g. ``logits_to_keep``); ``use_cache`` is off.

    Returns:
        ``(outputs, layout)``: the model's outputs over the packed row (``(1, num_tokens, ...)``: the prompts'
        tokens, then the responses') and the layout; ``layout.response_token_index`` maps the responses' part back
        to ``(n, response_len)`` rows.

    Raises:
        ValueError: as for :func:`packed_forward`, or a prompt no response continues.
    """
    layout = pack_prompt_responses(prompt_mask, response_mask, prompt_index) if layout is None else layout
    packed_ids = torch.cat(
        [
            prompt_ids.flatten().index_select(0, layout.prompt_token_index),
            response_ids.flatten().index_select(0, layout.response_token_index),
        ]
    )
    return _run_packed(model, packed_ids, layout, **kwargs), layout


def _run_packed(
    model: PreTrainedModel, packed_ids: torch.Tensor, layout: PackedRows | PackedPromptRows, **kwargs: Any
) -> Any:
    """The model's outputs on ``packed_ids`` ``(num_tokens,)`` with its attention running through ``layout``."""
    check_padding_free(model)
    call = _PackedCall(layout)
    with _attention_swapped(model):
        outputs = model(
            input_ids=packed_ids.unsqueeze(0),
            position_ids=layout.position_ids.unsqueeze(0),
            use_cache=False,
            **{_LAYOUT_KWARG: call},
            **kwargs,
        )
    if call.attention_calls == 0:  # its attention ran across the packed rows: the outputs are wrong
        raise ValueError(
            f"{type(model).__name__}'s attention layers do not dispatch through transformers' attention interface "
            "(config._attn_implementation), so they cannot run padding-free; use padded batches"
        )
    return outputs
