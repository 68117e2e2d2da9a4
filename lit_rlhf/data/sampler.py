"""A shuffling sampler that can resume mid-epoch, so a resumed run sees the data an uninterrupted one would."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """Seeded per-epoch shuffle (sharded across ranks) that can skip the samples a run already consumed.

    It is a ``DistributedSampler`` so that Lightning keeps it under DDP instead of wrapping it; with one process it
    behaves as a seeded ``RandomSampler``. The order of epoch ``e`` depends only on ``(seed, e)``; Lightning calls
    :meth:`set_epoch`. ``__len__`` stays the full epoch length, because Lightning's restored batch counter
    already counts the skipped batches.

    Args:
        num_samples: length of the dataset.
        num_replicas: number of data-parallel processes.
        rank: this process's rank.
        shuffle: shuffle each epoch (train) or keep the order (validation).
        seed: shuffling seed, the same on every rank.
        drop_last: drop the tail that does not divide evenly across ranks.
    """

    def __init__(
        self,
        num_samples: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self._skip = 0

    def skip_once(self, num_samples: int) -> None:
        """Skip the first ``num_samples`` of this rank's order in the next iteration only."""
        self._skip = max(0, num_samples)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])
