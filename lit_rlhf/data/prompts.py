"""Prompt-only rows (PPO, GRPO) from files or a ``datasets`` name."""

from __future__ import annotations

from lit_rlhf.data.files import FileRowsDataModule

__all__ = ["PromptDataModule"]


class PromptDataModule(FileRowsDataModule):
    """{prompt, + any fields a reward function reads} rows from jsonl/json/csv/parquet files or a ``datasets`` name.

    Example YAML (PPO or GRPO)::

        data:
          class_path: lit_rlhf.data.PromptDataModule
          init_args:
            train: data/prompts.jsonl        # rows like {"prompt": "...", "answer": "..."}
            columns: {prompt: question}      # optional renames {our_field: dataset_column}
            max_prompt_length: 256

    Every field of a row reaches the reward sources (``rows`` argument). Arguments: see
    :class:`~lit_rlhf.data.files.FileRowsDataModule`.
    """

    row_format = "prompt"
