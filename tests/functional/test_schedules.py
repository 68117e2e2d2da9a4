import math

import pytest

from lit_rlhf.functional import warmup_decay_factor


def test_warmup_is_linear_and_never_zero():
    # 3 warmup steps: 1/4, 2/4, 3/4, then the peak.
    assert [warmup_decay_factor(s, 3, 10, "constant") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_cosine_decay_by_hand():
    # No warmup, 10 steps: halfway the cosine is 0.5; with min 0.1 the factor is 0.1 + 0.9 * 0.5 = 0.55.
    assert math.isclose(warmup_decay_factor(5, 0, 10, "cosine", 0.1), 0.55)
    assert math.isclose(warmup_decay_factor(0, 0, 10, "cosine", 0.1), 1.0)
    assert math.isclose(warmup_decay_factor(10, 0, 10, "cosine", 0.1), 0.1)
    assert math.isclose(warmup_decay_factor(50, 0, 10, "cosine", 0.1), 0.1)  # stays at the floor


def test_linear_decay_by_hand():
    # Warmup 2, total 12: step 7 is halfway through the 10 decay steps -> 0.5.
    assert math.isclose(warmup_decay_factor(7, 2, 12, "linear"), 0.5)


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="unknown schedule"):
        warmup_decay_factor(5, 0, 10, "exponential")
