"""Win rate of a policy against a reference from pairwise judgements made in both orders (pure torch).

Every pair (the policy's and the reference's response to one prompt) is judged twice: once with the policy's
response in position A, once in position B. A judge that always picks one position (position bias) then gives
each response one win and one loss, and the pair counts as a tie instead of as a win or a loss. Nothing in this
module imports Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Literal, NamedTuple

import torch

CIMethod = Literal["bootstrap", "normal"]

_VALID_VERDICTS = ("A", "B", None)


class WinRateStats(NamedTuple):
    """What the judgements of ``num_pairs`` pairs, each in both orders, say about the policy.

    Attributes:
        win_rate: mean pair score, in [0, 1]; a pair scores the mean of its two orders' scores (policy preferred 1,
            no verdict 0.5, reference preferred 0), so each pair scores 0, 0.25, 0.5, 0.75 or 1.
        ci_low: lower bound of the confidence interval of ``win_rate`` (see :func:`win_rate_stats`).
        ci_high: upper bound.
        wins: pairs where both orders prefer the policy.
        losses: pairs where both orders prefer the reference.
        ties: every other pair: the orders disagree (position bias), or at least one has no verdict.
        num_pairs: pairs judged (``wins + losses + ties``).
        tie_rate: ``ties / num_pairs``.
        abstain_rate: fraction of the ``2 * num_pairs`` single judgements without a verdict (``None``: an LLM
            judge's answer that could not be parsed, a reward model's exact tie).
        position_a_rate: among the judgements with a verdict, the fraction that picked position A: 0.5 for a judge
            without position bias, 1.0 for one that always says "A"; ``None`` when no judgement has a verdict.
    """

    win_rate: float
    ci_low: float
    ci_high: float
    wins: int
    losses: int
    ties: int
    num_pairs: int
    tie_rate: float
    abstain_rate: float
    position_a_rate: float | None


def _check_verdicts(verdicts: Sequence[str | None], order: str) -> None:
    for i, verdict in enumerate(verdicts):
        if verdict not in _VALID_VERDICTS:
            raise ValueError(f"verdict {i} of the {order} order is {verdict!r}; expected 'A', 'B' or None")


def order_scores(verdicts: Sequence[str | None], policy_position: Literal["A", "B"]) -> torch.Tensor:
    """The policy's score in each pair of one judging order.

    Args:
        verdicts: the judge's verdict per pair, ``"A"``, ``"B"`` or ``None`` (no verdict).
        policy_position: where the policy's response stood in this order.

    Returns:
        ``(num_pairs,)`` float64: 1.0 where the verdict names the policy's position, 0.0 where it names the other
        one, 0.5 where there is no verdict.

    Raises:
        ValueError: a verdict that is not ``"A"``, ``"B"`` or ``None``, or a bad ``policy_position``.
    """
    if policy_position not in ("A", "B"):
        raise ValueError(f"policy_position must be 'A' or 'B', got {policy_position!r}")
    _check_verdicts(verdicts, f"policy-as-{policy_position}")
    values = [0.5 if v is None else float(v == policy_position) for v in verdicts]
    return torch.tensor(values, dtype=torch.float64)


def pair_scores(policy_as_a: Sequence[str | None], policy_as_b: Sequence[str | None]) -> torch.Tensor:
    """Each pair's score: the mean of its two orders' scores (see :func:`order_scores`).

    Args:
        policy_as_a: ``num_pairs`` verdicts of the order with the policy's response in position A.
        policy_as_b: ``num_pairs`` verdicts of the order with the policy's response in position B.

    Returns:
        ``(num_pairs,)`` float64 in {0, 0.25, 0.5, 0.75, 1}.

    Raises:
        ValueError: the two orders have different lengths, or a verdict is not ``"A"``, ``"B"`` or ``None``.
    """
    if len(policy_as_a) != len(policy_as_b):
        raise ValueError(f"the two orders hold {len(policy_as_a)} and {len(policy_as_b)} verdicts; expected as many")
    return (order_scores(policy_as_a, "A") + order_scores(policy_as_b, "B")) / 2


def normal_ci(scores: torch.Tensor, confidence: float = 0.95) -> tuple[float, float]:
    """Normal-approximation (Wald) interval of the mean pair score, clipped to [0, 1].

    ``mean -/+ z * s / sqrt(n)``, with ``s`` the sample standard deviation (``n - 1`` in the denominator) and ``z``
    the standard normal quantile of ``(1 + confidence) / 2`` (1.96 for 95%).

    Args:
        scores: ``(num_pairs,)`` pair scores.
        confidence: coverage in (0, 1).

    Returns:
        ``(low, high)``; ``(0.0, 1.0)`` for fewer than 2 pairs (no spread can be estimated).
    """
    _check_confidence(confidence)
    n = scores.numel()
    if n < 2:
        return 0.0, 1.0
    scores = scores.double()
    mean = scores.mean().item()
    half = NormalDist().inv_cdf((1 + confidence) / 2) * scores.std(correction=1).item() / math.sqrt(n)
    return max(0.0, mean - half), min(1.0, mean + half)


def bootstrap_ci(
    scores: torch.Tensor, confidence: float = 0.95, num_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Seeded percentile-bootstrap interval of the mean pair score.

    Draws ``num_resamples`` resamples of the ``n`` pairs with replacement (a ``torch.Generator`` seeded with
    ``seed``, so the interval is reproducible), takes each resample's mean, and returns the ``(1 - confidence) / 2``
    and ``(1 + confidence) / 2`` quantiles of those means (linear interpolation, as ``torch.quantile``). Pairs, not
    single judgements, are resampled: the two orders of a pair are not independent.

    Args:
        scores: ``(num_pairs,)`` pair scores.
        confidence: coverage in (0, 1).
        num_resamples: bootstrap resamples (>= 1).
        seed: seed of the resampling.

    Returns:
        ``(low, high)``; ``(0.0, 1.0)`` for fewer than 2 pairs (no spread can be estimated).
    """
    _check_confidence(confidence)
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    n = scores.numel()
    if n < 2:
        return 0.0, 1.0
    scores = scores.detach().double().cpu()
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, (1 << 22) // n)  # resamples per draw: at most ~4M indices in memory at once
    means = []
    for start in range(0, num_resamples, chunk):
        rows = min(chunk, num_resamples - start)
        index = torch.randint(0, n, (rows, n), generator=generator)
        means.append(scores[index].mean(dim=1))
    alpha = 1 - confidence
    q = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
    low, high = torch.quantile(torch.cat(means), q).tolist()
    return low, high


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def win_rate_stats(
    policy_as_a: Sequence[str | None],
    policy_as_b: Sequence[str | None],
    *,
    confidence: float = 0.95,
    ci_method: CIMethod = "bootstrap",
    num_resamples: int = 10_000,
    seed: int = 0,
) -> WinRateStats:
    """Win rate, counts and confidence interval from the verdicts of both judging orders.

    Per order, a verdict naming the policy's position is a win (1), the reference's a loss (0), ``None`` a tie or
    abstention (0.5); a pair scores the mean of its two orders, and ``win_rate`` is the mean over pairs. A judge that
    always answers "A" thus gives every pair 0.5 (one win, one loss) and a win rate of exactly 0.5 with 100% ties.

    The interval is, with ``ci_method``:

    - ``"bootstrap"`` (default): the seeded percentile bootstrap over pairs of :func:`bootstrap_ci` (95%, 10,000
      resamples by default). It stays inside [0, 1] and needs no normality, but is itself an approximation for
      few pairs: when every pair scores the same it is that single point.
    - ``"normal"``: the Wald interval of :func:`normal_ci`, ``mean -/+ z * s / sqrt(n)``, clipped to [0, 1].

    With fewer than 2 pairs both give the whole range [0, 1].

    Args:
        policy_as_a: ``num_pairs`` verdicts (``"A"``, ``"B"`` or ``None``) with the policy's response in position A.
        policy_as_b: the verdicts of the same pairs with the policy's response in position B.
        confidence: coverage of the interval, in (0, 1).
        ci_method: ``"bootstrap"`` or ``"normal"``.
        num_resamples: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        :class:`WinRateStats`.

    Raises:
        ValueError: no pairs, orders of different lengths, a verdict other than ``"A"``, ``"B"`` or ``None``, or a
            bad interval setting.
    """
    scores = pair_scores(policy_as_a, policy_as_b)
    n = scores.numel()
    if n == 0:
        raise ValueError("no pairs to compute a win rate from")
    if ci_method == "bootstrap":
        low, high = bootstrap_ci(scores, confidence, num_resamples, seed)
    elif ci_method == "normal":
        low, high = normal_ci(scores, confidence)
    else:
        raise ValueError(f"ci_method must be 'bootstrap' or 'normal', got {ci_method!r}")
    wins = int((scores == 1).sum())
    losses = int((scores == 0).sum())
    verdicts = list(policy_as_a) + list(policy_as_b)
    parsed = [v for v in verdicts if v is not None]
    return WinRateStats(
        win_rate=scores.mean().item(),
        ci_low=low,
        ci_high=high,
        wins=wins,
        losses=losses,
        ties=n - wins - losses,
        num_pairs=n,
        tie_rate=(n - wins - losses) / n,
        abstain_rate=(len(verdicts) - len(parsed)) / len(verdicts),
        position_a_rate=parsed.count("A") / len(parsed) if parsed else None,
    )
