"""Turning {prompt, response} rows into token ids under an explicit, counted truncation policy."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from lit_rlhf.data.rows import DataError, RowSet

log = logging.getLogger(__name__)

OverlongPolicy = Literal["truncate", "drop", "error"]
"""What to do with a row that does not fit: ``truncate`` keeps the *end* of an over-long prompt and cuts the
response at ``max_length`` (it then has no EOS); ``drop`` leaves the row out; ``error`` stops with the row named.
Every case is counted and logged, never silent."""


@dataclass
class TruncationReport:
    """How many rows of one dataset split were truncated or dropped, and which (first few)."""

    dataset: str
    num_rows: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    dropped: int = 0
    examples: list[int] = field(default_factory=list)

    def note(self, row_index: int) -> None:
        if len(self.examples) < 5:
            self.examples.append(row_index)

    def summary(self) -> str:
        rows = f" (first rows: {', '.join(map(str, self.examples))})" if self.examples else ""
        return (
            f"{self.dataset}: {self.num_rows} rows, {self.prompt_truncated} prompts truncated, "
            f"{self.response_truncated} responses truncated, {self.dropped} dropped{rows}"
        )


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, use_chat_template: bool | None) -> bool:
    """Resolve ``use_chat_template``: ``None`` means "if the tokenizer has one"."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if use_chat_template and not has_template:
        raise DataError("use_chat_template=True but the tokenizer has no chat_template")
    return has_template if use_chat_template is None else use_chat_template


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool, system_prompt: str | None = None
) -> list[int]:
    """Prompt ids as the model sees them before its answer (with the chat template's generation prompt if any)."""
    if chat:
        messages = [{"role": "user", "content": prompt}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if system_prompt:
        prompt = f"{system_prompt}\n\n{prompt}"
    return tokenizer(prompt)["input_ids"]


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    """Response ids followed by EOS, so the model learns to stop."""
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode_sft_rows(
    rowset: RowSet,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    overlong: OverlongPolicy = "truncate",
    use_chat_template: bool | None = None,
    system_prompt: str | None = None,
) -> tuple[list[dict[str, Any]], TruncationReport]:
    """Tokenize validated {prompt, response} rows.

    Args:
        rowset: validated rows with string ``prompt`` and ``response`` (other fields are kept for verifiers and
            sample tables).
        tokenizer: the policy's tokenizer.
        max_length: maximum prompt + response tokens.
        max_prompt_length: maximum prompt tokens; ``None`` means ``max_length // 2``.
        overlong: policy for rows that do not fit (see :data:`OverlongPolicy`).
        use_chat_template: wrap the prompt in the tokenizer's chat template (``None``: if it has one).
        system_prompt: optional system message (chat) or preamble (plain text).

    Returns:
        ``(examples, report)``: each example has ``prompt_ids``, ``response_ids`` and ``row`` (the original row
        with its source number as ``row_index``); the report counts truncations and drops.

    Raises:
        DataError: under ``overlong="error"``, for the first row that does not fit; or for a bad length setting.
    """
    dataset = rowset.dataset
    max_prompt_length = max_length // 2 if max_prompt_length is None else max_prompt_length
    if not 0 < max_prompt_length < max_length:
        raise DataError(f"{dataset}: need 0 < max_prompt_length ({max_prompt_length}) < max_length ({max_length})")
    chat = uses_chat_template(tokenizer, use_chat_template)
    report = TruncationReport(dataset=dataset, num_rows=len(rowset))
    examples = []
    for row, row_index in zip(rowset.rows, rowset.numbers):
        prompt_ids = encode_prompt(tokenizer, row["prompt"], chat, system_prompt)
        response_ids = encode_response(tokenizer, row["response"])
        prompt_long = len(prompt_ids) > max_prompt_length
        total_long = min(len(prompt_ids), max_prompt_length) + len(response_ids) > max_length
        if prompt_long or total_long:
            what = (
                f"prompt has {len(prompt_ids)} tokens > max_prompt_length {max_prompt_length}"
                if prompt_long
                else f"prompt + response have {len(prompt_ids) + len(response_ids)} tokens > max_length {max_length}"
            )
            if overlong == "error":
                raise DataError(f"{dataset} row {row_index}: {what} (set overlong: truncate or drop to continue)")
            report.note(row_index)
            if overlong == "drop":
                report.dropped += 1
                continue
            if prompt_long:
                report.prompt_truncated += 1
                prompt_ids = prompt_ids[-max_prompt_length:]
            if len(prompt_ids) + len(response_ids) > max_length:
                report.response_truncated += 1
                response_ids = response_ids[: max_length - len(prompt_ids)]
        examples.append(
            {"prompt_ids": prompt_ids, "response_ids": response_ids, "row": {**row, "row_index": row_index}}
        )
    if report.prompt_truncated or report.response_truncated or report.dropped:
        log.warning("over-long rows (policy %r): %s", overlong, report.summary())
    if not examples:
        raise DataError(f"{dataset}: no rows left after applying overlong={overlong!r} ({report.summary()})")
    return examples, report
