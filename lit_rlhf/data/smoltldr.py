"""smoltldr (``mlabonne/smoltldr``): Reddit posts with a short human TL;DR, for PPO/GRPO prompts or SFT."""

from __future__ import annotations

from typing import Any

from lit_rlhf.data.mapped import MappedRowsDataModule, require_field
from lit_rlhf.data.rows import DataError
from lit_rlhf.data.tokenized import RowFormat

__all__ = ["SMOLTLDR", "SmolTLDRDataModule"]

SMOLTLDR = "mlabonne/smoltldr"
"""The ``datasets`` name: splits ``train`` (2,000 rows), ``validation`` (200) and ``test`` (200); columns ``prompt``
(the Reddit post) and ``completion`` (its TL;DR, about 25 tokens)."""

_DEFAULT_SOURCE = {"train": SMOLTLDR, "val": SMOLTLDR, "train_split": "train", "val_split": "validation"}


class SmolTLDRDataModule(MappedRowsDataModule):
    """``mlabonne/smoltldr`` (GRPO with length and format rewards), or files in its schema.

    Each source row has a ``prompt`` (a Reddit post) and a ``completion`` (its human-written TL;DR), both text; any
    other column is kept. Rows become:

    - ``format: prompt`` (PPO, GRPO): ``{prompt, reference}`` with ``reference`` = the TL;DR, plus the source's other
      columns; reward sources read them (e.g. ``AnswerMatchReward(field="reference")``, or a ROUGE function).
    - ``format: sft``: ``{prompt, response}`` with ``response`` = the TL;DR.

    A row whose ``prompt`` or ``completion`` is missing, not text or empty stops loading with a
    :class:`~lit_rlhf.data.rows.DataError` naming the file (or ``datasets`` split), the row and the field.

    The posts carry no instruction: ``system_prompt`` (a system message with a chat template, else a preamble before
    the post) tells the policy what to write.

    Example YAML::

        data:
          class_path: lit_rlhf.data.smoltldr.SmolTLDRDataModule
          init_args:
            format: prompt
            system_prompt: "Summarize the Reddit post in one sentence."
            max_prompt_length: 512

    Args:
        format: ``prompt`` or ``sft``.
        train: a file in the smoltldr schema (jsonl/json/csv/parquet) or a ``datasets`` name; ``null`` =
            ``mlabonne/smoltldr``.
        val: validation file or name. With ``train: null`` it defaults to ``mlabonne/smoltldr``'s ``val_split``;
            with a ``train`` file and no ``val``, ``val_fraction`` of ``train`` is held out (seeded).
        train_split: ``datasets`` split for training (default ``train``).
        val_split: ``datasets`` split for validation (default ``validation``; ``test`` also exists).
        config_name: ``datasets`` configuration (none for smoltldr).
        max_train_rows, max_val_rows: keep only this many rows of each split (quick runs), a seeded random subset.
        columns: ``{our_name: column}`` renames applied first, e.g. ``{prompt: post, completion: summary}`` to read
            another TL;DR file.
        val_fraction: held-out share of ``train`` when there is no validation source.
        max_length: longest prompt + response in tokens (``sft``); bounds prompts via ``max_prompt_length``.
        max_prompt_length: longest prompt in tokens (default ``max_length // 2``); posts run to about 410 tokens.
        overlong: ``truncate`` (keeps the *end* of a long prompt, cuts a long response), ``drop`` or ``error``;
            counts are logged.
        use_chat_template: wrap prompts in the tokenizer's chat template; ``null`` = when it has one.
        system_prompt: the instruction (see above); ``null`` = none, the bare post.
        batch_size, eval_batch_size, num_workers, seed, group_by_length, length_group_batches, data_dir: see
            :class:`~lit_rlhf.data.mapped.MappedRowsDataModule` (passed on as keyword arguments).
    """

    formats: tuple[RowFormat, ...] = ("prompt", "sft")
    sources = {"prompt": _DEFAULT_SOURCE, "sft": _DEFAULT_SOURCE}

    def __init__(
        self,
        format: RowFormat = "prompt",
        max_length: int = 640,
        max_prompt_length: int | None = 512,
        **kwargs: Any,
    ) -> None:
        super().__init__(format=format, max_length=max_length, max_prompt_length=max_prompt_length, **kwargs)

    def convert_row(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        """``{prompt, reference, ...other columns}`` (``prompt``) or ``{prompt, response}`` (``sft``) from a
        ``{prompt, completion}`` row.

        Raises:
            DataError: ``prompt`` or ``completion`` missing, not text, or blank.
        """
        prompt = require_field(row, "prompt", where)
        completion = require_field(row, "completion", where)
        for field, value in (("prompt", prompt), ("completion", completion)):
            if not value.strip():
                raise DataError(f"{where}: field {field!r} is empty")
        if self.format == "sft":
            return {"prompt": prompt, "response": completion}
        extra = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
        return {**extra, "prompt": prompt, "reference": completion}
