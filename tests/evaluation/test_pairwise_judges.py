import json

import pytest
import torch

from lit_rlhf.data.collate import pad_right
from lit_rlhf.evaluation import (
    DEFAULT_PAIRWISE_TEMPLATE,
    JudgeError,
    LLMPairwiseJudge,
    PairwiseJudge,
    RewardModelJudge,
    parse_verdict,
)
from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.models.scoring import load_reward_model, sequence_scores
from lit_rlhf.rewards import LLMJudgeReward
from tests.conftest import TINY_MODEL_CONFIG
from tests.rewards.test_judge import save_constant_judge

PROMPTS = ["Who was struggling with the phone?", "Who finished the phone?", "Capital of France?"]
A = ["The grandfather.", "The grandson", "Paris"]
B = ["The grandson.", "Cannot be determined", "Paris"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A", "A"),
        ("B", "B"),
        (" B\n", "B"),
        ("B.", "B"),
        ("(A)", "A"),
        ("**B**", "B"),
        ("Response B is better", "B"),
        ("A, not B", "A"),  # the first standalone letter wins
        ("Answer: B", "B"),  # the A of "Answer" is inside a word
        ("AB", None),  # neither letter stands alone
        ("a", None),  # lowercase is an article, not a verdict
        ("Both are fine", None),
        ("", None),
        ("Ｂ", "B"),  # full-width, read as ASCII
        ("I pick A_", None),  # an underscore joins a word
        ("1. A", "A"),
    ],
)
def test_parse_verdict_reads_the_first_standalone_capital_a_or_b(text, expected):
    assert parse_verdict(text) == expected


# -- the LLM judge: a tiny judge whose answer is known ---------------------------------------------------------------


