"""The templates configs/custom/{sft,reward,ppo,grpo}.yaml, run as a user runs them: the chain sft -> reward -> ppo
and grpo in one working directory, with the user's jsonl files at the templates' own paths (data/*.jsonl) and only
command-line overrides: the model placeholder, the CPU settings the headers give, and sizes small enough for a test.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from lit_rlhf.cli import cli_main
from tests.conftest import FIXTURES, TINY_MODEL_CONFIG
from tests.helpers import fixture_texts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUSTOM = os.path.join(ROOT, "configs", "custom")
DATA = os.path.join(FIXTURES, "custom")

# A chat template in the usual shape (one turn per message, then the assistant's turn), so that the templates'
# use_chat_template settings (null in the data, true for the reward model) run as they would for an instruct model.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

CPU = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--model.init_args.padding_free", "true"]
"""What each template's header says to add on a CPU."""


def save_tiny_instruct_model(path: str) -> str:
    """A 2-layer Llama with a byte-level BPE tokenizer, a chat template, EOS ``<|end|>`` and no pad token."""
    files = [os.path.join(DATA, f"{name}.jsonl") for name in ("sft", "pairs", "prompts")]
    texts = [text for path in files for text in fixture_texts(path)]
    specials = ["<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|end|>", bos_token="<|end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **TINY_MODEL_CONFIG,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def stage_args(stage: str, *overrides: str) -> list[str]:
    """``fit`` with configs/custom/<stage>.yaml, the CPU settings and test-sized data and runs."""
    return [
        "fit",
        "--config",
        os.path.join(CUSTOM, f"{stage}.yaml"),
        *CPU,
        "--data.init_args.val_fraction",
        "0.25",  # 4 of the 16 rows
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.eval_batch_size",
        "4",
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.max_length",
        "96",
        "--data.init_args.max_prompt_length",
        "48",
        "--trainer.max_steps",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *overrides,
    ]


def assert_run_folder(run_dir: str, exports: tuple[str, ...] = ("hf",)) -> None:
    for name in ("config.yaml", os.path.join("checkpoints", "last.ckpt")):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    for export in exports:
        for name in ("model.safetensors", "config.json", "tokenizer.json"):
            assert os.path.isfile(os.path.join(run_dir, export, name)), f"{export}/{name}"


def assert_same_weights(exported: torch.nn.Module, trained: torch.nn.Module) -> None:
    state = trained.state_dict()
    for name, value in exported.state_dict().items():
        assert torch.equal(value, state[name]), name


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A user's working directory: the jsonl files where the templates expect them, runs/ written here."""
    os.makedirs(tmp_path / "data")
    for name in ("sft", "pairs", "prompts"):
        shutil.copy(os.path.join(DATA, f"{name}.jsonl"), tmp_path / "data" / f"{name}.jsonl")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_custom_templates_chain_sft_reward_ppo_and_grpo(workdir):
    base = save_tiny_instruct_model(str(workdir / "base"))

    # Stage 1: SFT of the "pretrained" model on data/sft.jsonl.
    sft = cli_main(
        stage_args(
            "sft",
            "--model.init_args.model_name_or_path",  # the template's one model placeholder
            base,
            "--model.init_args.max_new_tokens",
            "8",
            "--trainer.accumulate_grad_batches",
            "1",
            "--trainer.val_check_interval",
            "2",
        )
    )
    assert sft.trainer.global_step == 2
    sft_dir = os.path.join("runs", "custom", "sft")
    assert_run_folder(sft_dir)
    assert_same_weights(AutoModelForCausalLM.from_pretrained(os.path.join(sft_dir, "hf")), sft.model.model)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(sft_dir, "hf"))
    assert tokenizer.chat_template == CHAT_TEMPLATE  # the later stages wrap prompts the same way

    # Stage 2: the reward model from runs/custom/sft/hf (the template's own path) on data/pairs.jsonl.
    reward = cli_main(
        stage_args("reward", "--trainer.accumulate_grad_batches", "1", "--trainer.val_check_interval", "2")
    )
    assert reward.trainer.global_step == 2
    reward_dir = os.path.join("runs", "custom", "reward")
    assert_run_folder(reward_dir)
    exported = AutoModelForSequenceClassification.from_pretrained(os.path.join(reward_dir, "hf"))
    assert exported.config.num_labels == 1 and exported.config.reward_normalization["num_responses"] > 0
    assert_same_weights(exported, reward.model.model)
    reward_tokenizer = AutoTokenizer.from_pretrained(os.path.join(reward_dir, "hf"))
    assert reward_tokenizer.pad_token == "<|pad|>" != reward_tokenizer.eos_token  # added by the template's pad_token

    # Stage 3: PPO and GRPO from both exports on data/prompts.jsonl; their run lengths count iterations.
    online = ("--model.init_args.max_new_tokens", "8", "--trainer.val_check_interval", "2")
    ppo = cli_main(stage_args("ppo", *online))
    assert ppo.model.iteration == 2 and ppo.trainer.global_step == 2
    ppo_dir = os.path.join("runs", "custom", "ppo")
    assert_run_folder(ppo_dir, ("hf", "hf_critic"))
    assert_same_weights(AutoModelForCausalLM.from_pretrained(os.path.join(ppo_dir, "hf")), ppo.model.model)
    assert "val/reward" in ppo.trainer.callback_metrics

    grpo = cli_main(stage_args("grpo", *online))
    assert grpo.model.iteration == 2 and grpo.trainer.global_step == 2
    grpo_dir = os.path.join("runs", "custom", "grpo")
    assert_run_folder(grpo_dir)
    assert_same_weights(AutoModelForCausalLM.from_pretrained(os.path.join(grpo_dir, "hf")), grpo.model.model)
    assert "val/reward" in grpo.trainer.callback_metrics
