"""Judges with known preferences, and tiny causal LMs with known greedy outputs, for the win-rate tests."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, GPT2LMHeadModel

from lit_rlhf.evaluation import PairwiseJudge
from tests.rewards.test_judge import save_constant_judge


class AlwaysA(PairwiseJudge):
    """Pure position bias: always the first response. Records every call and the device it was moved to."""

    name = "always_a"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[list[str], list[str], list[str]]] = []
        self.device: torch.device | str | None = None

    def to(self, device):
        self.device = device
        return self

    def judge(self, prompts, responses_a, responses_b):
        self.calls.append((list(prompts), list(responses_a), list(responses_b)))
        return ["A"] * len(prompts)


class PrefersLonger(PairwiseJudge):
    """The longer response (in characters) wins; equal lengths give no verdict."""

    name = "prefers_longer"

    def judge(self, prompts, responses_a, responses_b):
        return ["A" if len(a) > len(b) else "B" if len(b) > len(a) else None for a, b in zip(responses_a, responses_b)]


def save_constant_lm(path: str, answer: str, repeat: bool = False) -> str:
    """A tiny GPT-2 (see ``save_constant_judge``) whose greedy answer to any prompt is ``answer`` then EOS, or, with
    ``repeat``, ``answer`` over and over until ``max_new_tokens``.

    The repeating one scores ``answer`` with the sum of the two LayerNorm outputs ``u_0 + u_1`` and EOS with 0:
    after any token the logit of ``answer`` is ``|u|^2 + u_0 . u_1 ~ 31`` and every other logit is 0.
    """
    save_constant_judge(path, answer)
    if repeat:
        tokenizer = AutoTokenizer.from_pretrained(path)
        (answer_id,) = tokenizer(answer, add_special_tokens=False)["input_ids"]
        model = GPT2LMHeadModel.from_pretrained(path)
        with torch.no_grad():
            head = model.lm_head.weight
            head[answer_id] += head[tokenizer.eos_token_id]
            head[tokenizer.eos_token_id] = 0.0
        model.save_pretrained(path)
    return path
