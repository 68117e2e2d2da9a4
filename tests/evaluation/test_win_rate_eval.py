import pytest
from transformers import AutoTokenizer, GPT2ForSequenceClassification, GPT2LMHeadModel

from lit_rlhf.evaluation import (
    LLMPairwiseJudge,
    RewardModelJudge,
    compare_responses,
    encode_prompts,
    greedy_responses,
    win_rate,
)
from lit_rlhf.models.loading import load_causal_lm, load_tokenizer
from tests.evaluation.toy_judges import AlwaysA, PrefersLonger, save_constant_lm
from tests.helpers import save_tiny_gpt2
from tests.rewards.test_judge import TEXTS, save_constant_judge

PROMPTS = [
    "Who was struggling with the phone?",
    "Who finished setting up the phone?",
    "Cannot be determined?",
    "A grandfather and his grandson were setting up a new phone. Who asked for help?",
    "Who handed the phone over?",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``short`` answers "2" then EOS; ``long`` answers "x" until max_new_tokens; ``judge_b`` always says "B"."""
    root = tmp_path_factory.mktemp("winrate_models")
    return {
        "short": save_constant_lm(str(root / "short"), "2"),
        "long": save_constant_lm(str(root / "long"), "x", repeat=True),
        "judge_b": save_constant_judge(str(root / "judge_b"), "B"),
    }


def test_the_tiny_models_give_their_known_answers(models):
    for name, expected in (("short", "2"), ("long", "xxxx")):
        tokenizer = load_tokenizer(models[name])
        ids, truncated = encode_prompts(tokenizer, PROMPTS)
        assert truncated == 0 and all(ids)
        model = load_causal_lm(models[name], tokenizer)
        assert greedy_responses(model, tokenizer, ids, max_new_tokens=4, batch_size=2) == [expected] * len(PROMPTS)
        assert model.training  # generation restored the mode it found


def test_a_judge_with_known_preferences_gives_the_known_win_rate(models):
    # The judge prefers the longer answer: "xxxx" beats "2" in both orders.
    result = win_rate(models["short"], models["long"], PROMPTS, PrefersLonger(), max_new_tokens=4, batch_size=2)
    assert result.win_rate == 0.0 and (result.wins, result.losses, result.ties) == (0, 5, 0)
    assert (result.ci_low, result.ci_high) == (0.0, 0.0)
    assert result.abstain_rate == 0.0 and result.position_a_rate == 0.5
    first = result.pairs[0]
    assert (first.prompt, first.policy_response, first.reference_response) == (PROMPTS[0], "2", "xxxx")
    assert (first.verdict_policy_as_a, first.verdict_policy_as_b, first.score) == ("B", "A", 0.0)
    assert [p.prompt for p in result.pairs] == PROMPTS  # records in prompt order

    swapped = win_rate(models["long"], models["short"], PROMPTS, PrefersLonger(), max_new_tokens=4, batch_size=3)
    assert swapped.win_rate == 1.0 and swapped.wins == 5 and (swapped.ci_low, swapped.ci_high) == (1.0, 1.0)
    same = win_rate(models["short"], models["short"], PROMPTS, PrefersLonger(), max_new_tokens=4)
    assert same.win_rate == 0.5 and same.ties == 5 and same.abstain_rate == 1.0  # equal lengths: no verdict


def test_an_always_a_judge_is_cancelled_by_the_order_swap(models):
    judge = AlwaysA()
    result = win_rate(models["long"], models["short"], PROMPTS, judge, max_new_tokens=4, batch_size=2)
    assert result.win_rate == 0.5 and result.tie_rate == 1.0 and (result.wins, result.losses) == (0, 0)
    assert result.position_a_rate == 1.0
    # One judge call with both orders: policy-as-A pairs first, then the same pairs swapped.
    ((prompts, responses_a, responses_b),) = judge.calls
    assert prompts == PROMPTS * 2
    assert responses_a == ["xxxx"] * 5 + ["2"] * 5 and responses_b == ["2"] * 5 + ["xxxx"] * 5


def test_a_judge_lm_that_always_answers_b_gives_one_half_with_all_ties(models):
    judge = LLMPairwiseJudge(models["judge_b"], batch_size=4)
    result = win_rate(models["long"], models["short"], PROMPTS, judge, max_new_tokens=4, batch_size=2)
    assert result.win_rate == 0.5 and result.ties == 5 and result.tie_rate == 1.0
    assert result.position_a_rate == 0.0 and result.abstain_rate == 0.0
    assert all((p.verdict_policy_as_a, p.verdict_policy_as_b) == ("B", "B") for p in result.pairs)


def test_model_objects_with_their_tokenizers_and_given_prompt_ids(models):
    tokenizer = AutoTokenizer.from_pretrained(models["short"])
    tokenizer.pad_token = tokenizer.eos_token
    short = GPT2LMHeadModel.from_pretrained(models["short"])
    long = GPT2LMHeadModel.from_pretrained(models["long"])
    ids, _ = encode_prompts(tokenizer, PROMPTS)
    result = win_rate(short, long, PROMPTS, PrefersLonger(), 4, 2, tokenizer=tokenizer, prompt_ids=ids)
    assert result.win_rate == 0.0 and result.pairs[0].reference_response == "xxxx"
    with pytest.raises(ValueError, match="pass its tokenizer too"):
        win_rate(short, long, PROMPTS, PrefersLonger(), 4)
    with pytest.raises(ValueError, match="got 5 prompts but 2 prompt_ids"):
        win_rate(short, long, PROMPTS, PrefersLonger(), 4, tokenizer=tokenizer, prompt_ids=ids[:2])


def test_long_prompts_keep_their_end_within_the_context(tmp_path, caplog):
    path = save_tiny_gpt2(str(tmp_path / "small_context"), TEXTS)  # 128 positions
    long_prompt = " ".join(["Who was struggling with the phone?"] * 40)
    result = win_rate(path, path, [long_prompt, PROMPTS[0]], AlwaysA(), max_new_tokens=8)
    assert result.num_pairs == 2 and "prompts were cut to the policy's last 120 tokens" in caplog.text


def test_a_reward_model_judge_gives_its_own_preferences_in_both_orders(models, tmp_path):
    # A tiny GPT-2 saved as a reward model with a random head: it scores "2" and "xxxx" differently per prompt.
    rm = save_tiny_gpt2(str(tmp_path / "rm"), TEXTS)
    GPT2ForSequenceClassification.from_pretrained(rm, num_labels=1).save_pretrained(rm)
    judge = RewardModelJudge(rm)
    result = win_rate(models["short"], models["long"], PROMPTS, judge, max_new_tokens=4, ci_method="normal")
    scores = judge.reward(PROMPTS * 2, ["2"] * 5 + ["xxxx"] * 5, [{}] * 10).tolist()
    policy_better = [scores[i] > scores[i + 5] for i in range(5)]  # by hand: the policy's score against the other
    for pair, better in zip(result.pairs, policy_better):
        assert (pair.verdict_policy_as_a, pair.verdict_policy_as_b) == (("A", "B") if better else ("B", "A"))
    assert result.wins == sum(policy_better) and result.losses == 5 - sum(policy_better) and result.ties == 0
    assert result.win_rate == pytest.approx(sum(policy_better) / 5) and result.abstain_rate == 0.0


def test_compare_responses_records_and_errors():
    result = compare_responses(["p", "q"], ["long answer", "a"], ["short", "longer"], PrefersLonger())
    assert [p.score for p in result.pairs] == [1.0, 0.0]
    summary = result.summary()
    assert "pairs" not in summary and summary["win_rate"] == 0.5 and summary["ci_method"] == "bootstrap"
    assert result.to_dict()["pairs"][0]["policy_response"] == "long answer"
    assert "| win rate | 0.500 |" in result.table()
    with pytest.raises(ValueError, match="no prompts"):
        compare_responses([], [], [], PrefersLonger())
    with pytest.raises(ValueError, match="got 2 prompts, 1 policy responses and 2 reference responses"):
        compare_responses(["p", "q"], ["a"], ["b", "c"], PrefersLonger())
