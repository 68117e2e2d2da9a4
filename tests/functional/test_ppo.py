import math

import pytest
import torch

from lit_rlhf.functional.ppo import (
    entropy_from_logits,
    gae,
    masked_mean_var,
    masked_whiten,
    mean_var_from_sums,
    mean_var_to_sums,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
)

# --- per-token rewards ---------------------------------------------------------------------------------------------


def test_score_lands_on_the_last_real_token_of_each_length():
    # Response lengths 2, 4 and 1; kl_coef 0.5 so the penalty is -kl / 2 on real tokens and 0 on padding.
    kl = torch.tensor([[1.0, 2.0, 3.0, float("inf")], [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    scores = torch.tensor([1.0, 2.0, 3.0])
    rewards, non_score = per_token_rewards(scores, kl, 0.5, mask)
    # The inf KL sits on padding and must not leak in.
    assert torch.equal(non_score, torch.tensor([[-0.5, -1.0, 0.0, 0.0], [-0.5, -1.0, -1.5, -2.0], [-1.0, 0, 0, 0]]))
    # Scores added at positions 1, 3 and 0: -1 + 1 = 0, -2 + 2 = 0, -1 + 3 = 2.
    assert torch.equal(rewards, torch.tensor([[-0.5, 0.0, 0.0, 0.0], [-0.5, -1.0, -1.5, 0.0], [2.0, 0, 0, 0]]))


def test_per_token_rewards_accepts_a_01_mask_and_a_tensor_coefficient():
    rewards, _ = per_token_rewards(
        torch.tensor([5.0]), torch.tensor([[2.0, 2.0, 2.0]]), torch.tensor(0.25), torch.tensor([[1, 1, 0]])
    )
    # -0.25 * 2 = -0.5 on both real tokens; the score 5 on the second.
    assert torch.equal(rewards, torch.tensor([[-0.5, 4.5, 0.0]]))


def test_per_token_rewards_rejects_an_empty_response():
    mask = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match="empty row"):
        per_token_rewards(torch.zeros(2), torch.zeros(2, 2), 0.1, mask)


# --- GAE -----------------------------------------------------------------------------------------------------------

REWARDS = torch.tensor([[1.0, 2.0, 3.0]])
VALUES = torch.tensor([[0.5, 1.0, 2.0]])
FULL = torch.ones(1, 3, dtype=torch.bool)


def test_gae_gamma_1_lam_1_is_reward_to_go_minus_value():
    # Rewards-to-go 1+2+3 = 6, 2+3 = 5, 3; minus V = 0.5, 1, 2.
    advantages, returns = gae(REWARDS, VALUES, FULL, gamma=1.0, lam=1.0)
    assert torch.equal(advantages, torch.tensor([[5.5, 4.0, 1.0]]))
    assert torch.equal(returns, torch.tensor([[6.0, 5.0, 3.0]]))


def test_gae_gamma_0_is_reward_minus_value():
    # Nothing from the future counts: A = r - V = 0.5, 1, 1 and the returns are the rewards.
    advantages, returns = gae(REWARDS, VALUES, FULL, gamma=0.0, lam=0.95)
    assert torch.equal(advantages, torch.tensor([[0.5, 1.0, 1.0]]))
    assert torch.equal(returns, REWARDS)


def test_gae_lam_0_is_the_one_step_td_error():
    # gamma 0.5: A_t = r_t + 0.5 V_{t+1} - V_t = 1 + 0.5 - 0.5, 2 + 1 - 1, 3 + 0 - 2 (terminal after the last token).
    advantages, returns = gae(REWARDS, VALUES, FULL, gamma=0.5, lam=0.0)
    assert torch.equal(advantages, torch.tensor([[1.0, 2.0, 1.0]]))
    assert torch.equal(returns, torch.tensor([[1.5, 3.0, 3.0]]))


def test_gae_general_recursion():
    # gamma = lam = 0.5: the TD errors above are 1, 2, 1; A_2 = 1, A_1 = 2 + 0.25 * 1, A_0 = 1 + 0.25 * 2.25.
    advantages, returns = gae(REWARDS, VALUES, FULL, gamma=0.5, lam=0.5)
    assert torch.equal(advantages, torch.tensor([[1.5625, 2.25, 1.0]]))
    assert torch.equal(returns, torch.tensor([[2.0625, 3.25, 3.0]]))


def test_gae_masks_padding_and_ends_episodes_at_the_last_real_token():
    # Row 0 has 2 real tokens; the 9s and 7s on its padding must change nothing. gamma = lam = 1:
    # row 0: rewards-to-go 3, 2 minus V 0.5, 1 -> 2.5, 1 (V at position 2 is not bootstrapped: terminal);
    # row 1: rewards-to-go 10, 9, 7, 4 minus V 1 -> 9, 8, 6, 3.
    rewards = torch.tensor([[1.0, 2.0, 9.0, 9.0], [1.0, 2.0, 3.0, 4.0]])
    values = torch.tensor([[0.5, 1.0, 7.0, 7.0], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    rewards_before, values_before = rewards.clone(), values.detach().clone()
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.equal(advantages, torch.tensor([[2.5, 1.0, 0.0, 0.0], [9.0, 8.0, 6.0, 3.0]]))
    assert torch.equal(returns, torch.tensor([[3.0, 2.0, 0.0, 0.0], [10.0, 9.0, 7.0, 4.0]]))
    assert not advantages.requires_grad and not returns.requires_grad
    assert torch.equal(rewards, rewards_before) and torch.equal(values.detach(), values_before)


# --- whitening -----------------------------------------------------------------------------------------------------

WHITEN_VALUES = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 6.0, 7.0]])
WHITEN_MASK = torch.tensor([[True, True, True, False], [True, False, False, False]])


def test_masked_mean_var_by_hand():
    # Masked entries 1, 2, 3, 4: mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5; unbiased 5 / 3.
    mean, var, count = masked_mean_var(WHITEN_VALUES, WHITEN_MASK)
    assert mean.item() == 2.5 and math.isclose(var.item(), 5.0 / 3.0, rel_tol=1e-6) and count.item() == 4
    # No entry: mean 0, variance 0; one entry: variance 0 (no Bessel correction possible).
    assert [t.item() for t in masked_mean_var(WHITEN_VALUES, torch.zeros_like(WHITEN_MASK))] == [0.0, 0.0, 0.0]
    one = torch.zeros_like(WHITEN_MASK)
    one[1, 2] = True
    assert [t.item() for t in masked_mean_var(WHITEN_VALUES, one)] == [6.0, 0.0, 1.0]


def test_masked_mean_var_combines_across_ranks_as_documented():
    # Rank 0 holds row 0 (1, 2, 3), rank 1 holds row 1 (4); summing count, mean*count and the sum of squares
    # must give the statistics of the whole batch.
    parts = [mean_var_to_sums(*masked_mean_var(WHITEN_VALUES[i : i + 1], WHITEN_MASK[i : i + 1])) for i in range(2)]
    assert parts[1].tolist() == [1.0, 4.0, 16.0]  # a rank with one element: count 1, sum 4, sum of squares 16
    mean, var = mean_var_from_sums(parts[0] + parts[1])
    assert math.isclose(mean.item(), 2.5, rel_tol=1e-6) and math.isclose(var.item(), 5.0 / 3.0, rel_tol=1e-6)
    # A rank with no element adds nothing; the total of nothing is mean 0, variance 0.
    empty = mean_var_to_sums(*masked_mean_var(WHITEN_VALUES, torch.zeros_like(WHITEN_MASK)))
    assert torch.equal(mean_var_from_sums(parts[0] + parts[1] + empty)[0], mean)
    assert [t.item() for t in mean_var_from_sums(empty)] == [0.0, 0.0]


def test_masked_whiten_by_hand():
    # (x - 2.5) / sqrt(5/3) on the masked entries, 0 elsewhere; afterwards mean 0 and unbiased variance 1.
    whitened = masked_whiten(WHITEN_VALUES, WHITEN_MASK, eps=0.0)
    scale = math.sqrt(3.0 / 5.0)
    expected = torch.tensor([[-1.5 * scale, -0.5 * scale, 0.5 * scale, 0.0], [1.5 * scale, 0.0, 0.0, 0.0]])
    assert torch.allclose(whitened, expected, atol=1e-6)
    mean, var, _ = masked_mean_var(whitened, WHITEN_MASK)
    assert abs(mean.item()) < 1e-6 and math.isclose(var.item(), 1.0, rel_tol=1e-5)


def test_masked_whiten_without_shifting_the_mean():
    # Only the scale changes: the mean 2.5 is added back on masked entries.
    whitened = masked_whiten(WHITEN_VALUES, WHITEN_MASK, shift_mean=False, eps=0.0)
    scale = math.sqrt(3.0 / 5.0)
    expected = torch.tensor(
        [[2.5 - 1.5 * scale, 2.5 - 0.5 * scale, 2.5 + 0.5 * scale, 0.0], [2.5 + 1.5 * scale, 0, 0, 0]]
    )
    assert torch.allclose(whitened, expected, atol=1e-6)


def test_masked_whiten_with_passed_in_statistics():
    # Global mean 1 and variance 4 (as if all-reduced): (x - 1) / 2 on masked entries.
    whitened = masked_whiten(WHITEN_VALUES, WHITEN_MASK, eps=0.0, mean=torch.tensor(1.0), var=4.0)
    assert torch.equal(whitened, torch.tensor([[0.0, 0.5, 1.0, 0.0], [1.5, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="both"):
        masked_whiten(WHITEN_VALUES, WHITEN_MASK, mean=1.0)


# --- policy loss ---------------------------------------------------------------------------------------------------


def test_clipped_policy_loss_by_hand():
    # clip_range 0.2. Per token (A, ratio) -> -A * r, -A * clip(r), max:
    #   (+1, 1.5) -> -1.5, -1.2 -> -1.2 clipped     (-1, 0.5) -> 0.5, 0.8 -> 0.8 clipped
    #   (+2, 0.5) -> -1.0, -1.6 -> -1.0             (-2, 1.5) -> 3.0, 2.4 -> 3.0
    #   (+1, 1.0) -> -1.0, -1.0 -> -1.0 (a tie is not clipped)          padding (100, 3.0) ignored
    # loss = (-1.2 + 0.8 - 1 + 3 - 1) / 5 = 0.12; clipfrac 2/5.
    ratio = torch.tensor([[1.5, 0.5, 0.5], [1.5, 1.0, 3.0]])
    old_logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -1.0]])
    logprobs = (old_logprobs + ratio.log()).requires_grad_()
    advantages = torch.tensor([[1.0, -1.0, 2.0], [-2.0, 1.0, 100.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss, stats = ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2)
    assert math.isclose(loss.item(), 0.12, abs_tol=1e-6)
    assert math.isclose(stats.clipfrac.item(), 0.4, rel_tol=1e-6)
    # approxkl = 0.5 * mean(log r^2) = 0.5 * (2 ln(1.5)^2 + 2 ln(0.5)^2 + 0) / 5.
    expected_kl = 0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 5
    assert math.isclose(stats.approxkl.item(), expected_kl, rel_tol=1e-5)
    # Ratios 1.5, 0.5, 0.5, 1.5, 1: mean 1; squared deviations 4 * 0.25 = 1, unbiased 1 / 4.
    assert math.isclose(stats.ratio_mean.item(), 1.0, rel_tol=1e-6)
    assert math.isclose(stats.ratio_var.item(), 0.25, rel_tol=1e-5)
    assert not any(s.requires_grad for s in stats)
    # Clipped tokens get no gradient; the others d(-A r)/d logp = -A r, over 5 tokens: -1/5, 3/5, -1/5.
    loss.backward()
    assert torch.allclose(logprobs.grad, torch.tensor([[0.0, 0.0, -0.2], [0.6, -0.2, 0.0]]), atol=1e-6)


# --- value loss ----------------------------------------------------------------------------------------------------


def test_clipped_value_loss_by_hand():
    # c = 0.2. Per token (old, V, R) -> V_clipped, (V - R)^2, (V_clipped - R)^2, max:
    #   (1, 1.5, 2)   -> 1.2, 0.25, 0.64 -> 0.64 clipped     (1, 1.5, 1)   -> 1.2, 0.25, 0.04 -> 0.25
    #   (0, 0.1, 1)   -> 0.1, 0.81, 0.81 -> 0.81 (tie)       (0, -0.5, -1) -> -0.2, 0.25, 0.64 -> 0.64 clipped
    # loss = 0.5 * (0.64 + 0.25 + 0.81 + 0.64) / 4 = 0.2925; clipfrac 2/4; padding (last two of row 1) ignored.
    old_values = torch.tensor([[1.0, 1.0, 0.0], [0.0, 5.0, 5.0]])
    values = torch.tensor([[1.5, 1.5, 0.1], [-0.5, -50.0, 50.0]], requires_grad=True)
    returns = torch.tensor([[2.0, 1.0, 1.0], [-1.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    loss, stats = ppo_value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    assert math.isclose(loss.item(), 0.2925, rel_tol=1e-6)
    assert stats.clipfrac.item() == 0.5
    # Returns 2, 1, 1, -1: mean 0.75, squared deviations sum 4.75. Residuals 0.5, -0.5, 0.9, -0.5: mean 0.1,
    # squared deviations 0.16 + 0.36 + 0.64 + 0.36 = 1.52. Same count, so EV = 1 - 1.52 / 4.75 = 0.68.
    assert math.isclose(stats.explained_variance.item(), 0.68, rel_tol=1e-5)
    assert not any(s.requires_grad for s in stats)
    # Gradient: clipped tokens none; others 0.5 * 2 (V - R) / 4: (1.5 - 1) / 4 = 0.125 and (0.1 - 1) / 4 = -0.225.
    loss.backward()
    assert torch.allclose(values.grad, torch.tensor([[0.0, 0.125, -0.225], [0.0, 0.0, 0.0]]), atol=1e-6)


def test_explained_variance_of_a_perfect_critic_is_one():
    returns = torch.tensor([[1.0, 2.0, 4.0]])
    _, stats = ppo_value_loss(returns.clone(), returns.clone(), returns, torch.ones(1, 3, dtype=torch.bool), 0.2)
    assert stats.explained_variance.item() == 1.0 and stats.clipfrac.item() == 0.0


# --- entropy -------------------------------------------------------------------------------------------------------


def test_entropy_of_uniform_logits_is_log_vocab():
    logits = torch.full((2, 3, 7), 1.7)
    assert torch.allclose(entropy_from_logits(logits), torch.full((2, 3), math.log(7.0)))


def test_entropy_by_hand():
    # Logits 0 and ln 3 give probabilities 1/4 and 3/4: H = ln 4 - (3/4) ln 3.
    logits = torch.tensor([[[0.0, math.log(3.0)]]], dtype=torch.bfloat16)
    entropy = entropy_from_logits(logits)
    assert entropy.shape == (1, 1) and entropy.dtype == torch.float32
    assert math.isclose(entropy.item(), math.log(4.0) - 0.75 * math.log(3.0), rel_tol=1e-2)  # bf16 input
    logits = torch.randn(4, 5, 11)
    assert torch.allclose(
        entropy_from_logits(logits), torch.distributions.Categorical(logits=logits).entropy(), atol=1e-5
    )
