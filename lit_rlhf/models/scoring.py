"""Reward and value models: ``AutoModelForSequenceClassification`` with one label, scored by attention mask.

Hugging Face's sequence-classification models pool at the last token that is not the pad id. lit_rlhf scores at
the last token of the *attention mask* instead, which is the same whenever the pad token differs from EOS (the
usual reward-model setup, and what :func:`load_reward_model` checks), and stays right when it does not.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from lit_rlhf.functional.reward import last_token_index
from lit_rlhf.models.loading import DTYPES, ModelLoadError, check_local_path, is_builtin, set_attn_implementation
from lit_rlhf.models.padding_free import packed_forward, packed_prompt_forward
from lit_rlhf.models.shared_prompt import prompt_then_responses
from lit_rlhf.models.tiny import build_tiny_llama

log = logging.getLogger(__name__)

NORMALIZATION_KEY = "reward_normalization"
"""``config`` attribute where the reward model export records ``{"mean", "std", "num_responses"}`` of its scores."""


def load_reward_model(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    config_overrides: dict[str, Any] | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    zero_head: bool = False,
    attn_implementation: str | None = None,
    require_score_head: bool = False,
) -> PreTrainedModel:
    """Load a reward (or value) model with a single output, initialising the head if the checkpoint has none.

    A causal-LM export (e.g. the SFT stage's ``hf/``) loads with its backbone and a new zero-mean scalar head; a
    reward-model export or a hub reward model loads as is.

    Args:
        name_or_path: ``"tiny-arithmetic"`` (a fresh tiny Llama), a hub name or a ``save_pretrained`` folder.
        tokenizer: the tokenizer the model is used with; its pad id is written into ``model.config``, and its
            vocabulary may have grown by a pad token (the embeddings are then resized).
        config_overrides: ``LlamaConfig`` fields for the built-in model, else config attributes for
            ``from_pretrained``.
        dtype: ``float32``, ``bfloat16`` or ``float16`` weights; ``None`` keeps float32.
        trust_remote_code: passed to ``from_pretrained``.
        zero_head: a new head starts at exactly zero (a PPO critic then predicts 0 until it has learned, instead
            of random values that would be taken as advantages); by default small random weights.
        attn_implementation: attention kernel (``"eager"``, ``"sdpa"``, ...); ``None`` lets transformers choose.
        require_score_head: refuse a folder that is not a sequence classifier (e.g. a causal LM), whose score head
            would be new and random: for a reward model used as a reward source, where random scores are noise.

    Returns:
        The model (``config.num_labels == 1``, ``config.pad_token_id`` set) in train mode.

    Raises:
        ModelLoadError: the path holds no loadable model, a classifier with more than one label, or (with
            ``require_score_head``) no sequence classifier.
    """
    if dtype is not None and dtype not in DTYPES:
        raise ModelLoadError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if is_builtin(name_or_path):
        config = build_tiny_llama(tokenizer, config_overrides).config
        config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(config)
        set_attn_implementation(model, attn_implementation, name_or_path)
    else:
        check_local_path(name_or_path)
        try:
            config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"could not load a model config from {name_or_path!r}: {err}") from err
        is_classifier = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
        if require_score_head and not is_classifier:
            held = (
                ", ".join(config.architectures or []) or f"a {config.model_type} model without recorded architectures"
            )
            raise ModelLoadError(
                f"{name_or_path} holds {held} (config.json architectures), not a reward model: its score head would be "
                "new and random, so its rewards would be noise; give a reward model's export (a "
                "*ForSequenceClassification with one label, e.g. the reward stage's runs/arithmetic/reward/hf)"
            )
        if is_classifier and config.num_labels != 1:
            raise ModelLoadError(
                f"{name_or_path!r} is a classifier with {config.num_labels} labels; a reward model has exactly one"
            )
        try:
            attention = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
            # From a causal LM the score head is new by design: transformers' load report saying so is replaced by
            # the check below, which warns only about other weights the folder lacks.
            with _quiet_load_report(not is_classifier):
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    name_or_path,
                    num_labels=1,
                    trust_remote_code=trust_remote_code,
                    output_loading_info=True,
                    **attention,
                    **(config_overrides or {}),
                )
        except (OSError, ValueError, ImportError) as err:
            raise ModelLoadError(f"could not load {name_or_path!r} as a sequence-classification model: {err}") from err
        if not is_classifier:
            head_names = {f"{name}" for name, _ in score_head(model).named_parameters(prefix="score")}
            others = sorted(set(info.get("missing_keys") or ()) - head_names)
            if others:
                log.warning("%s: weights missing from the folder, newly initialised: %s", name_or_path, others)
            log.info("%s holds a causal LM: its backbone is loaded with a new score head", name_or_path)
            # A fresh head: zero bias and small (or zero) weights, so every initial score is near 0.
            head = score_head(model)
            if zero_head:
                torch.nn.init.zeros_(head.weight)
            else:
                torch.nn.init.normal_(head.weight, std=1.0 / (model.config.hidden_size + 1) ** 0.5)
            if head.bias is not None:
                torch.nn.init.zeros_(head.bias)
    if dtype is not None:
        model = model.to(DTYPES[dtype])
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.train()
    return model


@contextlib.contextmanager
def _quiet_load_report(quiet: bool) -> Iterator[None]:
    """Raise the level of transformers' loader log to errors while ``quiet`` (its load report is a warning)."""
    logger = logging.getLogger("transformers.modeling_utils")
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def score_head(model: PreTrainedModel) -> torch.nn.Linear:
    """The final linear layer that maps a hidden state to the score (``score`` in decoder-only HF models)."""
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear):
        raise ModelLoadError(
            f"{type(model).__name__} has no linear `score` head; lit_rlhf scores decoder-only "
            "*ForSequenceClassification models (Llama, Qwen, Mistral, GPT-2, GPT-NeoX, ...)"
        )
    return head


