"""The embedded arithmetic-series DataModule (seed 004): generated in memory, no download."""

from __future__ import annotations

from typing import Any, Literal

from lit_rlhf.data.arithmetic_task import ArithmeticProblem, exact_match, graded_score, split_problems
from lit_rlhf.data.rows import RowSet
from lit_rlhf.data.sft import SFTRowsDataModule
from lit_rlhf.data.tokenization import OverlongPolicy


def problem_row(problem: ArithmeticProblem) -> dict[str, Any]:
    """A row for ``problem``: ``prompt``, ``response`` (the reference series) and the verifier's fields."""
    return {
        "prompt": problem.prompt,
        "response": problem.answer,
        "answer": problem.answer,
        "start": problem.start,
        "difference": problem.difference,
        "num_terms": problem.num_terms,
    }


class ArithmeticDataModule(SFTRowsDataModule):
    """Arithmetic series: "make a series of arithmetic type which starts at 61 with 11 elements and 8 common
    difference value" -> "61 69 77 85 93".

    Held-out problems share no ``(start, difference, num_terms)`` with training ones, whatever the wording.
    Completions are checked by :meth:`score_completions` (``exact_match`` and ``graded_score``).

    Args:
        format: the rows to serve. ``sft``: {prompt, response} for :class:`~lit_rlhf.modules.SFTModule`.
        num_val: held-out problems (validation and evaluation).
        num_train: training problems; ``null`` = every remaining problem in all three wordings (~26k).
        max_length, max_prompt_length, overlong, batch_size, eval_batch_size, num_workers, seed: see
            :class:`~lit_rlhf.data.sft.SFTRowsDataModule`. ``seed`` also fixes the train/held-out split.
    """

    def __init__(
        self,
        format: Literal["sft"] = "sft",
        num_val: int = 512,
        num_train: int | None = None,
        max_length: int = 64,
        max_prompt_length: int | None = None,
        overlong: OverlongPolicy = "error",
        batch_size: int = 64,
        eval_batch_size: int | None = 256,
        num_workers: int = 0,
        seed: int = 1234,
    ) -> None:
        super().__init__(
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            overlong=overlong,
            use_chat_template=False,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            seed=seed,
        )
        if format != "sft":
            raise ValueError(f"format must be 'sft', got {format!r}")
        self.format = format
        self.num_val = num_val
        self.num_train = num_train

    def load_rows(self) -> dict[str, RowSet]:
        train, val = split_problems(self.num_val, self.num_train, self.seed)
        return {
            "train": RowSet.numbered("arithmetic[train]", [problem_row(p) for p in train]),
            "val": RowSet.numbered("arithmetic[held-out]", [problem_row(p) for p in val]),
        }

    def score_completions(self, completions: list[str], rows: list[dict[str, Any]]) -> dict[str, list[float]]:
        """``exact_match`` (0/1) and ``graded_score`` (in [0, 1]) of each completion against its row's answer."""
        answers = [row["answer"] for row in rows]
        return {
            "exact_match": [exact_match(c, a) for c, a in zip(completions, answers)],
            "graded_score": [graded_score(c, a) for c, a in zip(completions, answers)],
        }
