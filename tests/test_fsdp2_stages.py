"""Every stage under FSDP2, run as a user runs it (``python train.py fit``, 2 CPU processes over gloo): SFT and reward
equal one process on the same global batch, PPO and GRPO equal DDP with the same sampler, a sharded checkpoint
resumes to the uninterrupted run, and the exports reload with plain ``from_pretrained``.

SFT and reward train on tests/fixtures/fsdp2/ (every row the same number of tokens, so the mean of the two ranks'
token means is the global batch's token mean); 2 processes with batch size B each against 1 process with 2B: the
shared sampler gives rank ``r`` the indices ``r::2`` of the same permutation, so the global batch holds the same rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from benchmarks.kill_resume import build_policy, write_config
from lit_rlhf.data.sampler import ResumableSampler
from lit_rlhf.tables import read_jsonl
from tests.conftest import FIXTURES, TINY_MODEL_CONFIG
from tests.helpers import read_events

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(FIXTURES, "fsdp2")

MODEL_PARALLEL = json.dumps(
    {
        "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
        "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1},
    }
)
"""FSDP2 spelled out as Lightning's own strategy (``fsdp2`` is the same with the sizes filled in)."""


def fit(config: str, devices: int, strategy: str, *extra: str, timeout: float = 600) -> None:
    """``python train.py fit --config <config>`` on ``devices`` CPU processes under ``strategy``, one thread each."""
    command = [sys.executable, "train.py", "fit", "--config", config, "--trainer.accelerator", "cpu"]
    command += ["--trainer.devices", str(devices), "--trainer.strategy", strategy, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]


def losses(run_dir: str, tag: str = "train/loss") -> list[tuple[int, float]]:
    """The ``(step, value)`` curve of ``tag`` in ``run_dir``'s TensorBoard events."""
    return sorted(read_events(run_dir)[0][tag])


def assert_same_curve(got: list[tuple[int, float]], expected: list[tuple[int, float]], rtol: float = 1e-5) -> None:
    assert [step for step, _ in got] == [step for step, _ in expected]
    for (step, value), (_, reference) in zip(got, expected):
        assert value == pytest.approx(reference, rel=rtol, abs=1e-7), step


def assert_same_export(got_dir: str, expected_dir: str, auto_class, atol: float = 1e-6) -> None:
    """Both exports hold the same tensors (a tied LM head written once in both) and reload with plain
    ``from_pretrained`` to the same weights (to ``atol``)."""
    files = [load_file(os.path.join(folder, "model.safetensors")) for folder in (got_dir, expected_dir)]
    assert files[0].keys() == files[1].keys()
    got, expected = auto_class.from_pretrained(got_dir), auto_class.from_pretrained(expected_dir)
    expected_state = expected.state_dict()
    assert got.state_dict().keys() == expected_state.keys()
    for name, value in got.state_dict().items():
        torch.testing.assert_close(value, expected_state[name], atol=atol, rtol=0, msg=name)


