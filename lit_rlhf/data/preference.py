"""Preference DataModules: the base for {prompt, chosen, rejected} rows and the generic file/hub one."""

from __future__ import annotations

from typing import Any

from lit_rlhf.data.files import FileRowsDataModule
from lit_rlhf.data.preference_rows import IdenticalPolicy
from lit_rlhf.data.tokenized import TokenizedRowsDataModule


class PreferenceRowsDataModule(TokenizedRowsDataModule):
    """Base for DataModules that feed a :class:`~lit_rlhf.modules.RewardModule` with preference pairs.

    Subclasses implement :meth:`load_rows`; see :class:`~lit_rlhf.data.tokenized.TokenizedRowsDataModule` for the
    arguments.
    """

    row_format = "preference"


class PreferenceDataModule(FileRowsDataModule):
    """Preference pairs {prompt, chosen, rejected} from jsonl/json/csv/parquet files or a ``datasets`` name.

    Example YAML::

        data:
          class_path: lit_rlhf.data.PreferenceDataModule
          init_args:
            train: data/pairs.jsonl                 # or a hub name, e.g. Anthropic/hh-rlhf
            columns: {prompt: question, chosen: good, rejected: bad}
            margin_field: margin                    # optional required reward gap per pair

    HH-RLHF-style rows hold only two full texts that share the prompt: set ``implicit_prompt: true`` (and
    optionally ``prompt_delimiter: "\\n\\nAssistant:"``) to split them at their longest common prefix.

    Args:
        train: training file or ``datasets`` name.
        implicit_prompt: rows have no prompt; split ``chosen``/``rejected`` at their longest common prefix.
        prompt_delimiter: with ``implicit_prompt``, end the prompt after the last occurrence of this marker in the
            common prefix instead of at a word boundary.
        margin_field: numeric field with the required reward gap of each pair (``-log sigmoid(r_c - r_r - m)``).
        identical: ``skip`` (count and warn) or ``error`` for pairs whose chosen and rejected are equal.
        **kwargs: ``val``, ``train_split``, ``val_split``, ``config_name``, ``columns`` (``{our_field:
            dataset_column}`` for ``prompt``, ``chosen``, ``rejected`` and the margin field), ``val_fraction`` and the
            length, batch and worker options: see :class:`~lit_rlhf.data.files.FileRowsDataModule`.
    """

    row_format = "preference"

    def __init__(
        self,
        train: str,
        implicit_prompt: bool = False,
        prompt_delimiter: str | None = None,
        margin_field: str | None = None,
        identical: IdenticalPolicy = "skip",
        **kwargs: Any,
    ) -> None:
        super().__init__(train, **kwargs)
        if identical not in ("skip", "error"):
            raise ValueError(f"identical must be 'skip' or 'error', got {identical!r}")
        self.implicit_prompt = implicit_prompt
        self.prompt_delimiter = prompt_delimiter
        self.margin_field = margin_field
        self.identical = identical
