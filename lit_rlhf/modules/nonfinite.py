"""Bad runs stop loudly: an optimizer step whose loss or gradient is not finite is skipped, counted and, after
``max_nonfinite_steps`` training steps in a row with one, the run stops with a message naming where."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from lit_rlhf.errors import ConfigError, UserError
from lit_rlhf.functional.finite import NonFiniteCounter, all_finite, first_nonfinite
from lit_rlhf.modules.base import CHECKPOINT_KEY, RLHFModule
from lit_rlhf.sharding import local_tensor

NONFINITE_TAG = "train/nonfinite_steps"
"""TensorBoard tag of the skipped optimizer steps (``train/nonfinite_steps/<optimizer>`` with two optimizers)."""

_OPTION = "model.init_args.max_nonfinite_steps"


class NonFiniteStepsError(UserError):
    """Too many training steps in a row had a non-finite loss or gradient: the run is stopped."""


def check_max_nonfinite_steps(value: Any) -> None:
    """Refuse a ``max_nonfinite_steps`` that is not an integer >= 1 or ``None``.

    Raises:
        ConfigError: naming the option and the accepted values.
    """
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return
    raise ConfigError(
        f"{_OPTION} must be an integer >= 1 or null, got {value!r} (training steps in a row with a non-finite loss "
        f"or gradient before the run stops; null never stops); set it in the config file or with --{_OPTION}"
    )


def _fmt(value: torch.Tensor) -> str:
    return f"{float(value):.6g}"


class GuardedModule(RLHFModule):
    """An :class:`RLHFModule` that never applies an optimizer step with a non-finite loss or gradient.

    Subclasses call :meth:`setup_nonfinite_guard` in ``__init__``. Under automatic optimization (SFT, reward model)
    ``training_step`` hands its loss to :meth:`watch_loss`, and :meth:`on_before_optimizer_step` checks that loss and
    the gradients: when either is non-finite on any process, every process drops its gradients, so the optimizer step
    changes neither the weights nor the optimizer's state; Lightning still counts the step (``global_step``, the LR
    schedule and ``max_steps`` advance, as for a step the ``16-mixed`` GradScaler skips). Manual-optimization modules
    (PPO, GRPO) check each of their optimizer steps with :meth:`nonfinite_problem` and skip it themselves.

    Under ``16-mixed`` the GradScaler already skips steps with non-finite gradients (and lowers its scale): only the
    loss is checked then, so those steps are not counted. The count of skipped steps is logged as
    ``train/nonfinite_steps`` (``train/nonfinite_steps/<optimizer>`` per optimizer with several) and kept in
    checkpoints; after ``max_nonfinite_steps`` training steps (iterations for PPO and GRPO) in a row with a skipped
    step, :meth:`end_guarded_step` raises :class:`NonFiniteStepsError`.
    """

    def setup_nonfinite_guard(
        self, learning_rate_options: Mapping[str, str], limit: int | None, inputs: str = "the data"
    ) -> None:
        """Count skipped steps of the optimizers named in ``learning_rate_options``.

        Args:
            learning_rate_options: ``{optimizer name: its learning-rate option}``, e.g. ``{"model": "learning_rate"}``
                (the option the error message suggests lowering).
            limit: ``max_nonfinite_steps``: training steps in a row with a skipped step before the run stops;
                ``None`` never stops.
            inputs: what else the error message suggests checking (``the data``, ``the rewards and the data``).

        Raises:
            ConfigError: ``limit`` is not an integer >= 1 or ``None``.
        """
        check_max_nonfinite_steps(limit)
        self._lr_options = dict(learning_rate_options)
        self._inputs = inputs
        self.nonfinite = NonFiniteCounter(list(self._lr_options), limit)
        self._last_skipped = next(iter(self._lr_options))
        self._watched_losses: list[torch.Tensor] = []
        self._watched_batch = 0

    # -- shared -------------------------------------------------------------------------------------------------------

    def _grad_scaler(self) -> Any:
        """The precision plugin's GradScaler (``16-mixed``), or ``None``."""
        plugin = self.trainer.precision_plugin if self._trainer is not None else None
        return plugin.scaler if isinstance(plugin, MixedPrecision) else None

    def nonfinite_problem(
        self, loss: torch.Tensor | None, named_params: list[tuple[str, torch.nn.Parameter]], quantity: str = "loss"
    ) -> str | None:
        """What is not finite in this optimizer step, agreed on by every process; ``None`` when the step may go on.

        Args:
            loss: the step's loss (any shape; ``None``: not checked).
            named_params: the parameters the step updates, with their names; their gradients are checked unless a
                GradScaler is active (it skips non-finite gradients itself).
            quantity: how the message names the loss (``loss``, ``policy loss``, ``value loss``).

        Returns:
            e.g. ``the policy loss is nan`` or ``the gradient of model.layers.0.mlp.up_proj.weight is not finite``.
        """
        check_grads = self._grad_scaler() is None
        # Under FSDP2 each process checks its own shard of each gradient; the flags are then combined over processes.
        grads = [local_tensor(p.grad) for _, p in named_params if p.grad is not None] if check_grads else []
        loss_ok = torch.isfinite(loss).all() if loss is not None else torch.tensor(True)
        device = self.device
        flags = torch.stack([~loss_ok.to(device), ~all_finite(grads).to(device)]).float()
        if self._trainer is not None and self.trainer.world_size > 1:
            flags = self.trainer.strategy.reduce(flags, reduce_op="sum")
        loss_bad, grad_bad = (flags > 0).tolist()
        if not (loss_bad or grad_bad):
            return None
        if loss is not None and not bool(loss_ok):
            values = loss.reshape(-1)
            return f"the {quantity} is {_fmt(values[~torch.isfinite(values)][0])}"
        if loss_bad:
            return f"the {quantity} is not finite on another process"
        name = first_nonfinite((n, None if p.grad is None else local_tensor(p.grad)) for n, p in named_params)
        loss_text = (
            f" (the {quantity} is {_fmt(loss.reshape(-1)[0])})" if loss is not None and loss.numel() == 1 else ""
        )
        if name is None:
            return f"a gradient is not finite on another process{loss_text}"
        return f"the gradient of {name} is not finite{loss_text}"

    def skip_step(self, name: str, description: str) -> None:
        """Count one skipped optimizer step of optimizer ``name`` (its gradients already dropped)."""
        self.nonfinite.skip(name, description)
        self._last_skipped = name

    def end_guarded_step(self, unit: str = "training steps") -> None:
        """End a training step; stop the run when ``max_nonfinite_steps`` of them in a row had a skipped step.

        Args:
            unit: what a training step is, in the message (``training steps``, ``iterations``).

        Raises:
            NonFiniteStepsError: naming the last skipped step and what was not finite.
        """
        if not self.nonfinite.end_step():
            return
        option = f"--model.init_args.{self._lr_options[self._last_skipped]}"
        raise NonFiniteStepsError(
            f"{type(self).__name__}: {self.nonfinite.in_a_row} {unit} in a row had a non-finite loss or gradient "
            f"(their updates were skipped); the last at {self.nonfinite.last}. Lower the learning rate ({option}), "
            f"check {self._inputs}, or raise --{_OPTION} (null never stops)"
        )

    def nonfinite_metrics(self) -> dict[str, float]:
        """``{tag: skipped optimizer steps since the start of the run}``, one tag per optimizer."""
        counts = self.nonfinite.skipped
        if len(counts) == 1:
            return {NONFINITE_TAG: float(next(iter(counts.values())))}
        return {f"{NONFINITE_TAG}/{name}": float(count) for name, count in counts.items()}

    # -- automatic optimization (SFT, reward model) -------------------------------------------------------------------

    def watch_loss(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Remember a training batch's loss for the check before the next optimizer step (call in ``training_step``)."""
        self._watched_losses.append(loss.detach())
        self._watched_batch = batch_idx

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Under automatic optimization, drop the gradients of a step with a non-finite loss or gradient, count it
        and log the count; stop the run after ``max_nonfinite_steps`` such steps in a row."""
        if not self.automatic_optimization:
            return  # manual optimization checks each step in its own update loop
        losses, self._watched_losses = self._watched_losses, []
        loss = torch.stack(losses) if losses else None
        inner = getattr(optimizer, "optimizer", optimizer)
        param_ids = {id(p) for group in inner.param_groups for p in group["params"]}
        named = [(n, p) for n, p in self.named_parameters() if id(p) in param_ids]
        problem = self.nonfinite_problem(loss, named)
        if problem is not None:
            self._discard_gradients(inner)
            where = f"step {self.trainer.global_step} (batch {self._watched_batch} of epoch {self.current_epoch})"
            self.skip_step(next(iter(self._lr_options)), f"{where}: {problem}")
        self.log_dict(self.nonfinite_metrics(), on_step=True, on_epoch=False)
        self.end_guarded_step()

    def _discard_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Make the coming optimizer step a no-op: no gradient, so no parameter and no optimizer state moves.

        An optimizer that the GradScaler lets unscale inside its own step (a ``fused`` AdamW under ``16-mixed``)
        gets NaN gradients instead, which the scaler sees and skips.
        """
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self._grad_scaler() is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            for p in params:
                p.grad.fill_(float("nan"))
            return
        for p in params:
            p.grad = None

    # -- checkpoint ---------------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_KEY]["nonfinite"] = self.nonfinite.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.nonfinite.load_state_dict(checkpoint[CHECKPOINT_KEY].get("nonfinite") or {})
