"""What every lit_rlhf LightningModule shares: checkpoint identity, RNG state, HF export, the optimizer recipe."""

from __future__ import annotations

import os
import random
from typing import Any, Literal, get_args

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType, rank_zero_info, rank_zero_warn
from torch.optim.lr_scheduler import LambdaLR

from lit_rlhf import checkpoint_checks as ckpt_checks
from lit_rlhf.checkpoint_checks import CheckpointMismatchError  # noqa: F401 (lit_rlhf.modules exports it)
from lit_rlhf.checkpoint_io import AtomicCheckpointIO, install_atomic_checkpoint_io
from lit_rlhf.errors import UserError  # noqa: F401
from lit_rlhf.functional.schedules import ScheduleName, warmup_decay_factor
from lit_rlhf.models.adapters import (
    AdaptersDisabled,
    apply_adapters,
    frozen_weights_fingerprint,
    is_adapted,
    save_merged_and_adapter,
)
from lit_rlhf.resume_logging import purge_logs_from
from lit_rlhf.sharding import full_state_dict, is_sharded, mixed_precision_policy, shard_model
from lit_rlhf.strategies import check_adapter_strategy, check_strategy, fsdp_param_dtype, is_fsdp2

CHECKPOINT_KEY = "lit_rlhf"

AdamWImplementation = Literal["for_loop", "foreach", "fused"]


def adamw_flags(implementation: AdamWImplementation | None) -> dict[str, bool]:
    """``torch.optim.AdamW``'s ``foreach``/``fused`` arguments for ``implementation``.

    ``None`` leaves torch's choice (``foreach`` on CUDA, ``for_loop`` otherwise); ``fused`` is one kernel per step on
    CPU and CUDA (what the Hugging Face Trainer uses by default, ``adamw_torch_fused``). All three compute AdamW; they
    differ only in float rounding.
    """
    if implementation is None:
        return {}
    if implementation not in get_args(AdamWImplementation):
        raise ValueError(
            f"adamw_implementation must be one of {', '.join(get_args(AdamWImplementation))} or null, "
            f"got {implementation!r}"
        )
    return {"foreach": implementation == "foreach", "fused": implementation == "fused"}


