"""Tables of samples (prompts, responses, scores) for every logger of a run, and for a jsonl file in its folder.

:func:`log_table` is what the modules and callbacks call at the end of a validation. One call writes one table:

- TensorBoard (:class:`~lightning.pytorch.loggers.TensorBoardLogger`, or any logger whose ``experiment`` has
  ``add_text``): a markdown table in the Text tab under ``<tag>/text_summary``, at ``step``.
- Weights & Biases (:class:`~lightning.pytorch.loggers.WandbLogger`): a ``wandb.Table`` under ``tag``, at ``step``
  (with ``trainer/global_step`` = ``step``, the x-axis of the run's other metrics).
- MLflow (:class:`~lightning.pytorch.loggers.MLFlowLogger`): the artifact ``<tag>.json`` of the logger's run, a
  table with a ``step`` column that every later call appends to (MLflow's ``log_table``).
- ``samples.jsonl`` in the run folder (see :func:`run_folder`): one JSON object per row,
  ``{"tag": ..., "step": ..., <column>: <value>, ...}``, appended; a resumed run first removes the rows past the step
  it resumes from (:func:`drop_rows_from`), then adds its own.

Other loggers (CSV and the rest) get no table; their run folder still gets ``samples.jsonl``. A logger that fails
(e.g. an unreachable tracking server) gets a warning, not an exception: a sample table never stops training.
Only global rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

SAMPLES_FILE = "samples.jsonl"
"""The name of the jsonl file of sample rows in a run folder."""

_RESERVED_COLUMNS = ("tag", "step")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], max_cell: int = 300) -> str:
    """Render a markdown table; pipes and newlines in cells are escaped, long cells cut at ``max_cell``."""

    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        if len(text) > max_cell:
            text = text[: max_cell - 1] + "…"
        return text.replace("|", "\\|").replace("\n", " ⏎ ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def scalar_step(trainer: Any) -> int:
    """The step at which Lightning writes the scalars logged now (``self.log`` in a hook): a table logged at it sits
    beside its validation's figures in every logger (during ``fit`` that is the number of finished training batches,
    which is one less than ``trainer.global_step`` while a validation runs inside the last batch)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def log_table(
    loggers: Sequence[Any],
    tag: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    step: int,
    run_dir: str | None = None,
    headline: str = "",
) -> None:
    """Log one table of samples to every logger in ``loggers`` and append its rows to ``samples.jsonl``.

    Args:
        loggers: the run's loggers (``trainer.loggers``; empty with ``logger=False``).
        tag: the table's name, e.g. ``"samples/val"``.
        columns: the column names, one per cell of each row; ``"tag"`` and ``"step"`` are reserved.
        rows: the table, ``len(rows)`` rows of ``len(columns)`` cells each (str, int, float, bool or None; anything
            else is written as its ``str``).
        step: the x-axis value; :func:`scalar_step` puts the table beside its validation's scalars.
        run_dir: the folder of ``samples.jsonl``; ``None``: the run folder of the loggers (:func:`run_folder`),
            and no file when they have none (e.g. no logger at all).
        headline: a line of text above the table, in the text loggers only (TensorBoard).

    Raises:
        ValueError: a row does not have one cell per column, or a column is named ``tag`` or ``step``.
    """
    from lightning.pytorch.utilities import rank_zero_only

    columns = list(columns)
    if any(name in _RESERVED_COLUMNS for name in columns):
        raise ValueError(f"log_table: the column names {_RESERVED_COLUMNS} are reserved, got {columns}")
    if any(len(row) != len(columns) for row in rows):
        raise ValueError(f"log_table: every row of {tag!r} needs {len(columns)} cells, one per column {columns}")
    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    cells = [[_plain(value) for value in row] for row in rows]
    for logger in loggers:
        try:
            _log_to(logger, tag, columns, rows, cells, step, headline)
        except Exception as error:  # a sample table is never worth a crashed run
            warnings.warn(f"sample table {tag!r} not logged to {type(logger).__name__}: {error!r}", stacklevel=2)
    try:
        folder = run_dir if run_dir is not None else run_folder(loggers)
        if folder is not None:
            append_jsonl(os.path.join(folder, SAMPLES_FILE), tag, columns, cells, step)
    except Exception as error:
        warnings.warn(f"sample table {tag!r} not written to {SAMPLES_FILE}: {error!r}", stacklevel=2)


