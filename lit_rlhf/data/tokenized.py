"""The DataModule base for text rows: validation, tokenization under a length policy, loaders per row format."""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from lit_rlhf.data.base import RLHFDataModule
from lit_rlhf.data.collate import PairCollator, PromptCollator, SFTCollator
from lit_rlhf.data.preference_rows import IdenticalPolicy, encode_preference_rows, prepare_preference_rows
from lit_rlhf.data.rows import RowSet, validate_text_rows
from lit_rlhf.data.tokenization import (
    OverlongPolicy,
    TruncationReport,
    encode_rows,
    encode_sft_rows,
)

RowFormat = Literal["sft", "preference", "prompt"]

SFT_FIELDS = ("prompt", "response")


class TokenizedRowsDataModule(RLHFDataModule):
    """Base for DataModules that serve tokenized rows of one format.

    ``row_format`` says what the rows are and which module consumes them:

    - ``sft``: {prompt, response} for :class:`~lit_rlhf.modules.SFTModule` (batches from
      :class:`~lit_rlhf.data.collate.SFTCollator`).
    - ``preference``: {prompt, chosen, rejected[, margin]} for :class:`~lit_rlhf.modules.RewardModule` (batches
      from :class:`~lit_rlhf.data.collate.PairCollator`).
    - ``prompt``: {prompt, + fields a reward function may read} for PPO and GRPO (batches from
      :class:`~lit_rlhf.data.collate.PromptCollator`); ``max_prompt_length`` bounds the prompts.

    Subclasses implement :meth:`load_rows` and get validation, tokenization, the truncation report and loaders.

    Args:
        max_length: maximum prompt + response tokens (per side of a pair).
        max_prompt_length: maximum prompt tokens (default ``max_length // 2``).
        overlong: ``truncate`` | ``drop`` | ``error`` for rows that do not fit; counts are logged.
        use_chat_template: wrap prompts in the tokenizer's chat template; ``null`` = when the tokenizer has one.
        system_prompt: optional system message.
        batch_size, eval_batch_size, num_workers, seed, group_by_length, length_group_batches: see
            :class:`RLHFDataModule`.
    """

    row_format: RowFormat = "sft"
    implicit_prompt: bool = False
    prompt_delimiter: str | None = None
    margin_field: str | None = None
    identical: IdenticalPolicy = "skip"
    allow_empty_responses: bool = False

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
        group_by_length: bool = False,
        length_group_batches: int = 50,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            seed=seed,
            group_by_length=group_by_length,
            length_group_batches=length_group_batches,
        )
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
        rowsets = self.load_rows()
        for split in needed:
            examples, self.reports[split] = self.encode_rows(rowsets[split])
            setattr(self, f"{split}_dataset", examples)
            rank_zero_info(f"[{split}] {self.reports[split].summary()}")
        if "train" in needed:
            self._warn_short_training_split()

    def _warn_short_training_split(self) -> None:
        """Say so when every training batch is smaller than ``batch_size`` (fewer rows per process than a batch)."""
        world_size = self.trainer.world_size if self.trainer is not None else 1
        per_process = -(-len(self.train_dataset) // world_size)
        if per_process < self.batch_size:
            processes = f" over {world_size} processes ({per_process} each)" if world_size > 1 else ""
            rank_zero_warn(
                f"[train] {self.reports['train'].dataset}: {len(self.train_dataset)} rows{processes}, fewer than "
                f"data.init_args.batch_size {self.batch_size}: every training batch has {per_process} rows (short "
                "batches are kept, not dropped)"
            )

    def encode_rows(self, rowset: RowSet) -> tuple[list[dict[str, Any]], TruncationReport]:
        """Validate and tokenize one split according to :attr:`row_format`."""
        tokenizer = self._require_tokenizer()
        options = {
            "max_length": self.max_length,
            "max_prompt_length": self.max_prompt_length,
            "overlong": self.overlong,
            "use_chat_template": self.use_chat_template,
            "system_prompt": self.system_prompt,
        }
        if self.row_format == "sft":
            validate_text_rows(rowset, SFT_FIELDS)
            return encode_sft_rows(rowset, tokenizer, **options)
        if self.row_format == "prompt":
            validate_text_rows(rowset, ("prompt",))
            return encode_rows(rowset, tokenizer, (), **options)
        rowset, num_identical = prepare_preference_rows(
            rowset,
            implicit_prompt=self.implicit_prompt,
            prompt_delimiter=self.prompt_delimiter,
            margin_field=self.margin_field,
            identical=self.identical,
            allow_empty_responses=self.allow_empty_responses,
        )
        examples, report = encode_preference_rows(rowset, tokenizer, **options)
        report.identical_skipped = num_identical
        report.num_rows += num_identical
        return examples, report

    def _collator(self, validation: bool) -> Any:
        pad_id = self._require_tokenizer().pad_token_id
        if self.row_format == "sft":
            return SFTCollator(pad_id, with_prompts=validation)
        if self.row_format == "prompt":
            return PromptCollator(pad_id)
        return PairCollator(pad_id)

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self.train_dataset, self._collator(validation=False))

    def val_dataloader(self) -> DataLoader:
        """The validation rows in order; under data parallelism each process reads its own share, none repeated."""
        return self._eval_loader(self.val_dataset, self._collator(validation=True), shard=True)

    def normalization_dataloader(self) -> DataLoader:
        """The validation rows, all of them on every process (see :meth:`RLHFDataModule.normalization_dataloader`)."""
        return self._eval_loader(self.val_dataset, self._collator(validation=True))