@pytest.fixture(scope="module")
def constant_judges(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairwise_judges")
    return {answer: save_constant_judge(str(root / answer), answer) for answer in ("B", "x")}


def test_a_judge_lm_that_always_answers_b_gives_b_everywhere(constant_judges):
    judge = LLMPairwiseJudge(constant_judges["B"], batch_size=2)
    assert judge(PROMPTS, A, B) == ["B", "B", "B"]
    assert judge.last_outputs == ["B"] * 3
    assert judge.last_stats == {"judge/parsed_rate": 1.0, "judge/truncated_rate": 0.0}
    assert not judge.model.training and not any(p.requires_grad for p in judge.model.parameters())
    assert judge.tokenizer.padding_side == "left"
    assert judge([], [], []) == [] and judge.last_stats == {}


def test_an_unparseable_answer_is_no_verdict(constant_judges):
    judge = LLMPairwiseJudge(constant_judges["x"])
    assert judge(PROMPTS, A, B) == [None, None, None]
    assert judge.last_outputs == ["x"] * 3 and judge.last_stats["judge/parsed_rate"] == 0.0


def test_judge_prompts_raw_and_chat(constant_judges, tmp_path):
    judge = LLMPairwiseJudge(constant_judges["B"])
    assert not judge.lm.use_chat_template  # the tiny tokenizer has none
    assert judge.prompt(" Capital? ", " Paris ", "Rome") == DEFAULT_PAIRWISE_TEMPLATE.format(
        prompt="Capital?", response_a="Paris", response_b="Rome"
    )
    raw = LLMPairwiseJudge(constant_judges["B"], template="[{response_a}|{response_b}]", system_prompt="Q: {prompt}")
    assert raw.prompt("Capital?", "Paris", "Rome") == "Q: Capital?\n\n[Paris|Rome]"

    chat_dir = tmp_path / "chat"
    save_constant_judge(str(chat_dir), "B")
    config_path = chat_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    config_path.write_text(json.dumps(config))
    chat = LLMPairwiseJudge(str(chat_dir), template="{response_a} or {response_b}?", system_prompt="Be fair.")
    assert chat.lm.use_chat_template
    ids = chat.lm.encode(chat.prompt("Capital?", "Paris", "Rome"))
    assert chat.tokenizer.decode(ids) == "<system>Be fair.<user>Paris or Rome?<assistant>"
    no_system = LLMPairwiseJudge(str(chat_dir), template="{response_a} or {response_b}?")
    assert (
        no_system.tokenizer.decode(no_system.lm.encode(no_system.prompt("x", "a", "b"))) == "<user>a or b?<assistant>"
    )
    assert chat(PROMPTS, A, B) == ["B", "B", "B"]


def test_bad_templates_are_refused_at_once(constant_judges):
    with pytest.raises(ValueError, match="must name both"):
        LLMPairwiseJudge(constant_judges["B"], template="{prompt}: {response_a}")
    with pytest.raises(ValueError, match=r"names \['post'\]; the placeholders are"):
        LLMPairwiseJudge(constant_judges["B"], template="{post} {response_a} {response_b}")
    with pytest.raises(ValueError, match="system_prompt names"):
        LLMPairwiseJudge(constant_judges["B"], system_prompt="{summary}")
    with pytest.raises(ValueError, match="cannot be parsed"):
        LLMPairwiseJudge(constant_judges["B"], template="{response_a} {response_b")


# -- the reward-model judge -----------------------------------------------------------------------------------------


@pytest.fixture
def rm_dir(tmp_path):
    tokenizer = build_word_tokenizer()
    model = load_reward_model("tiny-arithmetic", tokenizer, config_overrides=TINY_MODEL_CONFIG)
    path = str(tmp_path / "rm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model.eval(), tokenizer


def test_the_reward_model_judge_prefers_the_higher_score_and_ties_identical_texts(rm_dir):
    path, model, tokenizer = rm_dir
    prompts = ["make a series of arithmetic type which starts at 1 with 3 elements and 2 common difference value"] * 4
    a = ["1 3 5", "2 4", "3", "1 3 5"]
    b = ["2 4", "1 3 5", "3 4 5", "1 3 5"]
    judge = RewardModelJudge(path, batch_size=3)
    verdicts = judge(prompts, a, b)

    def score(completion):  # what the reward model says of prompt + completion + EOS, by hand
        ids = tokenizer(prompts[0])["input_ids"] + tokenizer(completion, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            return sequence_scores(model, *pad_right([ids + [tokenizer.eos_token_id]], tokenizer.pad_token_id)).item()

    expected = ["A" if score(x) > score(y) else "B" for x, y in zip(a[:3], b[:3])] + [None]
    assert verdicts == expected
    assert judge.last_scores_a[:3] == pytest.approx([score(x) for x in a[:3]], abs=1e-5)
    assert verdicts[0] != verdicts[1]  # the same two answers in swapped positions: swapped verdicts
    assert judge(prompts, b, a)[:3] == ["B" if v == "A" else "A" for v in verdicts[:3]]
    assert judge.to("cpu") is judge and next(judge.reward.model.parameters()).device.type == "cpu"


def test_a_judge_that_returns_garbage_is_named():
    class Broken(PairwiseJudge):
        def judge(self, prompts, responses_a, responses_b):
            return ["A", "tie"][: len(prompts)]

    with pytest.raises(JudgeError, match=r"Broken returned 'tie' for pair 1 .*expected 'A', 'B' or None"):
        Broken()(["p", "q"], ["a", "b"], ["c", "d"])
    with pytest.raises(JudgeError, match="returned 2 verdicts for 3 pairs"):
        Broken()(["p", "q", "r"], ["a"] * 3, ["c"] * 3)
    with pytest.raises(JudgeError, match="got 2 prompts, 1 A responses and 2 B responses"):
        Broken()(["p", "q"], ["a"], ["c", "d"])


def test_judges_load_their_model_with_the_asked_attention_kernel(constant_judges, rm_dir):
    llm = LLMPairwiseJudge(constant_judges["B"], attn_implementation="eager")
    assert llm.model.config._attn_implementation == "eager"
    assert llm.judge(PROMPTS[:1], A[:1], B[:1]) == ["B"]  # still the constant judge's answer
    rule = LLMJudgeReward(constant_judges["B"], template="{question}", attn_implementation="eager")
    assert rule.model.config._attn_implementation == "eager"
    path, _, _ = rm_dir
    assert RewardModelJudge(path, attn_implementation="eager").reward.model.config._attn_implementation == "eager"
    assert LLMPairwiseJudge(constant_judges["B"]).model.config._attn_implementation == "sdpa"  # transformers' choice
