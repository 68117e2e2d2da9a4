import math

import pytest
import torch

from lit_rlhf.functional.kl import AdaptiveKLController, FixedKLController, kl_penalty


def test_k1_is_the_log_ratio():
    # k1 = logp - ref_logp: -1 - (-1.5) = 0.5 and -2 - (-1) = -1 (single tokens may be negative).
    logprobs = torch.tensor([[-1.0, -2.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0]])
    assert torch.allclose(kl_penalty(logprobs, ref_logprobs), torch.tensor([[0.5, -1.0]]))
    assert torch.allclose(kl_penalty(logprobs, ref_logprobs, "k1"), torch.tensor([[0.5, -1.0]]))


def test_k3_by_hand():
    # log r = ref - logp = -0.5 and 1: (e^-0.5 - 1) + 0.5 and (e - 1) - 1 = e - 2; equal log-probs give 0.
    logprobs = torch.tensor([[-1.0, -2.0, -0.3]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.3]])
    expected = torch.tensor([[math.exp(-0.5) - 0.5, math.e - 2.0, 0.0]])
    kl = kl_penalty(logprobs, ref_logprobs, estimator="k3")
    assert torch.allclose(kl, expected, atol=1e-6)
    assert (kl >= 0).all()


def test_kl_penalty_is_float32_and_rejects_unknown_estimators():
    half = torch.tensor([[-1.0]], dtype=torch.bfloat16)
    assert kl_penalty(half, half).dtype == torch.float32
    with pytest.raises(ValueError, match="k2"):
        kl_penalty(half, half, estimator="k2")


def test_adaptive_controller_by_hand():
    # n_steps / horizon = 1000 / 10000 = 0.1, so mult = 1 + 0.1 * clip(kl / 6 - 1, -0.2, 0.2).
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    ctl.update(9.0, n_steps=1000)  # 9/6 - 1 = 0.5, clipped to 0.2: mult 1.02
    assert math.isclose(ctl.value, 0.2 * 1.02, rel_tol=1e-12)
    ctl.update(6.6, n_steps=1000)  # 6.6/6 - 1 = 0.1 (inside the clip): mult 1.01
    assert math.isclose(ctl.value, 0.2 * 1.02 * 1.01, rel_tol=1e-12)
    ctl.update(0.0, n_steps=1000)  # 0/6 - 1 = -1, clipped to -0.2: mult 0.98
    assert math.isclose(ctl.value, 0.2 * 1.02 * 1.01 * 0.98, rel_tol=1e-12)
    ctl.update(6.0, n_steps=1000)  # on target: error 0, mult 1
    assert math.isclose(ctl.value, 0.2 * 1.02 * 1.01 * 0.98, rel_tol=1e-12)
    ctl.update(torch.tensor(3.0), n_steps=5000)  # tensor KL; 3/6 - 1 = -0.5 -> -0.2; mult 1 - 0.2 * 0.5 = 0.9
    assert math.isclose(ctl.value, 0.2 * 1.02 * 1.01 * 0.98 * 0.9, rel_tol=1e-12)


def test_adaptive_controller_state_dict_round_trip():
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    ctl.update(9.0, n_steps=1000)
    resumed = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == ctl.value == 0.2 * 1.02
    ctl.update(1.0, n_steps=64)
    resumed.update(1.0, n_steps=64)
    assert resumed.value == ctl.value


def test_adaptive_controller_rejects_bad_configuration():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=10000)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.1, target=6.0, horizon=0)
    with pytest.raises(ValueError, match="init_kl_coef"):
        AdaptiveKLController(-0.1, target=6.0, horizon=10000)


def test_fixed_controller_never_moves_and_round_trips():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, n_steps=1000)
    ctl.update(0.0, n_steps=1000)
    assert ctl.value == 0.05
    other = FixedKLController(0.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05
    with pytest.raises(ValueError, match="kl_coef"):
        FixedKLController(-1.0)
