"""Shared pieces of the wiring tests of PPO and GRPO: a reward with an obvious optimum, a fixed batch of responses
standing in for sampling, and small weight perturbations that make the policy, reference and critic differ."""

from __future__ import annotations

import lightning as L
import torch

from lit_rlhf.generation import Generation
from lit_rlhf.rollout import response_logprobs

DIGITS = frozenset(str(n) for n in range(10))
"""The ten one-digit words of the arithmetic vocabulary: about 8% of its 130 tokens."""


def digit_fraction(prompts: list[str], completions: list[str], rows: list[dict]) -> list[float]:
    """Share of a completion's words that are one-digit numbers (0 for an empty completion).

    An untrained tiny policy scores about 0.08; the optimum, 1, is reached by writing only digits.
    """
    return [sum(word in DIGITS for word in text.split()) / max(1, len(text.split())) for text in completions]


class ScoreHistory(L.Callback):
    """Each iteration's logged values of ``names``, in order."""

    def __init__(self, *names: str) -> None:
        self.values: dict[str, list[float]] = {name: [] for name in names}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for name, values in self.values.items():
            values.append(float(trainer.callback_metrics[name]))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


EOS_AT = (1, None, 3, 0, None, 2, None, 4)
"""Where each fixed response says EOS (``None``: cut at the length limit without EOS); repeated over the rows."""


def fixed_responses(tokenizer, num_rows: int, length: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed batch of responses: random words, some ended by EOS at varied positions and some cut without it.

    Returns:
        ``(response_ids, response_mask, has_eos)``: ``(num_rows, length)`` ids with padding after EOS, the bool mask
        true up to and including EOS, and ``(num_rows,)`` bool.
    """
    words = torch.randint(4, len(tokenizer), (num_rows, length), generator=torch.Generator().manual_seed(1))
    ids, mask = words.clone(), torch.ones(num_rows, length, dtype=torch.bool)
    has_eos = torch.zeros(num_rows, dtype=torch.bool)
    for row in range(num_rows):
        eos = EOS_AT[row % len(EOS_AT)]
        if eos is not None:
            ids[row, eos] = tokenizer.eos_token_id
            ids[row, eos + 1 :] = tokenizer.pad_token_id
            mask[row, eos + 1 :] = False
            has_eos[row] = True
    return ids, mask, has_eos


class FixedSampler:
    """Stands in for :func:`lit_rlhf.generation.generate` in a module: returns the fixed responses, with the sampling
    policy's log-probabilities from a teacher-forced pass, and records how it was called."""

    def __init__(self, tokenizer, length: int = 5) -> None:
        self.tokenizer, self.length = tokenizer, length
        self.calls: list[dict] = []
        self.generation: Generation | None = None

    def __call__(self, model, prompt_ids, prompt_mask, **kwargs) -> Generation:
        self.calls.append(kwargs)
        num_samples = kwargs.get("num_samples", 1)
        prompt_ids = prompt_ids.repeat_interleave(num_samples, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(num_samples, dim=0)
        ids, mask, has_eos = fixed_responses(self.tokenizer, prompt_ids.size(0), self.length)
        logprobs = response_logprobs(model, prompt_ids, prompt_mask, ids, mask, kwargs["temperature"])
        self.generation = Generation(ids, mask, has_eos, logprobs.detach())
        return self.generation


@torch.no_grad()
def perturb(module: torch.nn.Module, std: float, seed: int) -> None:
    """Add Gaussian noise of ``std`` to every parameter of ``module`` (a fixed seed, so the same each run)."""
    generator = torch.Generator().manual_seed(seed)
    for param in module.parameters():
        param.add_(torch.randn(param.shape, generator=generator) * std)


def decoded(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """Each response's words before EOS, joined by spaces (the word-level tokenizer's text)."""
    special = set(tokenizer.all_special_ids)
    return [
        " ".join(tokenizer.convert_ids_to_tokens([t for t in row[keep].tolist() if t not in special]))
        for row, keep in zip(response_ids, response_mask.bool())
    ]
