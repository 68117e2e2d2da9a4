"""The embedded default model: a ~1M-parameter Llama built from a config and a word-level tokenizer.

Nothing is downloaded: the tokenizer is built with ``tokenizers`` from the task vocabulary and the model with
``AutoModelForCausalLM.from_config``. Both save with ``save_pretrained`` like any Hugging Face model.
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast

from lit_rlhf.data.arithmetic_task import vocabulary

TINY_ARITHMETIC = "tiny-arithmetic"
"""Name of the built-in model: pass it as ``model_name_or_path`` to build instead of loading."""

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")

TINY_LLAMA_DEFAULTS: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
    "attention_dropout": 0.0,
}


def build_word_tokenizer(words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``words`` (default: the arithmetic vocabulary) plus special tokens.

    Text is split on whitespace; decoding joins words with single spaces. The BOS token exists but is not
    prepended, so prompt ids are exactly the prompt's words.

    Args:
        words: the vocabulary, without special tokens.

    Returns:
        A ``PreTrainedTokenizerFast`` with pad, unk, bos and eos set.
    """
    words = vocabulary() if words is None else words
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )


def build_tiny_llama(tokenizer: PreTrainedTokenizerFast, overrides: dict[str, Any] | None = None) -> PreTrainedModel:
    """A small Llama causal LM sized for ``tokenizer``, randomly initialised from the current torch seed.

    Args:
        tokenizer: gives the vocabulary size and the pad/bos/eos ids.
        overrides: ``LlamaConfig`` fields to change from :data:`TINY_LLAMA_DEFAULTS`; ``vocab_size`` may be larger
            than the tokenizer's (as in real models, whose embedding tables are rounded up), not smaller.

    Returns:
        The model, in float32 and train mode.
    """
    fields = {**TINY_LLAMA_DEFAULTS, **(overrides or {})}
    vocab_size = fields.pop("vocab_size", len(tokenizer))
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
    config = LlamaConfig(
        vocab_size=vocab_size,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **fields,
    )
    return AutoModelForCausalLM.from_config(config)
