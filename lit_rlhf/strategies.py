"""Which Lightning strategies lit_rlhf's modules train under, and ``fsdp2``: FSDP2 over every process.

Accepted: one device, DDP (``--trainer.strategy ddp``) and FSDP2 through Lightning's ``ModelParallelStrategy`` with
``tensor_parallel_size: 1`` (``--trainer.strategy fsdp2`` is :class:`FSDP2Strategy`, that strategy with the
data-parallel size set to the number of processes). Refused with a message saying what to use instead: tensor
parallelism, DeepSpeed, and Lightning's older ``FSDPStrategy`` (FSDP1).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    Strategy,
    StrategyRegistry,
)

from lit_rlhf.checkpoint_checks import CHECKPOINT_KEY, DISTRIBUTED_META_FILE, FSDP2_MARK
from lit_rlhf.errors import ConfigError

FSDP2_HINT = (
    "shard the models with FSDP2 instead: --trainer.strategy fsdp2 (or ModelParallelStrategy with "
    "data_parallel_size = the number of processes and tensor_parallel_size 1)"
)


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as FSDP2 over every process: ``data_parallel_size`` = world size,
    ``tensor_parallel_size`` = 1 (``--trainer.strategy fsdp2``).

    Checkpoints are distributed (a folder with one shard file per process plus ``meta.pt``) by default; each is
    written into a temporary folder beside its target and renamed into place once every process has written its
    shard, so a run killed while saving keeps its previous checkpoint.

    Args:
        save_distributed_checkpoint: ``False`` gathers the full state on rank 0 into one file instead.
        process_group_backend: ``nccl`` on GPU, ``gloo`` on CPU by default.
        **kwargs: other ``ModelParallelStrategy`` arguments (``timeout``).
    """

    def __init__(
        self, save_distributed_checkpoint: bool = True, process_group_backend: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            **kwargs,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def teardown(self) -> None:
        super().teardown()
        self.checkpoint_io.teardown()  # ModelParallelStrategy skips it: a single-file checkpoint still held is written

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        if isinstance(checkpoint.get(CHECKPOINT_KEY), dict):  # its layout, for the checks at --ckpt_path
            checkpoint[CHECKPOINT_KEY][FSDP2_MARK] = "fsdp2"
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        token = self.broadcast(uuid.uuid4().hex[:8])
        temp = path.with_name(f".{path.name}.tmp-{token}")
        if self.global_rank == 0:
            remove_leftover_folders(path, keep=temp)  # the other ranks may have created temp already
        super().save_checkpoint(checkpoint, temp, storage_options)
        self.barrier("checkpoint written")
        if self.global_rank == 0:
            publish_folder(temp, path)
        self.barrier("checkpoint published")

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's load, except for a module that saves only what trains (LoRA adapters and heads: its
        ``strict_loading`` is false): the folder then lacks the frozen base weights, which stay as loaded from their
        source (:func:`load_trained_state`)."""
        module = self.lightning_module
        path = Path(self.broadcast(str(checkpoint_path)))
        if module is None or module.strict_loading or not path.is_dir():
            return super().load_checkpoint(checkpoint_path, weights_only)
        return load_trained_state(path, self.model, self.optimizers, weights_only)


def load_trained_state(
    path: Path, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], weights_only: bool | None = None
) -> dict[str, Any]:
    """Load a distributed checkpoint folder that holds only some of ``model``'s weights (those that train) into the
    sharded ``model`` and its ``optimizers``.

    Returns:
        The rest of the checkpoint (``meta.pt``: loop states, callbacks, lit_rlhf's entry), as Lightning's own load
        returns it.
    """
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    module_state = {"state_dict": get_model_state_dict(model)}
    dcp_load(module_state, checkpoint_id=path, planner=DefaultLoadPlanner(allow_partial_load=True))
    model.load_state_dict(module_state["state_dict"], strict=False)
    for index, optimizer in enumerate(optimizers):
        key = f"optimizer_{index}"
        optimizer_state = {key: get_optimizer_state_dict(model, optimizer)}
        dcp_load(optimizer_state, checkpoint_id=path)
        set_optimizer_state_dict(
            model, optimizer, optim_state_dict=optimizer_state[key], options=StateDictOptions(cpu_offload=True)
        )
    return torch.load(path / DISTRIBUTED_META_FILE, weights_only=weights_only)


def leftover_folders(path: Path) -> list[Path]:
    """The folders beside ``path`` that a run killed while saving ``path`` left: ``.<name>.tmp-<token>`` (a
    checkpoint being written, or the previous one swapped out of place) and ``.<name>.old-<token>`` (the previous
    one moved aside). Their names do not end in ``.ckpt``, so nothing loads them as checkpoints."""
    if not path.parent.is_dir():
        return []
    prefixes = (f".{path.name}.tmp-", f".{path.name}.old-")
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefixes))


def remove_leftover_folders(path: Path, keep: Path | None = None) -> list[Path]:
    """Delete :func:`leftover_folders` of ``path`` but ``keep`` (called before each save of ``path``, on rank 0 only:
    one save of a path runs at a time). Returns them."""
    removed = [p for p in leftover_folders(path) if keep is None or p.name != keep.name]
    for leftover in removed:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return removed


def publish_folder(temp: Path, path: Path) -> None:
    """Put the complete checkpoint folder ``temp`` at ``path`` in one step, then delete the previous checkpoint.

    Where the filesystem can swap two paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``), ``temp`` and the
    previous ``path`` trade places, so ``path`` is complete at every moment. Elsewhere the previous folder is moved
    aside (``.<name>.old-<token>``) and ``temp`` renamed into place: a kill between the two renames leaves the previous
    checkpoint complete under that name. Leftovers are deleted by the next save (:func:`remove_leftover_folders`).
    """
    if path.is_dir() and not path.is_symlink():
        if _exchange(temp, path):
            shutil.rmtree(temp, ignore_errors=True)  # now the previous checkpoint
            _sync_folder(path.parent)
            return
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
        os.replace(temp, path)
        _sync_folder(path.parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    if path.exists() or path.is_symlink():
        path.unlink()
    os.replace(temp, path)
    _sync_folder(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` atomically; ``False`` where the platform or filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # a C library without renameat2 (glibc before 2.28)
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def _sync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable (no-op where a folder cannot be opened for ``fsync``)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def register_strategies() -> None:
    """Register ``fsdp2`` (:class:`FSDP2Strategy`) with Lightning's strategy registry, once."""
    if "fsdp2" not in StrategyRegistry:
        StrategyRegistry.register(
            "fsdp2", FSDP2Strategy, description="FSDP2 (fully_shard) over every process, lit_rlhf's models"
        )


