"""Loading policies and tokenizers: a hub name, a local ``save_pretrained`` dir, or the built-in tiny model."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lit_rlhf.errors import UserError
from lit_rlhf.models.tiny import TINY_ARITHMETIC, build_tiny_llama, build_word_tokenizer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(UserError):
    """A model or tokenizer could not be loaded; the message says which path and why."""


def is_builtin(name_or_path: str) -> bool:
    """Whether ``name_or_path`` names the embedded model rather than a hub repo or a folder."""
    return name_or_path == TINY_ARITHMETIC


def load_tokenizer(
    name_or_path: str, padding_side: str = "right", pad_with_eos: bool = True, **kwargs: Any
) -> PreTrainedTokenizerBase:
    """Load a tokenizer and make sure it can pad.

    A tokenizer without a pad token gets its EOS token as pad token, and a warning says so (unless
    ``pad_with_eos=False``: then it is returned without one, for the caller to decide).

    Args:
        name_or_path: ``"tiny-arithmetic"``, a hub name, or a folder with tokenizer files.
        padding_side: ``"right"`` or ``"left"``; collators in this package pad explicitly and do not depend on it.
        pad_with_eos: use EOS as pad token when there is none.
        **kwargs: passed to ``AutoTokenizer.from_pretrained`` (e.g. ``trust_remote_code``).

    Returns:
        The tokenizer, with ``pad_token_id`` set (if ``pad_with_eos``).

    Raises:
        ModelLoadError: the folder has no tokenizer files, or the tokenizer has neither pad nor EOS token.
    """
    if is_builtin(name_or_path):
        tokenizer = build_word_tokenizer()
    else:
        check_local_path(name_or_path)
        if os.path.isdir(name_or_path) and not _has_tokenizer_files(name_or_path):
            raise ModelLoadError(
                f"{name_or_path} has no tokenizer files (tokenizer.json, tokenizer_config.json, vocab/merges or "
                "sentencepiece model); save one there or pass --model.tokenizer_name_or_path"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"could not load a tokenizer from {name_or_path!r}: {err}") from err
    if tokenizer.pad_token_id is None and pad_with_eos:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer {name_or_path!r} has neither a pad token nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
        log.warning(
            "tokenizer %s has no pad token; using its EOS token %r as pad token", name_or_path, tokenizer.eos_token
        )
    tokenizer.padding_side = padding_side
    return tokenizer


def load_causal_lm(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    config_overrides: dict[str, Any] | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Load (or build, for the embedded name) a causal LM whose pad/EOS ids agree with ``tokenizer``.

    Args:
        name_or_path: ``"tiny-arithmetic"``, a hub name, or a ``save_pretrained`` folder.
        tokenizer: the tokenizer the model is used with; its pad id is written into ``model.config``.
        config_overrides: for the embedded model, ``LlamaConfig`` fields; for others, config attributes passed
            to ``from_pretrained`` (e.g. ``{"dropout": 0.0}``).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` for the weights; ``None`` keeps float32 (use
            ``trainer.precision: bf16-mixed`` for mixed precision).
        trust_remote_code: passed to ``from_pretrained``.
        attn_implementation: ``"eager"``, ``"sdpa"``, ``"flash_attention_2"``, ...; ``None`` lets transformers
            choose (``sdpa`` where it can).

    Returns:
        The model in train mode.

    Raises:
        ModelLoadError: the path does not hold a causal LM (e.g. a reward model's sequence-classification export), or
            its vocabulary is smaller than the tokenizer's.
    """
    if dtype is not None and dtype not in DTYPES:
        raise ModelLoadError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if is_builtin(name_or_path):
        model = build_tiny_llama(tokenizer, config_overrides)
        set_attn_implementation(model, attn_implementation, name_or_path)
    else:
        check_causal_lm_kind(name_or_path, load_architectures(name_or_path, trust_remote_code, "a causal LM"))
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, **(config_overrides or {})}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        try:
            model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        except (OSError, ValueError, ImportError) as err:
            raise ModelLoadError(f"could not load a causal LM from {name_or_path!r}: {err}") from err
    if dtype is not None:
        model = model.to(DTYPES[dtype])
    embeddings = model.get_input_embeddings().num_embeddings
    if embeddings < len(tokenizer):
        raise ModelLoadError(
            f"model {name_or_path!r} has {embeddings} token embeddings but its tokenizer has {len(tokenizer)} "
            "tokens; resize the embeddings or use the model's own tokenizer"
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config.eos_token_id is None:
            model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.train()
    return model


CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")
"""Ends of architecture names whose heads score or label tokens instead of predicting the next one."""


def load_architectures(name_or_path: str, trust_remote_code: bool = False, what: str = "a model config") -> list[str]:
    """The ``architectures`` recorded in the config of a folder or hub model (empty when none is recorded).

    Args:
        name_or_path: a folder or hub name.
        trust_remote_code: passed to ``AutoConfig.from_pretrained``.
        what: what the caller loads, for the message (``a causal LM``).

    Raises:
        ModelLoadError: there is no readable config.
    """
    check_local_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load {what} from {name_or_path!r}: {err}") from err
    return list(getattr(config, "architectures", None) or [])


def check_causal_lm_kind(name_or_path: str, architectures: list[str]) -> None:
    """Refuse a model whose recorded architectures are all classifiers (a reward or value model) as a policy.

    ``AutoModelForCausalLM`` would load such a folder with its backbone and a new, random LM head, and generate noise.

    Args:
        name_or_path: the folder or hub name, for the message.
        architectures: its config's ``architectures`` (an empty list is accepted: nothing is recorded).

    Raises:
        ModelLoadError: naming the folder, what it holds and what is expected.
    """
    if architectures and all(name.endswith(CLASSIFIER_SUFFIXES) for name in architectures):
        raise ModelLoadError(
            f"{name_or_path} holds a {', '.join(architectures)} (config.json architectures), a classifier such as a "
            "reward or value model, not a causal LM: a policy must be a *ForCausalLM export (e.g. the SFT stage's "
            "runs/arithmetic/sft/hf) or hub name; point model_name_or_path / policy_name_or_path at one"
        )


def set_attn_implementation(model: PreTrainedModel, attn_implementation: str | None, name_or_path: str) -> None:
    """Switch a built model's attention kernel (``None``: leave it); a name transformers rejects is a load error."""
    if attn_implementation is None:
        return
    try:
        model.set_attn_implementation(attn_implementation)
    except (ValueError, ImportError) as err:
        raise ModelLoadError(f"{name_or_path!r}: attn_implementation {attn_implementation!r}: {err}") from err


def check_local_path(name_or_path: str) -> None:
    """Fail clearly when ``name_or_path`` is meant as a local folder (not a hub ``namespace/name``) and is missing.

    Raises:
        ModelLoadError: e.g. ``runs/arithmetic/sft/hf`` does not exist because the previous stage has not run.
    """
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local and not os.path.exists(os.path.expanduser(name_or_path)):
        raise ModelLoadError(
            f"{name_or_path}: no such model folder (if it is the export of an earlier stage, run that stage first, "
            "e.g. lit-rlhf fit --config configs/arithmetic/sft.yaml)"
        )


def _has_tokenizer_files(folder: str) -> bool:
    names = set(os.listdir(folder))
    known = {"tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model", "vocab.txt"}
    return bool(names & known)


def resolve_device(device: str | None) -> str:
    """``auto`` / ``None``: ``cuda`` when a GPU is visible, else ``cpu``; anything else as given."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
