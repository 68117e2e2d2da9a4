"""Every option value of the SFT, reward, PPO and GRPO modules is checked at the start of ``__init__``.

The modules are built with a model folder that does not exist: a ConfigError (not a ModelLoadError) shows that the
check ran before anything tried to load a model.
"""

from __future__ import annotations

import math
from typing import get_args

import lightning as L
import pytest

from lit_rlhf.errors import ConfigError
from lit_rlhf.generation import check_sampling
from lit_rlhf.models.loading import DTYPES, ModelLoadError
from lit_rlhf.modules import GRPOModule, PPOModule, RewardModule, SFTModule
from lit_rlhf.modules.base import AdamWImplementation
from lit_rlhf.modules.checks import (
    ADAMW_IMPLEMENTATIONS,
    DTYPE_NAMES,
    GRPO_RULES,
    PPO_RULES,
    REWARD_RULES,
    SFT_RULES,
    check_minibatch_split,
)
from lit_rlhf.rewards import ArithmeticVerifierReward

MISSING = "/nonexistent/lit_rlhf-test/hf"
"""A model folder that does not exist: loading it would raise ModelLoadError."""


def build(stage: str, **options):
    if stage == "sft":
        return SFTModule(model_name_or_path=MISSING, **options)
    if stage == "reward":
        return RewardModule(model_name_or_path=MISSING, **options)
    if stage == "ppo":
        return PPOModule(ArithmeticVerifierReward(), policy_name_or_path=MISSING, **options)
    return GRPOModule([ArithmeticVerifierReward()], policy_name_or_path=MISSING, **options)


# (stage, option, bad value, text the message must hold besides the key and the value)
BAD_VALUES = [
    ("sft", "learning_rate", 0.0, "> 0"),
    ("sft", "learning_rate", -1e-3, "> 0"),
    ("sft", "learning_rate", math.nan, "> 0"),
    ("sft", "weight_decay", -0.1, ">= 0"),
    ("sft", "betas", (0.9, 1.5), "two numbers, each in [0, 1)"),
    ("sft", "warmup_steps", -1, ">= 0"),
    ("sft", "lr_schedule", "cosin", "one of constant, linear, cosine"),
    ("sft", "min_lr_ratio", 1.5, "in [0, 1]"),
    ("sft", "adamw_implementation", "adam", "one of for_loop, foreach, fused or null"),
    ("sft", "length_chunks", 0, ">= 1"),
    ("sft", "max_new_tokens", 0, ">= 1"),
    ("sft", "generate_val_batches", -1, ">= 0 or null"),
    ("sft", "num_logged_samples", -2, ">= 0"),
    ("sft", "dtype", "float64", "one of float32, bfloat16, float16 or null"),
    ("reward", "learning_rate", -1.0, "> 0"),
    ("reward", "center_coef", -0.01, ">= 0"),
    ("reward", "prefix_loss_coef", -1.0, ">= 0"),
    ("reward", "warmup_steps", -5, ">= 0"),
    ("reward", "num_logged_pairs", -1, ">= 0"),
    ("reward", "dtype", "int8", "one of float32"),
    ("ppo", "clip_range", -0.2, "> 0"),
    ("ppo", "clip_range_value", 0.0, "> 0"),
    ("ppo", "gamma", 2.0, "in [0, 1]"),
    ("ppo", "lam", 5.0, "in [0, 1]"),
    ("ppo", "lam", -0.1, "in [0, 1]"),
    ("ppo", "temperature", 0.0, "> 0"),
    ("ppo", "temperature", -1.0, "> 0"),
    ("ppo", "max_new_tokens", 0, ">= 1"),
    ("ppo", "top_p", 0.0, "in (0, 1]"),
    ("ppo", "top_p", 1.5, "in (0, 1]"),
    ("ppo", "top_k", -1, ">= 0"),
    ("ppo", "ppo_epochs", 0, ">= 1"),
    ("ppo", "num_minibatches", 0, ">= 1"),
    ("ppo", "gradient_accumulation_steps", 0, ">= 1"),
    ("ppo", "actor_learning_rate", 0.0, "> 0"),
    ("ppo", "critic_learning_rate", -1e-5, "> 0"),
    ("ppo", "kl_coef", -0.05, ">= 0"),
    ("ppo", "kl_estimator", "k2", "one of k1, k3"),
    ("ppo", "adaptive_kl_target", 0.0, "> 0 or null"),
    ("ppo", "adaptive_kl_horizon", 0.0, "> 0"),
    ("ppo", "missing_eos_penalty", -1.0, ">= 0 or null"),
    ("ppo", "max_grad_norm", 0.0, "> 0"),
    ("ppo", "warmup_steps", -1, ">= 0"),
    ("grpo", "num_generations", 1, ">= 2"),
    ("grpo", "beta", -0.1, ">= 0"),
    ("grpo", "learning_rate", 0.0, "> 0"),
    ("grpo", "loss_averaging", "tokens", "one of token, sequence"),
    ("grpo", "clip_range", 0.0, "> 0"),
    ("grpo", "clip_range_high", -0.1, "> 0 or null"),
    ("grpo", "num_iterations", 0, ">= 1"),
    ("grpo", "num_minibatches", 0, ">= 1"),
    ("grpo", "temperature", 0.0, "> 0"),
    ("grpo", "max_new_tokens", 0, ">= 1"),
    ("grpo", "top_p", 2.0, "in (0, 1]"),
    ("grpo", "top_k", -3, ">= 0"),
    ("grpo", "max_grad_norm", -1.0, "> 0"),
]