def collect_rng_states() -> dict[str, Any]:
    """The state of every global RNG a training step may draw from (python, numpy, torch, CUDA)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        # Plain Python values and tensors only, so the checkpoint loads with torch.load(weights_only=True).
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states`."""
    random.setstate(states["python"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def qualified_name(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def adapter_export_path(path: str) -> str:
    """Where the adapter of the model exported to ``path`` goes: ``hf`` -> ``hf_adapter``."""
    return os.path.normpath(path) + "_adapter"


class RLHFModule(L.LightningModule):
    """Base LightningModule of lit_rlhf.

    - Checkpoints record the module class; resuming with another class fails at once with a clear message.
    - Checkpoints carry the global RNG states, restored when training restarts, so a resumed run draws the same
      random numbers as an uninterrupted one.
    - :meth:`export_hf` writes the trained model as a Hugging Face ``save_pretrained`` folder.

    Subclasses set ``self.model`` (a ``PreTrainedModel``) and ``self.tokenizer``.
    """

    model: torch.nn.Module
    tokenizer: Any

    def __init__(self) -> None:
        super().__init__()
        self._rng_to_restore: dict[str, Any] | None = None
        self._realign_log_step = False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Every rank runs this hook; rank 0 writes the file. Each rank's RNG states go in, so that under DDP every
        # rank resumes its own random stream (its own rollout samples), not rank 0's. The class, the run settings an
        # exact resume depends on and the tokenizer's fingerprint let a resume refuse a checkpoint it cannot continue
        # (:mod:`lit_rlhf.checkpoint_checks`).
        states = collect_rng_states()
        meta: dict[str, Any] = {"module_class": qualified_name(self), "rng_states": states}
        if self._trainer is not None:
            settings = ckpt_checks.run_settings(self.trainer)
            meta["world_size"] = settings.pop("world_size")
            meta["run"] = settings
        if self.adapted() and checkpoint.get("state_dict") is not None:
            # The frozen base weights are reloaded from their source: only what trains is saved.
            frozen = self.frozen_state_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
            meta["adapters"] = True
            meta["base_fingerprints"] = list(getattr(self, "_base_fingerprints", []))
        if getattr(self, "tokenizer", None) is not None:
            if getattr(self, "_tokenizer_fingerprint", None) is None:
                self._tokenizer_fingerprint = ckpt_checks.tokenizer_fingerprint(self.tokenizer)
            meta["tokenizer"] = self._tokenizer_fingerprint
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            per_rank: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(per_rank, states)
            meta["rng_states_per_rank"] = per_rank
        checkpoint[CHECKPOINT_KEY] = meta

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that this run can resume from ``checkpoint``, then make its training state follow the config.

        Refused with a :class:`CheckpointMismatchError` (one line naming the checkpoint and the mismatch): a checkpoint
        not written by lit_rlhf or by another module class, weights of another architecture, another tokenizer, and,
        when fitting, another world size, batch size, data seed or gradient accumulation, or a module setting that
        cannot change on resume (:func:`~lit_rlhf.checkpoint_checks.setting_policy`). Other changed settings are
        applied, and listed once in the log: the restored optimizers take the configured learning rates, weight decay,
        betas and schedule (:func:`~lit_rlhf.checkpoint_checks.apply_configured_settings`).
        """
        trainer = self._trainer
        ckpt_path = getattr(trainer, "ckpt_path", None) if trainer is not None else None
        where = f"checkpoint {ckpt_path}" if isinstance(ckpt_path, str) else "the checkpoint"
        meta = ckpt_checks.checkpoint_meta(checkpoint, where)
        ckpt_checks.check_module_class(meta, qualified_name(self), where)
        if getattr(self, "tokenizer", None) is not None:
            ckpt_checks.check_tokenizer(meta, ckpt_checks.tokenizer_fingerprint(self.tokenizer), where)
        if self.adapted():
            ckpt_checks.check_adapter_state(meta, checkpoint.get("state_dict"), self.frozen_state_keys(), where)
            ckpt_checks.check_base_fingerprints(meta, getattr(self, "_base_fingerprints", []), where)
        elif meta.get("adapters"):
            raise CheckpointMismatchError(
                f"{where} holds LoRA adapters only (written with model.init_args.peft_config), and this config has no "
                "peft_config: resume with the peft_config of the run that wrote it"
            )
        if checkpoint.get("state_dict"):
            own = self.state_dict()
            if self.adapted():
                own = {k: v for k, v in own.items() if k not in self.frozen_state_keys()}
            ckpt_checks.check_state_shapes(checkpoint["state_dict"], own, where, strict=True)
        if trainer is not None and trainer.state.fn == "fit":
            ckpt_checks.check_run_settings(meta, where, **ckpt_checks.run_settings(trainer))
            applied = ckpt_checks.check_settings(checkpoint.get("hyper_parameters") or {}, self.hparams, where)
            flags = adamw_flags(self.hparams.get("adamw_implementation"))
            # Under FSDP2 the strategy has already loaded the saved optimizer states into the optimizers.
            restored = None if trainer.strategy.lightning_restore_optimizer else trainer.optimizers
            ckpt_checks.apply_configured_settings(checkpoint, self.hparams, trainer.max_steps, flags, restored)
            dirpaths = {cb.state_key: cb.dirpath for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)}
            ckpt_checks.relocate_checkpoint_callbacks(checkpoint, dirpaths)  # a moved run folder keeps its last.ckpt
            if applied:
                rank_zero_info(
                    f"Resuming with changed settings, applied from the first resumed step: "
                    f"{ckpt_checks.describe_changes(applied)}"
                )
        self._rng_to_restore = self._own_rng_states(meta)
        self._realign_log_step = True

    def _own_rng_states(self, meta: dict[str, Any]) -> dict[str, Any] | None:
        """This rank's RNG states from the checkpoint: its own when the run had the same number of ranks, else rank
        0's (a warning says the random streams then differ from the interrupted run's). A resumed ``fit`` always has
        the same number (:func:`~lit_rlhf.checkpoint_checks.check_run_settings` refuses another)."""
        per_rank = meta.get("rng_states_per_rank")
        rank, world_size = self.global_rank, self.trainer.world_size if self._trainer is not None else 1
        if per_rank is not None and len(per_rank) == world_size:
            return per_rank[rank]
        saved = len(per_rank) if per_rank is not None else 1
        if saved != world_size:
            rank_zero_warn(
                f"this checkpoint holds the RNG states of {saved} rank(s) and the run now has {world_size}: every rank "
                "resumes from rank 0's random state, so samples will differ from those of the interrupted run"
            )
        return meta.get("rng_states")

    def on_train_start(self) -> None:
        # Restored here, the last hook before the first resumed step, so that nothing in between draws from them.
        if self._rng_to_restore is not None:
            restore_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        self._install_checkpoint_io()  # again: a subclass's setup may not call this class's
        if self.trainer.ckpt_path is not None:
            # What the interrupted run logged from the resumed step on is logged again: purge it.
            purge_logs_from(self.trainer, self.logging_step())

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The checkpoint saved at the end of the previous batch reaches the disk now, after that batch's metrics and
        # validation were logged (lit_rlhf.checkpoint_io).
        plugin = self.trainer.strategy.checkpoint_io
        if isinstance(plugin, AtomicCheckpointIO):
            plugin.flush()
        # Lightning 2.6 restores its logging step (``_batches_that_stepped``) one too high when the checkpoint was
        # taken at the end of a validation or of fit, which shifts every curve of a resumed run by one step. Put it
        # back once after a restore, to the step count the module logs against (:meth:`logging_step`).
        if self._realign_log_step:
            self.trainer.fit_loop.epoch_loop._batches_that_stepped = self.logging_step()
        self._realign_log_step = False

    def setup(self, stage: str) -> None:
        """Refuse a strategy this module cannot train under (:func:`~lit_rlhf.strategies.check_strategy`); write this
        run's checkpoints atomically, once their step is logged (:mod:`lit_rlhf.checkpoint_io`)."""
        if self._trainer is not None:
            check_strategy(self.trainer.strategy, type(self).__name__)
            if is_fsdp2(self.trainer.strategy):
                fsdp_param_dtype(self.trainer.precision, self.device)  # refuses 16-mixed
            if self.adapted():
                check_adapter_strategy(self.trainer.strategy, type(self).__name__, self.hparams.get("load_in_4bit"))
        self._install_checkpoint_io()

    # -- LoRA adapters -----------------------------------------------------------------------------------------------

    def add_adapters(
        self, model: torch.nn.Module, peft_config: Any, trained_heads: tuple[str, ...] = ()
    ) -> torch.nn.Module:
        """Inject the LoRA adapters of ``peft_config`` into ``model`` (:func:`~lit_rlhf.models.adapters.apply_adapters`:
        its own weights frozen, the adapters and ``trained_heads`` trained). Checkpoints then hold only what trains:
        loading them is not strict about the frozen weights, which come from the model's source
        (:meth:`frozen_state_keys`)."""
        apply_adapters(model, peft_config, "model.init_args.peft_config", trained_heads)
        self.strict_loading = False
        fingerprints = getattr(self, "_base_fingerprints", [])
        self._base_fingerprints = [*fingerprints, frozen_weights_fingerprint(model)]  # checked on resume
        return model

    def adapted(self) -> bool:
        """Whether a model this module trains holds LoRA adapters."""
        return any(is_adapted(model) for model in self.trained_models())

    def frozen_state_keys(self) -> set[str]:
        """The state-dict keys of the frozen parameters (the base weights under LoRA adapters), kept out of
        checkpoints."""
        named = self.named_parameters(remove_duplicate=False)  # a tied output head is saved under its own name too
        return {name for name, param in named if not param.requires_grad}

    # -- FSDP2 ------------------------------------------------------------------------------------------------------

    def trained_models(self) -> list[torch.nn.Module]:
        """The models this module trains (sharded under FSDP2, each with its own optimizer's parameters)."""
        return [self.model]

    def frozen_models(self) -> list[torch.nn.Module]:
        """Frozen models kept out of the module's state (a reference policy, a reward model), sharded under FSDP2
        unless the module keeps them whole (:attr:`shard_frozen_models`)."""
        return []

    shard_frozen_models: bool = True

    def configure_model(self) -> None:
        """Under FSDP2 (Lightning's ``ModelParallelStrategy``), shard every model over the data-parallel processes:
        each decoder block, then the rest (:func:`~lit_rlhf.sharding.shard_model`). Under ``bf16-mixed`` the
        blocks compute in bf16 while the sharded weights, gradients, optimizer states and gradient reductions stay in
        float32. Does nothing on one device or under DDP, and nothing to a model already sharded."""
        mesh = self.device_mesh
        if mesh is None:
            return
        dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
        policy = mixed_precision_policy(fsdp_param_dtype(self.trainer.precision, self.device))
        for model in self.trained_models():
            shard_model(model, dp_mesh, policy)
        if self.shard_frozen_models:
            for model in self.frozen_models():
                if not isinstance(model, AdaptersDisabled):  # the policy itself, sharded above
                    shard_model(model, dp_mesh, policy)

    def _install_checkpoint_io(self) -> None:
        if self._trainer is not None:
            install_atomic_checkpoint_io(self.trainer)

    def logging_step(self) -> int:
        """The x-axis of training curves at the start of a batch: the optimizer step count (one step per batch
        under automatic optimization); modules that step several optimizers per batch count their own batches."""
        return self.trainer.global_step

    def lazy_mean_metric(self, metrics: torch.nn.ModuleDict, name: str) -> Any:
        """``metrics[name]``, created as a ``MeanMetric`` on first use (for metric names known only from the data).

        Created outside inference mode: a metric first made inside ``trainer.validate`` would otherwise hold
        inference tensors that a later ``fit`` cannot update.
        """
        if name not in metrics:
            from torchmetrics import MeanMetric

            with torch.inference_mode(False):
                metrics[name] = MeanMetric().to(self.device)
        return metrics[name]

    @staticmethod
    def reset_metrics(*metrics: Any) -> None:
        """Reset torchmetrics outside inference mode, so that a ``fit`` after a ``validate`` can update them."""
        with torch.inference_mode(False):
            for metric in metrics:
                metric.reset()

    def export_hf(self, path: str) -> None:
        """Save the model and tokenizer with ``save_pretrained`` (safetensors) into ``path``, on global rank 0.

        Every process must call it: under FSDP2 the full weights are gathered to rank 0 one tensor at a time. With
        LoRA adapters ``path`` holds the merged model and ``<path>_adapter`` the adapter (:meth:`save_model_hf`).
        """
        hp = self.hparams
        self.save_model_hf(self.model, path, hp.get("model_name_or_path") or hp.get("policy_name_or_path"))

    def save_model_hf(self, model: torch.nn.Module, path: str, base: str | None = None) -> None:
        """``model`` and the tokenizer into the ``save_pretrained`` folder ``path`` (written by global rank 0; a
        sharded model is gathered first, a collective every process takes part in).

        A model with LoRA adapters is saved merged into ``path`` (a plain model, loadable by ``transformers``) and its
        adapter alone into ``<path>_adapter`` (loadable by ``peft`` onto the base model ``base``).
        """
        state_dict = full_state_dict(model) if is_sharded(model) else None
        if self._trainer is not None and not self.trainer.is_global_zero:
            return
        os.makedirs(path, exist_ok=True)
        if is_adapted(model):
            adapter_path = adapter_export_path(path)
            save_merged_and_adapter(model, path, adapter_path, state_dict, base)
            self.tokenizer.save_pretrained(adapter_path)
        else:
            model.save_pretrained(path, **({} if state_dict is None else {"state_dict": state_dict}))
        self.tokenizer.save_pretrained(path)

    def build_optimizer(
        self,
        params: list[tuple[str, torch.nn.Parameter]],
        *,
        learning_rate: float,
        weight_decay: float,
        betas: tuple[float, float],
        warmup_steps: int,
        lr_schedule: ScheduleName,
        min_lr_ratio: float,
        total_steps: int,
        implementation: AdamWImplementation | None = None,
    ) -> tuple[torch.optim.Optimizer, LambdaLR]:
        """AdamW (no decay on biases and norms) with a warmup + decay schedule stepped once per optimizer step;
        ``implementation`` as in :func:`adamw_flags`."""
        decay = [p for n, p in params if p.requires_grad and p.ndim >= 2]
        no_decay = [p for n, p in params if p.requires_grad and p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=learning_rate,
            betas=betas,
            **adamw_flags(implementation),
        )
        scheduler = LambdaLR(
            optimizer,
            lambda step: warmup_decay_factor(step, warmup_steps, total_steps, lr_schedule, min_lr_ratio),
        )
        return optimizer, scheduler

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """``self.clip_gradients``, on the true (unscaled) gradients under every precision and optimizer.

        Lightning calls this hook with ``trainer.gradient_clip_val`` under automatic optimization; PPO and GRPO call
        it for their ``max_grad_norm``. Under ``16-mixed`` the gradients are multiplied by the loss scale ``S`` until
        the scaler unscales them. Lightning unscales them before this hook only for an optimizer that does not
        unscale inside its own step, and only under automatic optimization: a ``fused`` AdamW (Lightning refuses to
        clip it at all) and every optimizer of a manual-optimization module (PPO, GRPO; Lightning clips those while
        scaled, Lightning-AI/pytorch-lightning#9694) reach clipping still scaled. Those are clipped here at ``S``
        times the threshold, which clips the true gradients at the threshold exactly (norm and value clipping are
        both linear in the gradients; a step with inf/NaN gradients is skipped by the scaler as usual).
        ``bf16-mixed`` and full precision have no loss scale.
        """
        plugin = self.trainer.precision_plugin
        inner = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the torch optimizer
        amp = isinstance(plugin, MixedPrecision)
        unscales_itself = amp and getattr(inner, "_step_supports_amp_scaling", False)
        still_scaled = amp and plugin.scaler is not None and (unscales_itself or not self.automatic_optimization)
        if not gradient_clip_val or not (still_scaled or unscales_itself):  # Lightning's own path is right here
            self.clip_gradients(
                optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
            )
            return
        threshold = gradient_clip_val * plugin.scaler.get_scale() if still_scaled else gradient_clip_val
        algorithm = GradClipAlgorithmType(gradient_clip_algorithm or GradClipAlgorithmType.NORM)
        Precision.clip_gradients(plugin, inner, threshold, algorithm)  # past MixedPrecision's refusal of fused

    def model_optimizer(self, total_steps: int) -> tuple[torch.optim.Optimizer, LambdaLR]:
        """:meth:`build_optimizer` over ``self.model`` from the hyperparameters the modules share (``learning_rate``,
        ``weight_decay``, ``betas``, ``warmup_steps``, ``lr_schedule``, ``min_lr_ratio``, ``adamw_implementation``)."""
        hp = self.hparams
        return self.build_optimizer(
            list(self.model.named_parameters()),
            learning_rate=hp.learning_rate,
            weight_decay=hp.weight_decay,
            betas=tuple(hp.betas),
            warmup_steps=hp.warmup_steps,
            lr_schedule=hp.lr_schedule,
            min_lr_ratio=hp.min_lr_ratio,
            total_steps=total_steps,
            implementation=hp.adamw_implementation,
        )

    def configure_optimizers(self) -> dict[str, Any]:
        """One AdamW + schedule over ``self.model`` (SFT, reward model), stepped by Lightning."""
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else int(self.trainer.estimated_stepping_batches)
        optimizer, scheduler = self.model_optimizer(total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
