"""A run stopped at any point and resumed from last.ckpt logs every step of every tag once, as an uninterrupted run.

The stop is an exception raised by a callback at a chosen point (in-process stand-in for a kill: Lightning then flushes
and closes the event files, which leaves more behind to purge than a kill does); tests/test_kill_resume.py kills real
processes.
"""

from __future__ import annotations

import json
import os
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.modules import RewardModule, SFTModule
from lit_rlhf.modules.grpo import GRPOModule
from lit_rlhf.resume_logging import drop_events_from
from lit_rlhf.rewards import ArithmeticVerifierReward
from lit_rlhf.tables import drop_rows_from, read_jsonl
from tests.conftest import TINY_MODEL_CONFIG

MAX_STEPS = 9
EVERY = 3  # checkpoints and validations both every 3 steps: they fall on the same batches (the hard case)
UNCHECKED_TAGS = ("epoch",)  # Lightning logs `epoch` with every call, so twice at a validation step in any run


class Stop(L.Callback):
    """Raise at ``hook`` once ``trainer.global_step == step``."""

    def __init__(self, hook: str, step: int) -> None:
        self.hook, self.step = hook, step

    def _maybe_stop(self, trainer, hook):
        if hook == self.hook and trainer.global_step == self.step:
            raise RuntimeError(f"stopped at {hook}, global step {self.step}")

    def on_train_batch_end(self, trainer, pl_module, *args):
        self._maybe_stop(trainer, "on_train_batch_end")

    def on_validation_start(self, trainer, pl_module):
        self._maybe_stop(trainer, "on_validation_start")

    def on_validation_end(self, trainer, pl_module):
        self._maybe_stop(trainer, "on_validation_end")

    def on_train_batch_start(self, trainer, pl_module, *args):
        self._maybe_stop(trainer, "on_train_batch_start")


class StoppingLogger(TensorBoardLogger):
    """Raises when asked to log the training metrics of ``stop_step`` (after that batch's checkpoint was taken)."""

    stop_step: int | None = None

    def log_metrics(self, metrics, step=None):
        if step == self.stop_step and not any(name.startswith("val/") for name in metrics):
            raise RuntimeError(f"stopped at log_metrics, step {step}")
        super().log_metrics(metrics, step)


def build(kind: str, policy: str | None):
    """A tiny module of ``kind`` and its data (the GRPO policy is the saved tiny model ``policy``)."""
    if kind == "sft":
        module = SFTModule(model_config=TINY_MODEL_CONFIG, learning_rate=1e-2, max_new_tokens=4, warmup_steps=2)
        return module, ArithmeticDataModule(num_train=128, num_val=8, batch_size=8)
    if kind == "reward":
        module = RewardModule(model_config=TINY_MODEL_CONFIG, learning_rate=3e-3)
        return module, ArithmeticDataModule(format="preference", num_train=128, num_val=8, batch_size=8)
    module = GRPOModule(
        rewards=[ArithmeticVerifierReward("graded_score")],
        policy_name_or_path=policy,
        num_generations=2,
        max_new_tokens=4,
        num_minibatches=2,
        learning_rate=1e-3,
        beta=0.1,
    )
    return module, ArithmeticDataModule(format="prompt", num_train=32, num_val=8, batch_size=4)