@pytest.mark.parametrize(("stage", "option", "value", "requirement"), BAD_VALUES)
def test_a_bad_option_value_is_refused_before_any_model_loads(stage, option, value, requirement):
    with pytest.raises(ConfigError) as caught:
        build(stage, **{option: value})
    message = str(caught.value)
    key = f"model.init_args.{option}"
    assert message.startswith(f"{key} must be {requirement}"), message
    assert f"got {value!r}" in message
    assert f"--{key}" in message  # how to fix it from the command line
    assert "\n" not in message


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo", "grpo"])
def test_default_values_pass_the_checks_and_loading_comes_after(stage):
    with pytest.raises(ModelLoadError, match="no such model folder"):
        build(stage)


def test_every_rule_names_an_argument_of_its_module():
    import inspect

    for module, rules in ((SFTModule, SFT_RULES), (RewardModule, REWARD_RULES)):
        assert set(rules) <= set(inspect.signature(module.__init__).parameters), module
    for module, rules in ((PPOModule, PPO_RULES), (GRPOModule, GRPO_RULES)):
        assert set(rules) <= set(inspect.signature(module.__init__).parameters), module


def test_the_checks_accept_what_the_loaders_and_optimizer_accept():
    assert set(DTYPE_NAMES) == set(DTYPES)
    assert set(ADAMW_IMPLEMENTATIONS) == set(get_args(AdamWImplementation))


def test_options_that_exclude_each_other():
    with pytest.raises(ConfigError, match=r"padding_free and model.init_args.length_chunks=2 exclude each other"):
        build("sft", padding_free=True, length_chunks=2)


@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_padding_free_and_gradient_checkpointing_exclude_each_other(stage):
    message = "padding_free and model.init_args.gradient_checkpointing are both true, .*gradient checkpointing"
    with pytest.raises(ConfigError, match=message):
        build(stage, padding_free=True, gradient_checkpointing=True)


def test_grpo_needs_a_reward_source():
    with pytest.raises(ConfigError, match=r"^model.init_args.rewards must be a list of at least one reward source"):
        GRPOModule([], policy_name_or_path=MISSING)


def test_grpo_reward_weights_must_match_the_reward_sources():
    with pytest.raises(
        ConfigError, match=r"model.init_args.reward_weights must be a list of 1 weights .*got \[1.0, 2.0\]"
    ):
        build("grpo", reward_weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match=r"model.init_args.reward_weights must be a list of finite numbers"):
        build("grpo", reward_weights=[math.inf])


def test_generate_refuses_sampling_settings_it_cannot_sample_with():
    check_sampling(1, 0.7, 0, 1.0)
    check_sampling(8, 0.0, do_sample=False)  # greedy decoding ignores temperature, top_k and top_p
    for kwargs, key in (
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 4, "temperature": 0.0}, "temperature"),
        ({"max_new_tokens": 4, "top_k": -1}, "top_k"),
        ({"max_new_tokens": 4, "top_p": 0.0}, "top_p"),
    ):
        with pytest.raises(ConfigError, match=f"^sampling opt.{key} must be .*with --opt.{key}$"):
            check_sampling(**kwargs, prefix="opt.")
        with pytest.raises(ConfigError, match=f"^sampling {key} must be .*, got"):
            check_sampling(**kwargs)


def test_more_minibatches_than_rows_is_refused():
    check_minibatch_split(4, 4, rows_name="prompts")
    with pytest.raises(ConfigError, match=r"num_minibatches is 5, more than the 4 prompts of a training batch"):
        check_minibatch_split(4, 5, rows_name="prompts")


def test_ppo_refuses_more_minibatches_than_prompts_before_the_first_rollout(tmp_path, policy_dir):
    from lit_rlhf.data import ArithmeticDataModule

    module = PPOModule(ArithmeticVerifierReward(), policy_name_or_path=policy_dir, num_minibatches=8, max_new_tokens=4)
    data = ArithmeticDataModule(format="prompt", num_train=16, num_val=4, batch_size=4)
    trainer = L.Trainer(max_steps=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match=r"num_minibatches is 8, more than the 4 prompts .*data.init_args.batch_size"):
        trainer.fit(module, data)
    assert module.iteration == 0


def test_grpo_counts_responses_against_its_minibatches(tmp_path, policy_dir):
    from lit_rlhf.data import ArithmeticDataModule

    module = GRPOModule(
        [ArithmeticVerifierReward()], policy_name_or_path=policy_dir, num_generations=2, num_minibatches=5
    )
    data = ArithmeticDataModule(format="prompt", num_train=16, num_val=4, batch_size=2)
    trainer = L.Trainer(max_steps=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match=r"num_minibatches is 5, more than the 4 responses of a training batch"):
        trainer.fit(module, data)
    assert module.iteration == 0
