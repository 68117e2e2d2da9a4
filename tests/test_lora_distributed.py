"""LoRA adapters on 2 CPU processes (gloo), run as a user runs them (``python train.py fit``): under FSDP2 and under
DDP a run stopped at step 3 and resumed from its adapter-only checkpoint equals the uninterrupted run bit for bit;
the merged export gathered from the shards equals one process's (SFT, reward) or DDP's (GRPO, PPO: the same sampler
draws on both layouts) and the adapter export loads with ``peft``; Lightning's own ``ModelParallelStrategy`` is
refused. The equality of each optimizer step with one process's is in tests/modules/test_ddp_equivalence.py (PPO)
and tests/modules/test_grpo_ddp.py (GRPO).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from benchmarks.kill_resume import build_policy
from lit_rlhf.errors import ConfigError
from lit_rlhf.strategies import FSDP2Strategy, check_adapter_strategy
from tests.conftest import TINY_MODEL_CONFIG
from tests.test_fsdp2_stages import (
    MAX_STEPS,
    MODEL_PARALLEL,
    ROOT,
    STOP_AT,
    assert_same_curve,
    assert_same_export,
    assert_same_resumed_run,
    assert_same_tags,
    compared_tags,
    fit,
    losses,
    offline_config,
    online_config,
    run_dir,
    stopped_and_resumed,
)

TRAINED_HEADS = {"sft": (), "grpo": (), "reward": ("model.score.",), "ppo": ("critic.score.",)}
"""The state-dict prefixes of the heads each stage trains in full beside its adapters."""


def is_trained(key: str, heads: tuple[str, ...]) -> bool:
    return ".lora_A." in key or ".lora_B." in key or key.startswith(heads)


def saved_weights(folder: str) -> list[str]:
    """The module state-dict keys stored in the distributed checkpoint ``folder`` (its ``.metadata``)."""
    from torch.distributed.checkpoint import FileSystemReader

    keys = FileSystemReader(folder).read_metadata().state_dict_metadata
    return sorted(key.removeprefix("state_dict.") for key in keys if key.startswith("state_dict."))


def assert_holds_only_what_trains(keys: list[str], stage: str) -> None:
    """The adapters (both factors of each) and the trained heads are saved, no frozen base weight."""
    heads = TRAINED_HEADS[stage]
    assert any(".lora_A." in key for key in keys) and any(".lora_B." in key for key in keys)
    assert all(any(key.startswith(head) for key in keys) for head in heads), heads
    base = [key for key in keys if not is_trained(key, heads)]
    assert base == [], base


def assert_adapter_loads_with_peft(folder: str, export: str, base: str, auto_class) -> None:
    """``<export>_adapter`` loads with ``PeftModel.from_pretrained`` onto the base model and gives the outputs of the
    merged ``<export>``."""
    from peft import PeftModel

    merged = auto_class.from_pretrained(os.path.join(folder, export)).eval()
    extra = (
        {"num_labels": 1, "pad_token_id": merged.config.pad_token_id} if auto_class is not AutoModelForCausalLM else {}
    )
    adapted = PeftModel.from_pretrained(
        auto_class.from_pretrained(base, **extra), os.path.join(folder, f"{export}_adapter")
    )
    ids = torch.tensor([[5, 9, 12, 7, 30, 3, 17, 8]])
    with torch.no_grad():
        expected, got = merged(input_ids=ids).logits, adapted.eval()(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_lightnings_model_parallel_strategy_with_adapters_is_refused_pointing_to_fsdp2():
    raw = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    with pytest.raises(ConfigError, match="--trainer.strategy fsdp2, not ModelParallelStrategy") as info:
        check_adapter_strategy(raw, "SFTModule", four_bit=False)
    assert "\n" not in str(info.value)
    for accepted in (FSDP2Strategy(), DDPStrategy()):
        check_adapter_strategy(accepted, "SFTModule", four_bit=False)


@pytest.mark.slow
def test_train_py_with_adapters_under_model_parallel_strategy_fails_in_one_line(tmp_path):
    policy = build_policy(str(tmp_path / "policy"), TINY_MODEL_CONFIG)
    config = offline_config(tmp_path, "sft", "raw", policy, batch_size=4, lora=True)
    command = [sys.executable, "train.py", "fit", "--config", config, "--trainer.accelerator", "cpu"]
    command += ["--trainer.devices", "2", "--trainer.strategy", MODEL_PARALLEL]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert lines and "--trainer.strategy fsdp2" in lines[0] and "peft_config" in lines[0], lines


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "reward", "grpo", "ppo"])
def test_adapters_under_fsdp2_equal_one_process_and_resume_exactly_from_adapter_only_folders(tmp_path, stage):
    """SFT and reward against one process with the whole global batch; GRPO and PPO against DDP with the real
    sampler (each rank draws from the same random stream in both layouts)."""
    policy = build_policy(str(tmp_path / "policy"), TINY_MODEL_CONFIG)
    online = stage in ("grpo", "ppo")
    if online:
        reference, sharded, resumed = (run_dir(tmp_path, stage, name) for name in ("ddp", "sharded", "resumed"))
        fit(online_config(tmp_path, stage, "ddp", policy, lora=True), 2, "ddp")
        fit(online_config(tmp_path, stage, "sharded", policy, lora=True), 2, "fsdp2")
        stopped_and_resumed(online_config(tmp_path, stage, "resumed", policy, lora=True), resumed, "fsdp2")
    else:
        reference, sharded, resumed = (run_dir(tmp_path, stage, name) for name in ("one", "sharded", "resumed"))
        fit(offline_config(tmp_path, stage, "one", policy, batch_size=8, lora=True), 1, "auto")
        fit(offline_config(tmp_path, stage, "sharded", policy, batch_size=4, lora=True), 2, "fsdp2")
        stopped_and_resumed(
            offline_config(tmp_path, stage, "resumed", policy, batch_size=4, lora=True), resumed, "fsdp2"
        )

    # The checkpoint folder holds the adapters and trained heads (weights and optimizer states), no base weight.
    assert_holds_only_what_trains(saved_weights(os.path.join(resumed, "checkpoints", "last.ckpt")), stage)

    # The sharded run trains as the reference layout does, and its merged export (gathered from the shards) holds
    # the same weights.
    if online:
        expected = compared_tags(reference)
        assert any(value != 0 for _, value in expected["loss/policy"])  # the adapters learn
        assert_same_tags(compared_tags(sharded), expected, rtol=1e-4, atol=1e-5)
    else:
        expected = losses(reference)
        assert [step for step, _ in expected] == list(range(MAX_STEPS)) and expected[-1][1] < expected[0][1]
        assert_same_curve(losses(sharded), expected, rtol=1e-5)
    auto_class = AutoModelForSequenceClassification if stage == "reward" else AutoModelForCausalLM
    exports = [("hf", auto_class)] + ([("hf_critic", AutoModelForSequenceClassification)] if stage == "ppo" else [])
    for export, export_class in exports:
        assert_same_export(os.path.join(sharded, export), os.path.join(reference, export), export_class, atol=1e-5)
        assert_adapter_loads_with_peft(sharded, export, policy, export_class)
    # The merged export is not the base model: the adapters moved it.
    trained = AutoModelForCausalLM.from_pretrained(os.path.join(sharded, "hf")) if stage != "reward" else None
    if trained is not None:
        base = AutoModelForCausalLM.from_pretrained(policy).state_dict()
        assert any(not torch.equal(value, base[key]) for key, value in trained.state_dict().items())

    # Stopped at step 3 and resumed from the adapter-only folder (the base weights reloaded from the policy folder):
    # every logged value, the sample table and the exports are the uninterrupted run's, bit for bit.
    assert len(losses(resumed, "loss/policy" if online else "train/loss")) == MAX_STEPS
    assert_same_resumed_run(resumed, sharded, exports)


@pytest.mark.slow
def test_adapters_under_ddp_resume_exactly_from_an_adapter_only_file(tmp_path):
    policy = build_policy(str(tmp_path / "policy"), TINY_MODEL_CONFIG)
    whole, resumed = run_dir(tmp_path, "sft", "whole"), run_dir(tmp_path, "sft", "resumed")
    fit(offline_config(tmp_path, "sft", "whole", policy, batch_size=4, lora=True), 2, "ddp")
    config = offline_config(tmp_path, "sft", "resumed", policy, batch_size=4, lora=True)
    fit(config, 2, "ddp", "--trainer.max_steps", str(STOP_AT))
    last = os.path.join(resumed, "checkpoints", "last.ckpt")
    assert os.path.isfile(last)
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == STOP_AT and checkpoint["lit_rlhf"]["adapters"] is True
    assert_holds_only_what_trains(sorted(checkpoint["state_dict"]), "sft")
    fit(config, 2, "ddp", "--ckpt_path", last)
    assert_same_resumed_run(resumed, whole, [("hf", AutoModelForCausalLM)])
    assert_adapter_loads_with_peft(resumed, "hf", policy, AutoModelForCausalLM)
