"""Rule-based rewards: functions of the completion text and the row (no model)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from lit_rlhf.data.arithmetic_task import exact_match, graded_score
from lit_rlhf.rewards.base import RewardError, RewardSource


class ArithmeticVerifierReward(RewardSource):
    """The arithmetic task's verifier as a reward: compares the completion with the row's ``answer``.

    Args:
        metric: ``exact_match`` (``correct`` if the series is exactly right, else ``wrong``) or ``graded_score``
            (partial credit in [0, 1] scaled to [``wrong``, ``correct``]).
        correct: reward of an exactly right answer.
        wrong: reward of a completely wrong one.
        name: name in logs (default ``arithmetic_verifier``).
    """

    name = "arithmetic_verifier"

    def __init__(
        self,
        metric: Literal["exact_match", "graded_score"] = "exact_match",
        correct: float = 1.0,
        wrong: float = 0.0,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if metric not in ("exact_match", "graded_score"):
            raise ValueError(f"metric must be 'exact_match' or 'graded_score', got {metric!r}")
        self.metric = metric
        self.correct = correct
        self.wrong = wrong

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        rows: Sequence[dict[str, Any]],
        finished: Sequence[bool] | None = None,
    ) -> list[float]:
        judge = exact_match if self.metric == "exact_match" else graded_score
        rewards = []
        for i, (completion, row) in enumerate(zip(completions, rows)):
            if "answer" not in row:
                raise RewardError(f"{self.name}: row of sample {i} has no 'answer' field (fields: {sorted(row)})")
            rewards.append(self.wrong + (self.correct - self.wrong) * judge(completion, row["answer"]))
        return rewards


class FunctionReward(RewardSource):
    """Any Python function as a reward source, picked from YAML by its import path.

    .. code-block:: yaml

        reward:
          class_path: lit_rlhf.rewards.FunctionReward
          init_args:
            function: my_project.rewards.brevity   # def brevity(prompts, completions, rows) -> list[float]

    Args:
        function: called as ``function(prompts, completions, rows)`` (lists of equal length; ``rows`` are the
            dataset rows, e.g. with an ``answer`` field) and returning one number per sample. Its output is checked
            like every source's (length, finite numbers) with errors naming the function and the sample.
        name: name in logs (default: the function's name).
    """

    def __init__(self, function: Callable[[list[str], list[str], list[dict[str, Any]]], Any], name: str | None = None):
        super().__init__(name or getattr(function, "__name__", None))
        self.function = function

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        rows: Sequence[dict[str, Any]],
        finished: Sequence[bool] | None = None,
    ) -> Any:
        return self.function(list(prompts), list(completions), list(rows))
