import pytest
import torch

from lit_rlhf.rewards import RewardError, RewardSource
from lit_rlhf.rewards.rules import (
    THINK_ANSWER_PATTERN,
    AnswerMatchReward,
    LengthReward,
    RegexFormatReward,
    WeightedSumReward,
    parse_last_number,
    unique_names,
)
from tests.helpers import save_tiny_gpt2


def call(source, completions, rows=None):
    """Score ``completions`` with one prompt and one (empty by default) row each; a list of floats."""
    rows = rows if rows is not None else [{} for _ in completions]
    prompts = [f"q{i}" for i in range(len(completions))]
    values = source(prompts, completions, rows)
    assert values.dtype == torch.float32 and values.shape == (len(completions),)
    return values.tolist()


# -- LengthReward --------------------------------------------------------------------------------------------------


def test_length_in_characters_is_the_seed_formula():
    # Seed 003: -abs(50 - len(completion)). Lengths 0, 50, 80 and 13 ("héllo wörld 🙂": 5 + 1 + 5 + 1 + 1 code
    # points, the accented letters precomposed and the emoji one code point each).
    completions = ["", "a" * 50, "b" * 80, "héllo wörld 🙂"]
    assert call(LengthReward(), completions) == [-50.0, 0.0, -30.0, -37.0]
    # scale 0.01: the same distances in hundredths.
    assert call(LengthReward(scale=0.01), completions) == pytest.approx([-0.5, 0.0, -0.3, -0.37])


def test_length_in_words_and_strip():
    reward = LengthReward(ideal_length=3, unit="words")
    # 4 words across spaces, a tab and a newline; no words at all (empty, blank); punctuation sticks to its word.
    assert call(reward, ["one two\tthree\nfour", "", "  \n", "Hi, there!"]) == [-1.0, -3.0, -3.0, -1.0]
    # Characters of "  abc \n": 7 as is, 3 stripped.
    assert call(LengthReward(ideal_length=3), ["  abc \n"]) == [-4.0]
    assert call(LengthReward(ideal_length=3, strip=True), ["  abc \n"]) == [0.0]


def test_length_of_the_extracted_answer_only():
    reward = LengthReward(ideal_length=5, extract=r"<answer>(.*?)</answer>", strip=True)
    completions = [
        "<think>a long line of thinking\nover two lines</think><answer> hello </answer>",  # "hello": 5 -> 0
        "<answer>first answer</answer> then <answer>abc</answer>",  # the last match: "abc", 3 -> -2
        "no tags at all",  # no match: the whole completion, 14 characters -> -9
        "<answer></answer>",  # an empty answer, 0 -> -5
    ]
    assert call(reward, completions) == [0.0, -2.0, -9.0, -5.0]


def test_length_in_tokens_of_a_given_tokenizer(tmp_path):
    path = save_tiny_gpt2(str(tmp_path / "tok"), ["the cat sat on the mat", "a dog ran in the park"] * 4)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    text = "the cat sat on the mat"
    count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert 1 < count < len(text)  # merges happened: tokens, not characters
    reward = LengthReward(ideal_length=count + 2, unit="tokens", tokenizer_name_or_path=path)
    assert call(reward, [text, ""]) == [-2.0, -float(count + 2)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"unit": "bytes"}, "unit must be 'characters', 'words' or 'tokens', got 'bytes'"),
        ({"unit": "tokens"}, "unit 'tokens' needs tokenizer_name_or_path"),
        ({"ideal_length": -1}, "ideal_length must be >= 0"),
        ({"scale": 0.0}, "scale must be a positive number"),
        ({"extract": "<answer>.*</answer>"}, "must have exactly 1 capturing group, it has 0"),
        ({"extract": "(unclosed"}, r"length: extract: '\(unclosed' is not a valid regular expression"),
    ],
)
def test_length_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LengthReward(**kwargs)


# -- RegexFormatReward ---------------------------------------------------------------------------------------------


