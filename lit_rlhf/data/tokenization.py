"""Turning {prompt, response} rows into token ids under an explicit, counted truncation policy."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from lit_rlhf.data.rows import DataError, RowSet

log = logging.getLogger(__name__)

UNKNOWN_CHECK_ROWS = 100
"""Rows of each split (its first) whose text is checked for the tokenizer's unknown token."""

UNKNOWN_ERROR_SHARE = 0.5
"""Above this share of unknown tokens in the checked rows, setup stops: the text is not in the tokenizer's
vocabulary (another model's tokenizer, another language or a broken encoding), and training on it would teach
nothing."""

UNKNOWN_WARN_SHARE = 0.05
"""Above this share (and up to :data:`UNKNOWN_ERROR_SHARE`), a warning names the split, the share and a row."""

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
    truncated_identical: int = 0
    examples: list[int] = field(default_factory=list)

    def note(self, row_index: int) -> None:
        if len(self.examples) < 5:
            self.examples.append(row_index)

    def summary(self) -> str:
        rows = f" (first rows: {', '.join(map(str, self.examples))})" if self.examples else ""
        identical = (
            f", {self.identical_skipped} pairs with chosen == rejected skipped" if self.identical_skipped else ""
        )
        if self.truncated_identical:
            identical += f", {self.truncated_identical} pairs dropped whose responses were equal once cut"
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
        limit = "max_prompt_length" if prompt_long else "max_length"
        raise DataError(
            f"{report.dataset} row {row_index}: {what} (overlong is 'error'); raise data.init_args.{limit}, or set "
            "data.init_args.overlong to truncate (keep the end of the prompt, cut the response) or drop (leave the row "
            "out)"
        )
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


def tokenizer_name(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's folder or hub name, or its class name when it was built in memory."""
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def count_unknown_tokens(
    rowset: RowSet, tokenizer: PreTrainedTokenizerBase, fields: tuple[str, ...], max_rows: int = UNKNOWN_CHECK_ROWS
) -> tuple[int, int, tuple[int, str, str] | None]:
    """Count the tokenizer's unknown token in the text of the first ``max_rows`` rows.

    Each field is tokenized on its own, without special tokens or chat template, so only the row's own text counts.
    A tokenizer without an unknown token (byte-level BPE such as GPT-2's or Qwen's, whose ``unk_token`` is absent or
    is EOS) never produces one, and the count is ``0``.

    Args:
        rowset: validated rows with string ``fields``.
        tokenizer: the model's tokenizer.
        fields: the text fields of a row, e.g. ``("prompt", "response")``.
        max_rows: rows checked, from the first.

    Returns:
        ``(unknown, tokens, example)``: unknown tokens and all tokens of those fields, and ``(row number, field,
        text)`` of the field with the largest share of unknown tokens (``None`` when there is none).
    """
    unk_id = getattr(tokenizer, "unk_token_id", None)
    if unk_id is None or unk_id == getattr(tokenizer, "eos_token_id", None):
        return 0, 0, None
    rows = zip(rowset.rows[:max_rows], rowset.numbers)
    cells = [(number, field, row[field]) for row, number in rows for field in fields]
    if not cells:
        return 0, 0, None
    encoded = tokenizer([text for _, _, text in cells], add_special_tokens=False)["input_ids"]
    unknown = total = 0
    example, worst = None, 0.0
    for cell, ids in zip(cells, encoded):
        count = sum(1 for i in ids if i == unk_id)
        unknown, total = unknown + count, total + len(ids)
        if ids and count / len(ids) > worst:
            example, worst = cell, count / len(ids)
    return unknown, total, example


def check_unknown_tokens(rowset: RowSet, tokenizer: PreTrainedTokenizerBase, fields: tuple[str, ...]) -> None:
    """Refuse text the tokenizer cannot read: more than :data:`UNKNOWN_ERROR_SHARE` of the tokens of the first
    :data:`UNKNOWN_CHECK_ROWS` rows are its unknown token; warn above :data:`UNKNOWN_WARN_SHARE`.

    Raises:
        DataError: naming the split, the share, the tokenizer and the row and field with the most unknown tokens.
    """
    unknown, total, example = count_unknown_tokens(rowset, tokenizer, fields)
    share = unknown / total if total else 0.0
    if share <= UNKNOWN_WARN_SHARE or example is None:
        return
    number, field, text = example
    checked = min(len(rowset), UNKNOWN_CHECK_ROWS)
    facts = (
        f"{rowset.dataset}: {unknown} of the {total} tokens ({share:.0%}) of its first {checked} rows are the unknown "
        f"token {tokenizer.unk_token!r} of the tokenizer {tokenizer_name(tokenizer)} (e.g. row {number}, field "
        f"{field!r}: {text!r:.60})"
    )
    if share > UNKNOWN_ERROR_SHARE:
        raise DataError(
            f"{facts}; the text is not in this tokenizer's vocabulary: train with the model's own tokenizer, or check "
            "the file's language and encoding"
        )
    log.warning("%s; the model learns nothing from those words", facts)


def finish_report(examples: list, report: TruncationReport, overlong: OverlongPolicy) -> None:
    """Log the truncation report if anything was cut, and refuse an empty result."""
    if report.prompt_truncated or report.response_truncated or report.dropped:
        log.warning("over-long rows (policy %r): %s", overlong, report.summary())
    if not examples:
        raise DataError(
            f"{report.dataset}: no rows left after applying overlong={overlong!r} ({report.summary()}); every row is "
            "too long: raise data.init_args.max_length / max_prompt_length"
        )


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

    A row is truncated, dropped or refused as a whole when its prompt or its longest response does not fit. A pair
    whose two responses are the same tokens once truncated is dropped and counted (``truncated_identical``).

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
        DataError: under ``overlong="error"``, for the first row that does not fit; for a bad length setting; for no
            rows; or for text that is mostly the tokenizer's unknown token (see :func:`check_unknown_tokens`).
    """
    if not len(rowset):
        raise DataError(f"{rowset.dataset}: no rows to train or validate on; give at least one row")
    max_prompt_length = check_lengths(rowset.dataset, max_length, max_prompt_length)
    chat = uses_chat_template(tokenizer, use_chat_template)
    check_unknown_tokens(rowset, tokenizer, ("prompt", *response_fields))
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
        if fitted is not None and len(responses := fitted[1]) == 2 and responses[0] == responses[1]:
            # a pair cut to the same tokens (a shared beginning longer than the room left) teaches nothing
            report.truncated_identical += 1
            fitted = None
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
