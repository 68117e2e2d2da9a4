"""Padding tokenized examples into batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lit_rlhf.functional.masking import IGNORE_INDEX
from lit_rlhf.functional.padding import pad_left, pad_right
from lit_rlhf.functional.reward import last_token_index


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


class PairCollator:
    """Collate preference pairs into one batch of ``2 * batch`` sequences: all chosen first, then all rejected.

    One forward pass scores both sides. The batch holds ``input_ids`` and ``attention_mask`` ``(2 * batch,
    seq_len)`` (prompt then response, padded on ``padding_side``), ``last_index`` ``(2 * batch,)`` (the position
    of each sequence's last real token, where the reward model reads its score), ``margin`` ``(batch,)`` float or
    ``None`` when the rows have no margin, ``chosen_correct`` ``(batch,)`` bool (rows whose ``chosen_correct`` field
    is true: the chosen response is known to be right, not only better), and ``rows`` (the source rows).

    For a forward pass that computes each prompt once (:func:`~lit_rlhf.models.scoring.shared_prompt_token_scores`)
    it also holds the parts apart: ``prompt_input_ids`` / ``prompt_attention_mask`` ``(batch, prompt_len)``
    left-padded, ``response_input_ids`` / ``response_attention_mask`` ``(2 * batch, response_len)`` right-padded
    (chosen first, then rejected) and ``response_last_index`` ``(2 * batch,)`` (last real response token).

    Args:
        pad_id: the tokenizer's pad token id.
        padding_side: ``right`` (default) or ``left``; the scores do not depend on it.
    """

    def __init__(self, pad_id: int, padding_side: str = "right") -> None:
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.pad_id = pad_id
        self.padding_side = padding_side

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        sequences = [ex["prompt_ids"] + ex["chosen_ids"] for ex in examples]
        sequences += [ex["prompt_ids"] + ex["rejected_ids"] for ex in examples]
        pad = pad_right if self.padding_side == "right" else pad_left
        input_ids, attention_mask = pad(sequences, self.pad_id)
        margins = [ex.get("margin") for ex in examples]
        if any(m is None for m in margins) and not all(m is None for m in margins):
            raise ValueError("some pairs of the batch have a margin and others do not")
        prompt_ids, prompt_mask = pad_left([ex["prompt_ids"] for ex in examples], self.pad_id)
        responses = [ex["chosen_ids"] for ex in examples] + [ex["rejected_ids"] for ex in examples]
        response_ids, response_mask = pad_right(responses, self.pad_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "last_index": last_token_index(attention_mask),
            "prompt_input_ids": prompt_ids,
            "prompt_attention_mask": prompt_mask,
            "response_input_ids": response_ids,
            "response_attention_mask": response_mask,
            "response_last_index": torch.tensor([len(r) - 1 for r in responses]),
            "margin": None if margins[0] is None else torch.tensor(margins, dtype=torch.float32),
            "chosen_correct": torch.tensor([bool(ex["row"].get("chosen_correct", False)) for ex in examples]),
            "rows": [ex["row"] for ex in examples],
        }


class PromptCollator:
    """Collate prompt-only rows (PPO, GRPO) into left-padded ``prompt_input_ids`` and ``prompt_attention_mask``
    ``(batch, prompt_len)`` for generation, plus ``rows`` (the source rows: reward functions read their fields).

    Args:
        pad_id: the tokenizer's pad token id.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        ids, mask = pad_left([ex["prompt_ids"] for ex in examples], self.pad_id)
        return {"prompt_input_ids": ids, "prompt_attention_mask": mask, "rows": [ex["row"] for ex in examples]}