def test_think_answer_format_by_default():
    reward = RegexFormatReward()
    completions = [
        "<think>short</think><answer>42</answer>",  # the seed's exact format
        "<think>line one\nline two</think>\n<answer>multi\nline</answer>\n",  # newlines inside and between, final \n
        "<think>été, 日本, 🙂</think> <answer>ünïcödé</answer>",  # any text inside
        "<answer>42</answer>",  # no think block
        "Sure! <think>x</think><answer>y</answer>",  # text before the format
        "<think>x</think><answer>y</answer> and more",  # text after it
        "",
    ]
    assert call(reward, completions) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert reward.pattern.pattern == THINK_ANSWER_PATTERN


def test_format_search_mode_flags_and_rewards():
    search = RegexFormatReward(mode="search", match_reward=2.0, miss_reward=-1.0)
    assert call(search, ["Sure! <think>x</think><answer>y</answer> and more", "<think>x</think>"]) == [2.0, -1.0]
    # The seed's own pattern and re.match, without DOTALL: a think block over two lines does not match.
    seed = RegexFormatReward(r"^<think>.*?</think><answer>.*?</answer>$", dotall=False, mode="search")
    assert call(seed, ["<think>a</think><answer>b</answer>", "<think>a\nb</think><answer>c</answer>"]) == [1.0, 0.0]
    assert call(RegexFormatReward(r"<ANSWER>\d+</ANSWER>", ignore_case=True), ["<answer>12</answer>"]) == [1.0]
    # strip=False: the trailing newline is part of the text and the full match fails.
    assert call(RegexFormatReward(strip=False), ["<think>a</think><answer>b</answer>\n"]) == [0.0]


def test_format_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"format: pattern: '<think>\(' is not a valid regular expression"):
        RegexFormatReward("<think>(")
    with pytest.raises(ValueError, match="mode must be 'fullmatch' or 'search', got 'match'"):
        RegexFormatReward(mode="match")


# -- AnswerMatchReward ---------------------------------------------------------------------------------------------


def test_exact_answer_with_normalisation_and_case():
    rows = [{"answer": "New  York"}] * 4
    completions = ["  New York \n", "new york", "New York City", ""]
    assert call(AnswerMatchReward(), completions, rows) == [1.0, 0.0, 0.0, 0.0]
    assert call(AnswerMatchReward(ignore_case=True), completions, rows) == [1.0, 1.0, 0.0, 0.0]
    assert call(AnswerMatchReward(normalize=False), completions, rows) == [0.0, 0.0, 0.0, 0.0]
    # A numeric reference is compared as its text; custom rewards.
    assert call(AnswerMatchReward(correct=2.0, wrong=-1.0), ["42", "42.0"], [{"answer": 42}] * 2) == [2.0, -1.0]


def test_exact_answer_extracted_from_the_last_answer_block():
    reward = AnswerMatchReward(field="city", extract=r"<answer>(.*?)</answer>")
    rows = [{"city": "Paris"}] * 4
    completions = [
        "<think>Maybe Lyon?\nNo.</think><answer> Paris </answer>",
        "<answer>Lyon</answer> no wait <answer>Paris</answer>",  # the last block counts
        "<answer>Paris</answer> no wait <answer>Lyon</answer>",
        "Paris",  # right text, but no answer block: wrong
    ]
    assert call(reward, completions, rows) == [1.0, 1.0, 0.0, 0.0]


def test_numeric_answers_parse_the_last_number():
    reward = AnswerMatchReward(mode="numeric")
    cases = [
        ("The total is 1,234.", "1,234", 1.0),  # thousands separators on both sides
        ("1234.0000001", "1234", 1.0),  # within the relative tolerance 1e-6 * 1234
        ("1235", "1,234", 0.0),
        ("first 7, then 12", "12", 1.0),  # the last number
        ("so x = -3.5", -3.5, 1.0),  # a float reference, a negative answer
        ("so x = 3.5", -3.5, 0.0),
        ("x = \u22123.5", "-3.5", 1.0),  # the Unicode minus sign
        ("it is 42.0", 42, 1.0),  # an int reference
        ("5-3", "3", 1.0),  # a hyphen is not a sign
        ("0.1 + 0.2 = 0.30000000000000004", "0.3", 1.0),
        ("I don't know", "7", 0.0),  # no number: wrong, no crash
        ("", "7", 0.0),
        ("1e999", "5", 0.0),  # overflows to inf: wrong, no crash
        ("#### 18", "The answer is 18", 1.0),  # a reference in words: its last number
    ]
    completions = [c for c, _, _ in cases]
    rows = [{"answer": a} for _, a, _ in cases]
    assert call(reward, completions, rows) == [expected for _, _, expected in cases]


