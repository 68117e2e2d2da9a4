"""`kill -9` at random moments and `--ckpt_path .../last.ckpt` end with the uninterrupted run's model and curves.

Real processes (`python train.py fit`) on a short run of a tiny model; each killed run is resumed with the same
command plus `--ckpt_path`, until one finishes. benchmarks/kill_resume.py does the same on a long run, 10 kills.
"""

from __future__ import annotations

import os
import random

import pytest

from benchmarks.kill_resume import build_policy, compare_runs, finish, kill_at, launch, write_config
from tests.conftest import TINY_MODEL_CONFIG

pytestmark = pytest.mark.slow

TINY_PPO = {
    "model.init_args.max_new_tokens": 8,
    "data.init_args.num_train": 128,  # 8 batches per epoch: every other checkpoint falls at the end of an epoch
    "data.init_args.num_val": 16,
    "data.init_args.batch_size": 16,
    "data.init_args.eval_batch_size": 16,
    "trainer.max_steps": 32,
    "trainer.val_check_interval": 4,  # validations fall on every checkpoint's iteration
    "trainer.enable_progress_bar": False,
}
CHECKPOINT = {"save_last": True, "every_n_train_steps": 4, "save_top_k": 0}


def test_ppo_killed_three_times_ends_as_the_uninterrupted_run(tmp_path):
    policy = build_policy(str(tmp_path / "sft" / "hf"), TINY_MODEL_CONFIG)
    overrides = {**TINY_PPO, "model.init_args.policy_name_or_path": policy}
    runs = tmp_path / "runs" / "arithmetic"
    configs = {
        name: write_config(
            str(tmp_path / f"{name}.yaml"),
            "configs/arithmetic/ppo_verifier.yaml",
            str(runs / name),
            overrides,
            CHECKPOINT,
        )
        for name in ("reference", "killed")
    }
    finish(launch(configs["reference"]), timeout=600)

    folder = str(runs / "killed" / "checkpoints")
    rng = random.Random(24)
    process = launch(configs["killed"])
    hits = []
    for moment in ("random", "writing", "random"):  # "writing": as soon as a checkpoint write shows up
        # Each kill waits for the resumed run's next checkpoint (4 iterations on), so three fit in 32 iterations.
        hits.append(kill_at(process, folder, moment, delay=rng.uniform(0.0, 0.5)))
        process = launch(configs["killed"], os.path.join(folder, "last.ckpt"))
    finish(process, timeout=600)
    assert all(hit is not None for hit in hits), hits  # every kill landed before the run finished

    report = compare_runs(str(runs / "killed"), str(runs / "reference"), ("hf", "hf_critic"))
    assert report["tensors"] > 0 and report["export_differences"] == [], report  # bit-equal policy and critic
    assert report["tag_differences"] == [] and report["repeated_steps"] == [], report  # each step once, same values
    assert report["sample_rows"] > 0 and not report["sample_differences"], report
    assert report["temp_files"] == [], report


TINY_STAGES = {
    "sft": (
        "configs/arithmetic/sft.yaml",
        {"model.init_args.model_config": TINY_MODEL_CONFIG, "trainer.max_steps": 40},
        ("hf",),
    ),
    "reward": (
        "configs/arithmetic/reward.yaml",
        {"data.init_args.pairs": "synthetic", "trainer.max_steps": 40},
        ("hf",),
    ),
    "grpo": (
        "configs/arithmetic/grpo.yaml",
        {"model.init_args.num_generations": 4, "data.init_args.batch_size": 4, "trainer.max_steps": 24},
        ("hf",),
    ),
}


@pytest.mark.parametrize("stage", sorted(TINY_STAGES))
def test_sft_reward_and_grpo_killed_once_end_as_the_uninterrupted_run(tmp_path, stage):
    base, stage_overrides, exports = TINY_STAGES[stage]
    policy = build_policy(str(tmp_path / "sft" / "hf"), TINY_MODEL_CONFIG)
    overrides = {
        "data.init_args.num_train": 128,
        "data.init_args.num_val": 16,
        "data.init_args.batch_size": 16,
        "data.init_args.eval_batch_size": 16,
        "trainer.val_check_interval": 8,
        "trainer.enable_progress_bar": False,
        **stage_overrides,
    }
    if stage == "sft":
        overrides["model.init_args.max_new_tokens"] = 8
    elif stage == "reward":
        overrides["model.init_args.model_name_or_path"] = policy
        overrides["data.init_args.labeller_policy"] = policy
    else:
        overrides["model.init_args.policy_name_or_path"] = policy
        overrides["model.init_args.max_new_tokens"] = 8
    runs = tmp_path / "runs" / "arithmetic"
    configs = {
        name: write_config(str(tmp_path / f"{name}.yaml"), base, str(runs / name), overrides, CHECKPOINT)
        for name in ("reference", "killed")
    }
    finish(launch(configs["reference"]), timeout=600)

    folder = str(runs / "killed" / "checkpoints")
    process = launch(configs["killed"])
    hit = kill_at(process, folder, "random", delay=random.Random(stage).uniform(0.0, 0.3))
    finish(launch(configs["killed"], os.path.join(folder, "last.ckpt")), timeout=600)
    assert hit is not None  # the kill landed before the run finished

    report = compare_runs(str(runs / "killed"), str(runs / "reference"), exports)
    assert report["tensors"] > 0 and report["export_differences"] == [], report
    assert report["tag_differences"] == [] and report["repeated_steps"] == [], report
    assert report["temp_files"] == [], report
