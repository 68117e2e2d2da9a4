"""The DataModule base for rows read from files or a ``datasets`` name (shared by the generic SFT and preference
DataModules)."""

from __future__ import annotations

from lit_rlhf.data.rows import RowSet
from lit_rlhf.data.sources import load_train_val
from lit_rlhf.data.tokenization import OverlongPolicy
from lit_rlhf.data.tokenized import TokenizedRowsDataModule


class FileRowsDataModule(TokenizedRowsDataModule):
    """Rows from jsonl/json/csv/parquet files or a ``datasets`` name, with a seeded held-out split if needed.

    Args:
        train: training file or ``datasets`` name.
        val: validation file or name; ``null`` splits ``val_fraction`` off ``train`` (seeded).
        train_split: split of a ``datasets`` source for training.
        val_split: split of a ``datasets`` source for validation (when ``val`` is a name; default ``train_split``).
        config_name: ``datasets`` configuration.
        data_dir: folder of a ``datasets`` repository to read (a subset that is not a configuration, e.g.
            ``harmless-base`` of ``Anthropic/hh-rlhf``).
        columns: ``{our_field: dataset_column}``, e.g. ``{prompt: question, response: answer}``.
        val_fraction: held-out share of ``train`` when ``val`` is not given.
        max_length, max_prompt_length, overlong, use_chat_template, system_prompt, batch_size, eval_batch_size,
            num_workers, seed, group_by_length, length_group_batches: see
            :class:`~lit_rlhf.data.tokenized.TokenizedRowsDataModule`.
    """

    def __init__(
        self,
        train: str,
        val: str | None = None,
        train_split: str = "train",
        val_split: str | None = None,
        config_name: str | None = None,
        data_dir: str | None = None,
        columns: dict[str, str] | None = None,
        val_fraction: float = 0.05,
        max_length: int = 512,
        max_prompt_length: int | None = None,
        overlong: OverlongPolicy = "truncate",
        use_chat_template: bool | None = None,
        system_prompt: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        group_by_length: bool = False,
        length_group_batches: int = 50,
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
            group_by_length=group_by_length,
            length_group_batches=length_group_batches,
        )
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.train = train
        self.val = val
        self.train_split = train_split
        self.val_split = val_split
        self.config_name = config_name
        self.data_dir = data_dir
        self.columns = columns
        self.val_fraction = val_fraction

    def load_rows(self) -> dict[str, RowSet]:
        return load_train_val(
            self.train,
            self.val,
            train_split=self.train_split,
            val_split=self.val_split,
            config_name=self.config_name,
            data_dir=self.data_dir,
            columns=self.columns,
            val_fraction=self.val_fraction,
            seed=self.seed,
        )
