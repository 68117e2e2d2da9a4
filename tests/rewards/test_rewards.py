import math

import pytest
import torch
from transformers import GPT2ForSequenceClassification

from lit_rlhf.data.collate import pad_right
from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.models.scoring import NORMALIZATION_KEY, load_reward_model, sequence_scores
from lit_rlhf.rewards import ArithmeticVerifierReward, RewardError, RewardModelReward, RewardSource, check_rewards
from tests.conftest import TINY_MODEL_CONFIG
from tests.helpers import save_tiny_gpt2

PROMPTS = ["make a series 1", "make a series 2", "make a series 3"]
ROWS = [{"answer": "1 3 5 7"}, {"answer": "2 4"}, {"answer": "3 4 5"}]


def test_arithmetic_verifier_exact_and_graded():
    completions = ["1 3 5 7", "2 5", "three"]
    exact = ArithmeticVerifierReward()(PROMPTS, completions, ROWS)
    assert exact.tolist() == [1.0, 0.0, 0.0] and exact.dtype == torch.float32
    # Graded: 1; one of two terms right = 0.5; a non-number = 0. Scaled to [-1, 2]: 2, 0.5, -1.
    graded = ArithmeticVerifierReward("graded_score", correct=2.0, wrong=-1.0)(PROMPTS, completions, ROWS)
    assert graded.tolist() == [2.0, 0.5, -1.0]
    with pytest.raises(RewardError, match="row of sample 1 has no 'answer' field"):
        ArithmeticVerifierReward()(PROMPTS, completions, [ROWS[0], {"question": "q"}, ROWS[2]])


class Constant(RewardSource):
    def __init__(self, values):
        super().__init__("constant")
        self.values = values

    def score(self, prompts, completions, rows, finished=None):
        return self.values


@pytest.mark.parametrize(
    "values, message",
    [
        ([1.0, 2.0], r"constant returned 2 rewards for 3 samples"),
        ([1.0, float("nan"), 0.0], r"constant returned nan for sample 1 \(prompt 'make a series 2'\); rewards must be"),
        ([1.0, math.inf, 0.0], r"returned inf for sample 1"),
        ([1.0, "high", 0.0], r"returned str 'high' for sample 1 .*expected a number"),
        ([True, 1.0, 0.0], r"returned bool True for sample 0"),
        (torch.ones(3, 1), r"returned a tensor of shape \(3, 1\); expected \(3,\)"),
        (1.0, r"returned float; expected a list of 3 numbers"),
    ],
)
def test_bad_reward_outputs_are_named(values, message):
    with pytest.raises(RewardError, match=message):
        Constant(values)(PROMPTS, ["a", "b", "c"], ROWS)


def test_good_outputs_of_any_numeric_type():
    assert check_rewards(torch.tensor([1, 2, 3]), PROMPTS, "x").tolist() == [1.0, 2.0, 3.0]
    assert check_rewards((1, 2.5, -3), PROMPTS, "x").tolist() == [1.0, 2.5, -3.0]


@pytest.fixture
def rm_dir(tmp_path):
    tokenizer = build_word_tokenizer()
    model = load_reward_model("tiny-arithmetic", tokenizer, config_overrides=TINY_MODEL_CONFIG)
    path = str(tmp_path / "rm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model.eval(), tokenizer


def test_reward_model_scores_text_at_the_eos_it_was_trained_on(rm_dir):
    path, model, tokenizer = rm_dir
    reward = RewardModelReward(path, normalize=False, batch_size=2)
    completions = ["1 3 5", "2 4", "3"]
    got = reward(PROMPTS, completions, ROWS)
    ids = [
        tokenizer(p)["input_ids"] + tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for p, c in zip(PROMPTS, completions)
    ]
    with torch.no_grad():
        expected = sequence_scores(model, *pad_right(ids, tokenizer.pad_token_id))
    torch.testing.assert_close(got, expected)
    # A truncated completion (no EOS) is scored without the EOS, at its last token.
    unfinished = reward(PROMPTS, completions, ROWS, finished=[True, False, True])
    with torch.no_grad():
        expected_1 = sequence_scores(model, torch.tensor([ids[1][:-1]]), torch.ones(1, len(ids[1]) - 1))
    torch.testing.assert_close(unfinished[1:2], expected_1)
    torch.testing.assert_close(unfinished[[0, 2]], expected[[0, 2]])
    assert not any(p.requires_grad for p in reward.model.parameters())


def test_reward_model_normalises_with_the_recorded_statistics(rm_dir):
    path, model, _ = rm_dir
    raw = RewardModelReward(path, normalize=False)(PROMPTS, ["1", "2", "3"], ROWS)
    setattr(model.config, NORMALIZATION_KEY, {"mean": 0.5, "std": 2.0, "num_responses": 10})
    model.save_pretrained(path)
    normalised = RewardModelReward(path)(PROMPTS, ["1", "2", "3"], ROWS)
    torch.testing.assert_close(normalised, (raw - 0.5) / 2.0)


def test_reward_model_with_another_tokenizer_than_the_policy(tmp_path):
    # Only texts cross over from the policy: a GPT-2-style reward model with its own BPE tokenizer reads them.
    path = save_tiny_gpt2(str(tmp_path / "gpt2"), PROMPTS + ["1 3 5 7", "2 4"])
    GPT2ForSequenceClassification.from_pretrained(path, num_labels=1).save_pretrained(path)  # as a reward model
    reward = RewardModelReward(path, normalize=False, max_length=8)
    scores = reward(PROMPTS, ["1 3 5 7", "2 4", "3 4 5"], ROWS)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    ids = reward.encode(PROMPTS[0], "1 3 5 7", finished=True)
    assert len(ids) == 8 and ids[-1] == reward.tokenizer.eos_token_id  # over-long inputs keep their end


def test_any_function_as_reward_source():
    from lit_rlhf.rewards import FunctionReward
    from tests.helpers import word_count_reward

    source = FunctionReward(word_count_reward)
    assert source.name == "word_count_reward"
    assert source(PROMPTS, ["1 2", "", "a b c"], ROWS).tolist() == [-2.0, 0.0, -3.0]
    with pytest.raises(RewardError, match="halves returned 1 rewards for 3 samples"):
        FunctionReward(lambda p, c, r: [0.5], name="halves")(PROMPTS, ["a", "b", "c"], ROWS)
    with pytest.raises(RewardError, match=r"nan_reward returned nan for sample 0"):
        FunctionReward(lambda p, c, r: [math.nan] * 3, name="nan_reward")(PROMPTS, ["a", "b", "c"], ROWS)
