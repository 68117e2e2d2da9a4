"""The base of DataModules for named public datasets: rows arrive in the dataset's own schema and are mapped to the
rows a stage reads ({prompt, response}, {prompt, chosen, rejected} or {prompt, ...fields})."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from lit_rlhf.data.files import FileRowsDataModule
from lit_rlhf.data.rows import DataError, RowSet
from lit_rlhf.data.tokenized import RowFormat


class SkipRow(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by :meth:`MappedRowsDataModule.convert_row` to leave a row out; the message is the counted reason."""


def require_field(row: dict[str, Any], field: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """``row[field]`` (a dotted path such as ``info.post`` walks nested dicts), checked to be of ``kind``.

    Raises:
        DataError: naming ``where`` (dataset and row) and the field, e.g. ``"comparisons row 3: missing field
        'info.post'"``.
    """
    value: Any = row
    for i, part in enumerate(field.split(".")):
        if not isinstance(value, dict) or part not in value:
            seen = ", ".join(sorted(map(str, value))) if isinstance(value, dict) else type(value).__name__
            path = ".".join(field.split(".")[: i + 1])
            raise DataError(f"{where}: missing field {path!r} (present: {seen or 'none'})")
        value = value[part]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {field!r} must be {names}, got {type(value).__name__} {value!r:.80}")
    return value


class MappedRowsDataModule(FileRowsDataModule):
    """Base for the DataModule of one dataset in its own schema, for one or more stages.

    Subclasses set :attr:`formats` (the row formats, i.e. stages, the dataset supports), :attr:`sources` (per
    format, the default ``datasets`` name / split / configuration to read) and implement :meth:`convert_row`, which
    maps one source row to our row or raises :class:`SkipRow` (counted per reason and logged) or
    :class:`~lit_rlhf.data.rows.DataError` (stops with the dataset, row and field named). Loading, the held-out split
    (``val``/``val_split`` or ``val_fraction``), length policy, truncation report, loaders and ``num_workers`` come
    from :class:`~lit_rlhf.data.files.FileRowsDataModule`.

    Args:
        format: which rows to serve: ``sft`` (SFTModule), ``preference`` (RewardModule) or ``prompt`` (PPO/GRPO).
        train: file or ``datasets`` name; ``None`` = the dataset's default source for ``format``.
        val: validation file or name; with neither ``val`` nor a default validation split, ``val_fraction`` of
            ``train`` is held out.
        train_split, val_split, config_name: ``datasets`` split and configuration names (``None`` = the default).
        max_train_rows, max_val_rows: keep only this many mapped rows of each split (quick runs): a random subset
            drawn with ``seed``, in the source's order. A random subset rather than the first rows, because hub
            splits are often concatenations (HH-RLHF's test split starts with all its ``harmless-base`` rows).
        **kwargs: the rest of :class:`~lit_rlhf.data.files.FileRowsDataModule` (``columns``, ``val_fraction``,
            lengths, batch sizes, ``num_workers``, ``seed``, ...).
    """

    formats: tuple[RowFormat, ...] = ("sft", "preference", "prompt")
    sources: dict[str, dict[str, str | None]] = {}

    def __init__(
        self,
        format: RowFormat = "sft",
        train: str | None = None,
        val: str | None = None,
        train_split: str | None = None,
        val_split: str | None = None,
        config_name: str | None = None,
        max_train_rows: int | None = None,
        max_val_rows: int | None = None,
        **kwargs: Any,
    ) -> None:
        if format not in self.formats:
            raise ValueError(f"{type(self).__name__} serves format {' / '.join(self.formats)}, got {format!r}")
        default = self.sources.get(format, {})
        source = train or default.get("train")
        if not source:
            raise ValueError(f"{type(self).__name__}: pass train (a file or a datasets name) for format {format!r}")
        if train:  # the user's own source: only what they pass
            val_source, split, config = val, val_split, config_name
        else:  # the dataset's default source: its validation split lives in it unless it names another source
            split = val_split or default.get("val_split")
            val_source = val if val is not None else default.get("val") or (source if split else None)
            config = config_name if config_name is not None else default.get("config_name")
        super().__init__(
            source,
            val=val_source,
            train_split=train_split or default.get("train_split") or "train",
            val_split=split,
            config_name=config,
            **kwargs,
        )
        for name, value in (("max_train_rows", max_train_rows), ("max_val_rows", max_val_rows)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.format = format
        self.row_format = format
        self.max_rows = {"train": max_train_rows, "val": max_val_rows}
        self.skipped: dict[str, dict[str, int]] = {}

    def convert_row(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        """Map one source row to our row for :attr:`row_format`.

        Args:
            row: the source row (columns already renamed by ``columns``).
            where: ``"<dataset> row <n>"`` for messages.

        Returns:
            ``{prompt, response}``, ``{prompt, chosen, rejected}`` or ``{prompt, ...}`` by format.

        Raises:
            SkipRow: leave the row out (the message is the reason, counted).
            DataError: the row is malformed.
        """
        raise NotImplementedError

    def load_rows(self) -> dict[str, RowSet]:
        rowsets = super().load_rows()
        mapped = {}
        for split, rowset in rowsets.items():
            rows, numbers, skipped = [], [], Counter()
            for row, number in zip(rowset.rows, rowset.numbers):
                try:
                    rows.append(self.convert_row(row, f"{rowset.dataset} row {number}"))
                except SkipRow as reason:
                    skipped[str(reason)] += 1
                    continue
                numbers.append(number)
            limit = self.max_rows[split]
            if limit is not None and len(rows) > limit:
                kept = sorted(random.Random(f"{self.seed}-{split}").sample(range(len(rows)), limit))
                rows, numbers = [rows[i] for i in kept], [numbers[i] for i in kept]
            self.skipped[split] = dict(skipped)
            reasons = ", ".join(f"{count} {reason}" for reason, count in skipped.most_common()) or "none"
            if skipped:
                rank_zero_info(f"[{split}] {rowset.dataset}: skipped {sum(skipped.values())} rows ({reasons})")
            if not rows:
                raise DataError(f"{rowset.dataset}: no usable rows for format {self.format!r} (skipped: {reasons})")
            mapped[split] = RowSet(rowset.dataset, rows, numbers)
        return mapped
