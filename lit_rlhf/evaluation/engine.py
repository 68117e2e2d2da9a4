"""The sampling engine of ``lit-rlhf evaluate`` and ``lit-rlhf winrate``: Hugging Face ``generate`` or vLLM.

``--engine vllm`` answers the prompts with a vLLM engine built on the model folder (in this process); the answers are
decoded with the model's own tokenizer, as the ``generate`` path decodes them. Nothing here imports vLLM until an
engine is built.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_rlhf.engines.settings import VLLMSettings, require_vllm
from lit_rlhf.functional.padding import unpadded
from lit_rlhf.generation import decode_responses

if TYPE_CHECKING:
    from lit_rlhf.engines.vllm_engine import VLLMEngine

__all__ = ["engine_responses", "open_engine", "unpadded"]


def open_engine(
    model: PreTrainedModel | str, tokenizer: PreTrainedTokenizerBase, settings: VLLMSettings | None = None
) -> VLLMEngine:
    """A vLLM engine answering as ``model`` does.

    Args:
        model: a ``save_pretrained`` folder (the engine reads it), or a model object, a hub name or
            ``tiny-arithmetic`` (loaded here, its weights handed to the engine).
        tokenizer: the model's tokenizer (for a name to load).
        settings: the engine's settings (default :class:`~lit_rlhf.engines.settings.VLLMSettings`).

    Raises:
        ConfigError: vLLM is not installed.
        ModelLoadError: the folder holds no causal LM (a reward model's export, say).
    """
    from lit_rlhf.engines.vllm_engine import VLLMEngine
    from lit_rlhf.engines.weights import engine_weights
    from lit_rlhf.models.loading import check_causal_lm_kind, load_architectures, load_causal_lm

    require_vllm("--engine")
    settings = settings or VLLMSettings()
    if isinstance(model, str) and os.path.isdir(model):
        check_causal_lm_kind(model, load_architectures(model, what="a causal LM"))
        return VLLMEngine.from_pretrained(model, settings)
    if isinstance(model, str):
        model = load_causal_lm(model, tokenizer, dtype=settings.dtype)
    return VLLMEngine.for_policy(model, settings, engine_weights(model))


def engine_responses(
    engine: VLLMEngine,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    **sampling: Any,
) -> list[str]:
    """Response texts (special tokens removed) of ``engine`` to each prompt, in prompt order.

    Args:
        engine: a :class:`~lit_rlhf.engines.vllm_engine.VLLMEngine` (it schedules its own batches).
        tokenizer: the model's tokenizer (pad and EOS ids, decoding).
        prompt_ids: each prompt's ids, none empty.
        max_new_tokens: longest response.
        **sampling: ``do_sample``, ``temperature``, ``top_k``, ``top_p`` as :func:`~lit_rlhf.generation.generate`
            takes them (default greedy).

    Returns:
        ``len(prompt_ids)`` response texts.
    """
    if not prompt_ids:
        return []
    generation = engine.generate(
        [list(ids) for ids in prompt_ids],
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    return decode_responses(tokenizer, generation)
