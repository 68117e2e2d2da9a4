"""What the TRL workers (``_trl_*_worker.py``) share. Runs in TRL's virtualenv: torch and transformers only, no
lit_rlhf. The workers are started as scripts from this folder, so they import it as ``_trl_common``."""

from __future__ import annotations

import json
import time

import torch
from transformers import TrainerCallback


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


class LogRecorder(TrainerCallback):
    """Keeps every metrics dict the trainer logs, with its global step and a ``time.perf_counter()`` timestamp."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            entry = {"step": state.global_step, "time": time.perf_counter()}
            self.logs.append({**entry, **{k: float(v) for k, v in logs.items()}})


@torch.no_grad()
def greedy_completions(
    model: torch.nn.Module, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int
) -> tuple[list[str], list[bool]]:
    """Greedy answers from left-padded prompts, cut at the first EOS, decoded without special tokens (as
    lit_rlhf's ``generate_for_batch`` + ``decode_responses`` do); and whether each ended with EOS."""
    was_training = model.training
    model.eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    device = next(model.parameters()).device
    texts, finished = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            do_sample=False,
            temperature=None,
            top_k=None,
            top_p=None,
            use_cache=True,
        )
        for row in out[:, width:].tolist():
            ended = eos in row
            texts.append(tokenizer.decode(row[: row.index(eos)] if ended else row, skip_special_tokens=True))
            finished.append(ended)
    model.train(was_training)
    return texts, finished
