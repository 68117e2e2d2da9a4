"""Checkpoint files are replaced atomically: a write cut short leaves the previous file whole and loadable."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

import lit_rlhf.checkpoint_io as checkpoint_io
from lit_rlhf.checkpoint_io import TEMP_SUFFIX, AtomicCheckpointIO, atomic_torch_save
from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.modules import SFTModule
from tests.conftest import TINY_MODEL_CONFIG


def temp_files(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(TEMP_SUFFIX)]


def test_a_write_cut_short_keeps_the_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "last.ckpt")
    atomic_torch_save({"step": 1, "weights": torch.arange(1000.0)}, path)

    def half_then_crash(obj, f):
        f.write(b"\x80\x02partial")  # what a killed torch.save leaves: the start of a file
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, "save", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 1 and torch.equal(loaded["weights"], torch.arange(1000.0))
    assert temp_files(tmp_path) == []


def test_a_temp_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    path = str(tmp_path / "last.ckpt")
    dead = tmp_path / f".last.ckpt.{2**22 + 12345}.x1y2{TEMP_SUFFIX}"  # above Linux's default pid_max: never alive
    live = tmp_path / f".last.ckpt.{os.getppid()}.x1y2{TEMP_SUFFIX}"  # a live process's write in progress: kept
    other = tmp_path / f".other.ckpt.{2**22 + 12345}.x1y2{TEMP_SUFFIX}"  # another target's: not this write's business
    for leftover in (dead, live, other):
        leftover.write_bytes(b"\x80\x02")
    atomic_torch_save({"step": 3}, path)
    assert torch.load(path, weights_only=True) == {"step": 3}
    assert sorted(temp_files(tmp_path)) == sorted([live.name, other.name])


def make(tmp_path, max_steps, callbacks=(), plugins=None):
    L.seed_everything(0)
    module = SFTModule(model_config=TINY_MODEL_CONFIG, learning_rate=1e-2, max_new_tokens=4)
    data = ArithmeticDataModule(num_train=64, num_val=8, batch_size=8)
    trainer = L.Trainer(
        max_steps=max_steps,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
        plugins=plugins,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    return module, data, trainer


def test_a_run_killed_while_writing_last_ckpt_resumes_from_the_previous_one(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    written = []
    real_write = checkpoint_io.write_temp

    def crash_in_second_write(path, write):
        written.append(path)
        if len(written) < 2:
            return real_write(path, write)

        def half(f):
            f.write(b"\x80\x02partial")
            raise KeyboardInterrupt  # stands in for SIGKILL in the middle of the file

        return real_write(path, half)

    monkeypatch.setattr(checkpoint_io, "write_temp", crash_in_second_write)
    ckpt = ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_last=True, save_top_k=0)
    module, data, trainer = make(tmp_path, max_steps=6, callbacks=[ckpt])
    with pytest.raises(SystemExit):  # Lightning turns KeyboardInterrupt into exit status 1
        trainer.fit(module, data)
    monkeypatch.undo()
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert temp_files(folder) == []
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 2

    ckpt = ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_last=True, save_top_k=0)
    module, data, trainer = make(tmp_path, max_steps=6, callbacks=[ckpt])
    trainer.fit(module, data, ckpt_path=str(folder / "last.ckpt"))
    assert trainer.global_step == 6
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 6


def test_old_top_k_files_go_only_after_the_new_one_is_written_and_saves_after_fit_are_immediate(tmp_path):
    folder = tmp_path / "checkpoints"
    ckpt = ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_top_k=1, filename="{step}")
    module, data, trainer = make(tmp_path, max_steps=6, callbacks=[ckpt])
    trainer.fit(module, data)
    assert sorted(os.listdir(folder)) == ["step=6.ckpt"]
    trainer.save_checkpoint(folder / "after.ckpt")
    assert torch.load(folder / "after.ckpt", weights_only=False)["global_step"] == 6


def test_a_checkpoint_plugin_of_the_user_is_kept(tmp_path):
    class MyCheckpointIO(TorchCheckpointIO):
        pass

    plugin = MyCheckpointIO()
    module, data, trainer = make(tmp_path, max_steps=1, plugins=[plugin])
    trainer.fit(module, data)
    assert trainer.strategy.checkpoint_io is plugin
