"""What the online RL modules (PPO, GRPO) share: the policy and its frozen reference, the reward source, DDP-safe
manual optimization, greedy validation with gold metrics and a sample table, and the iteration counter."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from lit_rlhf.errors import ConfigError
from lit_rlhf.functional.ppo import masked_mean_var, mean_var_from_sums, mean_var_to_sums
from lit_rlhf.generation import decode_responses
from lit_rlhf.models.adapters import AdaptersDisabled, quantized_load
from lit_rlhf.models.loading import load_causal_lm, load_tokenizer
from lit_rlhf.modules.base import CHECKPOINT_KEY
from lit_rlhf.modules.engine_sampling import EngineSampling
from lit_rlhf.modules.nonfinite import GuardedModule
from lit_rlhf.rewards.base import RewardSource
from lit_rlhf.sharding import is_sharded
from lit_rlhf.tables import log_table, scalar_step

_AFTER_STEP_CHECKPOINT_WARNING = "Using ModelCheckpoint with manual optimization and every_n_train_steps"
_SCHEDULER_BEFORE_OPTIMIZER_WARNING = r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`"


def _do_nothing() -> None:
    """Stands in for the manual-optimization loop's step counting inside :meth:`OnlineRLModule.one_training_step`."""


class OnlineRLModule(EngineSampling, GuardedModule):
    """Base of modules that learn from their own samples (``automatic_optimization = False``).

    Subclasses call :meth:`load_policy` in ``__init__``, implement ``training_step`` (one batch of prompts = one
    iteration, counted in :attr:`iteration`, its optimizer steps inside :meth:`one_training_step` so that one
    iteration is one Lightning training step) and may extend the checkpoint state through :meth:`extra_state` /
    :meth:`load_extra_state`. The frozen reference and the reward source are kept out of the module's state (a
    plain dict and a non-``Module`` object), so they are reloaded from their source, never checkpointed or trained.

    Each optimizer step with a non-finite loss or gradient is skipped and counted (:class:`GuardedModule`; the
    subclass calls ``setup_nonfinite_guard`` with its optimizers' names); ``max_nonfinite_steps`` iterations in a row
    with a skipped step stop the run. Rollouts that carry no reward signal are counted too
    (:meth:`count_constant_scores`, :meth:`count_zero_std_groups`), and training goes on through them.

    Validation answers the validation prompts greedily and logs ``val/reward``, ``val/eos_rate``,
    ``val/response_length``, every gold metric the DataModule's ``score_completions`` returns (e.g.
    ``val/exact_match``) and the ``samples/val`` sample table (every logger and ``samples.jsonl``:
    :mod:`lit_rlhf.tables`).
    """

    reward: RewardSource

    def load_policy(
        self,
        policy_name_or_path: str,
        tokenizer_name_or_path: str | None,
        model_config: dict[str, Any] | None,
        with_reference: bool = True,
        attn_implementation: str | None = None,
        peft_config: Any = None,
        load_in_4bit: bool = False,
    ) -> None:
        """Set ``self.tokenizer``, ``self.model`` (trained) and, with ``with_reference``, the frozen reference.

        With ``peft_config`` the policy trains LoRA adapters and the reference is the policy with its adapters
        switched off (:class:`~lit_rlhf.models.adapters.AdaptersDisabled`): no second copy of the model is loaded.
        """
        self.tokenizer = load_tokenizer(tokenizer_name_or_path or policy_name_or_path)
        quantized = quantized_load(load_in_4bit, policy_name_or_path, peft_config)
        overrides = {**(model_config or {}), **quantized.load_kwargs}
        load = {"config_overrides": overrides, "attn_implementation": attn_implementation}
        self.model = quantized.prepare(load_causal_lm(policy_name_or_path, self.tokenizer, **load), False)
        self._frozen: dict[str, torch.nn.Module] = {}  # a plain dict: not submodules, so not in the checkpoint
        if peft_config is not None:
            self.add_adapters(self.model, peft_config)
            if with_reference:
                self._frozen["reference"] = AdaptersDisabled(self.model)
        elif with_reference:
            reference = load_causal_lm(policy_name_or_path, self.tokenizer, **load).eval()
            reference.requires_grad_(False)
            self._frozen["reference"] = reference
        self.iteration = 0
        self.signal_counts: dict[str, int] = {}  # rollouts without a reward signal, since the start of the run
        self._step_where = "iteration 0"
        self._steps_in_iteration: dict[str, int] = {}
        self.val_metrics = torch.nn.ModuleDict()
        self._samples: list[tuple[str, str, str, str]] = []

    @property
    def reference(self) -> torch.nn.Module:
        if "reference" not in self._frozen:
            raise RuntimeError(f"{type(self).__name__} was built without a reference model (beta = 0)")
        return self._frozen["reference"]

    def frozen_models(self) -> list[torch.nn.Module]:
        """The reference policy and the reward source's models (a reward model, a judge)."""
        return [*self._frozen.values(), *self.reward.models()]

    def setup(self, stage: str) -> None:
        """The base checks (the strategy), and refuse a prompt budget that cannot fit the policy's context with
        ``max_new_tokens`` after it."""
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        context = getattr(self.model.config, "max_position_embeddings", None)
        max_length = getattr(datamodule, "max_length", None)
        prompt_budget = getattr(datamodule, "max_prompt_length", None) or (max_length and max_length // 2)
        if context and prompt_budget and prompt_budget + self.hparams.max_new_tokens > context:
            raise ValueError(
                f"prompts of up to {prompt_budget} tokens (the data's max_prompt_length) plus max_new_tokens="
                f"{self.hparams.max_new_tokens} exceed the policy's context of {context} positions; lower "
                "--data.init_args.max_prompt_length (longer prompts are then handled by its `overlong` policy) or "
                "--model.init_args.max_new_tokens"
            )
        engine_len = self.vllm_settings.max_model_len if self.sampling_engine == "vllm" else None
        if engine_len and prompt_budget and prompt_budget + self.hparams.max_new_tokens > engine_len:
            raise ConfigError(
                f"prompts of up to {prompt_budget} tokens (the data's max_prompt_length) plus max_new_tokens="
                f"{self.hparams.max_new_tokens} do not fit model.init_args.vllm.max_model_len={engine_len}; raise it "
                "(null: the policy's context) or lower --data.init_args.max_prompt_length"
            )

    def on_fit_start(self) -> None:
        self._move_frozen_to_module_device()
        # Lightning 2.6's ModelCheckpoint warns at mid-run saves of a manual-optimization module that the checkpoint
        # holds the weights from *after* the step, and suggests keeping copies from before it. After the step is
        # right here: the optimizer states, the global step and the iteration counter are from after it too, so a
        # resumed run continues from one consistent state (the resume tests). Only that message is silenced.
        warnings.filterwarnings("ignore", message=_AFTER_STEP_CHECKPOINT_WARNING, category=UserWarning)

    def on_validation_start(self) -> None:
        self._move_frozen_to_module_device()

    def teardown(self, stage: str) -> None:
        self.close_sampling_engine()
        # After a run Lightning moves the module back to the CPU; the frozen models and the reward source, kept out
        # of the module's parameters (and checkpoints), follow it, so they hold no accelerator memory afterwards.
        self._move_frozen_to_module_device()

    def _move_frozen_to_module_device(self) -> None:
        """Put the frozen models (reference, reward model) and the reward source on the module's device."""
        if any(is_sharded(model) for model in self.frozen_models()):
            return  # sharded on the processes' devices, where they stay
        for frozen in self._frozen.values():
            frozen.to(self.device)
        if hasattr(self.reward, "to"):
            self.reward.to(self.device)

    def score(
        self, rows: list[dict[str, Any]], completions: list[str], finished: list[bool]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The reward source's ``(batch,)`` rewards on this module's device, and the statistics it reports about
        itself (``last_stats``, e.g. a judge's parse rate; ``last_components`` of a weighted sum, logged as
        ``reward/<name>`` mean and std)."""
        rewards = self.reward([r["prompt"] for r in rows], completions, rows, finished).to(self.device)
        stats = {k: torch.as_tensor(float(v)) for k, v in (getattr(self.reward, "last_stats", None) or {}).items()}
        for name, values in (getattr(self.reward, "last_components", None) or {}).items():
            values = torch.as_tensor(values, dtype=torch.float32)
            stats[f"reward/{name}/mean"] = values.mean()
            stats[f"reward/{name}/std"] = values.std() if values.numel() > 1 else torch.tensor(0.0)
        return rewards, stats

    # -- data parallelism: each rank samples its own prompts; gradients and statistics are averaged -----------------

    @contextlib.contextmanager
    def one_training_step(self, optimizers: list[Any], schedulers: list[Any], batch_idx: int = 0) -> Iterator[None]:
        """Count everything inside as ONE Lightning training step (one iteration), then step the LR schedulers once.

        An iteration steps its optimizers several times (PPO: actor and critic, ``ppo_epochs * num_minibatches`` times
        each; GRPO: ``num_iterations * num_minibatches`` times), and Lightning's manual optimization would advance
        ``trainer.global_step`` at each of them. Inside this block each ``LightningOptimizer.step()`` still steps
        through the strategy and precision plugin as usual, but only the block as a whole advances the step counter,
        so ``trainer.max_steps``, ``val_check_interval``, ``ModelCheckpoint(every_n_train_steps=...)`` and the
        schedulers' ``warmup_steps`` all count iterations. Nothing is counted if the block raises. Optimizer steps
        skipped inside for a non-finite loss or gradient (:meth:`optimizer_step_over`) change nothing, but the
        iteration still counts and the schedulers still step; after ``max_nonfinite_steps`` iterations in a row with a
        skipped step, the block raises :class:`~lit_rlhf.modules.nonfinite.NonFiniteStepsError` at its end, before
        the iteration is counted.

        Args:
            optimizers: the ``LightningOptimizer`` wrappers of ``self.optimizers()``.
            schedulers: their LR schedulers, stepped once after the block.
            batch_idx: the training batch's index in its epoch (named in the error message).

        Raises:
            NonFiniteStepsError: ``max_nonfinite_steps`` iterations in a row had a skipped optimizer step.
        """
        self._step_where = f"iteration {self.iteration} (batch {batch_idx} of epoch {self.current_epoch})"
        self._steps_in_iteration = {}
        counted = [(opt, opt._on_before_step, opt._on_after_step) for opt in optimizers]
        for opt in optimizers:
            opt._on_before_step = opt._on_after_step = _do_nothing
        try:
            yield
        finally:
            for opt, before, after in counted:
                opt._on_before_step, opt._on_after_step = before, after
        self.end_guarded_step("iterations")
        _, before, after = counted[0]
        before()  # the manual-optimization loop's own counters: one optimizer step "ready", then "completed"
        after()
        with warnings.catch_warnings():
            # The schedules count iterations: one whose optimizer steps were all skipped (non-finite) still steps
            # them, and torch's warning about a scheduler stepped before its optimizer does not apply.
            warnings.filterwarnings("ignore", message=_SCHEDULER_BEFORE_OPTIMIZER_WARNING, category=UserWarning)
            for scheduler in schedulers:
                scheduler.step()

    def optimizer_step_over(
        self,
        optimizer: Any,
        module: torch.nn.Module,
        micro_batches: list[Any],
        loss_fn: Callable[[Any], tuple[torch.Tensor, dict[str, torch.Tensor]]],
        weights: list[float],
        max_grad_norm: float | None,
        name: str = "policy",
        loss_name: str = "policy loss",
    ) -> dict[str, float]:
        """One optimizer step over a minibatch given as micro-batches.

        Backward of each micro-batch with its ``weight`` (their weighted losses add up to the minibatch's loss),
        gradients averaged over ranks, clipped (Lightning skips clipping under manual optimization), then the
        optimizer step (the LR schedulers step once per iteration, in :meth:`one_training_step`). When the
        minibatch's loss or the averaged gradients are not finite on any rank, every rank drops the gradients and
        skips the step (no weight and no optimizer state moves) and counts it for optimizer ``name``
        (:class:`~lit_rlhf.modules.nonfinite.GuardedModule`). Returns the weighted sum of each statistic over the
        micro-batches, skipped steps included (a non-finite loss shows in the logged means).

        Args:
            optimizer: the ``LightningOptimizer`` of ``module``; the parameters it holds are the ones averaged over
                processes and checked.
            module: the model it steps (whether it is sharded).
            micro_batches: the minibatch's micro-batches.
            loss_fn: a micro-batch's loss (a scalar) and statistics.
            weights: each micro-batch's share of the minibatch's loss.
            max_grad_norm: gradient clipping norm (``None``: no clipping).
            name: the optimizer's name in the counts and messages (``actor``, ``critic``, ``policy``).
            loss_name: how messages name the loss (``policy loss``, ``value loss``).
        """
        optimizer.zero_grad()
        stats: dict[str, float] = {}
        total_loss = torch.zeros((), device=self.device)
        with self._no_backward_sync():
            for mb, weight in zip(micro_batches, weights, strict=True):
                loss, mb_stats = loss_fn(mb)
                self.manual_backward(loss * weight)
                total_loss = total_loss + loss.detach().float() * weight
                for stat, value in mb_stats.items():
                    stats[stat] = stats.get(stat, 0.0) + float(value.detach()) * weight
        params = self._optimizer_parameters(optimizer)
        self._average_gradients(module, [p for _, p in params])
        step = self._steps_in_iteration[name] = self._steps_in_iteration.get(name, 0) + 1
        problem = self.nonfinite_problem(total_loss, params, quantity=loss_name)
        if problem is not None:
            optimizer.zero_grad()
            self.skip_step(name, f"{self._step_where}, {name} step {step} of the iteration: {problem}")
            return stats
        if max_grad_norm is not None:
            self.configure_gradient_clipping(optimizer, gradient_clip_val=max_grad_norm, gradient_clip_algorithm="norm")
        optimizer.step()
        return stats

    @contextlib.contextmanager
    def _no_backward_sync(self) -> Iterator[None]:
        """Keep DDP's reducer out of the backward passes: models are stepped several times per training step (and
        PPO steps two models separately), which DDP's one-backward-per-forward bookkeeping cannot follow;
        :meth:`_average_gradients` synchronises instead, once per optimizer step and only for the model stepped."""
        block = getattr(self.trainer.strategy, "block_backward_sync", None)
        if self.trainer.world_size > 1 and block is not None:
            with block():
                yield
        else:
            yield

    def _optimizer_parameters(self, optimizer: Any) -> list[tuple[str, torch.nn.Parameter]]:
        """The parameters ``optimizer`` steps, with their names in this module, in the module's order."""
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        return [(n, p) for n, p in self.named_parameters() if id(p) in held]

    def _average_gradients(self, module: torch.nn.Module, params: list[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` over the processes (DDP); a sharded model's come out of its backward
        averaged by FSDP2 already."""
        if self.trainer.world_size <= 1 or is_sharded(module):
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = torch._utils._flatten_dense_tensors(grads)
        flat = self.trainer.strategy.reduce(flat, reduce_op="mean")
        for grad, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            grad.copy_(synced)

    def _global_mean_var(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked mean and unbiased variance over the tokens of every rank (the recipe of ``masked_mean_var``)."""
        mean, var, count = masked_mean_var(values, mask)
        if self.trainer.world_size <= 1:
            return mean, var
        sums = self.trainer.strategy.reduce(mean_var_to_sums(mean, var, count), reduce_op="sum")
        return mean_var_from_sums(sums)

    def _mean_over_ranks(self, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every scalar averaged over ranks in one collective (ranks hold equal batch sizes)."""
        if self.trainer.world_size <= 1 or not stats:
            return stats
        stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device) for v in stats.values()])
        stacked = self.trainer.strategy.reduce(stacked, reduce_op="mean")
        return dict(zip(stats, stacked.unbind()))

    # -- rollouts without a reward signal: counted, trained on ------------------------------------------------------

    def count_constant_scores(self, scores: torch.Tensor) -> bool:
        """Count the iteration in ``train/constant_score_iterations`` when every score of the rollout, over all ranks,
        is the same: the scores then carry no signal, and PPO's advantages come from the KL penalty and the critic's
        values only (their whitening stays finite: see :func:`~lit_rlhf.functional.ppo.masked_whiten`).

        Args:
            scores: ``(batch,)`` this rank's scores.

        Returns:
            Whether they were all equal.
        """
        extremes = torch.stack([scores.max(), -scores.min()]).float()
        if self._world_size() > 1:
            extremes = self.trainer.strategy.reduce(extremes, reduce_op="max")
        constant = bool(extremes[0] == -extremes[1])
        self._add_count("train/constant_score_iterations", int(constant))
        return constant

    def count_zero_std_groups(self, group_std: torch.Tensor) -> int:
        """Count the groups whose rewards are all equal (``train/zero_std_groups``, over all ranks) and the iterations
        where every group's are (``train/zero_std_iterations``: no reward signal at all, only the KL term trains).

        Args:
            group_std: ``(num_groups,)`` this rank's standard deviation of the rewards within each group.

        Returns:
            The number of zero-std groups of this iteration, over all ranks.
        """
        counts = torch.stack([(group_std == 0).sum(), torch.tensor(group_std.numel(), device=group_std.device)])
        if self._world_size() > 1:
            counts = self.trainer.strategy.reduce(counts.float(), reduce_op="sum")
        zero, total = (int(c) for c in counts.tolist())
        self._add_count("train/zero_std_groups", zero)
        self._add_count("train/zero_std_iterations", int(zero == total))
        return zero

    def _add_count(self, tag: str, amount: int) -> None:
        self.signal_counts[tag] = self.signal_counts.get(tag, 0) + amount

    def _world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def run_counts(self) -> dict[str, float]:
        """The counts logged each iteration: skipped optimizer steps and rollouts without a reward signal, since the
        start of the run (restored on resume)."""
        return {**self.nonfinite_metrics(), **{tag: float(count) for tag, count in self.signal_counts.items()}}

    # -- validation: greedy answers, gold metrics next to the reward ----------------------------------------------

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        generation, _ = self.sample(batch["prompt_input_ids"], batch["prompt_attention_mask"], do_sample=False)
        completions = decode_responses(self.tokenizer, generation)
        rows = batch["rows"]
        datamodule = getattr(self.trainer, "datamodule", None)
        metrics = dict(datamodule.score_completions(completions, rows)) if datamodule is not None else {}
        rewards, reward_stats = self.score(rows, completions, generation.has_eos.tolist())
        metrics["reward"] = rewards.tolist()
        for name, value in reward_stats.items():  # batch-level figures (e.g. judge/parsed_rate), weighted by rows
            metrics[name] = [float(value)] * len(rows)
        metrics["eos_rate"] = generation.has_eos.float().tolist()
        metrics["response_length"] = generation.response_mask.sum(dim=1).float().tolist()
        for name, values in metrics.items():
            self.lazy_mean_metric(self.val_metrics, name).update(
                torch.tensor(values, dtype=torch.float32, device=self.device)
            )
        room = self.hparams.num_logged_samples - len(self._samples)
        for i in range(min(room, len(rows))):
            gold = metrics.get("exact_match")  # the dataset's verifier, if it has one: hacking shows as reward vs gold
            reward = round(float(metrics["reward"][i]), 4)
            self._samples.append((rows[i]["prompt"], completions[i], reward, None if gold is None else float(gold[i])))

    def on_validation_epoch_end(self) -> None:
        for name, metric in self.val_metrics.items():
            if metric.update_count:
                self.log(f"val/{name}", metric.compute(), prog_bar=name == "exact_match")
            self.reset_metrics(metric)
        if self._samples and not self.trainer.sanity_checking:
            header: tuple[str, ...] = ("prompt", "greedy response", "reward", "exact match")
            samples = self._samples
            if all(row[-1] is None for row in samples):  # no verifier (e.g. TL;DR, HH): no empty gold column
                header, samples = header[:-1], [row[:-1] for row in samples]
            log_table(self.loggers, "samples/val", header, samples, scalar_step(self.trainer))
        self._samples = []

    # -- checkpoint -------------------------------------------------------------------------------------------------

    def extra_state(self) -> dict[str, Any]:
        """More state for the checkpoint (beside the iteration counter)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_KEY]["online"] = {
            "iteration": self.iteration,
            "counts": dict(self.signal_counts),
            **self.extra_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint[CHECKPOINT_KEY].get("online") or checkpoint[CHECKPOINT_KEY].get("ppo", {})
        self.iteration = state.get("iteration", 0)
        self.signal_counts = {tag: int(count) for tag, count in (state.get("counts") or {}).items()}
        self.load_extra_state(state)

    def logging_step(self) -> int:
        return self.iteration