def backbone_hidden_states(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Last hidden states ``(batch, seq_len, hidden)`` of the model's transformer body (no head, no cache).

    ``position_ids`` matter for left-padded input (see :func:`lit_rlhf.rollout.position_ids_from_mask`).
    """
    body = getattr(model, model.base_model_prefix)
    kwargs = {} if position_ids is None else {"position_ids": position_ids}
    return body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).last_hidden_state


def sequence_scores(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    last_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar score of each sequence, read at its last real token.

    Args:
        model: a sequence-classification model with one label.
        input_ids: ``(batch, seq_len)`` ids, padded on either side.
        attention_mask: ``(batch, seq_len)`` 0/1 mask.
        last_index: ``(batch,)`` positions to read; default: the last 1 of ``attention_mask``.

    Returns:
        ``(batch,)`` float scores.
    """
    if last_index is None:
        last_index = last_token_index(attention_mask)
    hidden = backbone_hidden_states(model, input_ids, attention_mask)
    rows = torch.arange(hidden.size(0), device=hidden.device)
    return score_head(model)(hidden[rows, last_index.to(hidden.device)]).squeeze(-1).float()


def token_scores(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Score at every position ``(batch, seq_len)``: a value model's per-token values."""
    hidden = backbone_hidden_states(model, input_ids, attention_mask, position_ids)
    return score_head(model)(hidden).squeeze(-1).float()


def packed_token_scores(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """:func:`token_scores` computed on the batch's real tokens only, packed into one row
    (:func:`~lit_rlhf.models.padding_free.packed_forward`): the same scores and gradients, no work on padding.

    Args:
        model: a decoder-only sequence-classification model with one label.
        input_ids: ``(batch, seq_len)`` ids, padded on either side.
        attention_mask: ``(batch, seq_len)`` 0/1 mask.

    Returns:
        ``(batch, seq_len)`` float scores at real positions, 0 at padding.
    """
    body = getattr(model, model.base_model_prefix)
    outputs, layout = packed_forward(body, input_ids, attention_mask)
    packed = score_head(model)(outputs.last_hidden_state[0]).squeeze(-1).float()  # (num_tokens,)
    flat = packed.new_zeros(input_ids.numel()).index_copy(0, layout.token_index, packed)
    return flat.view_as(input_ids)


def shared_prompt_token_scores(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    padding_free: bool = False,
) -> torch.Tensor:
    """Scores at every response position of several responses per prompt, the prompt computed once.

    Equal to :func:`token_scores` over ``[prompt | response]`` rows at the response positions (a causal model's
    state at a response token depends on the prompt only through attention to its keys and values): the body runs
    on the prompts with a KV cache, the cache is gathered for each response, and the responses run on top of it
    (:func:`~lit_rlhf.models.shared_prompt.prompt_then_responses`). Gradients flow through the cache to the prompt
    computation. For pairs (chosen, rejected) with prompts of ~P tokens and responses of ~R, that is ``P + 2R``
    token positions instead of ``2(P + R)``. With ``padding_free`` the prompts and responses run instead packed
    into one row, without padding or KV cache
    (:func:`~lit_rlhf.models.padding_free.packed_prompt_forward`): the same scores, ``P + 2R`` real tokens only.

    Args:
        model: a decoder-only sequence-classification model with one label.
        prompt_ids: ``(num_prompts, prompt_len)`` left-padded prompt ids.
        prompt_mask: ``(num_prompts, prompt_len)`` their 0/1 mask.
        response_ids: ``(k * num_prompts, response_len)`` right-padded responses: the first ``num_prompts`` rows
            answer prompts ``0..num_prompts-1``, the next ``num_prompts`` rows again, and so on (``k`` blocks).
        response_mask: ``(k * num_prompts, response_len)`` their 0/1 mask.
        padding_free: pack prompts and responses into one row instead of using a KV cache.

    Returns:
        ``(k * num_prompts, response_len)`` float scores, row order as ``response_ids`` (0 at padding when
        ``padding_free``).
    """
    num_prompts, k = prompt_ids.size(0), response_ids.size(0) // max(1, prompt_ids.size(0))
    if k < 1 or k * num_prompts != response_ids.size(0):
        raise ValueError(f"{response_ids.size(0)} responses are not a whole number of blocks of {num_prompts} prompts")
    prompt_index = torch.arange(num_prompts, device=response_ids.device).repeat(k)  # row i answers prompt i % P
    body = getattr(model, model.base_model_prefix)
    if padding_free:
        outputs, layout = packed_prompt_forward(
            body, prompt_ids, prompt_mask, prompt_index, response_ids, response_mask
        )
        hidden = outputs.last_hidden_state[0, layout.prompt_token_index.numel() :]  # the responses' tokens
        packed = score_head(model)(hidden).squeeze(-1).float()
        flat = packed.new_zeros(response_ids.numel()).index_copy(0, layout.response_token_index, packed)
        return flat.view_as(response_ids)
    _, responses = prompt_then_responses(body, prompt_ids, prompt_mask, prompt_index, response_ids, response_mask)
    return score_head(model)(responses.last_hidden_state).squeeze(-1).float()


def reward_normalization(model: PreTrainedModel) -> dict[str, float] | None:
    """The ``{"mean", "std", "num_responses"}`` a lit_rlhf reward-model export recorded, or ``None``."""
    return getattr(model.config, NORMALIZATION_KEY, None)


def check_reward_normalization(stats: Any, name_or_path: str) -> None:
    """Refuse recorded normalisation statistics that cannot normalise: a missing or non-finite mean, a std that is
    not a finite number > 0 (scores would be divided by zero or turned to NaN).

    Args:
        stats: ``config.reward_normalization`` of the export (``{"mean", "std", ...}``).
        name_or_path: the reward model's folder, for the message.

    Raises:
        ModelLoadError: naming the folder, the recorded values and the fix.
    """

    def finite(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    mean = stats.get("mean") if isinstance(stats, dict) else None
    std = stats.get("std") if isinstance(stats, dict) else None
    if finite(mean) and finite(std) and std > 0:
        return
    raise ModelLoadError(
        f"{name_or_path}/config.json records {NORMALIZATION_KEY} {stats!r}, which cannot normalise scores (the mean "
        "must be a finite number and the std a finite number > 0); retrain the reward model on responses whose "
        "scores differ, or set normalize: false on this reward source to use raw scores"
    )


def ensure_distinct_pad(tokenizer: PreTrainedTokenizerBase, pad_token: str | None, name: str) -> None:
    """Make sure the reward model's pad token exists and differs from EOS, or fail with the fix.

    Responses end with EOS and the score is read there. Hugging Face's own pooling (``from_pretrained`` then
    ``model(...).logits``) skips every trailing pad id, so with pad == EOS it would read the token before EOS and
    an exported reward model would score differently outside lit_rlhf.

    Args:
        tokenizer: the reward model's tokenizer; changed in place when ``pad_token`` is added.
        pad_token: a new pad token to add when needed (the embeddings are then resized by
            :func:`load_reward_model`); ``None`` = fail instead.
        name: the model's name for the message.

    Raises:
        ModelLoadError: no pad token (or pad == EOS) and ``pad_token`` not given.
    """
    pad_id = tokenizer.pad_token_id
    if pad_id is not None and pad_id != tokenizer.eos_token_id:
        return
    if pad_token is None:
        problem = "has no pad token" if pad_id is None else f"pads with its EOS token {tokenizer.eos_token!r}"
        raise ModelLoadError(
            f"the tokenizer of {name!r} {problem}; a reward model needs a pad token distinct from EOS so that "
            "scores are read at the EOS that ends each response (also by Hugging Face's own pooling). "
            "Set --model.init_args.pad_token '<|pad|>' to add one (the embeddings are resized)"
        )
    tokenizer.add_special_tokens({"pad_token": pad_token})
    log.warning("added pad token %r (id %d) to the tokenizer of %s", pad_token, tokenizer.pad_token_id, name)
