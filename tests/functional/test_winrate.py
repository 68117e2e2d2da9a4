import subprocess
import sys

import pytest
import torch

from lit_rlhf.functional.winrate import bootstrap_ci, normal_ci, order_scores, pair_scores, win_rate_stats


def test_the_winrate_math_does_not_import_lightning():
    code = "import sys, lit_rlhf.functional.winrate; print(any(m.startswith('lightning') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "policy_as_a, policy_as_b, expected",
    [
        ("A", "B", 1.0),  # both orders name the policy's position
        ("B", "A", 0.0),  # both orders name the reference's
        ("A", "A", 0.5),  # always the first position: one win, one loss
        ("B", "B", 0.5),  # always the second position
        ("A", None, 0.75),  # a win and an abstention (0.5)
        (None, "B", 0.75),
        ("B", None, 0.25),  # a loss and an abstention
        (None, "A", 0.25),
        (None, None, 0.5),
    ],
)
def test_a_pair_scores_the_mean_of_its_two_orders(policy_as_a, policy_as_b, expected):
    assert pair_scores([policy_as_a], [policy_as_b]).tolist() == [expected]


def test_order_scores_read_the_verdict_against_the_policys_position():
    assert order_scores(["A", "B", None], "A").tolist() == [1.0, 0.0, 0.5]
    assert order_scores(["A", "B", None], "B").tolist() == [0.0, 1.0, 0.5]


@pytest.mark.parametrize("ci_method", ["bootstrap", "normal"])
def test_a_judge_that_always_says_a_gives_exactly_one_half_and_only_ties(ci_method):
    stats = win_rate_stats(["A"] * 7, ["A"] * 7, ci_method=ci_method)
    # Each pair: policy first and picked (1), then reference first and picked (0): mean 0.5, inconsistent = tie.
    assert stats.win_rate == 0.5
    assert (stats.wins, stats.losses, stats.ties, stats.num_pairs) == (0, 0, 7, 7)
    assert stats.tie_rate == 1.0 and stats.abstain_rate == 0.0
    assert stats.position_a_rate == 1.0  # the position bias is visible, but cancelled in the win rate
    assert (stats.ci_low, stats.ci_high) == (0.5, 0.5)  # every pair scores 0.5: no spread


@pytest.mark.parametrize("ci_method", ["bootstrap", "normal"])
def test_a_judge_that_always_prefers_the_policy_gives_one(ci_method):
    stats = win_rate_stats(["A"] * 4, ["B"] * 4, ci_method=ci_method)
    assert stats.win_rate == 1.0 and (stats.wins, stats.losses, stats.ties) == (4, 0, 0)
    assert stats.tie_rate == 0.0 and stats.position_a_rate == 0.5
    assert (stats.ci_low, stats.ci_high) == (1.0, 1.0)


def test_mixed_verdicts_give_the_hand_computed_figures_and_normal_interval():
    # Pair scores: (A, B) win 1.0; (B, A) loss 0.0; (A, A) inconsistent 0.5; (A, None) 1 and 0.5 -> 0.75.
    stats = win_rate_stats(["A", "B", "A", "A"], ["B", "A", "A", None], ci_method="normal")
    assert stats.win_rate == pytest.approx(2.25 / 4)  # 0.5625
    assert (stats.wins, stats.losses, stats.ties, stats.num_pairs) == (1, 1, 2, 4)
    assert stats.tie_rate == 0.5
    assert stats.abstain_rate == 1 / 8  # one None among 8 single judgements
    assert stats.position_a_rate == pytest.approx(5 / 7)  # 7 verdicts, 5 of them "A"
    # Wald: squared deviations from 0.5625 sum to 0.546875, s = sqrt(0.546875 / 3) = 0.4269563, se = s / 2 =
    # 0.2134781, half-width = 1.959964 * se = 0.4184095 -> [0.1440905, 0.9809095].
    assert stats.ci_low == pytest.approx(0.1440905, abs=1e-6)
    assert stats.ci_high == pytest.approx(0.9809095, abs=1e-6)


def test_the_normal_interval_is_clipped_to_zero_one():
    low, high = normal_ci(torch.tensor([1.0, 1.0, 1.0, 0.0]))
    # mean 0.75, s = 0.5, se = 0.25, half-width 0.49 -> [0.26, 1.24], clipped at 1.
    assert low == pytest.approx(0.75 - 1.959964 * 0.25, abs=1e-6) and high == 1.0


def test_the_bootstrap_interval_on_cases_whose_percentiles_are_forced():
    # Two pairs scoring 1 and 0: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4. The 2.5% and
    # 97.5% quantiles of 10,000 resample means fall inside the ~2,500 zeros and ~2,500 ones: exactly [0, 1].
    stats = win_rate_stats(["A", "B"], ["B", "A"])
    assert stats.win_rate == 0.5 and (stats.wins, stats.losses, stats.ties) == (1, 1, 0)
    assert (stats.ci_low, stats.ci_high) == (0.0, 1.0)
    # Four pairs scoring 1, 1, 1, 0: the resample mean is k/4 with k ~ Binomial(4, 3/4), so P(0) = 1/256,
    # P(<= 0.25) = 13/256 ~ 5.1% (the 2.5% quantile is 0.25) and P(1) = 81/256 ~ 32% (the 97.5% quantile is 1).
    stats = win_rate_stats(["A", "A", "A", "B"], ["B", "B", "B", "A"])
    assert stats.win_rate == 0.75
    assert (stats.ci_low, stats.ci_high) == (0.25, 1.0)


def test_the_bootstrap_is_seeded_and_close_to_the_normal_interval_on_many_pairs():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (400,), generator=generator).double() / 4  # pair scores in {0, .25, ..., 1}
    first = bootstrap_ci(scores, seed=3)
    assert bootstrap_ci(scores, seed=3) == first  # the same seed, the same interval
    normal = normal_ci(scores)
    assert first[0] == pytest.approx(normal[0], abs=0.01) and first[1] == pytest.approx(normal[1], abs=0.01)
    low90, high90 = bootstrap_ci(scores, confidence=0.9, seed=3)
    assert first[0] < low90 < scores.mean().item() < high90 < first[1]  # a lower confidence, a narrower interval


def test_a_judge_that_never_answers_abstains_everywhere():
    stats = win_rate_stats([None] * 3, [None] * 3)
    assert stats.win_rate == 0.5 and stats.ties == 3 and stats.abstain_rate == 1.0
    assert stats.position_a_rate is None


def test_one_pair_has_the_whole_range_as_interval():
    assert win_rate_stats(["A"], ["B"]).ci_low == 0.0 and win_rate_stats(["A"], ["B"]).ci_high == 1.0
    assert win_rate_stats(["A"], ["B"], ci_method="normal")[1:3] == (0.0, 1.0)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="hold 2 and 1 verdicts"):
        win_rate_stats(["A", "B"], ["A"])
    with pytest.raises(ValueError, match=r"verdict 1 of the policy-as-B order is 'a'; expected 'A', 'B' or None"):
        win_rate_stats(["A", "B"], ["A", "a"])
    with pytest.raises(ValueError, match="no pairs"):
        win_rate_stats([], [])
    with pytest.raises(ValueError, match="ci_method must be"):
        win_rate_stats(["A"], ["B"], ci_method="wilson")
    with pytest.raises(ValueError, match="confidence must be in"):
        win_rate_stats(["A", "B"], ["B", "A"], confidence=1.0)
    with pytest.raises(ValueError, match="num_resamples must be"):
        win_rate_stats(["A", "B"], ["B", "A"], num_resamples=0)
