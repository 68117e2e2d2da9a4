"""DPO losses against values worked out by hand.

One pair throughout: policy log-probabilities chosen -1, rejected -3; reference -2 for both. So the chosen log-ratio
is +1, the rejected one -1, and h = 1 - (-1) = 2. With beta = 0.5, beta * h = 1. Response lengths: chosen 2 tokens,
rejected 4.
"""

from __future__ import annotations

import math

import pytest
import torch

from lit_rlhf.functional.dpo import DPO_LOSS_TYPES, dpo_loss, dpo_losses, sequence_logps

BETA = 0.5


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def one_pair(loss_type: str, **kwargs):
    tensors = [torch.tensor([v], dtype=torch.float64) for v in (-1.0, -3.0, -2.0, -2.0)]
    lengths = {"chosen_lengths": torch.tensor([2.0]), "rejected_lengths": torch.tensor([4.0])}
    return dpo_losses(*tensors, beta=kwargs.pop("beta", BETA), loss_type=loss_type, **lengths, **kwargs)


@pytest.mark.parametrize(
    "loss_type, kwargs, expected",
    [
        # -log sigmoid(1) = log(1 + e^-1)
        ("sigmoid", {}, softplus(-1.0)),
        # cDPO, e = 0.1: 0.9 * -log sigmoid(1) + 0.1 * -log sigmoid(-1)
        ("sigmoid", {"label_smoothing": 0.1}, 0.9 * softplus(-1.0) + 0.1 * softplus(1.0)),
        # robust, e = 0.1: (0.9 * -log sigmoid(1) - 0.1 * -log sigmoid(-1)) / (1 - 0.2)
        ("robust", {"label_smoothing": 0.1}, (0.9 * softplus(-1.0) - 0.1 * softplus(1.0)) / 0.8),
        # hinge: max(0, 1 - 0.25 * 2) = 0.5 (beta 0.25), and max(0, 1 - 0.5 * 2) = 0 at beta 0.5
        ("hinge", {"beta": 0.25}, 0.5),
        ("hinge", {}, 0.0),
        # ipo: per-token log-ratios 1/2 and -1/4, h' = 0.75; (0.75 - 1 / (2 * 0.5))^2 = 0.0625
        ("ipo", {}, 0.0625),
        # simpo, gamma 0.5: mean logps -1/2 and -3/4; 0.5 * (0.25) - 0.5 = -0.375; -log sigmoid(-0.375)
        ("simpo", {"simpo_gamma": 0.5}, softplus(0.375)),
    ],
)
def test_each_loss_type_matches_the_hand_computed_value(loss_type, kwargs, expected):
    losses, _, _ = one_pair(loss_type, **kwargs)
    assert losses.item() == pytest.approx(expected, abs=1e-12)


def test_implicit_rewards_and_statistics():
    tensors = [torch.tensor(v) for v in ([-1.0, -3.0], [-3.0, -1.0], [-2.0, -2.0], [-2.0, -2.0])]
    _, stats = dpo_loss(*tensors, beta=BETA)
    # pair 1: rewards +0.5 / -0.5; pair 2: -0.5 / +0.5
    assert stats.chosen_reward.item() == pytest.approx(0.0)
    assert stats.margin.item() == pytest.approx(0.0)  # margins +1 and -1
    assert stats.accuracy.item() == pytest.approx(0.5)
    assert stats.chosen_logps.item() == pytest.approx(-2.0)
    _, chosen, rejected = one_pair("sigmoid")
    assert chosen.item() == pytest.approx(0.5) and rejected.item() == pytest.approx(-0.5)
    _, chosen, rejected = one_pair("simpo")
    assert chosen.item() == pytest.approx(BETA * -0.5) and rejected.item() == pytest.approx(BETA * -0.75)


def test_sigmoid_gradient_with_respect_to_the_chosen_logp():
    chosen = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-3.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-2.0], dtype=torch.float64)
    loss, _ = dpo_loss(chosen, rejected, ref, ref, beta=BETA)
    loss.backward()
    # d/dc -log sigmoid(beta h) = -beta * sigmoid(-beta h) = -0.5 / (1 + e), and the opposite for the rejected
    assert chosen.grad.item() == pytest.approx(-0.5 / (1 + math.e), abs=1e-12)
    assert rejected.grad.item() == pytest.approx(0.5 / (1 + math.e), abs=1e-12)


def test_sequence_logps_sums_only_the_masked_tokens():
    token_logps = torch.tensor([[-9.0, -1.0, -2.0, -7.0], [-5.0, -0.5, -8.0, -8.0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]])
    sums, counts = sequence_logps(token_logps, mask)
    assert sums.tolist() == [-3.0, -0.5] and counts.tolist() == [2.0, 1.0]


def test_simpo_needs_no_reference_and_the_others_do():
    tensors = [torch.tensor([-1.0]), torch.tensor([-3.0])]
    lengths = {"chosen_lengths": torch.tensor([1.0]), "rejected_lengths": torch.tensor([1.0])}
    dpo_losses(*tensors, None, None, beta=BETA, loss_type="simpo", **lengths)
    for loss_type in set(DPO_LOSS_TYPES) - {"simpo"}:
        with pytest.raises(ValueError, match="reference"):
            dpo_losses(*tensors, None, None, beta=BETA, loss_type=loss_type, **lengths)
