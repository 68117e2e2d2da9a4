"""SFT DataModules: the base for {prompt, response} rows and the generic file/hub one."""

from __future__ import annotations

from lit_rlhf.data.files import FileRowsDataModule
from lit_rlhf.data.tokenized import SFT_FIELDS, TokenizedRowsDataModule

__all__ = ["SFT_FIELDS", "SFTDataModule", "SFTRowsDataModule"]


class SFTRowsDataModule(TokenizedRowsDataModule):
    """Base for DataModules that feed an :class:`~lit_rlhf.modules.SFTModule` with {prompt, response} rows.

    Subclasses implement :meth:`load_rows`; see :class:`~lit_rlhf.data.tokenized.TokenizedRowsDataModule` for the
    arguments.
    """

    row_format = "sft"


class SFTDataModule(FileRowsDataModule):
    """{prompt, response} rows from jsonl/json/csv/parquet files or a ``datasets`` name.

    Example YAML::

        data:
          class_path: lit_rlhf.data.SFTDataModule
          init_args:
            train: data/train.jsonl          # or a hub name such as trl-lib/tldr
            val: data/val.jsonl              # optional; else val_fraction of train is held out
            columns: {prompt: question, response: answer}

    Arguments: see :class:`~lit_rlhf.data.files.FileRowsDataModule`.
    """

    row_format = "sft"
