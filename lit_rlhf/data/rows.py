"""Row validation: a bad row is never dropped silently and never crashes deep inside torch."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lit_rlhf.errors import UserError


class DataError(UserError):
    """A dataset could not be read or a row is invalid; the message names the dataset, the row and the field."""


@dataclass
class RowSet:
    """Rows of one dataset split, with the number each row has in its source (for error messages).

    Attributes:
        dataset: how the split is named in messages (a file path, or a hub name and split).
        rows: the rows, as dicts from column name to value.
        numbers: each row's number in the source: the line of a jsonl file, the data line of a csv (both from
            1), the index in a hub split (from 0). Kept through seeded train/val splits.
    """

    dataset: str
    rows: list[dict[str, Any]]
    numbers: list[int]

    @classmethod
    def numbered(cls, dataset: str, rows: list[dict[str, Any]], first: int = 0) -> RowSet:
        return cls(dataset, rows, list(range(first, first + len(rows))))

    def subset(self, dataset: str, indices: Iterable[int]) -> RowSet:
        indices = list(indices)
        return RowSet(dataset, [self.rows[i] for i in indices], [self.numbers[i] for i in indices])

    def __len__(self) -> int:
        return len(self.rows)


def validate_text_rows(rowset: RowSet, fields: Iterable[str], allow_empty: Iterable[str] = ()) -> None:
    """Check that every row has each of ``fields`` as a non-empty string.

    Args:
        rowset: the rows and their source numbers.
        fields: names that must hold non-empty strings.
        allow_empty: fields of ``fields`` that may be empty (e.g. a sampled response that was only EOS).

    Raises:
        DataError: on the first bad row, e.g. ``"data/train.jsonl row 17: field 'response' is empty"``.
    """
    fields = list(fields)
    allow_empty = set(allow_empty)
    for row, number in zip(rowset.rows, rowset.numbers):
        for field in fields:
            where = f"{rowset.dataset} row {number}"
            if field not in row:
                present = ", ".join(sorted(map(str, row))) or "none"
                raise DataError(f"{where}: missing field {field!r} (columns present: {present})")
            value = row[field]
            if not isinstance(value, str):
                raise DataError(f"{where}: field {field!r} must be a string, got {type(value).__name__} {value!r:.80}")
            if not value.strip() and field not in allow_empty:
                raise DataError(f"{where}: field {field!r} is empty")


def rename_columns(rowset: RowSet, mapping: dict[str, str] | None, key: str = "data.init_args.columns") -> RowSet:
    """Copy columns to our names: ``mapping`` is ``{our_name: dataset_column}``; other columns are kept.

    Args:
        rowset: the rows as read.
        mapping: ``{our_name: dataset_column}``; ``None`` or empty keeps the rows as they are.
        key: the option that holds ``mapping``, for messages.

    Raises:
        DataError: a row lacks a column that ``mapping`` names, e.g. ``"data/train.jsonl row 1:
        data.init_args.columns maps 'response' to column 'answr', which the row lacks (columns present: answer,
        question); ..."``.
    """
    if not mapping:
        return rowset
    renamed = []
    for row, number in zip(rowset.rows, rowset.numbers):
        new = dict(row)
        for ours, theirs in mapping.items():
            if theirs not in row:
                present = ", ".join(sorted(map(str, row))) or "none"
                raise DataError(
                    f"{rowset.dataset} row {number}: {key} maps {ours!r} to column {theirs!r}, which the row lacks "
                    f"(columns present: {present}); set {key}.{ours} to one of the columns present"
                )
            new[ours] = row[theirs]
        renamed.append(new)
    return RowSet(rowset.dataset, renamed, rowset.numbers)
