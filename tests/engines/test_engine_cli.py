"""``sampling_engine`` from the command line: refused in one line without vLLM or with settings it would not use;
with vLLM, a GRPO run of the shipped config samples with the engine and logs the log-probability gap."""

import os

import pytest

from lit_rlhf.engines.settings import vllm_available
from tests.helpers import read_events
from tests.test_lora_cli import error_line

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ONLINE_CONFIGS = ["configs/arithmetic/grpo.yaml", "configs/arithmetic/ppo.yaml", "configs/arithmetic/online_dpo.yaml"]


@pytest.mark.skipif(vllm_available(), reason="vLLM is installed here")
@pytest.mark.parametrize("config", ONLINE_CONFIGS)
def test_vllm_without_vllm_is_one_line_naming_the_install(config, capsys):
    line = error_line(
        capsys, ["fit", "--config", os.path.join(ROOT, config), "--model.init_args.sampling_engine", "vllm"]
    )
    assert "sampling_engine vllm needs vLLM" in line and "pip install 'lit_rlhf[vllm]'" in line


def test_vllm_settings_without_the_vllm_engine_are_refused(capsys):
    config = os.path.join(ROOT, ONLINE_CONFIGS[0])
    line = error_line(capsys, ["fit", "--config", config, "--model.init_args.vllm.kv_cache_gib", "0.5"])
    assert "model.init_args.vllm sets up the vLLM engine, which this run does not use" in line


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="needs vLLM: make test-vllm")
def test_grpo_config_with_the_vllm_engine_logs_the_gap(tmp_path):
    from lit_rlhf.cli import cli_main
    from lit_rlhf.models import build_word_tokenizer
    from lit_rlhf.models.tiny import build_tiny_llama
    from tests.engines.test_vllm_engine import VLLM_TINY_CONFIG
    from tests.engines.test_vllm_modules import vllm_policy_dir  # noqa: F401

    policy = str(tmp_path / "sft")
    tokenizer = build_word_tokenizer()
    build_tiny_llama(tokenizer, {**VLLM_TINY_CONFIG, "max_position_embeddings": 128}).save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    run_dir = tmp_path / "runs" / "arithmetic" / "grpo"
    cli_main(
        [
            "fit",
            "--config",
            os.path.join(ROOT, ONLINE_CONFIGS[0]),
            "--model.init_args.policy_name_or_path",
            policy,
            "--model.init_args.sampling_engine",
            "vllm",
            "--model.init_args.vllm.kv_cache_gib",
            "0.25",
            "--data.init_args.num_train",
            "64",
            "--data.init_args.num_val",
            "16",
            "--trainer.max_steps",
            "3",
            "--trainer.val_check_interval",
            "3",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
        ]
    )
    scalars, _ = read_events(str(run_dir))
    gaps = [value for _, value in scalars["engine/logprob_gap_mean"]]
    assert len(gaps) == 3 and all(gap < 1e-4 for gap in gaps)
    assert "val/exact_match" in scalars
    assert os.path.isfile(run_dir / "hf" / "config.json")
