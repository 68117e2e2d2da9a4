"""Loading policies and tokenizers, and the embedded tiny model."""

from lit_rlhf.models.loading import ModelLoadError, is_builtin, load_causal_lm, load_tokenizer
from lit_rlhf.models.tiny import TINY_ARITHMETIC, build_tiny_llama, build_word_tokenizer

__all__ = [
    "TINY_ARITHMETIC",
    "ModelLoadError",
    "build_tiny_llama",
    "build_word_tokenizer",
    "is_builtin",
    "load_causal_lm",
    "load_tokenizer",
]
