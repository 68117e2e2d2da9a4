"""Checkpoint files that a crash cannot truncate, written only once the step they hold is fully logged.

:class:`AtomicCheckpointIO` replaces Lightning's plain ``TorchCheckpointIO`` in every lit_rlhf run
(:func:`install_atomic_checkpoint_io`, called by :class:`~lit_rlhf.modules.base.RLHFModule`; nothing to configure):

- **Atomic files.** A checkpoint is written to a hidden temporary file in its own folder
  (``.last.ckpt.<pid>.<random>.tmp``), flushed and synced to disk, then renamed over the target in one step
  (``os.replace``). A process killed at any moment leaves either the previous complete ``last.ckpt`` or the new one,
  never a truncated file. A temporary file left by a killed writer is never read (its name does not end in
  ``.ckpt``) and is deleted by the next write to the same target.
- **Published after the step's logs.** Lightning's ``ModelCheckpoint`` saves at the end of a training batch, before
  that batch's metrics reach the loggers and before the validation that may follow it. During training the
  checkpoint is therefore written at once to its temporary file (so later updates cannot change it, and nothing is
  held in memory), but renamed over the target only at the start of the next batch, or when the run ends, after the
  loggers were flushed. A run killed in between resumes from the
  previous checkpoint and logs that batch and its validation again, so no step is missing from the curves
  (:mod:`lit_rlhf.resume_logging` purges the events past the resumed step). A run stopped by an exception drops a
  checkpoint still held (its step's logs may be incomplete) and keeps the previous file; deleting an old
  checkpoint (``save_top_k``) waits for the new one to be on disk.

Remote paths (``s3://`` and other fsspec URLs) are written by ``TorchCheckpointIO`` as usual.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

TEMP_SUFFIX = ".tmp"
"""How the name of a checkpoint being written ends (``.<target name>.<pid>.<random>.tmp``, beside the target)."""

_UMASK = os.umask(0)
os.umask(_UMASK)


def temp_prefix(path: str) -> str:
    """The start of the name of the temporary files of ``path`` (in the same folder)."""
    return f".{os.path.basename(path)}.{os.getpid()}."


def remove_stale_temp_files(path: str) -> list[str]:
    """Delete the temporary files of ``path`` left by writers that no longer run (a killed process).

    Returns:
        The deleted paths.
    """
    folder = os.path.dirname(os.path.abspath(path))
    removed = []
    for candidate in glob.glob(os.path.join(folder, glob.escape(f".{os.path.basename(path)}.") + "*" + TEMP_SUFFIX)):
        pid = candidate[len(os.path.join(folder, f".{os.path.basename(path)}.")) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _process_alive(int(pid)):
            continue  # another live process is writing this target right now
        with contextlib.suppress(FileNotFoundError):
            os.remove(candidate)
            removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Create or replace the file ``path`` atomically with what ``write(file)`` writes to a binary file object.

    The bytes go to a temporary file in the same folder, are flushed and synced to disk, and the temporary file is
    renamed to ``path`` (``os.replace``); the folder is synced too, so the rename itself survives a power loss. On any
    error, ``path`` is left as it was and the temporary file is removed.
    """
    publish(write_temp(path, write), path)


