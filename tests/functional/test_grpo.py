import math

import pytest
import torch

from lit_rlhf.functional.grpo import group_advantages, grpo_loss, minibatch_rows


def test_group_advantages_normalise_within_each_group():
    # group 1: [1, 3] mean 2, unbiased std sqrt(2); group 2: [5, 5] all equal -> zero advantages, zero std
    adv, stats = group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), num_generations=2, eps=1e-4)
    s = math.sqrt(2.0)
    assert torch.allclose(adv[:2], torch.tensor([-1 / (s + 1e-4), 1 / (s + 1e-4)]))
    assert torch.equal(adv[2:], torch.zeros(2))
    assert torch.allclose(stats.std, torch.tensor([s, 0.0]))
    assert stats.zero_std_fraction.item() == 0.5 and math.isclose(stats.mean_std.item(), s / 2, rel_tol=1e-6)


def test_dr_grpo_keeps_the_reward_scale():
    # without the std division, advantages are reward minus the group mean: [0, 1, 2] - 1
    adv, _ = group_advantages(torch.tensor([0.0, 1.0, 2.0]), num_generations=3, scale_by_std=False)
    assert torch.equal(adv, torch.tensor([-1.0, 0.0, 1.0]))


def test_group_advantages_refuse_bad_groups():
    with pytest.raises(ValueError, match=">= 2"):
        group_advantages(torch.ones(4), 1)
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.ones(4), 3)


def _ratio_case():
    # two responses, two tokens each, second response's last token is padding
    old = torch.zeros(2, 2)
    new = torch.log(torch.tensor([[1.5, 1.0], [0.5, 2.0]]))  # ratios 1.5, 1.0 | 0.5, (2.0 masked)
    mask = torch.tensor([[True, True], [True, False]])
    return new, old, mask


def test_grpo_loss_token_average_with_clipping():
    new, old, mask = _ratio_case()
    adv = torch.tensor([1.0, -1.0])
    loss, stats = grpo_loss(new, old, adv, mask, clip_range=0.2)
    # token terms: A=+1, r=1.5 -> min(1.5, 1.2) = 1.2 (clipped); A=+1, r=1 -> 1; A=-1, r=0.5 -> min(-0.5, -0.8) = -0.8
    # loss = -(1.2 + 1.0 - 0.8) / 3 tokens
    assert math.isclose(loss.item(), -(1.2 + 1.0 - 0.8) / 3, rel_tol=1e-6)
    assert math.isclose(stats.clipfrac.item(), 2 / 3, rel_tol=1e-6)
    assert math.isclose(stats.ratio_mean.item(), 1.0, rel_tol=1e-6)
    assert stats.kl.item() == 0.0


def test_grpo_loss_sequence_average_and_clip_higher():
    new, old, mask = _ratio_case()
    adv = torch.tensor([1.0, -1.0])
    loss, _ = grpo_loss(new, old, adv, mask, clip_range=0.2, clip_range_high=0.6, averaging="sequence")
    # clip-higher: r=1.5 stays inside [0.8, 1.6] -> 1.5; sequence 1 mean (1.5 + 1)/2, sequence 2: -0.8
    assert math.isclose(loss.item(), -((1.5 + 1.0) / 2 - 0.8) / 2, rel_tol=1e-6)


def test_grpo_loss_adds_beta_times_k3():
    logp = torch.log(torch.tensor([[0.5]]))
    ref = torch.log(torch.tensor([[0.25]]))
    # k3 with log r = ref - logp = log 0.5: r - 1 - log r = -0.5 + log 2
    k3 = -0.5 + math.log(2.0)
    loss, stats = grpo_loss(
        logp, logp.clone(), torch.tensor([0.0]), torch.ones(1, 1, dtype=torch.bool), beta=0.1, ref_logprobs=ref
    )
    assert math.isclose(loss.item(), 0.1 * k3, rel_tol=1e-5) and math.isclose(stats.kl.item(), k3, rel_tol=1e-5)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 1), beta=0.1)


def test_grpo_loss_gradient_flows_only_through_unclipped_tokens():
    new, old, mask = _ratio_case()
    new = new.clone().requires_grad_(True)
    loss, _ = grpo_loss(new, old, torch.tensor([1.0, -1.0]), mask)
    loss.backward()
    # d/dlogp of -(r A)/3 = -r A / 3 for unclipped tokens; clipped ones and padding get 0
    expected = torch.tensor([[0.0, -1.0 / 3], [0.0, 0.0]])
    assert torch.allclose(new.grad, expected, atol=1e-6)


def test_minibatch_rows_keep_each_group_together():
    # groups in the order 2, 0, 1, two rows each: rows 4 5 | 0 1 | 2 3, split into 2 runs of 3 rows
    assert [m.tolist() for m in minibatch_rows(torch.tensor([2, 0, 1]), 2, group_size=2)] == [[4, 5, 0], [1, 2, 3]]
    # 4 groups of 2 into 2 minibatches: whole groups
    assert [m.tolist() for m in minibatch_rows(torch.tensor([3, 1, 0, 2]), 2, group_size=2)] == [
        [6, 7, 2, 3],
        [0, 1, 4, 5],
    ]
    # rows in the given order; more minibatches than rows leaves the empty ones out
    assert [m.tolist() for m in minibatch_rows(torch.tensor([3, 1, 0, 2]), 3)] == [[3, 1], [0], [2]]
    assert [m.tolist() for m in minibatch_rows(torch.tensor([1, 0]), 3)] == [[1], [0]]
