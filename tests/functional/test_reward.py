import math

import torch

from lit_rlhf.functional.reward import bradley_terry_loss, last_token_index


def test_bradley_terry_loss_by_hand():
    # Differences 0 and ln 3: -log sigmoid(0) = ln 2; -log sigmoid(ln 3) = -log(3/4) = ln(4/3).
    chosen = torch.tensor([1.0, math.log(3.0)])
    rejected = torch.tensor([1.0, 0.0])
    loss, stats = bradley_terry_loss(chosen, rejected)
    assert math.isclose(loss.item(), (math.log(2.0) + math.log(4.0 / 3.0)) / 2, rel_tol=1e-6)
    assert stats.accuracy.item() == 0.5  # the tie counts as wrong
    assert math.isclose(stats.margin.item(), math.log(3.0) / 2, rel_tol=1e-6)


def test_margin_shifts_the_logit():
    # Difference 2 with margin 2 is a logit of 0: loss ln 2.
    loss, _ = bradley_terry_loss(torch.tensor([3.0]), torch.tensor([1.0]), margin=torch.tensor([2.0]))
    assert math.isclose(loss.item(), math.log(2.0), rel_tol=1e-6)


def test_centring_term_by_hand():
    # Pair (2, 0): BT term -log sigmoid(2); centring (2 + 0)^2 = 4, times 0.01 = 0.04.
    loss, _ = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0]), center_coef=0.01)
    assert math.isclose(loss.item(), math.log1p(math.exp(-2.0)) + 0.04, rel_tol=1e-6)


def test_reward_moments():
    _, stats = bradley_terry_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]))
    assert stats.chosen_mean.item() == 2.0 and stats.chosen_std.item() == 1.0
    assert stats.rejected_mean.item() == 0.0 and stats.rejected_std.item() == 0.0
    assert stats.accuracy.item() == 1.0


def test_last_token_index_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 0, 3]
    assert last_token_index(left).tolist() == [3, 3]
