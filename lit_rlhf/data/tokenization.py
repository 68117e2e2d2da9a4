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
    identical_skipped: int = 0
    examples: list[int] = field(default_factory=list)

    def note(self, row_index: int) -> None:
        if len(self.examples) < 5:
            self.examples.append(row_index)

    def summary(self) -> str:
        rows = f" (first rows: {', '.join(map(str, self.examples))})" if self.examples else ""
        identical = (
            f", {self.identical_skipped} pairs with chosen == rejected skipped" if self.identical_skipped else ""
        )
        return (
            f"{self.dataset}: {self.num_rows} rows, {self.prompt_truncated} prompts truncated, "
            f"{self.response_truncated} responses truncated, {self.dropped} dropped{identical}{rows}"
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


def fit_to_length(
    prompt_ids: list[int],
    responses: list[list[int]],
    *,
    max_length: int,
    max_prompt_length: int,
    overlong: OverlongPolicy,
    report: TruncationReport,
    row_index: int,
) -> tuple[list[int], list[list[int]]] | None:
    """Apply the over-long policy to one prompt and its response(s) (one for SFT, two for a preference pair).

    Args:
        prompt_ids: the prompt's ids.
        responses: each response's ids (with EOS); each must fit with the prompt in ``max_length``. Empty for
            prompt-only rows, where only ``max_prompt_length`` applies.
        max_length: maximum prompt + response tokens.
        max_prompt_length: maximum prompt tokens.
        overlong: see :data:`OverlongPolicy`.
        report: counts are added here (its ``dataset`` names the rows in errors).
        row_index: the row's number in its source, for the report and the error message.

    Returns:
        ``(prompt_ids, responses)`` cut to fit, or ``None`` when the row is dropped.

    Raises:
        DataError: under ``overlong="error"`` when the row does not fit.
    """
    longest = max((len(r) for r in responses), default=0)
    prompt_long = len(prompt_ids) > max_prompt_length
    total_long = min(len(prompt_ids), max_prompt_length) + longest > max_length
    if not (prompt_long or total_long):
        return prompt_ids, responses
    what = (
        f"prompt has {len(prompt_ids)} tokens > max_prompt_length {max_prompt_length}"
        if prompt_long
        else f"prompt + response have {len(prompt_ids) + longest} tokens > max_length {max_length}"
    )
    if overlong == "error":
        raise DataError(f"{report.dataset} row {row_index}: {what} (set overlong: truncate or drop to continue)")
    report.note(row_index)
    if overlong == "drop":
        report.dropped += 1
        return None
    if prompt_long:
        report.prompt_truncated += 1
        prompt_ids = prompt_ids[-max_prompt_length:]
    room = max_length - len(prompt_ids)
    if longest > room:
        report.response_truncated += 1
        responses = [r[:room] for r in responses]
    return prompt_ids, responses


def check_lengths(dataset: str, max_length: int, max_prompt_length: int | None) -> int:
    """Resolve ``max_prompt_length`` (default ``max_length // 2``) and check ``0 < max_prompt_length < max_length``."""
    max_prompt_length = max_length // 2 if max_prompt_length is None else max_prompt_length
    if not 0 < max_prompt_length < max_length:
        raise DataError(f"{dataset}: need 0 < max_prompt_length ({max_prompt_length}) < max_length ({max_length})")
    return max_prompt_length


def finish_report(examples: list, report: TruncationReport, overlong: OverlongPolicy) -> None:
    """Log the truncation report if anything was cut, and refuse an empty result."""
    if report.prompt_truncated or report.response_truncated or report.dropped:
        log.warning("over-long rows (policy %r): %s", overlong, report.summary())
    if not examples:
        raise DataError(f"{report.dataset}: no rows left after applying overlong={overlong!r} ({report.summary()})")


def encode_rows(
    rowset: RowSet,
    tokenizer: PreTrainedTokenizerBase,
    response_fields: tuple[str, ...],
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    overlong: OverlongPolicy = "truncate",
    use_chat_template: bool | None = None,
    system_prompt: str | None = None,
) -> tuple[list[dict[str, Any]], TruncationReport]:
    """Tokenize validated rows: the prompt and each of ``response_fields`` (with EOS), under one length policy.

    A row is truncated, dropped or refused as a whole when its prompt or its longest response does not fit.

    Args:
        rowset: validated rows with a string ``prompt`` and string ``response_fields`` (other fields are kept for
            verifiers, reward functions and sample tables).
        tokenizer: the model's tokenizer.
        response_fields: ``("response",)`` for SFT, ``("chosen", "rejected")`` for pairs, ``()`` for prompts.
        max_length: maximum prompt + response tokens (per response).
        max_prompt_length: maximum prompt tokens; ``None`` means ``max_length // 2``.
        overlong: policy for rows that do not fit (see :data:`OverlongPolicy`).
        use_chat_template: wrap the prompt in the tokenizer's chat template (``None``: if it has one).
        system_prompt: optional system message (chat) or preamble (plain text).

    Returns:
        ``(examples, report)``: each example has ``prompt_ids``, ``<field>_ids`` for each response field and ``row``
        (the original row with its source number as ``row_index``); the report counts truncations and drops.

    Raises:
        DataError: under ``overlong="error"``, for the first row that does not fit; or for a bad length setting.
    """
    max_prompt_length = check_lengths(rowset.dataset, max_length, max_prompt_length)
    chat = uses_chat_template(tokenizer, use_chat_template)
    report = TruncationReport(dataset=rowset.dataset, num_rows=len(rowset))
    examples = []
    for row, row_index in zip(rowset.rows, rowset.numbers):
        fitted = fit_to_length(
            encode_prompt(tokenizer, row["prompt"], chat, system_prompt),
            [encode_response(tokenizer, row[field]) for field in response_fields],
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            overlong=overlong,
            report=report,
            row_index=row_index,
        )
        if fitted is not None:
            prompt_ids, responses = fitted
            example: dict[str, Any] = {"prompt_ids": prompt_ids}
            example.update({f"{field}_ids": ids for field, ids in zip(response_fields, responses)})
            example["row"] = {**row, "row_index": row_index}
            examples.append(example)
    finish_report(examples, report, overlong)
    return examples, report


def encode_sft_rows(
    rowset: RowSet, tokenizer: PreTrainedTokenizerBase, **options: Any
) -> tuple[list[dict[str, Any]], TruncationReport]:
    """Tokenize validated {prompt, response} rows: :func:`encode_rows` with ``response_fields=("response",)``.

    Examples have ``prompt_ids``, ``response_ids`` and ``row``; ``options`` are :func:`encode_rows`'s.
    """
    return encode_rows(rowset, tokenizer, ("response",), **options)
