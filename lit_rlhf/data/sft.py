"""SFT DataModules: the generic {prompt, response} one and the shared tokenization step."""

from __future__ import annotations

import random

from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lit_rlhf.data.base import RLHFDataModule
from lit_rlhf.data.collate import SFTCollator
from lit_rlhf.data.rows import DataError, RowSet, rename_columns, validate_text_rows
from lit_rlhf.data.sources import load_rows
from lit_rlhf.data.tokenization import OverlongPolicy, TruncationReport, encode_sft_rows

SFT_FIELDS = ("prompt", "response")


class SFTRowsDataModule(RLHFDataModule):
    """Base for DataModules that feed an :class:`~lit_rlhf.modules.SFTModule` with {prompt, response} rows.

    Subclasses implement :meth:`load_rows` and get validation, tokenization, the truncation report and loaders.

    Args:
        max_length: maximum prompt + response tokens.
        max_prompt_length: maximum prompt tokens (default ``max_length // 2``).
        overlong: ``truncate`` | ``drop`` | ``error`` for rows that do not fit; counts are logged.
        use_chat_template: wrap prompts in the tokenizer's chat template; ``null`` = when the tokenizer has one.
        system_prompt: optional system message.
        batch_size, eval_batch_size, num_workers, seed: see :class:`RLHFDataModule`.
    """

    def __init__(
        self,
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
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed)
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.overlong = overlong
        self.use_chat_template = use_chat_template
        self.system_prompt = system_prompt
        self.reports: dict[str, TruncationReport] = {}

    def load_rows(self) -> dict[str, RowSet]:
        """Rows per split: ``{"train": RowSet, "val": RowSet}``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Validate and tokenize the splits ``stage`` needs (``validate``: only the validation split)."""
        needed = ["val"] if stage == "validate" else ["train", "val"]
        if all(getattr(self, f"{split}_dataset") is not None for split in needed):
            return
        tokenizer = self._require_tokenizer()
        rowsets = self.load_rows()
        for split in needed:
            rowset = rowsets[split]
            validate_text_rows(rowset, SFT_FIELDS)
            examples, self.reports[split] = encode_sft_rows(
                rowset,
                tokenizer,
                max_length=self.max_length,
                max_prompt_length=self.max_prompt_length,
                overlong=self.overlong,
                use_chat_template=self.use_chat_template,
                system_prompt=self.system_prompt,
            )
            setattr(self, f"{split}_dataset", examples)
            rank_zero_info(f"[{split}] {self.reports[split].summary()}")

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self.train_dataset, SFTCollator(self._require_tokenizer().pad_token_id))

    def val_dataloader(self) -> DataLoader:
        collate = SFTCollator(self._require_tokenizer().pad_token_id, with_prompts=True)
        return self._eval_loader(self.val_dataset, collate)


class SFTDataModule(SFTRowsDataModule):
    """{prompt, response} rows from jsonl/json/csv/parquet files or a ``datasets`` name.

    Example YAML::

        data:
          class_path: lit_rlhf.data.SFTDataModule
          init_args:
            train: data/train.jsonl          # or a hub name such as trl-lib/tldr
            val: data/val.jsonl              # optional; else val_fraction of train is held out
            columns: {prompt: question, response: answer}

    Args:
        train: training file or ``datasets`` name.
        val: validation file or name; ``null`` splits ``val_fraction`` off ``train`` (seeded).
        train_split: split of a ``datasets`` source for training.
        val_split: split of a ``datasets`` source for validation (when ``val`` is a name; default ``train_split``
            of ``val``).
        config_name: ``datasets`` configuration.
        columns: ``{our_field: dataset_column}``, e.g. ``{prompt: question, response: answer}``.
        val_fraction: held-out share of ``train`` when ``val`` is not given.
        **kwargs: see :class:`SFTRowsDataModule`.
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
        self.train = train
        self.val = val
        self.train_split = train_split
        self.val_split = val_split
        self.config_name = config_name
        self.columns = columns
        self.val_fraction = val_fraction

    def load_rows(self) -> dict[str, RowSet]:
        train = rename_columns(load_rows(self.train, self.train_split, self.config_name), self.columns)
        if self.val is not None:
            val = load_rows(self.val, self.val_split or self.train_split, self.config_name)
            return {"train": train, "val": rename_columns(val, self.columns)}
        validate_text_rows(train, SFT_FIELDS)
        if len(train) < 2:
            raise DataError(f"{train.dataset}: needs at least 2 rows to hold out a validation split")
        order = list(range(len(train)))
        random.Random(self.seed).shuffle(order)
        num_val = max(1, round(self.val_fraction * len(order)))
        return {
            "train": train.subset(f"{train.dataset} (train part)", sorted(order[num_val:])),
            "val": train.subset(f"{train.dataset} (held-out part)", sorted(order[:num_val])),
        }
