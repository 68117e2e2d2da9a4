"""The reference log-probabilities of DPO pairs computed once before training and looked up by the pairs' tokens."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lit_rlhf.errors import UserError


def pair_keys(batch: dict[str, Any]) -> list[bytes]:
    """One key per response of a pair batch, chosen responses first then rejected: a digest of its prompt's and its
    own real token ids, so the same (prompt, response) finds its value in any batch, order or process.

    Args:
        batch: from :class:`~lit_rlhf.data.collate.PairCollator` (``prompt_input_ids`` ``(pairs, prompt_len)``,
            ``response_input_ids`` ``(2 * pairs, response_len)`` and their masks).

    Returns:
        ``2 * pairs`` 16-byte keys.
    """
    prompts = _real_ids(batch["prompt_input_ids"], batch["prompt_attention_mask"])
    responses = _real_ids(batch["response_input_ids"], batch["response_attention_mask"])
    num_pairs = len(prompts)
    keys = []
    for i, response in enumerate(responses):
        digest = hashlib.blake2b(digest_size=16)
        digest.update(len(prompts[i % num_pairs]).to_bytes(4, "little"))
        digest.update(prompts[i % num_pairs])
        digest.update(response)
        keys.append(digest.digest())
    return keys


def _real_ids(ids: torch.Tensor, mask: torch.Tensor) -> list[bytes]:
    """The real token ids of each row as int64 bytes."""
    ids, mask = ids.detach().cpu().long(), mask.detach().cpu().bool()
    return [row[row_mask].numpy().tobytes() for row, row_mask in zip(ids, mask)]


class ReferenceLogpCache:
    """Summed reference log-probabilities of responses, by :func:`pair_keys` key."""

    def __init__(self) -> None:
        self.values: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self.values)

    def add(self, keys: Sequence[bytes], values: torch.Tensor) -> None:
        """Store ``values`` ``(n,)`` (float32, kept exactly) under ``keys``."""
        self.values.update(zip(keys, values.detach().float().cpu().tolist()))

    def lookup(self, keys: Sequence[bytes], device: torch.device | str) -> torch.Tensor | None:
        """The ``(n,)`` float32 values of ``keys``, or ``None`` when one of them is missing."""
        try:
            found = [self.values[key] for key in keys]
        except KeyError:
            return None
        return torch.tensor(found, dtype=torch.float32, device=device)


@torch.no_grad()
def precompute_reference_logps(
    score: Callable[[dict[str, Any]], torch.Tensor],
    datasets: Sequence[Sequence[Any]],
    collate: Callable[[list[Any]], dict[str, Any]],
    batch_size: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    gather: Callable[[dict[bytes, float]], list[dict[bytes, float]]] | None = None,
) -> ReferenceLogpCache:
    """Score every pair of ``datasets`` once and cache the values by :func:`pair_keys`.

    The examples of each dataset are cut into batches of ``batch_size`` in order; process ``rank`` scores batches
    ``rank, rank + world_size, ...`` and ``gather`` (an all-gather of Python objects) shares them, so every process
    ends with the whole cache. Every process runs as many batches (repeating its first where it has fewer), so a
    sharded reference's collectives stay paired.

    Args:
        score: ``(2 * pairs,)`` summed response log-probabilities of a collated batch, under the reference.
        datasets: the training and validation examples.
        collate: a :class:`~lit_rlhf.data.collate.PairCollator`.
        batch_size: pairs per batch.
        device: where the batches go.
        rank: this process's rank.
        world_size: the number of processes.
        gather: all-gather of a dict over the processes (``None`` on one process).

    Returns:
        The cache.
    """
    chunks = [
        [dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]
        for dataset in datasets
        for i in range(0, len(dataset), batch_size)
    ]
    mine = chunks[rank::world_size]
    rounds = -(-len(chunks) // world_size)
    cache = ReferenceLogpCache()
    for index in range(rounds):
        examples = mine[index] if index < len(mine) else mine[0] if mine else chunks[0]
        batch = _to_device(collate(list(examples)), device)
        values = score(batch)
        if index < len(mine):
            cache.add(pair_keys(batch), values)
    if gather is not None and world_size > 1:
        merged: dict[bytes, float] = {}
        for part in gather(cache.values):
            merged.update(part)
        cache.values = merged
    return cache


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class MissingReferenceError(UserError):
    """A pair whose reference log-probabilities were not precomputed, after the reference was dropped."""
