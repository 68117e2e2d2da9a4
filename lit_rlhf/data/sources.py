"""Reading rows from local files (jsonl, json, csv, parquet) or from a ``datasets`` name."""

from __future__ import annotations

import csv
import json
import os
import random
from typing import Any

from lit_rlhf.data.rows import DataError, RowSet, rename_columns

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
"""The data-file suffixes read directly (any letter case); other sources go to ``datasets.load_dataset``."""

DATA_KEY = "data.init_args"
"""Where the DataModule's options sit in a config, for messages (``data.init_args.train``)."""


def is_local_file(source: str) -> bool:
    """Whether ``source`` looks like a path to a data file (by suffix, any case) rather than a hub dataset name."""
    return source.lower().endswith(FILE_SUFFIXES)


def _suffixes_in_words() -> str:
    return ", ".join(FILE_SUFFIXES[:-1]) + " or " + FILE_SUFFIXES[-1]


def check_suffix(source: str) -> None:
    """Refuse an existing file whose suffix is not one of :data:`FILE_SUFFIXES` (``datasets`` would answer "Couldn't
    find any data file" for it).

    Raises:
        DataError: naming the file, its suffix and the suffixes accepted.
    """
    if os.path.isfile(source) and not is_local_file(source):
        suffix = os.path.splitext(source)[1] or "no suffix"
        raise DataError(
            f"{source}: a data file must end in {_suffixes_in_words()}, got {suffix!r}; convert it (a .jsonl file "
            'holds one JSON object per line, e.g. {"prompt": ..., "response": ...}) and name the new file'
        )


def load_rows(source: str, split: str = "train", config_name: str | None = None, **load_kwargs: Any) -> RowSet:
    """Load all rows of a local file or of one split of a ``datasets`` dataset.

    Args:
        source: a ``.jsonl``/``.json``/``.csv``/``.parquet`` path, a folder ``datasets`` can load, or a hub name.
        split: split to read for a ``datasets`` source; ignored for single files.
        config_name: ``datasets`` configuration name (e.g. ``"comparisons"``).
        **load_kwargs: passed to ``datasets.load_dataset``.

    Returns:
        The rows, numbered as errors will name them: a jsonl row by its line, a csv row by its data line, a json
        or parquet row from 1, a hub row by its index in the split (from 0).

    Raises:
        DataError: a missing file, a file of another kind (e.g. ``.txt``), an unreadable line, or a ``datasets`` load
            failure.
    """
    check_suffix(source)
    if is_local_file(source):
        if not os.path.isfile(source):
            raise DataError(f"data file not found: {source}")
        suffix = source.lower()
        try:
            if suffix.endswith(".jsonl"):
                return _read_jsonl(source)
            if suffix.endswith(".json"):
                return RowSet.numbered(source, _read_json(source), first=1)
            if suffix.endswith(".csv"):
                with open(source, encoding="utf-8-sig", newline="") as f:  # -sig: also files saved by Excel
                    return RowSet.numbered(source, [dict(r) for r in csv.DictReader(f)], first=1)
        except UnicodeDecodeError as err:
            raise DataError(f"{source}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from err
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(source)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{source}: not a readable parquet file ({' '.join(str(err).split())})") from err
        return RowSet.numbered(source, table.to_pylist(), first=1)
    subset = "/".join(str(part) for part in (config_name, load_kwargs.get("data_dir")) if part)
    label = f"{source}/{subset}[{split}]" if subset else f"{source}[{split}]"
    return RowSet.numbered(label, _load_hub(source, split, config_name, **load_kwargs), first=0)


def _read_jsonl(path: str) -> RowSet:
    rows, numbers = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path} row {line_no}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise DataError(f"{path} row {line_no}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
            numbers.append(line_no)
    return RowSet(path, rows, numbers)


def _read_json(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        return []  # an empty file: no rows, refused by the caller with the option named
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a JSON list of objects")
    return data


def _load_hub(name: str, split: str, config_name: str | None, **load_kwargs: Any) -> list[dict[str, Any]]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, config_name, split=split, **load_kwargs)
    except Exception as err:  # datasets raises many types; the message is what matters
        message = " ".join(str(err).split())  # one line
        suffix = os.path.splitext(name)[1]
        hint = f"; a local data file must end in {_suffixes_in_words()}" if suffix and not os.path.isdir(name) else ""
        raise DataError(
            f"could not load dataset {name!r} (config {config_name!r}, split {split!r}): {message}{hint}"
        ) from err
    return dataset.to_list()


def require_rows(rowset: RowSet, source: str, key: str, split_key: str) -> RowSet:
    """Refuse a source with no rows at all, naming it and the option that gave it.

    Args:
        rowset: the rows read from ``source``.
        source: the file or ``datasets`` name.
        key: the option that names the source, e.g. ``data.init_args.train``.
        split_key: the option that chooses a ``datasets`` split, e.g. ``data.init_args.train_split``.

    Raises:
        DataError: ``rowset`` is empty.
    """
    if len(rowset):
        return rowset
    if is_local_file(source):
        what = "the file has no rows (it is empty, holds only blank lines, or only a header)"
        fix = f"give {key} a file with at least one row"
    else:
        what = "the split has no rows"
        fix = f"choose another split with {split_key} or another source with {key}"
    raise DataError(f"{rowset.dataset} ({key}): {what}; {fix}")


def load_train_val(
    train: str,
    val: str | None,
    *,
    train_split: str = "train",
    val_split: str | None = None,
    config_name: str | None = None,
    data_dir: str | None = None,
    columns: dict[str, str] | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
) -> dict[str, RowSet]:
    """Training and validation rows from files or ``datasets`` names, with columns renamed to ours.

    Args:
        train: training file or ``datasets`` name.
        val: validation file or name; ``None`` holds out ``val_fraction`` of ``train`` (seeded).
        train_split: split of a ``datasets`` source for training.
        val_split: split of a ``datasets`` source for validation (default ``train_split``).
        config_name: ``datasets`` configuration.
        data_dir: folder of a ``datasets`` repository to read (hub sources only).
        columns: ``{our_field: dataset_column}``.
        val_fraction: held-out share of ``train`` when ``val`` is not given.
        seed: seed of the held-out split.

    Returns:
        ``{"train": RowSet, "val": RowSet}``; rows keep their source numbers.

    Raises:
        DataError: a source with no rows, a ``columns`` entry naming a column the rows lack, or a single row to
            hold a validation split out of.
    """
    extra = {"data_dir": data_dir} if data_dir else {}
    train_rows = load_rows(train, train_split, config_name, **(extra if not is_local_file(train) else {}))
    rows = rename_columns(require_rows(train_rows, train, f"{DATA_KEY}.train", f"{DATA_KEY}.train_split"), columns)
    if val is not None:
        val_extra = extra if not is_local_file(val) else {}
        val_rows = load_rows(val, val_split or train_split, config_name, **val_extra)
        return {
            "train": rows,
            "val": rename_columns(require_rows(val_rows, val, f"{DATA_KEY}.val", f"{DATA_KEY}.val_split"), columns),
        }
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(rows) < 2:
        raise DataError(
            f"{rows.dataset} ({DATA_KEY}.train): {len(rows)} row, too few to hold out a validation split "
            f"({DATA_KEY}.val_fraction {val_fraction}); give at least 2 rows, or a validation file with {DATA_KEY}.val"
        )
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    num_val = min(len(order) - 1, max(1, round(val_fraction * len(order))))  # both splits keep a row
    return {
        "train": rows.subset(rows.dataset, sorted(order[num_val:])),
        "val": rows.subset(rows.dataset, sorted(order[:num_val])),
    }
