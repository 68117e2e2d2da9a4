import pytest

from lit_rlhf.data.arithmetic_task import (
    TEMPLATES,
    ArithmeticProblem,
    arithmetic_series,
    exact_match,
    graded_score,
    split_problems,
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