def write_temp(path: str, write: Callable[[Any], None]) -> str:
    """The first half of :func:`atomic_write`: write and sync the temporary file of ``path``; returns its path."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temp_files(path)
    fd, temp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # what a plain open() would give, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise
    return temp


def publish(temp: str, path: str) -> None:
    """The second half of :func:`atomic_write`: rename the synced ``temp`` over ``path`` and sync the folder."""
    try:
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise
    _sync_folder(os.path.dirname(os.path.abspath(path)))


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _sync_folder(folder: str) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows: a folder cannot be opened for fsync
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_local(path: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(get_filesystem(str(path)), LocalFileSystem)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic and, during training, held until the step is logged.

    Args:
        before_write: called before a checkpoint file is written (e.g. to flush the loggers, so that every event
            logged before the checkpoint is on disk when the checkpoint is).
    """

    def __init__(self, before_write: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.before_write = before_write
        self._pending: list[tuple[str, str, str | None]] = []  # ("save", path, temp file) or ("remove", path, None)
        self._trainer: weakref.ReferenceType | None = None

    def attach(self, trainer: Any) -> None:
        """Hold checkpoints written while ``trainer`` trains until :meth:`flush` (a weak reference is kept)."""
        self._trainer = weakref.ref(trainer)

    @property
    def pending(self) -> list[str]:
        """The paths of the checkpoints written to their temporary files, not yet renamed into place."""
        return [path for op, path, _ in self._pending if op == "save"]

    def _holding(self) -> bool:
        """Whether a save now is held: during a training stage of a run that was not interrupted."""
        from lightning.pytorch.trainer.states import TrainerStatus

        trainer = self._trainer() if self._trainer is not None else None
        if trainer is None or not trainer.training or trainer.sanity_checking:
            return False
        return trainer.state.status != TrainerStatus.INTERRUPTED

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            self.flush()
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = str(path)
        if self._holding():
            # Written now (the state of this moment, whatever trains next), published by flush(); a second save to
            # the same path before then replaces the first.
            for op, held, temp in [entry for entry in self._pending if entry[0] == "save" and entry[1] == path]:
                self._pending.remove((op, held, temp))
                with contextlib.suppress(FileNotFoundError):
                    os.remove(temp)
            self._pending.append(("save", path, write_temp(path, lambda f: torch.save(checkpoint, f))))
            return
        self.flush()
        self._before_write()
        atomic_torch_save(checkpoint, path)

    def remove_checkpoint(self, path: Any) -> None:
        if self._pending:  # after the checkpoint that replaces it is on disk
            self._pending.append(("remove", str(path), None))
            return
        super().remove_checkpoint(path)

    def flush(self) -> None:
        """Write the held checkpoints (after ``before_write``) and carry out the held deletions, in order."""
        pending, self._pending = self._pending, []
        if any(op == "save" for op, _, _ in pending):
            self._before_write()
        for op, path, temp in pending:
            if op == "save":
                assert temp is not None
                publish(temp, path)
            else:
                super().remove_checkpoint(path)

    def discard(self) -> list[str]:
        """Drop the held checkpoints (their temporary files) and deletions; returns the paths not written."""
        dropped = self.pending
        for op, _, temp in self._pending:
            if op == "save" and temp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(temp)
        self._pending = []
        return dropped

    def teardown(self) -> None:
        """At the end of a run: write what is held, unless the run was interrupted (then drop it, keeping the previous
        files: the held step's logs may be incomplete)."""
        from lightning.pytorch.trainer.states import TrainerStatus

        trainer = self._trainer() if self._trainer is not None else None
        if trainer is not None and trainer.state.status == TrainerStatus.INTERRUPTED:
            dropped = self.discard()
            if dropped:
                warnings.warn(
                    f"the run stopped before the step of checkpoint {dropped[-1]} was fully logged: that checkpoint "
                    "was not written, the previous one is kept",
                    RuntimeWarning,
                    stacklevel=2,
                )
        else:
            self.flush()
        self._trainer = None
        super().teardown()

    def flush_trainer_loggers(self) -> None:
        """Flush the loggers of the attached trainer (:func:`flush_loggers`); the ``before_write`` of installed
        plugins."""
        trainer = self._trainer() if self._trainer is not None else None
        if trainer is not None:
            flush_loggers(trainer)

    def _before_write(self) -> None:
        if self.before_write is not None:
            self.before_write()


def flush_loggers(trainer: Any) -> None:
    """Write what ``trainer``'s loggers hold in memory to their files (TensorBoard events, ``metrics.csv``)."""
    for logger in trainer.loggers:
        try:
            logger.save()
        except Exception as error:  # a logger that cannot flush never blocks a checkpoint
            warnings.warn(f"{type(logger).__name__} not flushed before a checkpoint: {error!r}", stacklevel=2)


def install_atomic_checkpoint_io(trainer: Any) -> AtomicCheckpointIO | None:
    """Give ``trainer``'s strategy an :class:`AtomicCheckpointIO` in place of a plain ``TorchCheckpointIO``.

    Any other checkpoint plugin (asynchronous, XLA, a user's own) is left as it is.

    Returns:
        The installed (or already installed) plugin, or ``None`` when the strategy keeps its own.
    """
    strategy = trainer.strategy
    current = strategy.checkpoint_io
    if isinstance(current, AtomicCheckpointIO):
        plugin = current
    elif type(current) is TorchCheckpointIO:
        plugin = AtomicCheckpointIO()
        strategy.checkpoint_io = plugin
    else:
        return None
    plugin.attach(trainer)
    plugin.before_write = plugin.flush_trainer_loggers
    return plugin
