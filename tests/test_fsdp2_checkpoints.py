"""FSDP2 checkpoint folders: the checks at ``--ckpt_path``, a changed learning rate on resume, atomic publication and
the cleanup of what a killed save leaves, ``save_top_k`` and ``save_last``.

The 2-process runs are real ``python train.py fit`` processes on CPU (gloo) with the tiny model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_rlhf import strategies
from lit_rlhf.checkpoint_checks import (
    CHECKPOINT_KEY,
    CheckpointMismatchError,
    apply_configured_settings,
    check_layout,
    checkpoint_layout,
    read_distributed_checkpoint,
    relocate_checkpoint_callbacks,
)
from lit_rlhf.cli import cli_main
from lit_rlhf.strategies import leftover_folders, publish_folder, remove_leftover_folders
from tests.helpers import read_events, tiny_cli_args

ROOT = Path(__file__).resolve().parent.parent
SFT_CONFIG = str(ROOT / "configs" / "arithmetic" / "sft.yaml")
PPO_CONFIG = str(ROOT / "configs" / "arithmetic" / "ppo.yaml")
PPO_VERIFIER_CONFIG = str(ROOT / "configs" / "arithmetic" / "ppo_verifier.yaml")
TWO_PROCESSES = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "fsdp2"]
CONSTANT_LR = ["--model.init_args.lr_schedule", "constant", "--model.init_args.warmup_steps", "0"]


def _callbacks(every_n_train_steps: int) -> dict:
    """A checkpoint every ``every_n_train_steps`` steps, the best train/loss kept (top-k removes the others), and
    last.ckpt."""
    init_args = {
        "save_last": True,
        "every_n_train_steps": every_n_train_steps,
        "save_top_k": 1,
        "monitor": "train/loss",
        "mode": "min",
    }
    return {
        "trainer": {
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": init_args}]
        }
    }


def _set(args: list[str], option: str, value: str) -> list[str]:
    args = list(args)
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    return args


def _sft_args(run_dir: Path, max_steps: int, learning_rate: str = "1e-3") -> list[str]:
    """2-process FSDP2 SFT arguments (constant learning rate) writing into ``run_dir``."""
    args = tiny_cli_args(SFT_CONFIG, str(run_dir), max_steps=max_steps) + CONSTANT_LR + TWO_PROCESSES
    args = _set(args, "--model.init_args.learning_rate", learning_rate)
    return _set(args, "--model.init_args.adamw_implementation", "foreach")


def _with_callbacks(args: list[str], tmp_path: Path, every_n_train_steps: int = 1) -> list[str]:
    extra = tmp_path / "callbacks.yaml"
    extra.write_text(json.dumps(_callbacks(every_n_train_steps)))  # JSON is YAML
    return args[:3] + ["--config", str(extra)] + args[3:]  # after the stage config: replaces its callbacks


def _train(args: list[str], script: str = "train.py", timeout: float = 300) -> subprocess.CompletedProcess:
    """``python <script> <args>`` in a new session (so that a test can kill both processes), one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )


def _error_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    return next(line for line in run.stderr.splitlines() if ": error: " in line)


@pytest.fixture(scope="module")
def fsdp2_run(tmp_path_factory) -> Path:
    """A 3-step 2-process FSDP2 SFT run (constant LR 1e-3, a checkpoint each step, top-1 by train/loss, last.ckpt).
    Copy it before resuming."""
    base = tmp_path_factory.mktemp("fsdp2")
    run_dir = base / "runs" / "arithmetic" / "sft"
    run = _train(_with_callbacks(_sft_args(run_dir, max_steps=3), base))
    assert run.returncode == 0, run.stderr[-3000:]
    return run_dir