def fit(root, ckpt_path=None, stop=None, kind="sft", policy=None):
    L.seed_everything(0)
    module, data = build(kind, policy)
    logger = StoppingLogger(root, name="", version="run", default_hp_metric=False)
    if stop is not None and stop.hook == "log_metrics":
        logger.stop_step = stop.step - 1  # the batch that ends at global step `stop.step` logs at one less
    callbacks = [ModelCheckpoint(dirpath=root / "run" / "checkpoints", every_n_train_steps=EVERY, save_last=True)]
    trainer = L.Trainer(
        max_steps=MAX_STEPS,
        default_root_dir=root,
        callbacks=callbacks + ([stop] if stop else []),
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        val_check_interval=EVERY,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    if stop is None:
        trainer.fit(module, data, ckpt_path=ckpt_path)
        return module
    # A checkpoint taken in the batch of the stop was held in memory until that batch was logged: it is dropped.
    held = stop.step % EVERY == 0 and stop.hook not in ("on_train_batch_start", "on_train_batch_end")
    with pytest.raises(RuntimeError, match="stopped at"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, data, ckpt_path=ckpt_path)
    dropped = [w for w in caught if "was not written, the previous one is kept" in str(w.message)]
    assert len(dropped) == int(held)
    return module


def read_run(run_dir) -> dict[str, list[tuple[int, float | str]]]:
    """Every tag of the run folder as TensorBoard reads it (all event files of the folder), each sorted by step.

    Sorted because TensorBoard reads the files in name order, ``events.out.tfevents.<second>.<host>.<pid>.<n>``:
    two runs of one process within the same second can be read in the other order when ``n`` passes from 9 to 10
    (these tests run many in one process). A sort keeps every repeated step, so duplicates still show.
    """
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    for tag in events.Tags()["tensors"]:
        tags[tag] = [(e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors(tag)]
    return {tag: sorted(values, key=lambda item: item[0]) for tag, values in tags.items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    fit(root)
    return read_run(root / "run"), read_jsonl(str(root / "run" / "samples.jsonl"))


@pytest.mark.parametrize(
    "hook, step",
    [
        ("on_train_batch_end", 6),  # right before the checkpoint of step 6 is taken
        ("log_metrics", 6),  # right after it was taken, before its batch is logged
        ("on_validation_start", 6),  # during the validation that follows that checkpoint
        ("on_validation_end", 6),  # after that validation was logged
        ("on_train_batch_start", 8),  # two batches past the checkpoint, their curves already written
    ],
)
def test_stopped_and_resumed_run_logs_each_step_once(tmp_path, uninterrupted, hook, step):
    full_tags, full_rows = uninterrupted
    fit(tmp_path, stop=Stop(hook, step))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    fit(tmp_path, ckpt_path=str(last))

    tags = read_run(tmp_path / "run")
    assert sorted(tags) == sorted(full_tags)
    for tag, values in tags.items():
        if tag in UNCHECKED_TAGS:
            continue
        steps = [s for s, _ in values]
        assert steps == [s for s, _ in full_tags[tag]], tag  # each step once, none missing, in order
        if tag.startswith("train/loss") or tag.startswith("val/"):
            for (s, value), (_, expected) in zip(values, full_tags[tag]):
                assert value == pytest.approx(expected, abs=1e-5), (tag, s)
    rows = read_jsonl(str(tmp_path / "run" / "samples.jsonl"))
    assert [(r["tag"], r["step"]) for r in rows] == [(r["tag"], r["step"]) for r in full_rows]
    assert not [name for name in os.listdir(last.parent) if name.endswith(".tmp")]


@pytest.mark.parametrize("kind", ["sft", "reward", "grpo"])
def test_each_stage_resumed_after_a_stop_ends_with_the_same_weights_and_curves(tmp_path, policy_dir, kind):
    """Stopped right after the checkpoint of step 6 was taken, before its batch was logged (the hardest point)."""
    reference = fit(tmp_path / "reference", kind=kind, policy=policy_dir)
    fit(tmp_path, stop=Stop("log_metrics", 6), kind=kind, policy=policy_dir)
    resumed = fit(tmp_path, ckpt_path=str(tmp_path / "run" / "checkpoints" / "last.ckpt"), kind=kind, policy=policy_dir)
    weights, expected = resumed.model.state_dict(), reference.model.state_dict()
    assert weights.keys() == expected.keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, expected[name]), name
    tags, full_tags = read_run(tmp_path / "run"), read_run(tmp_path / "reference" / "run")
    assert sorted(tags) == sorted(full_tags)
    for tag, values in tags.items():
        if tag not in UNCHECKED_TAGS:
            assert [(s, repr(v)) for s, v in values] == [(s, repr(v)) for s, v in full_tags[tag]], tag


def test_drop_events_from_keeps_earlier_steps_and_the_header(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step in range(6):
        writer.add_scalar("a", float(step), step)
        writer.add_text("t", f"row {step}", step)
    writer.close()
    (path,) = [str(tmp_path / name) for name in os.listdir(tmp_path)]
    assert drop_events_from(path, 4) == 4  # two steps x two tags
    assert drop_events_from(path, 4) == 0  # nothing left to drop: the file is not rewritten
    tags = read_run(tmp_path)
    assert [s for s, _ in tags["a"]] == [0, 1, 2, 3]
    assert [s for s, _ in tags["t/text_summary"]] == [0, 1, 2, 3]


def test_drop_events_from_drops_a_record_cut_by_a_kill(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step in range(3):
        writer.add_scalar("a", float(step), step)
    writer.close()
    (path,) = [str(tmp_path / name) for name in os.listdir(tmp_path)]
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 5)  # the last record loses its end
    assert drop_events_from(path, 10) == 0
    assert [s for s, _ in read_run(tmp_path)["a"]] == [0, 1]
    assert os.path.getsize(path) < size - 5  # rewritten without the cut record


def test_drop_rows_from_samples_jsonl(tmp_path):
    path = tmp_path / "samples.jsonl"
    rows = [{"tag": "samples/val", "step": step, "prompt": f"p{step}"} for step in (2, 2, 5, 8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"tag": "samples/val", "st')  # a row cut by a kill
    assert drop_rows_from(str(path), 5) == 3
    assert [r["step"] for r in read_jsonl(str(path))] == [2, 2]
    assert drop_rows_from(str(path), 5) == 0
    assert drop_rows_from(str(tmp_path / "missing.jsonl"), 0) == 0