def test_numeric_answer_with_extract_and_tolerance():
    reward = AnswerMatchReward(mode="numeric", extract=r"<answer>(.*?)</answer>", tolerance=0.01)
    rows = [{"answer": "2.5"}] * 3
    completions = ["<think>2 + 0.5 = 2.5, maybe 3</think><answer>2.51</answer>", "<answer>2.6</answer>", "2.5"]
    assert call(reward, completions, rows) == [1.0, 0.0, 0.0]


def test_parse_last_number_edge_cases():
    assert parse_last_number("-3.5") == -3.5 and parse_last_number("+2") == 2.0
    assert parse_last_number("1,234,567.89 dollars") == 1234567.89
    assert parse_last_number(".5 of it") == 0.5 and parse_last_number("1e-3") == 0.001
    assert parse_last_number("2024-05") == 5.0 and parse_last_number("version x2") is None
    assert parse_last_number("no digits here") is None and parse_last_number("") is None


def test_answer_match_errors_name_the_source_and_the_sample():
    reward = AnswerMatchReward(mode="numeric")
    with pytest.raises(RewardError, match=r"answer_match: sample 1 \(prompt 'q1'\): its row has no 'answer' field "):
        call(reward, ["1", "2"], [{"answer": "1"}, {"question": "q"}])
    with pytest.raises(RewardError, match=r"sample 0 .*field 'answer' = 'seven' holds no finite number"):
        call(reward, ["7"], [{"answer": "seven"}])
    with pytest.raises(RewardError, match=r"sample 0 .*field 'answer' must be text or a number, got NoneType"):
        call(AnswerMatchReward(), ["7"], [{"answer": None}])
    with pytest.raises(ValueError, match="mode must be 'exact' or 'numeric'"):
        AnswerMatchReward(mode="fuzzy")
    with pytest.raises(ValueError, match="exactly 1 capturing group, it has 2"):
        AnswerMatchReward(extract=r"<a>(.*)</a>(.*)")


# -- WeightedSumReward ---------------------------------------------------------------------------------------------


def test_weighted_sum_and_its_components():
    reward = WeightedSumReward([LengthReward(ideal_length=4, unit="words"), RegexFormatReward()], weights=[1.0, 0.5])
    completions = ["<think>a b</think> <answer>c</answer>", "one two three four", ""]
    # Length in words: 3 ("<think>a", "b</think>", "<answer>c</answer>"), 4 and 0 -> -1, 0, -4.
    # Format: 1, 0, 0. Total: -1 + 0.5 * 1 = -0.5, 0 + 0 = 0, -4 + 0 = -4.
    assert call(reward, completions) == [-0.5, 0.0, -4.0]
    assert reward.component_names == ["length", "format"]
    assert {k: v.tolist() for k, v in reward.last_components.items()} == {
        "length": [-1.0, 0.0, -4.0],
        "format": [1.0, 0.0, 0.0],
    }
    unweighted = WeightedSumReward([LengthReward(ideal_length=4, unit="words"), RegexFormatReward()])
    assert call(unweighted, completions) == [0.0, 0.0, -4.0]  # weights default to 1: -1 + 1, 0 + 0, -4 + 0


