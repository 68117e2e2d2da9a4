"""A model folder of the wrong kind is refused when it loads, naming the folder, what it holds and what is expected:
a reward model's sequence-classification export as a policy, a causal LM as a reward model, and a reward model whose
recorded normalisation cannot normalise."""

from __future__ import annotations

import math

import pytest

from lit_rlhf.errors import ConfigError
from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.models.loading import ModelLoadError, load_causal_lm
from lit_rlhf.models.scoring import NORMALIZATION_KEY, check_reward_normalization, load_reward_model
from lit_rlhf.modules import GRPOModule, PPOModule, SFTModule
from lit_rlhf.rewards import ArithmeticVerifierReward, RewardModelReward
from tests.conftest import TINY_MODEL_CONFIG


@pytest.fixture
def rm_dir(tmp_path):
    """A tiny reward-model export (LlamaForSequenceClassification, one label) with the word-level tokenizer."""
    tokenizer = build_word_tokenizer()
    model = load_reward_model("tiny-arithmetic", tokenizer, config_overrides=TINY_MODEL_CONFIG)
    path = str(tmp_path / "rm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


SEQ_CLS_AS_POLICY = r"rm holds a LlamaForSequenceClassification \(config.json architectures\), .* not a causal LM"


def test_a_sequence_classifier_is_refused_as_a_causal_lm(rm_dir):
    path, _ = rm_dir
    with pytest.raises(ModelLoadError, match=SEQ_CLS_AS_POLICY) as caught:
        load_causal_lm(path, build_word_tokenizer())
    assert path in str(caught.value) and "*ForCausalLM" in str(caught.value)


@pytest.mark.parametrize("stage", ["sft", "ppo", "grpo"])
def test_every_policy_option_refuses_a_reward_model_export(rm_dir, stage):
    path, _ = rm_dir
    with pytest.raises(ModelLoadError, match=SEQ_CLS_AS_POLICY):
        if stage == "sft":
            SFTModule(model_name_or_path=path)
        elif stage == "ppo":
            PPOModule(ArithmeticVerifierReward(), policy_name_or_path=path)
        else:
            GRPOModule([ArithmeticVerifierReward()], policy_name_or_path=path)


def test_a_causal_lm_is_refused_as_a_reward_model(policy_dir):
    with pytest.raises(ModelLoadError, match=r"sft holds LlamaForCausalLM .*not a reward model: its score head would"):
        RewardModelReward(policy_dir, normalize=False)
    # The reward stage and the PPO critic start from a causal LM on purpose: there the new head is trained.
    model = load_reward_model(policy_dir, build_word_tokenizer())
    assert model.config.num_labels == 1


def test_a_reward_model_export_loads_as_a_reward_source(rm_dir):
    path, _ = rm_dir
    assert RewardModelReward(path, normalize=False).model.config.num_labels == 1


@pytest.mark.parametrize(
    "stats",
    [
        {"mean": 0.1, "std": 0.0, "num_responses": 8},
        {"mean": 0.1, "std": -1.0},
        {"mean": 0.1, "std": math.nan},
        {"mean": math.inf, "std": 1.0},
        {"mean": 0.1},
        "not a dict",
    ],
)
def test_a_recorded_normalisation_that_cannot_normalise_is_refused_when_the_reward_model_loads(rm_dir, stats):
    path, model = rm_dir
    setattr(model.config, NORMALIZATION_KEY, stats)
    model.save_pretrained(path)
    with pytest.raises(ModelLoadError, match=rf"rm/config.json records {NORMALIZATION_KEY} .*normalize: false"):
        RewardModelReward(path)
    RewardModelReward(path, normalize=False)  # raw scores need no statistics


def test_valid_normalisation_statistics_pass():
    check_reward_normalization({"mean": -0.5, "std": 2.0, "num_responses": 4}, "rm")
    check_reward_normalization({"mean": 0, "std": 1}, "rm")


@pytest.mark.parametrize(("option", "value"), [("batch_size", 0), ("max_length", 0), ("batch_size", -4)])
def test_reward_source_sizes_are_checked_before_loading(option, value):
    with pytest.raises(ConfigError, match=rf"RewardModelReward \(/nonexistent/rm\): init_args.{option} must be >= 1"):
        RewardModelReward("/nonexistent/rm", **{option: value})


def test_a_missing_reward_or_critic_folder_says_so(tmp_path):
    missing = str(tmp_path / "runs" / "nope" / "hf")
    with pytest.raises(ModelLoadError, match=r"nope/hf: no such model folder"):
        load_reward_model(missing, build_word_tokenizer())
