"""Preference pairs from hand-made reward grids: best against worst, all pairs, ties and prompts with no pair."""

import pytest
import torch

from lit_rlhf.functional.dpo_pairs import preference_pairs

# 4 prompts x 3 answers; indices of answers are prompt * 3 + j.
REWARDS = torch.tensor(
    [
        [0.2, 0.9, 0.5],  # distinct: best j=1, worst j=0
        [1.0, 1.0, 1.0],  # all equal: no pair
        [0.0, 1.0, 1.0],  # best tied (j=1, j=2): the first, j=1; worst j=0
        [0.3, 0.3, 0.7],  # worst tied (j=0, j=1): the first, j=0; best j=2
    ]
)


def test_best_vs_worst_one_pair_per_prompt_with_a_signal():
    pairs = preference_pairs(REWARDS, "best_vs_worst")
    # prompt 0: 0*3+1 over 0*3+0; prompt 2: 2*3+1 over 2*3+0; prompt 3: 3*3+2 over 3*3+0
    assert pairs.chosen.tolist() == [1, 7, 11]
    assert pairs.rejected.tolist() == [0, 6, 9]
    assert pairs.prompt.tolist() == [0, 2, 3]
    assert pairs.has_pair.tolist() == [True, False, True, True]


def test_all_pairs_every_two_answers_with_different_rewards():
    pairs = preference_pairs(REWARDS, "all_pairs")
    # prompt 0, pairs (0,1) (0,2) (1,2): 1>0, 2>0, 1>2; prompt 1: none; prompt 2: (0,1) (0,2) differ, (1,2) tie;
    # prompt 3: (0,1) tie, (0,2) and (1,2): 2 wins both.
    chosen_rejected = list(zip(pairs.chosen.tolist(), pairs.rejected.tolist()))
    assert chosen_rejected == [(1, 0), (2, 0), (1, 2), (7, 6), (8, 6), (11, 9), (11, 10)]
    assert pairs.prompt.tolist() == [0, 0, 0, 2, 2, 3, 3]
    assert pairs.has_pair.tolist() == [True, False, True, True]


@pytest.mark.parametrize("rule", ["best_vs_worst", "all_pairs"])
def test_all_equal_groups_give_no_pairs(rule):
    pairs = preference_pairs(torch.zeros(2, 4), rule)
    assert pairs.chosen.numel() == pairs.rejected.numel() == pairs.prompt.numel() == 0
    assert pairs.chosen.dtype == torch.long
    assert pairs.has_pair.tolist() == [False, False]


def test_chosen_always_scores_higher_on_random_grids():
    rewards = torch.randint(0, 3, (16, 5)).float()  # many ties
    for rule in ("best_vs_worst", "all_pairs"):
        pairs = preference_pairs(rewards, rule)
        flat = rewards.reshape(-1)
        assert bool((flat[pairs.chosen] > flat[pairs.rejected]).all())
        assert torch.equal(pairs.chosen // 5, pairs.prompt) and torch.equal(pairs.rejected // 5, pairs.prompt)
    best = preference_pairs(rewards, "best_vs_worst")
    flat = rewards.reshape(-1)
    assert torch.equal(flat[best.chosen], rewards.amax(dim=1)[best.has_pair])
    assert torch.equal(flat[best.rejected], rewards.amin(dim=1)[best.has_pair])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="pair rule"):
        preference_pairs(REWARDS, "random")
    with pytest.raises(ValueError, match="prompts, k"):
        preference_pairs(REWARDS.reshape(-1))
    with pytest.raises(ValueError, match="finite"):
        preference_pairs(torch.tensor([[0.0, float("nan")]]))
