"""Preference DataModules: the base for {prompt, chosen, rejected} rows and the generic file/hub one."""

from __future__ import annotations

from lit_rlhf.data.preference_rows import IdenticalPolicy
from lit_rlhf.data.rows import RowSet
from lit_rlhf.data.sources import load_train_val
from lit_rlhf.data.tokenization import OverlongPolicy
from lit_rlhf.data.tokenized import TokenizedRowsDataModule


class PreferenceRowsDataModule(TokenizedRowsDataModule):
    """Base for DataModules that feed a :class:`~lit_rlhf.modules.RewardModule` with preference pairs.

    Subclasses implement :meth:`load_rows`; see :class:`~lit_rlhf.data.tokenized.TokenizedRowsDataModule` for the
    arguments.
    """

    row_format = "preference"


class PreferenceDataModule(PreferenceRowsDataModule):
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
        val: validation file or name; ``null`` splits ``val_fraction`` off ``train`` (seeded).
        train_split: split of a ``datasets`` source for training.
        val_split: split of a ``datasets`` source for validation (default ``train_split``).
        config_name: ``datasets`` configuration.
        columns: ``{our_field: dataset_column}`` for ``prompt``, ``chosen``, ``rejected`` (and the margin field).
        val_fraction: held-out share of ``train`` when ``val`` is not given.
        implicit_prompt: rows have no prompt; split ``chosen``/``rejected`` at their longest common prefix.
        prompt_delimiter: with ``implicit_prompt``, end the prompt after the last occurrence of this marker in the
            common prefix instead of at a word boundary.
        margin_field: numeric field with the required reward gap of each pair (``-log sigmoid(r_c - r_r - m)``).
        identical: ``skip`` (count and warn) or ``error`` for pairs whose chosen and rejected are equal.
        max_length, max_prompt_length, overlong, use_chat_template, system_prompt, batch_size, eval_batch_size,
            num_workers, seed: see :class:`~lit_rlhf.data.tokenized.TokenizedRowsDataModule`.
    """

    def __init__(
        self,
        train: str,
        val: str | None = None,
        train_split: str = "train",
        val_split: str | None = None,
        config_name: str | None = None,
        columns: dict[str, str] | None = None,
        val_fraction: float = 0.05,
        implicit_prompt: bool = False,
        prompt_delimiter: str | None = None,
        margin_field: str | None = None,
        identical: IdenticalPolicy = "skip",
        max_length: int = 512,
        max_prompt_length: int | None = None,
        overlong: OverlongPolicy = "truncate",
        use_chat_template: bool | None = None,
        system_prompt: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            overlong=overlong,
            use_chat_template=use_chat_template,
            system_prompt=system_prompt,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            seed=seed,
        )
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if identical not in ("skip", "error"):
            raise ValueError(f"identical must be 'skip' or 'error', got {identical!r}")
        self.train = train
        self.val = val
        self.train_split = train_split
        self.val_split = val_split
        self.config_name = config_name
        self.columns = columns
        self.val_fraction = val_fraction
        self.implicit_prompt = implicit_prompt
        self.prompt_delimiter = prompt_delimiter
        self.margin_field = margin_field
        self.identical = identical

    def load_rows(self) -> dict[str, RowSet]:
        return load_train_val(
            self.train,
            self.val,
            train_split=self.train_split,
            val_split=self.val_split,
            config_name=self.config_name,
            columns=self.columns,
            val_fraction=self.val_fraction,
            seed=self.seed,
        )