def is_fsdp2(strategy: Strategy | None) -> bool:
    """Whether ``strategy`` shards the models with FSDP2 (a ``ModelParallelStrategy``)."""
    return isinstance(strategy, ModelParallelStrategy)


def _configured_size(strategy: ModelParallelStrategy, name: str) -> Any:
    return getattr(strategy, f"_{name}_size")


def check_strategy(strategy: Strategy, module_name: str, num_processes: int | None = None) -> None:
    """Refuse a strategy ``module_name`` cannot train under (see the module docstring).

    Args:
        strategy: the Trainer's strategy.
        module_name: the LightningModule's class name, for the message.
        num_processes: processes in the run (``num_nodes * devices``), when known, to check the data-parallel size.

    Raises:
        ConfigError: naming the strategy and what to use instead.
    """
    if isinstance(strategy, DeepSpeedStrategy):
        raise ConfigError(f"{module_name} does not train under DeepSpeed; {FSDP2_HINT}")
    if isinstance(strategy, FSDPStrategy):
        raise ConfigError(f"{module_name} does not train under Lightning's FSDPStrategy (FSDP1); {FSDP2_HINT}")
    if isinstance(strategy, ModelParallelStrategy):
        if isinstance(strategy, FSDP2Strategy):
            return
        tp = _configured_size(strategy, "tensor_parallel")
        dp = _configured_size(strategy, "data_parallel")
        if tp == "auto" and num_processes is not None:
            tp = num_processes // (dp if isinstance(dp, int) else max(strategy.num_nodes, 1))
        if isinstance(tp, int) and tp > 1:
            raise ConfigError(
                f"{module_name} does not implement tensor parallelism (ModelParallelStrategy with tensor_parallel_size="
                f"{tp}); set data_parallel_size to the number of processes and tensor_parallel_size to 1, or use "
                "--trainer.strategy fsdp2"
            )
        return
    if isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
        return
    raise ConfigError(
        f"{module_name} trains on one device, under DDP (--trainer.strategy ddp) or under FSDP2 (--trainer.strategy "
        f"fsdp2), not under {type(strategy).__name__}"
    )


def check_adapter_strategy(strategy: Strategy, module_name: str, four_bit: bool) -> None:
    """Refuse LoRA adapters under a sharded strategy that cannot resume their checkpoints, and 4-bit weights under
    FSDP2.

    Raises:
        ConfigError: Lightning's own ``ModelParallelStrategy`` (its resume needs every weight in the checkpoint
            folder; use ``fsdp2``), or ``load_in_4bit`` under FSDP2.
    """
    if not is_fsdp2(strategy):
        return
    if four_bit:
        raise ConfigError(
            f"{module_name}: load_in_4bit cannot be sharded with FSDP2 (bitsandbytes' 4-bit weights are not "
            "shardable tensors); train 4-bit adapters on one GPU or under --trainer.strategy ddp"
        )
    if not isinstance(strategy, FSDP2Strategy):
        raise ConfigError(
            f"{module_name} with peft_config shards with --trainer.strategy fsdp2, not ModelParallelStrategy: its "
            "checkpoints hold only the adapters, which only fsdp2 resumes from"
        )


def check_strategy_name(name: str, module_name: str) -> None:
    """Refuse a refused strategy by its registry name (``deepspeed*``, ``fsdp*`` other than ``fsdp2``) before
    Lightning builds it (which would fail first on a missing package or a CPU accelerator, with no pointer to FSDP2).

    Raises:
        ConfigError: as :func:`check_strategy`.
    """
    lowered = name.lower()
    if lowered.startswith("deepspeed"):
        raise ConfigError(f"{module_name} does not train under DeepSpeed (--trainer.strategy {name}); {FSDP2_HINT}")
    if lowered.startswith("fsdp") and lowered != "fsdp2":
        raise ConfigError(
            f"{module_name} does not train under Lightning's FSDPStrategy (FSDP1, --trainer.strategy {name}); "
            f"{FSDP2_HINT}"
        )


def fsdp_param_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    """The dtype FSDP2 computes in: bf16 under ``bf16-mixed`` (float32 weights, gradients, optimizer states and
    reductions), the weights' own otherwise (float32 under ``32-true``, bf16 under ``bf16-true``).

    Raises:
        ConfigError: ``16-mixed`` (its loss scaling does not work on sharded gradients here).
    """
    precision = str(precision)
    if precision in ("16-mixed", "16"):
        raise ConfigError(
            "--trainer.precision 16-mixed is not supported with FSDP2 (its loss scaler does not handle sharded "
            "gradients); use bf16-mixed on GPU or 32-true"
        )
    if precision in ("bf16-mixed",):
        return torch.bfloat16
    return None


register_strategies()
