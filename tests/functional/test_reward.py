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


def test_prefix_pair_loss_by_hand():
    from lit_rlhf.functional.reward import prefix_pair_loss

    # Pair 0: ids part at position 2 and both end at 3, so positions 2 and 3 count: logits ln 3 and 0.
    # Pair 1: the same shape but chosen is not known to be correct, so it is left out.
    chosen_ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]])
    rejected_ids = torch.tensor([[5, 6, 9, 8], [5, 6, 9, 8]])
    chosen_rewards = torch.tensor([[9.0, 9.0, math.log(3.0), 1.0], [0.0, 0.0, 0.0, 0.0]])
    rejected_rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    last = torch.tensor([3, 3])
    loss, count = prefix_pair_loss(
        chosen_rewards, rejected_rewards, chosen_ids, rejected_ids, last, last, torch.tensor([True, False])
    )
    assert count.item() == 2  # positions 0-1 are the shared prompt: equal sequences, no signal
    assert math.isclose(loss.item(), (math.log(4.0 / 3.0) + math.log(2.0)) / 2, rel_tol=1e-6)


def test_prefix_pair_loss_stops_at_the_shorter_side_and_handles_no_positions():
    from lit_rlhf.functional.reward import prefix_pair_loss

    # Rejected stops early (last index 2; position 3 is padding): only positions 2..2 count.
    chosen_ids = torch.tensor([[5, 6, 7, 8]])
    rejected_ids = torch.tensor([[5, 6, 2, 0]])
    chosen_rewards = torch.tensor([[0.0, 0.0, 2.0, 100.0]])
    rejected_rewards = torch.tensor([[0.0, 0.0, 0.0, -100.0]])
    loss, count = prefix_pair_loss(
        chosen_rewards,
        rejected_rewards,
        chosen_ids,
        rejected_ids,
        torch.tensor([3]),
        torch.tensor([2]),
        torch.tensor([True]),
    )
    assert count.item() == 1 and math.isclose(loss.item(), math.log1p(math.exp(-2.0)), rel_tol=1e-6)
    loss, count = prefix_pair_loss(
        chosen_rewards,
        rejected_rewards,
        chosen_ids,
        rejected_ids,
        torch.tensor([3]),
        torch.tensor([2]),
        torch.tensor([False]),
    )
    assert count.item() == 0 and loss.item() == 0.0