def test_weighted_sum_names_repeats_and_nests():
    inner = WeightedSumReward([LengthReward(ideal_length=1), LengthReward(ideal_length=3)])
    outer = WeightedSumReward([inner, LengthReward(ideal_length=2), RegexFormatReward()], weights=[2.0, 1.0, 1.0])
    assert inner.component_names == ["length", "length_2"]
    assert outer.component_names == ["weighted_sum", "length", "format"]
    # "ab": inner = -1 + -1 = -2, length(2) = 0, format 0 -> 2 * -2 + 0 + 0 = -4.
    assert call(outer, ["ab"]) == [-4.0]
    assert outer.last_components["weighted_sum"].tolist() == [-2.0]
    assert inner.last_components["length_2"].tolist() == [-1.0]
    assert unique_names(["a", "a", "a_2", "a"]) == ["a", "a_3", "a_2", "a_4"]


def test_weighted_sum_checks_its_arguments_and_passes_errors_on():
    with pytest.raises(ValueError, match="weighted_sum: got 1 weights for 2 sources"):
        WeightedSumReward([LengthReward(), RegexFormatReward()], weights=[1.0])
    with pytest.raises(ValueError, match="needs at least one reward source"):
        WeightedSumReward([])
    with pytest.raises(ValueError, match="weights must be finite numbers"):
        WeightedSumReward([LengthReward()], weights=[float("nan")])
    with pytest.raises(ValueError, match="source 0 is a .*, not a RewardSource"):
        WeightedSumReward([len])
    reward = WeightedSumReward([LengthReward(), AnswerMatchReward()])
    with pytest.raises(RewardError, match=r"answer_match: sample 0 .*no 'answer' field"):
        call(reward, ["x"])


class DeviceRecorder(RewardSource):
    def __init__(self):
        super().__init__("recorder")
        self.device = None

    def to(self, device):
        self.device = device
        return self

    def score(self, prompts, completions, rows, finished=None):
        return [0.0] * len(prompts)


def test_weighted_sum_moves_sources_with_models():
    recorder = DeviceRecorder()
    reward = WeightedSumReward([recorder, LengthReward()])
    assert reward.to("cpu") is reward and recorder.device == "cpu"


def test_weighted_sum_from_yaml_with_nested_class_paths():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(RewardSource, "reward")
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    config = parser.parse_string(
        """
reward:
  class_path: lit_rlhf.rewards.rules.WeightedSumReward
  init_args:
    sources:
      - class_path: lit_rlhf.rewards.rules.LengthReward
        init_args: {ideal_length: 4, unit: words}
      - class_path: lit_rlhf.rewards.rules.RegexFormatReward
      - class_path: lit_rlhf.rewards.rules.AnswerMatchReward
        init_args: {mode: numeric, extract: "<answer>(.*?)</answer>", name: correct}
    weights: [1.0, 0.5, 2.0]
"""
    )
    reward = instantiate(config).reward
    assert isinstance(reward, WeightedSumReward) and reward.weights == [1.0, 0.5, 2.0]
    assert [type(s).__name__ for s in reward.sources] == ["LengthReward", "RegexFormatReward", "AnswerMatchReward"]
    assert reward.component_names == ["length", "format", "correct"]
    # "<think>a b</think> <answer>12</answer>": 3 words -> -1; format 1; answer 12 == 12 -> 1.
    # Total: -1 + 0.5 * 1 + 2 * 1 = 1.5.
    assert call(reward, ["<think>a b</think> <answer>12</answer>"], [{"answer": "12"}]) == [1.5]

    bad = parser.parse_string(
        "reward:\n  class_path: lit_rlhf.rewards.rules.WeightedSumReward\n  init_args:\n    sources:\n"
        "      - class_path: lit_rlhf.rewards.rules.LengthReward\n    weights: [1.0, 2.0]\n"
    )
    with pytest.raises(ValueError, match="got 2 weights for 1 sources"):
        instantiate(bad)


def test_weighted_sum_passes_on_its_sources_statistics():
    class Reporting(LengthReward):
        def score(self, prompts, completions, rows, finished=None):
            self.last_stats = {"judge/parsed_rate": 0.75}
            return super().score(prompts, completions, rows, finished)

    total = WeightedSumReward([Reporting(ideal_length=1), RegexFormatReward()])
    assert total.last_stats == {}
    total(["p"], ["x"], [{}])
    assert total.last_stats == {"judge/parsed_rate": 0.75}
