"""Shared fixtures. Tests are offline: the hub is disabled before anything imports transformers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# A Llama small enough that a few optimizer steps take milliseconds.
TINY_MODEL_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def word_tokenizer():
    from lit_rlhf.models import build_word_tokenizer

    return build_word_tokenizer()


@pytest.fixture
def policy_dir(tmp_path):
    """A tiny untrained Llama with the word-level tokenizer as an HF folder (the "SFT export" of module tests)."""
    from lit_rlhf.models import build_word_tokenizer
    from lit_rlhf.models.tiny import build_tiny_llama

    tokenizer = build_word_tokenizer()
    path = str(tmp_path / "sft")
    build_tiny_llama(tokenizer, TINY_MODEL_CONFIG).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
