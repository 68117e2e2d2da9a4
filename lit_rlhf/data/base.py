"""Shared DataModule plumbing: the tokenizer connection, resumable loaders and the verifier hook."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lit_rlhf.data.rows import DataError
from lit_rlhf.data.sampler import EvalShardSampler, ResumableSampler
from lit_rlhf.errors import ConfigError
from lit_rlhf.strategies import is_fsdp2


def example_length(example: dict[str, Any]) -> int:
    """Padded tokens a tokenized example needs: its prompt plus its longest response (``*_ids`` fields)."""
    prompt = len(example.get("prompt_ids", ()))
    responses = [len(v) for k, v in example.items() if k.endswith("_ids") and k != "prompt_ids"]
    return prompt + max(responses, default=0)


class RLHFDataModule(L.LightningDataModule):
    """Base of every lit_rlhf DataModule.

    The DataModule tokenizes with the *model's* tokenizer. Under ``LightningCLI`` (or a plain ``Trainer``) it takes
    it from the LightningModule in :meth:`setup`; call :meth:`connect` to set it by hand (e.g. in a notebook).

    The training loader uses a :class:`~lit_rlhf.data.sampler.ResumableSampler`: after ``--ckpt_path`` the run
    continues from the batch where the checkpoint was taken, in the same order, instead of restarting the epoch.

    Args:
        batch_size: training batch size per process.
        eval_batch_size: validation batch size per process (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        seed: seed of the data order (and of any data generation).
        group_by_length: put training samples of similar length in the same batch (shuffled mega-batches of
            ``length_group_batches`` batches, each sorted by length, as Hugging Face's ``group_by_length``), so
            less of each batch is padding; the batch order stays random and resumable.
        length_group_batches: batches per length-sorted mega-batch.
    """

    def __init__(
        self,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        group_by_length: bool = False,
        length_group_batches: int = 50,
    ):
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"data.init_args.batch_size must be an integer >= 1, got {batch_size!r}")
        if eval_batch_size is not None and (
            isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, int) or eval_batch_size < 1
        ):
            raise ConfigError(
                f"data.init_args.eval_batch_size must be an integer >= 1 or null, got {eval_batch_size!r}"
            )
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"data.init_args.num_workers must be an integer >= 0, got {num_workers!r}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        if length_group_batches < 1:
            raise ConfigError(f"data.init_args.length_group_batches must be >= 1, got {length_group_batches}")
        self.group_by_length = group_by_length
        self.length_group_batches = length_group_batches
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.train_dataset: Sequence[Any] | None = None
        self.val_dataset: Sequence[Any] | None = None

    def connect(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Give the DataModule the tokenizer to encode with."""
        self.tokenizer = tokenizer

    def _require_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is None and self.trainer is not None:
            self.tokenizer = getattr(self.trainer.lightning_module, "tokenizer", None)
        if self.tokenizer is None:
            raise DataError(
                f"{type(self).__name__} has no tokenizer: attach it to a Trainer with a lit_rlhf module, or call "
                "datamodule.connect(tokenizer) first"
            )
        return self.tokenizer

    def score_completions(self, completions: list[str], rows: list[dict[str, Any]]) -> dict[str, list[float]]:
        """Gold metrics of generated completions, one list of floats per metric name.

        The base class has no verifier and returns ``{}``; datasets with a checkable answer (arithmetic) override
        this, and modules log each metric under ``val/<name>``.
        """
        return {}

    def normalization_dataloader(self) -> DataLoader:
        """Batches whose responses look like the policy's own, for a reward model's score statistics.

        The reward model records the mean and std of its scores on these at the end of fit, and PPO normalises
        with them. Every process reads all of these rows (they are not sharded). Default: the validation loader;
        datasets that mix in synthetic responses narrow it.
        """
        return self.val_dataloader()

    def _skip_samples(self) -> int:
        """Samples of this rank's current epoch already consumed, when resuming from a checkpoint (else 0)."""
        trainer = self.trainer
        if trainer is None or not trainer.fit_loop.restarting:
            return 0
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        batches_per_epoch = -(-len(self.train_dataset) // (self.batch_size * trainer.world_size))
        return (done % batches_per_epoch) * self.batch_size

    def _train_loader(self, dataset: Sequence[Any], collate_fn: Callable) -> DataLoader:
        world_size = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        grouping = {}
        if self.group_by_length:
            grouping = {
                "lengths": [example_length(ex) for ex in dataset],
                "batch_size": self.batch_size,
                "group_batches": self.length_group_batches,
            }
        sampler = ResumableSampler(
            len(dataset), num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed, **grouping
        )
        skip = self._skip_samples()
        if skip:
            rank_zero_info(f"Resuming the training data mid-epoch: skipping the {skip} samples already seen.")
            sampler.skip_once(skip)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collate_fn,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=self._loader_generator(),
        )

    def _eval_loader(self, dataset: Sequence[Any], collate_fn: Callable, shard: bool = False) -> DataLoader:
        """A loader over ``dataset`` in order; with ``shard`` under data parallelism, this process's rows only.

        ``shard`` gives each process its :class:`~lit_rlhf.data.sampler.EvalShardSampler` rows (none repeated, so
        validation metrics count each row once); without it every process reads every row (e.g. the reward model's
        normalisation statistics, computed on each process alike). Under FSDP2 every forward is a collective, so every
        process must run the same number of batches: the split is cut to a multiple of the number of processes (the
        last ``rows % processes`` rows are left out, with a warning).

        Raises:
            DataError: with ``shard``, fewer rows than processes.
        """
        world_size = self.trainer.world_size if self.trainer is not None else 1
        sampler = None
        if shard and world_size > 1:
            if len(dataset) < world_size:
                raise DataError(
                    f"{type(self).__name__}: the validation split has {len(dataset)} rows for {world_size} processes, "
                    f"and each process needs at least one; give at least {world_size} validation rows "
                    "(data.init_args.val, or a larger data.init_args.val_fraction) or run on fewer devices"
                )
            rows = len(dataset)
            if is_fsdp2(getattr(self.trainer, "strategy", None)) and rows % world_size:
                rows -= rows % world_size
                rank_zero_warn(
                    f"{type(self).__name__}: under FSDP2 every process validates the same number of rows, so the last "
                    f"{len(dataset) - rows} of the {len(dataset)} validation rows are left out; give a multiple of "
                    f"{world_size} rows to validate them all"
                )
            sampler = EvalShardSampler(rows, num_replicas=world_size, rank=self.trainer.global_rank)
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            sampler=sampler,
            collate_fn=collate_fn,
            num_workers=self.num_workers,
            generator=self._loader_generator(),
        )

    def _loader_generator(self) -> torch.Generator:
        """A generator of the loader's own for the seed of its worker processes.

        Without one, every ``iter(loader)`` (each epoch, each validation) draws that seed from the global torch RNG,
        which the training samples (rollouts, dropout) also draw from: a resumed run could not replay a draw made
        between a checkpoint and the crash, and its samples would differ from the uninterrupted run's.
        """
        return torch.Generator().manual_seed(self.seed if self.seed is not None else 0)
