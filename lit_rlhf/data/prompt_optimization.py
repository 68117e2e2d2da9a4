"""Multiple-choice QA prompt optimisation with a frozen judge LLM: multiple-choice questions a frozen judge answers
under a system prompt that the policy writes from one fixed instruction."""

from __future__ import annotations

import ast
from typing import Any, Literal

from lit_rlhf.data.mapped import MappedRowsDataModule, require_field
from lit_rlhf.data.rows import DataError

__all__ = ["DEFAULT_INSTRUCTION", "PromptOptimizationDataModule", "parse_choices"]

DEFAULT_INSTRUCTION = (
    "Write a system prompt that leads an LLM to judge the given question and choices neutrally and logically, "
    "without emotion.\n"
    "Requirements:\n"
    "- The prompt must be a single sentence that can be used as a system message.\n"
    "- It must lead the LLM to consider several perspectives, without bias or emotional language.\n"
    "- The context, the question and the choices will be given as user input ([Context], [Question], [Choices]), "
    "so write it in a general form.\n"
    "- Do not use Markdown.\n"
    "- Output only the prompt, with no other explanation."
)
"""The policy's default instruction: write a neutral, logical one-sentence system prompt for judging a question and
its choices."""

POLICY_SYSTEM_PROMPT = (
    "You are an expert at writing system prompts that lead an LLM to judge the given question and choices "
    "neutrally and logically, without emotion."
)
"""A system message for the policy, the one ``configs/prompt_optimization/ppo.yaml`` passes as ``system_prompt`` (the
DataModule's default is none)."""


def parse_choices(value: Any, where: str) -> list[str]:
    """The ``choices`` field as a list of at least two non-empty, stripped strings.

    Args:
        value: a list of strings (JSON rows) or a Python list literal such as ``"['a', 'b, c', \\"d's\\"]"`` (CSV
            rows, read with :func:`ast.literal_eval`, never ``eval``).
        where: ``"<file> row <n>"`` for messages.

    Raises:
        DataError: naming ``where`` and the field ``'choices'``: not a literal, not a list of strings, fewer than two
            choices, or an empty choice.
    """
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
            reason = err.msg if isinstance(err, SyntaxError) else str(err) or type(err).__name__
            raise DataError(
                f"{where}: field 'choices' is not a Python list literal ({reason}): {value!r:.120}"
            ) from err
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) for c in value):
        kinds = sorted({type(c).__name__ for c in value}) if isinstance(value, (list, tuple)) else []
        got = f"a list of {', '.join(kinds)}" if kinds else type(value).__name__
        raise DataError(f"{where}: field 'choices' must be a list of strings, got {got}: {value!r:.120}")
    choices = [c.strip() for c in value]
    if len(choices) < 2:
        raise DataError(f"{where}: field 'choices' needs at least 2 choices, got {len(choices)}: {value!r:.120}")
    if not all(choices):
        raise DataError(f"{where}: field 'choices' has an empty choice (number {choices.index('') + 1})")
    return choices


class PromptOptimizationDataModule(MappedRowsDataModule):
    """Multiple-choice rows for training a policy to write a judge's system prompt, for PPO or GRPO.

    The source (a CSV, or jsonl/json/parquet or a ``datasets`` name) has the columns ``context``, ``question``,
    ``choices`` (a Python list literal such as ``['The grandfather', 'The grandson', 'Cannot be determined']``, or a
    list in JSON rows) and ``answer`` (one of the choices). A CSV saved with a byte-order mark (Excel's "CSV UTF-8")
    is read as well.

    Every row's prompt is the same fixed ``instruction`` (wrapped in the policy tokenizer's chat template when it
    has one, after the optional ``system_prompt``); the row keeps ``context``, ``question``, ``choices`` (a list)
    and ``answer`` (stripped) for the judge, e.g. :class:`~lit_rlhf.rewards.judge.LLMJudgeReward`, plus any other
    column. So each sample of a batch is the policy's answer to one instruction, scored on a different question.

    .. code-block:: yaml

        data:
          class_path: lit_rlhf.data.prompt_optimization.PromptOptimizationDataModule
          init_args:
            train: data/prompt_optimization/train.csv
            val_fraction: 0.05

    Args:
        format: only ``prompt`` (PPO, GRPO).
        instruction: the policy's prompt (default: :data:`DEFAULT_INSTRUCTION`).
        train: the file or ``datasets`` name with the rows (required).
        **kwargs: the rest of :class:`~lit_rlhf.data.mapped.MappedRowsDataModule` (``val``, ``val_fraction``,
            ``max_train_rows``, ``max_length``, ``max_prompt_length``, ``use_chat_template``, ``system_prompt``,
            ``batch_size``, ``seed``, ...).

    Raises:
        DataError: at setup, for a row with a missing field, a ``choices`` value that is not a list literal of at
            least two strings, or an ``answer`` that is not one of the choices, naming the file, the row (its data
            line, from 1) and the field.
    """

    formats = ("prompt",)

    def __init__(
        self,
        format: Literal["prompt"] = "prompt",
        instruction: str = DEFAULT_INSTRUCTION,
        train: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not instruction.strip():
            raise ValueError("instruction must not be empty")
        super().__init__(format=format, train=train, **kwargs)
        self.instruction = instruction

    def convert_row(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        """``{prompt: instruction, context, question, choices: list, answer, + other columns}`` from one source row."""
        if None in row:  # csv.DictReader puts the values beyond the header under the key None
            raise DataError(f"{where}: more values than columns in the header (extra: {row[None]!r:.80})")
        row = {key.lstrip("\ufeff"): value for key, value in row.items()}
        context = require_field(row, "context", where).strip()
        question = require_field(row, "question", where).strip()
        if not question:
            raise DataError(f"{where}: field 'question' is empty")
        choices = parse_choices(require_field(row, "choices", where, (str, list)), where)
        answer = require_field(row, "answer", where).strip()
        if answer not in choices:
            raise DataError(f"{where}: field 'answer' {answer!r} is not one of the choices {choices!r}")
        return {
            **row,
            "prompt": self.instruction,
            "context": context,
            "question": question,
            "choices": choices,
            "answer": answer,
        }
