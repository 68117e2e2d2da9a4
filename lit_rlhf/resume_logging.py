"""Curves without repeated or missing steps after a resume: what a killed run logged past its checkpoint is purged.

A run killed after its last checkpoint has logged some steps past it; the resumed run logs them again. At the start
of the resumed training (:meth:`~lit_rlhf.modules.base.RLHFModule.on_train_start`), :func:`purge_logs_from` marks
every step from the resumed one on as discarded:

- TensorBoard: the events at or past the step are removed from the run folder's earlier event files (each file
  rewritten atomically, only when it holds such events), so every reader, TensorBoard's ``EventAccumulator`` or a
  plain reader of the files, finds each step once. The current event file also gets the ``SessionLog.START`` event
  at that step that ``SummaryWriter(purge_step=...)`` writes, TensorBoard's own marker for a restart.
- ``samples.jsonl`` in the run folder: the rows at or past the step are removed from the file.

Together with :mod:`lit_rlhf.checkpoint_io` (a checkpoint reaches the disk only after its step and that step's
validation are logged), every tag, ``val/*`` and the sample tables included, reads back with each step once.
"""

from __future__ import annotations

import glob
import os
import warnings
from typing import Any

from lit_rlhf.checkpoint_io import atomic_write
from lit_rlhf.tables import SAMPLES_FILE, drop_rows_from, run_folder


def purge_logs_from(trainer: Any, step: int) -> None:
    """Discard every event and sample row logged at ``step`` or later by ``trainer``'s loggers (global rank 0 only).

    Args:
        trainer: the resumed run's trainer.
        step: the first step the resumed run logs (:func:`lit_rlhf.tables.scalar_step` axis).
    """
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "_get_file_writer"):  # TensorBoard (torch.utils.tensorboard or tensorboardX)
            try:
                current = _event_file_of(experiment)
                for path in sorted(glob.glob(os.path.join(experiment.get_logdir(), "*tfevents*"))):
                    if current is None or os.path.abspath(path) != os.path.abspath(current):
                        drop_events_from(path, step)
                write_purge_marker(experiment, step)
            except Exception as error:  # curves with repeated steps are not worth a failed resume
                warnings.warn(
                    f"events past step {step} not purged from {type(logger).__name__}: {error!r}", stacklevel=2
                )
    folder = run_folder(trainer.loggers)
    if folder is not None:
        drop_rows_from(os.path.join(folder, SAMPLES_FILE), step)


def write_purge_marker(writer: Any, step: int) -> None:
    """Append to ``writer``'s event file the events ``SummaryWriter(purge_step=step)`` starts a file with.

    Args:
        writer: a ``SummaryWriter`` (``torch.utils.tensorboard`` or ``tensorboardX``), possibly already in use.
        step: events at this step or later, in the files read before the marker, are dropped by TensorBoard.
    """
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    file_writer = writer._get_file_writer()
    file_writer.add_event(Event(step=step, file_version="brain.Event:2"))
    file_writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
    writer.flush()


def drop_events_from(path: str, step: int) -> int:
    """Remove from the event file ``path`` every summary event at ``step`` or later (scalars, texts, histograms...).

    Events without a summary (the file header, restart markers) stay. A record cut off by a kill at the end of the
    file is dropped too. The file is rewritten atomically and only when something is removed.

    Returns:
        The number of events removed.
    """
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    records = list(RawEventFileLoader(path).Load())
    kept = [raw for raw in records if not _expired(Event.FromString(raw), step)]
    complete = sum(_record_size(raw) for raw in records) == os.path.getsize(path)
    if len(kept) == len(records) and complete:
        return 0

    def write(f: Any) -> None:
        writer = RecordWriter(f)
        for raw in kept:
            writer.write(raw)

    atomic_write(path, write)
    return len(records) - len(kept)


def _expired(event: Any, step: int) -> bool:
    return event.HasField("summary") and event.step >= step


def _record_size(raw: bytes) -> int:
    """Bytes one record takes in a TFRecord file: length (8), its CRC (4), the data, the data's CRC (4)."""
    return 8 + 4 + len(raw) + 4


def _event_file_of(writer: Any) -> str | None:
    """The path of the event file ``writer`` appends to, when it can be told."""
    event_writer = getattr(writer._get_file_writer(), "event_writer", None)
    name = getattr(event_writer, "_file_name", None)
    return name if isinstance(name, str) else None