def run_folder(loggers: Sequence[Any]) -> str | None:
    """The folder of ``samples.jsonl``: the run folder of the first logger in ``loggers`` that has one.

    - TensorBoard, CSV (and any logger with a ``log_dir``): ``log_dir``, i.e. ``<save_dir>/<name>/<version>``,
      beside the event file or ``metrics.csv`` (and, with the shipped configs, ``config.yaml`` and
      ``checkpoints/``).
    - Weights & Biases: the run's files folder, ``<save_dir>/wandb/<run>/files`` (uploaded with the run).
    - MLflow with a local artifact store: the run's artifact folder (shown with its other artifacts); with a remote
      one, the next logger is asked.

    Returns:
        The folder, or ``None`` when no logger has one (no logger at all, or only MLflow with remote artifacts).
    """
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            return logger.experiment.dir
        if isinstance(logger, MLFlowLogger):
            uri = logger.experiment.get_run(logger.run_id).info.artifact_uri
            parsed = urlparse(uri)
            if parsed.scheme in ("", "file"):
                return url2pathname(parsed.path)
            continue
        log_dir = getattr(logger, "log_dir", None)
        if log_dir:
            return log_dir
    return None


def append_jsonl(path: str, tag: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
    """Append ``rows`` to the jsonl file ``path`` as ``{"tag": tag, "step": step, <column>: <cell>, ...}`` lines."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            record = {"tag": tag, "step": int(step), **dict(zip(columns, map(_plain, row)))}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def drop_rows_from(path: str, step: int) -> int:
    """Remove the rows at ``step`` or later from the jsonl file ``path`` (a resumed run logs those steps again).

    The file is rewritten atomically (a temporary file renamed over it); a missing file is left missing.

    Returns:
        The number of rows removed.
    """
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if _row_step(line) < step]
    if len(kept) == len(lines):
        return 0
    from lit_rlhf.checkpoint_io import atomic_write

    atomic_write(path, lambda f: f.write("".join(kept).encode("utf-8")))
    return len(lines) - len(kept)


def _row_step(line: str) -> int | float:
    """The ``step`` of one jsonl row; a row that cannot be read (cut by a kill while it was written) sorts last."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def read_jsonl(path: str, tag: str | None = None) -> list[dict[str, Any]]:
    """The rows of a ``samples.jsonl`` file (those of ``tag`` only, if given), in the order they were written."""
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if tag is None or r["tag"] == tag]


def _log_to(
    logger: Any,
    tag: str,
    columns: list[str],
    rows: Sequence[Sequence[Any]],
    cells: list[list[Any]],
    step: int,
    headline: str,
) -> None:
    """One logger's table: ``rows`` as given for markdown, ``cells`` (JSON values) for the structured loggers."""
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    if isinstance(logger, WandbLogger):
        logger.log_table(key=tag, columns=columns, data=cells, step=step)
    elif isinstance(logger, MLFlowLogger):
        data = {"step": [int(step)] * len(cells), **{name: [row[i] for row in cells] for i, name in enumerate(columns)}}
        with _no_artifact_progress_bar():
            logger.experiment.log_table(logger.run_id, data=data, artifact_file=f"{tag}.json")
    else:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            text = markdown_table(columns, rows)
            experiment.add_text(tag, f"{headline}\n\n{text}" if headline else text, global_step=step)


@contextmanager
def _no_artifact_progress_bar() -> Iterator[None]:
    """MLflow's ``log_table`` downloads the table it appends to, with a progress bar per call: hide it (unless the
    user set ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _plain(value: Any) -> Any:
    """A cell as a JSON value: str, int, float, bool or None (tensor/numpy scalars unwrapped, NaN/inf as None)."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)