def test_two_ranks_split_the_single_process_batches_between_them():
    """Rank ``r`` of 2 with batch size B holds rows ``r::2`` of one process's batch of 2B, in every epoch."""
    for epoch in (0, 1):
        one = ResumableSampler(32, seed=1234)
        ranks = [ResumableSampler(32, num_replicas=2, rank=rank, seed=1234) for rank in range(2)]
        for sampler in (one, *ranks):
            sampler.set_epoch(epoch)
        order, halves = list(one), [list(rank) for rank in ranks]
        assert sorted(order) == list(range(32)) and order != list(range(32))
        for start in range(0, 32, 8):
            batch = order[start : start + 8]
            assert batch[0::2] == halves[0][start // 2 : start // 2 + 4]
            assert batch[1::2] == halves[1][start // 2 : start // 2 + 4]


MAX_STEPS = 6
STOP_AT = 3
CHECKPOINT_EVERY = {"save_last": True, "every_n_train_steps": STOP_AT, "save_top_k": 0}


def run_dir(tmp_path, stage: str, name: str) -> str:
    return str(tmp_path / "runs" / stage / name)


LORA = {"class_path": "peft.LoraConfig", "init_args": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}}
"""The ``peft_config`` of the LoRA runs: rank 4 on every linear layer."""


def offline_config(tmp_path, stage: str, name: str, policy: str, batch_size: int, lora: bool = False) -> str:
    """configs/custom/<stage>.yaml (sft or reward) on the fixture rows with the tiny policy, on the CPU, into
    ``runs/<stage>/<name>``: ``batch_size`` rows per process, a learning rate schedule that does not depend on the
    run length (so a run stopped early is the first part of the whole run), a checkpoint every ``STOP_AT`` steps;
    with ``lora``, LoRA adapters (:data:`LORA`)."""
    rows = os.path.join(DATA, "sft.jsonl" if stage == "sft" else "pairs.jsonl")
    overrides = {
        "model.init_args.model_name_or_path": policy,
        "model.init_args.padding_free": True,
        "model.init_args.learning_rate": 3e-3,
        "model.init_args.warmup_steps": 2,
        "model.init_args.lr_schedule": "constant",
        "data.init_args.train": rows,
        "data.init_args.val": rows,
        "data.init_args.batch_size": batch_size,
        "data.init_args.eval_batch_size": 8,
        "data.init_args.num_workers": 0,
        "data.init_args.max_length": 64,
        "data.init_args.max_prompt_length": 32,
        "trainer.precision": "32-true",
        "trainer.max_epochs": -1,
        "trainer.max_steps": MAX_STEPS,  # 32 rows, 8 per step: the run crosses an epoch boundary
        "trainer.accumulate_grad_batches": 1,
        "trainer.gradient_clip_val": 0.1,  # low enough to act, so it must clip by the global gradient's norm
        "trainer.val_check_interval": MAX_STEPS,
        "trainer.check_val_every_n_epoch": None,
        "trainer.limit_val_batches": 2,
        "trainer.log_every_n_steps": 1,
        "trainer.enable_progress_bar": False,
        "trainer.enable_model_summary": False,
    }
    if stage == "sft":
        overrides["model.init_args.max_new_tokens"] = 6
    if lora:
        overrides["model.init_args.peft_config"] = LORA
    config = str(tmp_path / f"{stage}_{name}.yaml")
    return write_config(
        config, f"configs/custom/{stage}.yaml", run_dir(tmp_path, stage, name), overrides, CHECKPOINT_EVERY
    )


def online_config(tmp_path, stage: str, name: str, policy: str, lora: bool = False) -> str:
    """configs/arithmetic/{ppo_verifier,grpo}.yaml with the tiny policy, a graded reward (an untrained policy is never
    exactly right) and a KL term to its sharded reference, into ``runs/<stage>/<name>``; with ``lora``, LoRA adapters
    (:data:`LORA`) on the policy (and PPO's critic), the reference the policy with its adapters off."""
    base = "configs/arithmetic/ppo_verifier.yaml" if stage == "ppo" else "configs/arithmetic/grpo.yaml"
    overrides = {
        "model.init_args.policy_name_or_path": policy,
        "model.init_args.max_new_tokens": 8,
        "data.init_args.num_train": 32,
        "data.init_args.num_val": 8,
        "data.init_args.eval_batch_size": 4,
        "trainer.max_steps": MAX_STEPS,
        "trainer.val_check_interval": MAX_STEPS,
        "trainer.enable_progress_bar": False,
        "trainer.enable_model_summary": False,
    }
    if stage == "ppo":
        overrides["model.init_args.reward"] = {
            "class_path": "lit_rlhf.rewards.ArithmeticVerifierReward",
            "init_args": {"metric": "graded_score"},
        }
        overrides.update({"model.init_args.actor_learning_rate": 1e-3, "model.init_args.critic_learning_rate": 1e-3})
        overrides["data.init_args.batch_size"] = 4
    else:
        overrides["model.init_args.rewards"] = [
            {"class_path": "lit_rlhf.rewards.ArithmeticVerifierReward", "init_args": {"metric": "graded_score"}},
            {"class_path": "lit_rlhf.rewards.LengthReward", "init_args": {"ideal_length": 10, "scale": 0.1}},
        ]
        overrides.update({"model.init_args.learning_rate": 1e-3, "model.init_args.beta": 0.1})
        overrides.update({"model.init_args.num_generations": 4, "data.init_args.batch_size": 2})
    if lora:
        overrides["model.init_args.peft_config"] = LORA
    config = str(tmp_path / f"{stage}_{name}.yaml")
    return write_config(config, base, run_dir(tmp_path, stage, name), overrides, CHECKPOINT_EVERY)


def stopped_and_resumed(config: str, folder: str, strategy: str) -> None:
    """Run ``config`` on 2 processes to step ``STOP_AT`` (a checkpoint there), then resume it from that sharded
    checkpoint, a folder, to the end of the run."""
    fit(config, 2, strategy, "--trainer.max_steps", str(STOP_AT))
    last = os.path.join(folder, "checkpoints", "last.ckpt")
    assert os.path.isdir(last) and any(name.endswith(".distcp") for name in os.listdir(last)), last
    assert len(losses(folder, curve_tag(folder))) == STOP_AT
    fit(config, 2, strategy, "--ckpt_path", last)


def curve_tag(folder: str) -> str:
    scalars = read_events(folder)[0]
    return "train/loss" if "train/loss" in scalars else sorted(t for t in scalars if t.startswith("loss/"))[0]


def compared_tags(folder: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of ``folder``'s TensorBoard events: ``{tag: [(step, value)]}`` in step order."""
    return {tag: sorted(values) for tag, values in read_events(folder)[0].items()}


def assert_same_tags(got: dict, expected: dict, rtol: float, atol: float) -> None:
    """The same scalar tags at the same steps with values equal to ``rtol`` / ``atol`` (NaN equals NaN)."""
    assert sorted(got) == sorted(expected)
    for tag, curve in expected.items():
        assert [step for step, _ in got[tag]] == [step for step, _ in curve], tag
        for (step, value), (_, reference) in zip(got[tag], curve):
            assert value == pytest.approx(reference, rel=rtol, abs=atol, nan_ok=True), (tag, step)


def config_of(folder: str, export: str = "hf") -> dict:
    with open(os.path.join(folder, export, "config.json")) as f:
        return json.load(f)


def assert_same_resumed_run(resumed: str, uninterrupted: str, exports: list[tuple[str, type]]) -> None:
    """Every logged value at every step, the validation sample table and each export (reloaded with plain
    ``from_pretrained``) of ``resumed`` are exactly ``uninterrupted``'s."""
    assert_same_tags(compared_tags(resumed), compared_tags(uninterrupted), rtol=0, atol=0)
    samples = [read_jsonl(os.path.join(folder, "samples.jsonl")) for folder in (resumed, uninterrupted)]
    assert samples[0] and samples[0] == samples[1]
    for export, auto_class in exports:
        assert_same_export(os.path.join(resumed, export), os.path.join(uninterrupted, export), auto_class, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "strategy", "auto_class"),
    [("sft", MODEL_PARALLEL, AutoModelForCausalLM), ("reward", "fsdp2", AutoModelForSequenceClassification)],
)
def test_sft_and_reward_under_fsdp2_equal_one_process_and_resume_exactly(tmp_path, stage, strategy, auto_class):
    policy = build_policy(str(tmp_path / "policy"), TINY_MODEL_CONFIG)
    one, sharded, resumed = (run_dir(tmp_path, stage, name) for name in ("one", "sharded", "resumed"))
    fit(offline_config(tmp_path, stage, "one", policy, batch_size=8), 1, "auto")
    fit(offline_config(tmp_path, stage, "sharded", policy, batch_size=4), 2, strategy)
    stopped_and_resumed(offline_config(tmp_path, stage, "resumed", policy, batch_size=4), resumed, strategy)

    # 2 processes with 4 rows each give the loss of one process's 8 rows at every step: the logged loss is the
    # mean over the processes, and FSDP2 reduces the gradients to the global batch's mean.
    expected = losses(one)
    assert [step for step, _ in expected] == list(range(MAX_STEPS))
    assert expected[-1][1] < expected[0][1]  # it learns: the curve is not flat
    assert_same_curve(losses(sharded), expected, rtol=1e-5)
    # The export reloads with plain from_pretrained and holds the weights one process trained.
    assert_same_export(os.path.join(sharded, "hf"), os.path.join(one, "hf"), auto_class, atol=1e-5)

    if stage == "reward":  # the score statistics PPO normalises with, measured at the end of the run
        normalization = [config_of(folder)["reward_normalization"] for folder in (sharded, one)]
        assert normalization[0]["num_responses"] == normalization[1]["num_responses"] > 0
        for key in ("mean", "std"):
            # scores of weights equal to about 1e-6: equal to about 1e-5 of their size
            assert normalization[0][key] == pytest.approx(normalization[1][key], rel=1e-4), key

    # Stopped at step 3 and resumed from its sharded checkpoint: every logged value and the export are the
    # uninterrupted run's, bit for bit.
    assert_same_resumed_run(resumed, sharded, [("hf", auto_class)])


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_ppo_and_grpo_under_fsdp2_equal_ddp_and_resume_exactly(tmp_path, stage):
    """The real sampler on both layouts: each rank draws from the same random stream in both, so the samples, and
    with them every logged value, agree up to float rounding."""
    policy = build_policy(str(tmp_path / "policy"), TINY_MODEL_CONFIG)
    ddp, sharded, resumed = (run_dir(tmp_path, stage, name) for name in ("ddp", "sharded", "resumed"))
    fit(online_config(tmp_path, stage, "ddp", policy), 2, "ddp")
    fit(online_config(tmp_path, stage, "sharded", policy), 2, "fsdp2")
    stopped_and_resumed(online_config(tmp_path, stage, "resumed", policy), resumed, "fsdp2")

    expected = compared_tags(ddp)
    policy_loss = [value for _, value in expected["loss/policy"]]
    assert len(policy_loss) == MAX_STEPS and any(value != 0 for value in policy_loss)  # the policy learns
    assert_same_tags(compared_tags(sharded), expected, rtol=1e-4, atol=1e-5)
    exports = [("hf", AutoModelForCausalLM)] + (
        [("hf_critic", AutoModelForSequenceClassification)] if stage == "ppo" else []
    )
    for export, auto_class in exports:
        assert_same_export(os.path.join(sharded, export), os.path.join(ddp, export), auto_class, atol=1e-5)

    assert read_jsonl(os.path.join(sharded, "samples.jsonl")) == read_jsonl(os.path.join(ddp, "samples.jsonl"))

    assert_same_resumed_run(resumed, sharded, exports)
