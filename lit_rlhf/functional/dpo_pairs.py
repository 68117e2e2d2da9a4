"""Preference pairs from scored samples: which of a prompt's sampled answers is chosen against which.

Iterative (online) DPO answers each prompt ``k`` times, scores every answer with a reward source, and trains DPO on
pairs of answers to the same prompt; this module makes those pairs from the ``(prompts, k)`` grid of rewards.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

PairRule = Literal["best_vs_worst", "all_pairs"]
PAIR_RULES: tuple[str, ...] = ("best_vs_worst", "all_pairs")


class PreferencePairs(NamedTuple):
    """Pairs of answers to the same prompt, as indices into the answers laid out prompt-major (``prompt * k + j``).

    Attributes:
        chosen: ``(pairs,)`` long, the answer with the higher reward of each pair.
        rejected: ``(pairs,)`` long, the answer with the lower reward.
        prompt: ``(pairs,)`` long, the prompt (row of the reward grid) each pair belongs to.
        has_pair: ``(prompts,)`` bool, false for a prompt whose answers all have the same reward (no pair).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    prompt: torch.Tensor
    has_pair: torch.Tensor


def preference_pairs(rewards: torch.Tensor, rule: PairRule = "best_vs_worst") -> PreferencePairs:
    """Pair the answers of each prompt by reward.

    - ``best_vs_worst``: one pair per prompt, its highest-reward answer chosen against its lowest-reward answer. Among
      answers tied for the highest (or the lowest) reward, the one sampled first (lowest index) is taken.
    - ``all_pairs``: every two answers of a prompt whose rewards differ, the higher chosen; ``k (k - 1) / 2`` pairs at
      most per prompt, ordered by prompt, then by the first answer's index, then by the second's.

    A prompt whose answers all have the same reward gives no pair under either rule. Pairs come in prompt order.

    Args:
        rewards: ``(prompts, k)`` the reward of each of the ``k`` answers of each prompt (finite).
        rule: one of :data:`PAIR_RULES`.

    Returns:
        :class:`PreferencePairs` on the device of ``rewards``.

    Raises:
        ValueError: an unknown ``rule``, ``rewards`` not 2-dimensional, or a reward that is not finite.
    """
    if rule not in PAIR_RULES:
        raise ValueError(f"pair rule {rule!r} is not one of {', '.join(PAIR_RULES)}")
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (prompts, k), got shape {tuple(rewards.shape)}")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards must be finite to rank the answers")
    prompts, k = rewards.shape
    device = rewards.device
    has_pair = rewards.amax(dim=1) > rewards.amin(dim=1)
    if rule == "best_vs_worst":
        index = torch.arange(k, device=device).expand(prompts, k)
        beyond = torch.full_like(index, k)  # larger than any index: ignored by the min below
        best = torch.where(rewards == rewards.amax(dim=1, keepdim=True), index, beyond).amin(dim=1)
        worst = torch.where(rewards == rewards.amin(dim=1, keepdim=True), index, beyond).amin(dim=1)
        prompt = torch.arange(prompts, device=device)[has_pair]
        return PreferencePairs(prompt * k + best[has_pair], prompt * k + worst[has_pair], prompt, has_pair)
    first, second = torch.triu_indices(k, k, offset=1, device=device)  # (k (k - 1) / 2,) each, i < j
    r_first, r_second = rewards[:, first], rewards[:, second]  # (prompts, k (k - 1) / 2)
    differ = r_first != r_second
    prompt, slot = differ.nonzero(as_tuple=True)  # row-major: prompt order, then (i, j) order
    i, j = first[slot], second[slot]
    first_wins = r_first[prompt, slot] > r_second[prompt, slot]
    chosen = torch.where(first_wins, i, j)
    rejected = torch.where(first_wins, j, i)
    return PreferencePairs(prompt * k + chosen, prompt * k + rejected, prompt, has_pair)
