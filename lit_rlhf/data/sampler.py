"""A shuffling sampler that can resume mid-epoch, so a resumed run sees the data an uninterrupted one would, and can
group samples of similar length into the same batch so that less of each batch is padding; and the validation
sampler, which shards rows across processes without repeating any.

Under data parallelism with ``N`` rows and ``W`` processes:

- training (:class:`ResumableSampler`, a ``DistributedSampler``): each process reads ``ceil(N / W)`` rows per
  epoch; when ``W`` does not divide ``N`` the shuffled order is padded by repeating its first rows, so up to
  ``W - 1`` rows are trained on twice in that epoch. Every process then runs the same number of steps, which the
  gradient averaging needs.
- validation (:class:`EvalShardSampler`): process ``r`` reads rows ``r, r + W, r + 2W, ...``, nothing repeated,
  so each row counts once in the validation metrics; processes differ by at most one row. Every process needs at
  least one row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler


def group_by_length(
    indices: list[int], lengths: Sequence[int], batch_size: int, group_batches: int, generator: torch.Generator
) -> list[int]:
    """Reorder ``indices`` so that each run of ``batch_size`` consecutive indices holds samples of similar length.

    The (already shuffled) indices are cut into mega-batches of ``batch_size * group_batches``; each is sorted by
    length (longest first) and cut into batches; the batches are shuffled with ``generator``, except that the batch
    holding the longest sample goes first (an out-of-memory error then shows on the first step, not hours in) and a
    short last batch stays last (so every other batch stays whole when a DataLoader cuts the list).

    Args:
        indices: sample indices in their shuffled order, ``(N,)``.
        lengths: tokens of each sample of the dataset, indexed by sample index.
        batch_size: samples per batch.
        group_batches: batches per mega-batch; larger pads less and mixes lengths less.
        generator: seeded generator for the batch order.

    Returns:
        The same indices in the new order.
    """
    mega = batch_size * max(1, group_batches)
    batches: list[list[int]] = []
    for start in range(0, len(indices), mega):
        chunk = sorted(indices[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    if not batches:
        return []
    tail = [batches.pop()] if len(batches[-1]) < batch_size else []
    order = torch.randperm(len(batches), generator=generator).tolist()
    batches = [batches[i] for i in order]
    if batches:
        longest = max(range(len(batches)), key=lambda b: lengths[batches[b][0]])
        batches[0], batches[longest] = batches[longest], batches[0]
    return [i for batch in batches + tail for i in batch]


class ResumableSampler(DistributedSampler):
    """Seeded per-epoch shuffle (sharded across ranks) that can skip the samples a run already consumed.

    It is a ``DistributedSampler`` so that Lightning keeps it under DDP instead of wrapping it; with one process it
    behaves as a seeded ``RandomSampler``. The order of epoch ``e`` depends only on ``(seed, e)``; Lightning calls
    :meth:`set_epoch`. ``__len__`` stays the full epoch length, because Lightning's restored batch counter
    already counts the skipped batches.

    With ``lengths`` and ``batch_size``, each rank's order is regrouped by :func:`group_by_length` (still a function
    of ``(seed, epoch, rank)`` only, so resuming stays exact).

    Args:
        num_samples: length of the dataset.
        num_replicas: number of data-parallel processes.
        rank: this process's rank.
        shuffle: shuffle each epoch (train) or keep the order (validation).
        seed: shuffling seed, the same on every rank.
        drop_last: drop the tail that does not divide evenly across ranks.
        lengths: tokens per sample, ``(num_samples,)``; ``None`` = no length grouping.
        batch_size: the DataLoader's batch size (needed with ``lengths``).
        group_batches: batches per length-sorted mega-batch.
    """

    def __init__(
        self,
        num_samples: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        lengths: Sequence[int] | None = None,
        batch_size: int | None = None,
        group_batches: int = 50,
    ) -> None:
        super().__init__(
            range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        if lengths is not None:
            if len(lengths) != num_samples:
                raise ValueError(f"lengths has {len(lengths)} entries for {num_samples} samples")
            if not batch_size or batch_size < 1:
                raise ValueError("grouping by length needs the loader's batch_size")
        self.lengths = lengths
        self.batch_size = batch_size
        self.group_batches = group_batches
        self._skip = 0

    def skip_once(self, num_samples: int) -> None:
        """Skip the first ``num_samples`` of this rank's order in the next iteration only."""
        self._skip = max(0, num_samples)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self.lengths is not None:
            generator = torch.Generator().manual_seed(self.seed + 7919 * self.epoch + 104729 * self.rank + 1)
            indices = group_by_length(indices, self.lengths, self.batch_size, self.group_batches, generator)
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])


def eval_shard(num_samples: int, num_replicas: int, rank: int) -> list[int]:
    """Rows of process ``rank`` in validation: ``rank, rank + num_replicas, ...`` (none repeated, none left out).

    Args:
        num_samples: rows of the validation split.
        num_replicas: number of data-parallel processes.
        rank: this process's rank.

    Returns:
        Row indices in order; the shards of all ranks together are ``range(num_samples)``, each index once.
    """
    return list(range(rank, num_samples, num_replicas))


class EvalShardSampler(DistributedSampler):
    """Validation rows of one process (:func:`eval_shard`): in order, unshuffled, never padded by repetition.

    A plain ``DistributedSampler`` pads the shards to equal length by repeating rows, which would count those rows
    twice in the validation metrics. Validation runs no collective per batch (metrics are reduced once at the end of the
    epoch), so shards may differ by one row; each needs at least one, because the first validation forward of a DDP
    model can broadcast its buffers to every process.

    Args:
        num_samples: rows of the validation split (at least ``num_replicas``).
        num_replicas: number of data-parallel processes.
        rank: this process's rank.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=False)
        if num_samples < num_replicas:
            raise ValueError(f"{num_samples} validation rows cannot give each of {num_replicas} processes one")
        self.total_size = num_samples
        self.num_samples = len(eval_shard(num_samples, num_replicas, rank))

    def __iter__(self) -> Iterator[int]:
        return iter(eval_shard(self.total_size, self.num_replicas, self.rank))

    def __len__(self) -> int:
        return self.num_samples
