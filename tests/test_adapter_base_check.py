"""Resuming LoRA adapters on other base weights than they were trained on is refused."""

import os

import pytest
import torch

from lit_rlhf.checkpoint_checks import CheckpointMismatchError, check_base_fingerprints
from lit_rlhf.cli import cli_main
from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.models.adapters import apply_adapters, frozen_weights_fingerprint
from lit_rlhf.models.tiny import build_tiny_llama
from tests.conftest import TINY_MODEL_CONFIG
from tests.helpers import tiny_cli_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFT_CONFIG = os.path.join(ROOT, "configs", "arithmetic", "sft.yaml")
LORA = [
    "--model.init_args.peft_config.class_path",
    "peft.LoraConfig",
    "--model.init_args.peft_config.init_args.r",
    "4",
    "--model.init_args.peft_config.init_args.target_modules",
    "all-linear",
]


def test_the_fingerprint_sees_the_frozen_weights_only():
    from peft import LoraConfig

    tokenizer = build_word_tokenizer()
    torch.manual_seed(0)
    model = apply_adapters(build_tiny_llama(tokenizer, TINY_MODEL_CONFIG), LoraConfig(r=2), "peft_config")
    before = frozen_weights_fingerprint(model)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(1.0)  # training the adapters leaves it as it is
    assert frozen_weights_fingerprint(model) == before
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(1.5)  # not adapted: frozen
    assert frozen_weights_fingerprint(model) != before
    check_base_fingerprints({}, [before], "old.ckpt")  # a checkpoint without fingerprints is not checked
    with pytest.raises(CheckpointMismatchError, match="other base weights"):
        check_base_fingerprints({"base_fingerprints": [before]}, [frozen_weights_fingerprint(model)], "last.ckpt")


def test_resuming_adapters_on_another_built_in_base_is_refused(tmp_path):
    run_dir = str(tmp_path / "runs" / "arithmetic" / "sft")
    cli_main(tiny_cli_args(SFT_CONFIG, run_dir, max_steps=2) + LORA)
    ckpt = os.path.join(run_dir, "checkpoints", "last.ckpt")
    resume = tiny_cli_args(SFT_CONFIG, run_dir, max_steps=3) + LORA + ["--ckpt_path", ckpt]
    with pytest.raises(CheckpointMismatchError, match="other base weights than the ones this config loads"):
        cli_main(resume + ["--seed_everything", "7"])  # the built-in model is drawn from the seed
    cli_main(resume)  # the same base: resumes