def _copy(run_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    copy = tmp_path / "runs" / "arithmetic" / "sft"
    shutil.copytree(run_dir, copy)
    return copy, copy / "checkpoints" / "last.ckpt"


# -- what a FSDP2 run writes ----------------------------------------------------------------------------------------


def test_each_checkpoint_is_one_folder_and_top_k_removes_the_old_ones(fsdp2_run):
    folder = fsdp2_run / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    # save_top_k=1: one step folder is kept; last.ckpt is one folder, no last-v1.ckpt beside it, no leftovers.
    assert len(names) == 2 and "last.ckpt" in names and names[0].startswith("epoch=0-step="), names
    for name in names:
        files = sorted(p.name for p in (folder / name).iterdir())
        assert files == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"], (name, files)
    meta = read_distributed_checkpoint(str(folder / "last.ckpt"))
    assert meta["global_step"] == 3 and "state_dict" not in meta
    assert meta[CHECKPOINT_KEY]["world_size"] == 2 and meta[CHECKPOINT_KEY]["strategy"] == "fsdp2"
    assert checkpoint_layout(str(folder / "last.ckpt"), meta) == "folder"


# -- --ckpt_path <folder>: the checks of a file, before any model loads ---------------------------------------------


def test_a_folder_gets_the_checks_of_a_file(fsdp2_run, tmp_path):
    ckpt = str(fsdp2_run / "checkpoints" / "last.ckpt")
    run_dir = tmp_path / "runs" / "arithmetic" / "sft"
    args = _sft_args(run_dir, max_steps=5) + ["--ckpt_path", ckpt]
    cases = [
        (_set(args, "--data.init_args.batch_size", "8"), "batch_size 16, and this run has 8"),
        (_set(args, "--model.init_args.model_config", '{"hidden_size": 16}'), "model.init_args.model_config"),
        (_set(args, "--trainer.devices", "1"), "world_size 2, and this run has 1 (--trainer.devices"),
        (_set(_set(args, "--trainer.strategy", "auto"), "--trainer.devices", "1"), "distributed checkpoint folder"),
        (_set(args, "--trainer.strategy", "ddp"), "this run's strategy (DDPStrategy) loads only single-file"),
    ]
    for case, match in cases:
        with pytest.raises(CheckpointMismatchError, match=re.escape(match)) as info:
            cli_main(case)
        assert ckpt in str(info.value) and "\n" not in str(info.value)
    ppo = tiny_cli_args(PPO_CONFIG, str(tmp_path / "ppo"), max_steps=5) + TWO_PROCESSES + ["--ckpt_path", ckpt]
    with pytest.raises(CheckpointMismatchError, match="written by lit_rlhf.modules.sft.SFTModule, but this config"):
        cli_main(ppo)  # refused before the policy (a folder that does not exist here) loads
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ppo").exists()


def test_a_folder_that_is_not_a_checkpoint_is_named(fsdp2_run, tmp_path):
    run_dir = tmp_path / "runs" / "arithmetic" / "sft"
    empty = tmp_path / "empty"
    empty.mkdir()
    no_shards = tmp_path / "no_shards"
    no_shards.mkdir()
    shutil.copy(fsdp2_run / "checkpoints" / "last.ckpt" / "meta.pt", no_shards / "meta.pt")
    damaged = tmp_path / "damaged"
    shutil.copytree(fsdp2_run / "checkpoints" / "last.ckpt", damaged)
    (damaged / "meta.pt").write_bytes(b"not a checkpoint")
    for folder, match in [
        (empty, r"not a complete distributed checkpoint \(no meta.pt, no .metadata, no \*.distcp shard files;"),
        (no_shards, r"not a complete distributed checkpoint \(no .metadata, no \*.distcp shard files;"),
        (damaged, "its meta.pt cannot be read"),
    ]:
        with pytest.raises(CheckpointMismatchError, match=match) as info:
            cli_main(_sft_args(run_dir, max_steps=5) + ["--ckpt_path", str(folder)])
        assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_layouts_each_strategy_loads():
    check_layout("folder", True, "FSDP2Strategy", "x")
    check_layout("fsdp2 file", True, "FSDP2Strategy", "x")
    check_layout("fsdp2 file", False, "DDPStrategy", "x")  # optimizer states mapped by position: loads
    check_layout("file", False, "DDPStrategy", "x")
    with pytest.raises(CheckpointMismatchError, match="x is a distributed checkpoint folder .* \\(DDPStrategy\\)"):
        check_layout("folder", False, "DDPStrategy", "x")
    with pytest.raises(CheckpointMismatchError, match="x is a single-file checkpoint of a run on one device or"):
        check_layout("file", True, "FSDP2Strategy", "x")
    assert checkpoint_layout("missing.ckpt", {CHECKPOINT_KEY: {"strategy": "fsdp2"}}) == "fsdp2 file"
    assert checkpoint_layout("missing.ckpt", {CHECKPOINT_KEY: {}}) == "file"


# -- resume: a changed learning rate, leftovers of a killed save ----------------------------------------------------


@pytest.mark.slow  # two processes, two fits: run by make test-slow
def test_resume_applies_a_new_learning_rate_and_cleans_a_killed_saves_leftovers(fsdp2_run, tmp_path):
    run_dir, ckpt = _copy(fsdp2_run, tmp_path)
    folder = ckpt.parent
    # What a save killed halfway leaves: a temporary folder with one shard of two, and a previous checkpoint moved
    # aside. Neither is a checkpoint Lightning would pick ("last" looks for last*.ckpt).
    partial = folder / ".last.ckpt.tmp-deadbeef"
    partial.mkdir()
    shutil.copy(ckpt / "__0_0.distcp", partial / "__0_0.distcp")
    shutil.copytree(ckpt, folder / ".last.ckpt.old-deadbeef")
    args = _with_callbacks(_sft_args(run_dir, max_steps=5, learning_rate="2e-3"), tmp_path)
    run = _train(args + ["--ckpt_path", str(ckpt)])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "learning_rate 0.001 -> 0.002" in run.stderr + run.stdout
    lrs = dict(read_events(str(run_dir))[0]["train/lr"])
    # Steps 0-2 ran before the checkpoint; the first resumed step (3) already runs at the configured rate.
    assert [lrs[s] for s in range(5)] == pytest.approx([1e-3, 1e-3, 1e-3, 2e-3, 2e-3])
    assert leftover_folders(ckpt) == []
    assert read_distributed_checkpoint(str(ckpt))["global_step"] == 5
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_a_run_killed_before_publishing_resumes_from_the_previous_checkpoint(tmp_path):
    """``kill -9`` of both processes after every shard of the step-4 checkpoint is written, before it is published:
    last.ckpt stays step 2's, the next run resumes from it and deletes the unpublished folder."""
    wrapper = tmp_path / "killed_at_publish.py"
    wrapper.write_text(
        "import os, signal, sys\n"
        "import lit_rlhf.strategies as s\n"
        "publish, calls = s.publish_folder, []\n"
        "def killing_publish(temp, path):\n"
        "    calls.append(path)\n"
        "    if path.name == 'last.ckpt' and len([c for c in calls if c.name == 'last.ckpt']) == 2:\n"
        "        os.killpg(os.getpgid(0), signal.SIGKILL)\n"
        "    publish(temp, path)\n"
        "s.publish_folder = killing_publish\n"
        "from lit_rlhf.cli import main\n"
        "sys.argv[0] = 'train.py'\n"
        "sys.exit(main())\n"
    )
    run_dir = tmp_path / "runs" / "arithmetic" / "sft"
    args = _sft_args(run_dir, max_steps=6)
    args = _with_callbacks(_set(args, "--trainer.val_check_interval", "2"), tmp_path, every_n_train_steps=2)
    killed = _train(args, script=str(wrapper))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert read_distributed_checkpoint(str(ckpt))["global_step"] == 2  # the previous checkpoint, intact
    (unpublished,) = leftover_folders(ckpt)
    assert read_distributed_checkpoint(str(unpublished))["global_step"] == 4  # complete, never renamed into place
    resumed = _train(args + ["--ckpt_path", str(ckpt)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_distributed_checkpoint(str(ckpt))["global_step"] == 6 and leftover_folders(ckpt) == []
    assert [step for step, _ in read_events(str(run_dir))[0]["train/loss"]] == list(range(6))  # each step once


@pytest.mark.slow
def test_ppo_resumes_each_optimizer_at_its_new_learning_rate(tmp_path):
    from benchmarks.kill_resume import build_policy
    from tests.conftest import TINY_MODEL_CONFIG

    policy = build_policy(str(tmp_path / "policy"), TINY_MODEL_CONFIG)
    run_dir = tmp_path / "runs" / "arithmetic" / "ppo"

    def args(max_steps: int) -> list[str]:
        cli_args = tiny_cli_args(PPO_VERIFIER_CONFIG, str(run_dir), max_steps=max_steps)
        index = cli_args.index("--model.init_args.model_config")
        del cli_args[index : index + 2]  # PPO takes the policy's folder
        return cli_args + TWO_PROCESSES + ["--model.init_args.policy_name_or_path", policy]

    first = _train(args(2) + ["--model.init_args.max_new_tokens", "8"])
    assert first.returncode == 0, first.stderr[-3000:]
    changed = ["--model.init_args.actor_learning_rate", "1e-4", "--model.init_args.critic_learning_rate", "2e-4"]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    saved = read_distributed_checkpoint(str(ckpt))["hyper_parameters"]
    resumed = _train(args(4) + ["--model.init_args.max_new_tokens", "8", *changed, "--ckpt_path", str(ckpt)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    scalars = read_events(str(run_dir))[0]
    actor, critic = saved["actor_learning_rate"], saved["critic_learning_rate"]
    assert [lr for _, lr in scalars["lr/actor"]] == pytest.approx([actor, actor, 1e-4, 1e-4])
    assert [lr for _, lr in scalars["lr/critic"]] == pytest.approx([critic, critic, 2e-4, 2e-4])


@pytest.mark.slow
def test_a_ddp_runs_file_is_refused_under_fsdp2(tmp_path):
    run_dir = tmp_path / "runs" / "arithmetic" / "sft"
    ddp = _set(_sft_args(run_dir, max_steps=2), "--trainer.strategy", "ddp")
    assert _train(ddp).returncode == 0
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    line = _error_line(_train(_sft_args(run_dir, max_steps=4) + ["--ckpt_path", str(ckpt)]))
    assert f"--ckpt_path {ckpt} is a single-file checkpoint of a run on one device or under DDP" in line


# -- publication and cleanup, by hand --------------------------------------------------------------------------------


def _folder(path: Path, content: str) -> Path:
    path.mkdir()
    (path / "meta.pt").write_text(content)
    return path


@pytest.mark.parametrize("exchange", [True, False])
def test_publish_replaces_the_previous_folder(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(strategies, "_exchange", lambda a, b: False)  # a filesystem without atomic swaps
    target = _folder(tmp_path / "last.ckpt", "old")
    temp = _folder(tmp_path / ".last.ckpt.tmp-1", "new")
    publish_folder(temp, target)
    assert (target / "meta.pt").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["last.ckpt"]
    first = _folder(tmp_path / ".epoch=0-step=1.ckpt.tmp-2", "first")
    publish_folder(first, tmp_path / "epoch=0-step=1.ckpt")  # no previous folder
    assert (tmp_path / "epoch=0-step=1.ckpt" / "meta.pt").read_text() == "first"


def test_leftovers_of_a_path_are_removed_and_others_kept(tmp_path):
    target = tmp_path / "last.ckpt"
    leftovers = [_folder(tmp_path / f".last.ckpt.{kind}-{i}", kind) for i, kind in enumerate(["tmp", "old"])]
    keep = [
        _folder(tmp_path / ".last.ckpt.tmp-current", "being written"),  # this save's own folder
        _folder(tmp_path / ".last-v1.ckpt.tmp-3", "another target"),
        _folder(tmp_path / "last.ckpt", "published"),
    ]
    assert leftover_folders(target) == sorted(leftovers + keep[:1])
    assert remove_leftover_folders(target, keep=keep[0]) == sorted(leftovers)
    assert all(p.is_dir() for p in keep) and not any(p.exists() for p in leftovers)


# -- settings applied to optimizers that the strategy restored itself -----------------------------------------------


def test_configured_settings_go_into_the_restored_optimizers():
    decay, no_decay = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.AdamW(
        [{"params": [decay], "weight_decay": 0.1}, {"params": [no_decay], "weight_decay": 0.0}], lr=1e-3
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)  # the saved run: half the base rate
    hparams = {
        "learning_rate": 4e-3,
        "weight_decay": 0.2,
        "betas": (0.8, 0.9),
        "warmup_steps": 0,
        "lr_schedule": "constant",
        "min_lr_ratio": 0.0,
    }
    # As under FSDP2: Lightning's checkpoint holds no optimizer states (they were loaded from the shards).
    checkpoint = {"lr_schedulers": [scheduler.state_dict()]}
    apply_configured_settings(checkpoint, hparams, 0, {"foreach": True}, restored_optimizers=[optimizer])
    groups = optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([2e-3, 2e-3])  # the saved schedule ratio, the new base rate
    assert [g["initial_lr"] for g in groups] == [4e-3, 4e-3]
    assert [g["weight_decay"] for g in groups] == [0.2, 0.0] and groups[0]["betas"] == (0.8, 0.9)
    assert checkpoint["lr_schedulers"][0]["base_lrs"] == [4e-3, 4e-3]
    apply_configured_settings(checkpoint, hparams, 10, {}, restored_optimizers=[optimizer])  # schedule over 10 steps
    assert [g["lr"] for g in groups] == pytest.approx([4e-3, 4e-3])  # the constant schedule's factor is 1


def test_a_moved_run_folder_keeps_its_checkpoint_callbacks_state(tmp_path):
    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    new.mkdir(parents=True)
    for name in ("last.ckpt", "epoch=0-step=4.ckpt"):
        (new / name).mkdir()  # moved with the run; epoch=0-step=2.ckpt was not kept
    state = {
        "dirpath": str(old),
        "best_model_path": str(old / "epoch=0-step=4.ckpt"),
        "kth_best_model_path": str(old / "epoch=0-step=2.ckpt"),
        "last_model_path": str(old / "last.ckpt"),
        "best_k_models": {str(old / "epoch=0-step=4.ckpt"): 0.5, str(old / "epoch=0-step=2.ckpt"): 0.7},
    }
    checkpoint = {"callbacks": {"ModelCheckpoint{'monitor': 'x'}": state, "Other": {"n": 1}}}
    dirpaths = {"ModelCheckpoint{'monitor': 'x'}": str(new)}
    assert relocate_checkpoint_callbacks(checkpoint, dirpaths) == ["ModelCheckpoint{'monitor': 'x'}"]
    assert state == {
        "dirpath": str(new),
        "best_model_path": str(new / "epoch=0-step=4.ckpt"),
        "kth_best_model_path": "",
        "last_model_path": str(new / "last.ckpt"),
        "best_k_models": {str(new / "epoch=0-step=4.ckpt"): 0.5},
    }
    assert relocate_checkpoint_callbacks(checkpoint, dirpaths) == []  # already the current folder
    assert checkpoint["callbacks"]["Other"] == {"n": 1}
