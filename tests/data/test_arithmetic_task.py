import random

import pytest

from lit_rlhf.data.arithmetic_task import (
    CORRUPTIONS,
    TEMPLATES,
    ArithmeticProblem,
    arithmetic_series,
    corrupt_terms,
    exact_match,
    graded_score,
    split_problems,
    synthetic_pair,
    vocabulary,
)


def test_series_stops_before_first_term_above_100():
    # The design's example: 61 + 8k for 11 terms stops at 93 because 101 > 100.
    assert arithmetic_series(61, 8, 11) == [61, 69, 77, 85, 93]
    assert arithmetic_series(0, 1, 5) == [0, 1, 2, 3, 4]
    assert arithmetic_series(96, 4, 5) == [96, 100]  # 100 itself is allowed


def test_prompts_use_seed_wording():
    problem = ArithmeticProblem(61, 8, 11, template=1)
    assert problem.prompt == (
        "make a series of arithmetic type which starts at 61 with 11 elements and 8 common difference value"
    )
    assert problem.answer == "61 69 77 85 93"
    assert len(TEMPLATES) == 3


def test_split_is_deterministic_and_held_out_keys_are_unseen():
    train, val = split_problems(num_val=512, num_train=None, seed=7)
    train2, val2 = split_problems(num_val=512, num_train=None, seed=7)
    assert train == train2 and val == val2
    assert len(val) == 512 and len({p.key for p in val}) == 512
    assert not {p.key for p in val} & {p.key for p in train}
    assert len(train) == (9000 - 512) * 3
    assert {p.template for p in train} == {0, 1, 2}
    for p in train[:200]:
        assert 0 <= p.start < 100 and 1 <= p.difference < 10 and 5 <= p.num_terms < 15


def test_split_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_val"):
        split_problems(num_val=0, num_train=None, seed=0)
    with pytest.raises(ValueError, match="num_train"):
        split_problems(num_val=5, num_train=0, seed=0)


def test_exact_match_and_graded_score_by_hand():
    assert exact_match("1 3 5 7", "1 3 5 7") == 1.0
    assert exact_match(" 1  3 5 7 ", "1 3 5 7") == 1.0  # whitespace-insensitive
    assert exact_match("1 3 5", "1 3 5 7") == 0.0
    # Two of four positions right (1, 3), the completion is shorter: 2 / max(4, 3) = 0.5.
    assert graded_score("1 3 6", "1 3 5 7") == 0.5
    # One extra term: 4 right out of max(4, 5) = 0.8.
    assert graded_score("1 3 5 7 9", "1 3 5 7") == 0.8
    assert graded_score("1 three 5 7", "1 3 5 7") == 0.0  # unparseable
    assert graded_score("", "1 3 5 7") == 0.0


def test_vocabulary_covers_every_prompt_and_answer():
    vocab = set(vocabulary())
    for problem in split_problems(num_val=50, num_train=300, seed=1)[0]:
        assert set(problem.prompt.split()) <= vocab
        assert set(problem.answer.split()) <= vocab


def test_corruptions_have_their_shape_and_are_always_wrong():
    rng = random.Random(0)
    terms = [3, 5, 7, 9, 11]
    for _ in range(200):
        truncated = corrupt_terms(terms, "truncated", rng)
        assert 1 <= len(truncated) < len(terms) and truncated == terms[: len(truncated)]
        wrong = corrupt_terms(terms, "wrong_term", rng)
        assert len(wrong) == len(terms) and sum(a != b for a, b in zip(wrong, terms)) == 1
        inserted = corrupt_terms(terms, "inserted_term", rng)
        assert len(inserted) == len(terms) + 1
        assert any(inserted[:i] + inserted[i + 1 :] == terms for i in range(len(inserted)))
    assert corrupt_terms([7], "truncated", rng) != [7]  # cannot shorten one term: a wrong term instead
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_terms(terms, "reversed", rng)


def test_synthetic_pair_prefers_the_verified_answer():
    rng = random.Random(1)
    for problem in split_problems(num_val=10, num_train=100, seed=2)[0]:
        pair = synthetic_pair(problem, rng)
        assert exact_match(pair["chosen"], problem.answer) == 1.0
        assert exact_match(pair["rejected"], problem.answer) == 0.0
        assert pair["prompt"] == problem.prompt and pair["corruption"] in CORRUPTIONS
