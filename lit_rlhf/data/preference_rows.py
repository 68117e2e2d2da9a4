"""Preference rows {prompt, chosen, rejected}: validation, the implicit-prompt split, and tokenization of pairs."""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from lit_rlhf.data.rows import DataError, RowSet, validate_text_rows
from lit_rlhf.data.tokenization import TruncationReport, encode_rows

log = logging.getLogger(__name__)

PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")

IdenticalPolicy = Literal["skip", "error"]
"""Pairs whose chosen and rejected texts are equal teach nothing: ``skip`` counts them and logs a warning with the
first rows; ``error`` stops at the first one."""


def split_implicit_prompt(chosen: str, rejected: str, delimiter: str | None = None) -> tuple[str, str, str]:
    """Split two full texts that share a prompt (HH-RLHF style) into ``(prompt, chosen_response, rejected_response)``.

    The prompt is the longest common prefix, moved back to the start of its last whitespace run so that no word is
    cut (``"...Assistant: I think"`` / ``"...Assistant: I know"`` gives prompt ``"...Assistant: I"`` and responses
    ``" think"`` / ``" know"``). With ``delimiter`` (e.g. ``"\\n\\nAssistant:"``), the prompt instead ends right after
    the last ``delimiter`` inside the common prefix.

    Args:
        chosen: full preferred text.
        rejected: full other text.
        delimiter: optional marker the prompt must end with.

    Returns:
        ``(prompt, chosen_response, rejected_response)``; both responses are non-empty.

    Raises:
        ValueError: no common prefix, no ``delimiter`` in it, or a response would be empty.
    """
    common = os.path.commonprefix([chosen, rejected])
    if not common:
        raise ValueError("chosen and rejected share no common prefix, so the implicit prompt cannot be found")
    if delimiter is not None:
        cut = common.rfind(delimiter)
        if cut < 0:
            raise ValueError(f"the common prefix of chosen and rejected does not contain the delimiter {delimiter!r}")
        cut += len(delimiter)
    else:
        cut = len(common)
        if common[-1].isspace():  # responses start with the whitespace run that ends the prefix
            cut = len(common.rstrip())
        elif any(len(text) > cut and not text[cut].isspace() for text in (chosen, rejected)):
            start = cut  # the prefix ends inside a word: back off to the whitespace before that word
            while start > 0 and not common[start - 1].isspace():
                start -= 1
            if start > 0:
                cut = len(common[:start].rstrip())
    prompt, chosen_response, rejected_response = chosen[:cut], chosen[cut:], rejected[cut:]
    if not prompt.strip():
        raise ValueError("the common prefix of chosen and rejected is only whitespace, so there is no prompt")
    for name, response in (("chosen", chosen_response), ("rejected", rejected_response)):
        if not response.strip():
            raise ValueError(f"nothing of {name} is left after the common prefix (one text is a prefix of the other)")
    return prompt, chosen_response, rejected_response


def prepare_preference_rows(
    rowset: RowSet,
    *,
    implicit_prompt: bool = False,
    prompt_delimiter: str | None = None,
    margin_field: str | None = None,
    identical: IdenticalPolicy = "skip",
    allow_empty_responses: bool = False,
) -> tuple[RowSet, int]:
    """Validate preference rows and bring them to {prompt, chosen, rejected[, margin]}.

    Args:
        rowset: rows with ``prompt``, ``chosen``, ``rejected`` (or only ``chosen``/``rejected`` full texts when
            ``implicit_prompt``), already renamed to these names.
        implicit_prompt: split ``chosen``/``rejected`` at their common prefix (see :func:`split_implicit_prompt`).
        prompt_delimiter: for implicit prompts, the marker the prompt ends with (e.g. ``"\\n\\nAssistant:"``).
        margin_field: optional numeric field copied to ``margin`` (the required reward gap of the pair).
        identical: policy for pairs with equal chosen and rejected (see :data:`IdenticalPolicy`).
        allow_empty_responses: accept an empty ``chosen`` or ``rejected`` (a sampled response that was only EOS;
            it is scored as EOS alone). User data keeps the default, where an empty string is an error.

    Returns:
        ``(rows, num_identical_skipped)``; each row keeps its other fields and its source number.

    Raises:
        DataError: naming the dataset, row and field of the first bad row.
    """
    fields = ("chosen", "rejected") if implicit_prompt else PREFERENCE_FIELDS
    validate_text_rows(rowset, fields, allow_empty=("chosen", "rejected") if allow_empty_responses else ())
    rows, numbers, skipped = [], [], []
    for row, number in zip(rowset.rows, rowset.numbers):
        where = f"{rowset.dataset} row {number}"
        if row["chosen"].strip() == row["rejected"].strip():
            if identical == "error":
                raise DataError(f"{where}: fields 'chosen' and 'rejected' are identical (set identical: skip to skip)")
            skipped.append(number)
            continue
        row = dict(row)
        if implicit_prompt:
            try:
                row["prompt"], row["chosen"], row["rejected"] = split_implicit_prompt(
                    row["chosen"], row["rejected"], prompt_delimiter
                )
            except ValueError as err:
                raise DataError(f"{where}: implicit prompt: {err}") from err
        if margin_field is not None:
            row["margin"] = _margin(row, margin_field, where)
        rows.append(row)
        numbers.append(number)
    if skipped:
        log.warning(
            "%s: skipped %d pairs whose chosen and rejected texts are identical (first rows: %s)",
            rowset.dataset,
            len(skipped),
            ", ".join(map(str, skipped[:5])),
        )
    if not rows:
        raise DataError(f"{rowset.dataset}: no preference pairs left ({len(skipped)} had chosen == rejected)")
    return RowSet(rowset.dataset, rows, numbers), len(skipped)


def _margin(row: dict[str, Any], field: str, where: str) -> float:
    if field not in row:
        raise DataError(f"{where}: missing margin field {field!r} (columns present: {', '.join(sorted(row))})")
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataError(f"{where}: margin field {field!r} must be a number, got {type(value).__name__} {value!r:.80}")
    try:
        margin = float(value)
    except ValueError as err:
        raise DataError(f"{where}: margin field {field!r} must be a number, got {value!r:.80}") from err
    if not math.isfinite(margin):
        raise DataError(f"{where}: margin field {field!r} is {margin}")
    return margin


def encode_preference_rows(
    rowset: RowSet, tokenizer: PreTrainedTokenizerBase, **options: Any
) -> tuple[list[dict[str, Any]], TruncationReport]:
    """Tokenize prepared preference rows (see :func:`prepare_preference_rows`).

    :func:`~lit_rlhf.data.tokenization.encode_rows` with ``response_fields=("chosen", "rejected")``: each response
    gets EOS appended (the reward model scores the token that ends the response), and a pair is truncated, dropped
    or refused as a whole when its longer side does not fit. ``options`` are that function's.

    Returns:
        ``(examples, report)``: each example has ``prompt_ids``, ``chosen_ids``, ``rejected_ids``, ``margin``
        (float or ``None``) and ``row``.
    """
    examples, report = encode_rows(rowset, tokenizer, ("chosen", "rejected"), **options)
    for example in examples:
        example["margin"] = example["row"].get("margin")
    return examples, report
