"""Padding tokenized examples into batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lit_rlhf.functional.masking import IGNORE_INDEX


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a ``(batch, max_len)`` id tensor and its attention mask (for generation)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq) :] = 1
    return ids, mask


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to a ``(batch, max_len)`` id tensor and its attention mask (for teacher forcing)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask


class SFTCollator:
    """Collate SFT examples into a batch.

    The batch holds, each ``(batch, seq_len)`` and right-padded: ``input_ids`` (prompt then response),
    ``attention_mask``, and ``labels`` (= ``input_ids`` with prompt and padding set to -100). With
    ``with_prompts``, also the left-padded ``prompt_input_ids`` and ``prompt_attention_mask`` ``(batch,
    prompt_len)`` for generation. ``rows`` keeps the source rows (list of dicts) for verifiers and sample tables.

    Args:
        pad_id: the tokenizer's pad token id.
        with_prompts: add the left-padded prompts (validation batches).
    """

    def __init__(self, pad_id: int, with_prompts: bool = False) -> None:
        self.pad_id = pad_id
        self.with_prompts = with_prompts

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        sequences = [ex["prompt_ids"] + ex["response_ids"] for ex in examples]
        input_ids, attention_mask = pad_right(sequences, self.pad_id)
        labels = input_ids.clone()
        labels[attention_mask == 0] = IGNORE_INDEX
        for i, ex in enumerate(examples):
            labels[i, : len(ex["prompt_ids"])] = IGNORE_INDEX
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "rows": [ex["row"] for ex in examples],
        }
        if self.with_prompts:
            batch["prompt_input_ids"], batch["prompt_attention_mask"] = pad_left(
                [ex["prompt_ids"] for ex in examples], self.pad_id
            )
        return batch
