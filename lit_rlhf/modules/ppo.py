"""PPO with a learned critic: manual optimization of actor and critic (InstructGPT / N+ implementation details)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch

from lit_rlhf.engines.settings import SamplingEngine, VLLMSettings
from lit_rlhf.errors import ConfigError
from lit_rlhf.functional.accumulation import micro_batch_weights
from lit_rlhf.functional.kl import AdaptiveKLController, FixedKLController, kl_penalty
from lit_rlhf.functional.masking import masked_mean
from lit_rlhf.functional.ppo import gae, masked_whiten, per_token_rewards, ppo_policy_loss, ppo_value_loss
from lit_rlhf.functional.schedules import ScheduleName
from lit_rlhf.generation import decode_responses
from lit_rlhf.models.adapters import LoraConfig, lora_settings, quantized_load
from lit_rlhf.models.padding_free import check_padding_free
from lit_rlhf.models.scoring import load_reward_model
from lit_rlhf.models.shared_critic import SharedBackboneCritic
from lit_rlhf.modules.base import AdamWImplementation, adamw_flags, adapter_export_path
from lit_rlhf.modules.checks import check_minibatch_split, check_ppo_options
from lit_rlhf.modules.online import OnlineRLModule
from lit_rlhf.rewards.base import RewardSource
from lit_rlhf.rollout import response_logprobs, response_values, select_rows
from lit_rlhf.strategies import is_fsdp2


class Rollout(NamedTuple):
    """One batch of experience (all tensors detached).

    Attributes:
        prompt_ids: ``(batch, prompt_len)`` left-padded prompts; ``prompt_mask`` their attention mask.
        response_ids: ``(batch, response_len)`` sampled responses (padding after the first EOS).
        response_mask: ``(batch, response_len)`` bool, true up to and including the first EOS.
        logprobs: ``(batch, response_len)`` log-probabilities of the sampled tokens under the rollout policy.
        values: ``(batch, response_len)`` critic values of the rollout.
        advantages: ``(batch, response_len)`` GAE advantages (whitened if configured).
        returns: ``(batch, response_len)`` advantages + values before whitening.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class PPOModule(OnlineRLModule):
    """PPO on prompts: sample, score, per-token KL-penalised rewards, GAE, clipped policy and value updates.

    One training batch of prompts is one PPO iteration: a rollout (sampling in eval mode with KV cache, no grad),
    then ``ppo_epochs`` passes over ``num_minibatches`` minibatches, each stepping the actor optimizer and then the
    critic optimizer (``automatic_optimization = False``). The whole iteration is one Lightning training step, so
    ``trainer.max_steps``, ``val_check_interval``, ``ModelCheckpoint(every_n_train_steps=...)`` and
    ``warmup_steps`` count iterations, the LR schedulers step once per iteration, and curves are logged per
    iteration. The frozen reference policy and the reward source are not in the checkpoint (they are
    reloaded from their source); the actor, critic, both optimizers and schedulers, the KL controller, the
    iteration counter and the RNG states are.

    Args:
        policy_name_or_path: the SFT export (policy and frozen reference start from it).
        reward: the reward source (``class_path`` in YAML), e.g. ``lit_rlhf.rewards.ArithmeticVerifierReward`` or
            ``lit_rlhf.rewards.RewardModelReward``.
        critic_name_or_path: where the critic starts (a reward-model export, or the policy: ``null``).
        tokenizer_name_or_path: where the policy's tokenizer lives if not beside it.
        model_config: config overrides for the policy, reference and critic.
        attn_implementation: attention kernel of the policy, reference and critic (``eager``, ``sdpa``,
            ``flash_attention_2``, ...); ``null`` lets transformers choose.
        actor_learning_rate, critic_learning_rate: peak AdamW learning rates.
        weight_decay, betas, lr_schedule, min_lr_ratio: AdamW and its schedule over ``trainer.max_steps`` iterations.
        warmup_steps: linear warmup, in iterations.
        adamw_implementation: ``fused`` (one kernel per step, CPU and CUDA; the Hugging Face Trainer's default),
            ``foreach`` or ``for_loop``; ``null`` leaves torch's choice (``foreach`` on CUDA, ``for_loop`` on CPU).
        max_new_tokens: response length limit of rollouts and validation.
        temperature, top_k, top_p: rollout sampling.
        kl_coef: initial coefficient of the per-token KL penalty.
        kl_estimator: ``k1`` (log-ratio) or ``k3``.
        adaptive_kl_target: target KL per sequence for the adaptive controller; ``null`` keeps ``kl_coef`` fixed.
        adaptive_kl_horizon: horizon of the adaptive controller (in samples).
        missing_eos_penalty: subtracted from the score of responses cut by ``max_new_tokens``; ``null`` = none.
        gamma, lam: GAE discount and lambda.
        whiten_advantages: whiten advantages over the batch.
        clip_range, clip_range_value: PPO clipping of the ratio and of the value change.
        ppo_epochs, num_minibatches: passes over each rollout batch and minibatches per pass.
        gradient_accumulation_steps: micro-batches per minibatch, each forward and backward on its own to bound
            memory; their gradients add up to the whole minibatch's before its one optimizer step.
        max_grad_norm: gradient clipping norm of each optimizer step.
        padding_free: run every teacher-forced pass (reference, critic, actor and critic updates) on the rows' real
            tokens packed into one row (:func:`~lit_rlhf.models.padding_free.packed_forward`): the same
            log-probabilities, values and gradients up to float rounding, no work on the padding left of the prompts
            and right of the responses, on any attention kernel (CPU included).
        num_logged_samples: rows of the validation sample table.
        max_nonfinite_steps: an actor or critic step whose loss or gradient is not finite is skipped (no weight and
            no optimizer state moves) and counted (``train/nonfinite_steps/actor``, ``/critic``); this many iterations
            in a row with a skipped step stop the run with an error naming the last one. ``null`` never stops.
        shard_frozen_models: under FSDP2, shard the frozen reference and reward model over the processes like the
            trained models (``false`` keeps a whole copy of each on every process: faster when they are small).
        gather_for_sampling: under FSDP2, gather the whole policy once per rollout and keep it until sampling ends;
            ``false`` gathers one decoder block at a time at every generated token (slower; for a policy whose whole
            weights do not fit on one device beside the rest).
        peft_config: LoRA adapters (``class_path: peft.LoraConfig`` with its ``init_args``) on the actor and, with
            their own weights, on the critic, whose value head trains in full. Only they train; the reference is the
            actor with its adapters switched off (no second copy is loaded); checkpoints hold only what trains; the
            export is ``hf/`` and ``hf_critic/`` (merged) plus ``hf_adapter/`` and ``hf_critic_adapter/``.
            ``null``: full fine-tuning.
        load_in_4bit: load the frozen base weights of actor and critic in 4 bits (QLoRA; needs ``peft_config`` and
            ``bitsandbytes``; CUDA or CPU).
        critic_backbone: with ``peft_config``, where the critic's adapters sit: ``separate`` (a backbone of its own,
            loaded from ``critic_name_or_path``) or ``shared`` (the policy's frozen backbone, with a second adapter
            applied only for values, and a value head: no second backbone is loaded; ``critic_name_or_path`` is
            then unused, and the critic starts from the SFT features instead of the reward model's). Not under FSDP2.
        sampling_engine: what samples the rollouts: ``generate`` (Hugging Face ``generate`` on the training model) or
            ``vllm`` (a vLLM engine in each training process, fed the policy's weights before every rollout; the
            update's log-probabilities are recomputed by the policy and the gap is logged as ``engine/logprob_gap_*``;
            needs vLLM: ``pip install 'lit_rlhf[vllm]'``). Validation answers with the same engine.
        vllm: the vLLM engine's settings (:class:`~lit_rlhf.engines.settings.VLLMSettings`: ``gpu_memory_utilization``,
            ``kv_cache_gib``, ``max_model_len``, ``sleep``, ``enforce_eager``, ``dtype``, ``max_num_seqs``); ``null``:
            their defaults. Only with ``sampling_engine: vllm``.
    """

    def __init__(
        self,
        reward: RewardSource,
        policy_name_or_path: str = "runs/arithmetic/sft/hf",
        critic_name_or_path: str | None = None,
        tokenizer_name_or_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        attn_implementation: str | None = None,
        actor_learning_rate: float = 1e-5,
        critic_learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: ScheduleName = "constant",
        min_lr_ratio: float = 0.0,
        adamw_implementation: AdamWImplementation | None = None,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        kl_coef: float = 0.05,
        kl_estimator: str = "k1",
        adaptive_kl_target: float | None = None,
        adaptive_kl_horizon: float = 10000.0,
        missing_eos_penalty: float | None = 1.0,
        gamma: float = 1.0,
        lam: float = 0.95,
        whiten_advantages: bool = True,
        clip_range: float = 0.2,
        clip_range_value: float = 0.2,
        ppo_epochs: int = 4,
        num_minibatches: int = 1,
        gradient_accumulation_steps: int = 1,
        max_grad_norm: float = 1.0,
        padding_free: bool = False,
        num_logged_samples: int = 8,
        max_nonfinite_steps: int | None = 3,
        shard_frozen_models: bool = True,
        gather_for_sampling: bool = True,
        peft_config: LoraConfig | None = None,
        load_in_4bit: bool = False,
        critic_backbone: Literal["separate", "shared"] = "separate",
        sampling_engine: SamplingEngine = "generate",
        vllm: VLLMSettings | None = None,
    ) -> None:
        super().__init__()
        check_ppo_options(locals())  # every option value, before any model loads
        adamw_flags(adamw_implementation)  # an unknown name fails here, not at the first step
        self.save_hyperparameters(ignore=["reward", "peft_config"])
        self.use_sampling_engine(sampling_engine, vllm)
        self.hparams["peft_config"] = lora_settings(peft_config)
        self.automatic_optimization = False
        self.shard_frozen_models = shard_frozen_models
        self.setup_nonfinite_guard(
            {"actor": "actor_learning_rate", "critic": "critic_learning_rate"}, max_nonfinite_steps, "the rewards"
        )
        self.reward = reward
        self.load_policy(
            policy_name_or_path,
            tokenizer_name_or_path,
            model_config,
            with_reference=True,
            attn_implementation=attn_implementation,
            peft_config=peft_config,
            load_in_4bit=load_in_4bit,
        )
        if critic_backbone == "shared":
            self.critic = SharedBackboneCritic(self.model, peft_config, "model.init_args.peft_config")
        else:
            critic_source = critic_name_or_path or policy_name_or_path
            self.critic = self._load_critic(critic_source, model_config, attn_implementation, peft_config, load_in_4bit)
        if padding_free:
            check_padding_free(self.model)
            check_padding_free(self.critic)
        self.kl_controller = (
            AdaptiveKLController(kl_coef, adaptive_kl_target, adaptive_kl_horizon)
            if adaptive_kl_target is not None
            else FixedKLController(kl_coef)
        )

    def _load_critic(
        self,
        critic_source: str,
        model_config: dict[str, Any] | None,
        attn_implementation: str | None,
        peft_config: LoraConfig | None,
        load_in_4bit: bool,
    ) -> torch.nn.Module:
        """The critic as a model of its own: the reward model's (or policy's) backbone with a zero value head, and
        adapters of its own under ``peft_config``."""
        critic_quantized = quantized_load(load_in_4bit, critic_source, peft_config)
        critic = load_reward_model(
            critic_source,
            self.tokenizer,
            config_overrides={**(model_config or {}), **critic_quantized.load_kwargs},
            zero_head=True,
            attn_implementation=attn_implementation,
        )
        critic = critic_quantized.prepare(critic, False)
        if peft_config is not None:
            self.add_adapters(critic, peft_config, trained_heads=("score",))
        return critic

    def trained_models(self) -> list[torch.nn.Module]:
        return [self.model, self.critic]

    def setup(self, stage: str) -> None:
        """The online modules' checks, and no more minibatches than the prompts of a training batch."""
        super().setup(stage)
        if isinstance(self.critic, SharedBackboneCritic) and is_fsdp2(self._trainer and self.trainer.strategy):
            raise ConfigError(
                "model.init_args.critic_backbone shared cannot be sharded with FSDP2 (the critic runs the policy's "
                "body outside its sharded forward); use critic_backbone: separate under --trainer.strategy fsdp2"
            )
        batch_size = getattr(getattr(self._trainer, "datamodule", None), "batch_size", None)
        if stage == "fit" and isinstance(batch_size, int):
            check_minibatch_split(batch_size, self.hparams.num_minibatches, rows_name="prompts")

    # -- 1-4: rollout, scores, per-token rewards, advantages -------------------------------------------------------

    @torch.no_grad()
    def rollout(self, batch: dict[str, Any]) -> tuple[Rollout, dict[str, torch.Tensor]]:
        """Sample responses and turn them into experience (:class:`Rollout`) plus statistics to log."""
        hp = self.hparams
        prompt_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        generation, engine_stats = self.sample(prompt_ids, prompt_mask, gather_sharded=hp.gather_for_sampling)
        response_ids, response_mask = generation.response_ids, generation.response_mask
        if not bool(generation.has_eos.any()):
            warnings.warn(
                f"Every response of this rollout batch ({len(generation.has_eos)} samples) reached max_new_tokens="
                f"{hp.max_new_tokens} without EOS; training goes on (missing_eos_penalty="
                f"{hp.missing_eos_penalty} applies to each). Raise max_new_tokens if this persists.",
                RuntimeWarning,
                stacklevel=2,
            )
        completions = decode_responses(self.tokenizer, generation)
        scores, reward_stats = self.score(batch["rows"], completions, generation.has_eos.tolist())
        if hp.missing_eos_penalty is not None:
            scores = torch.where(generation.has_eos, scores, scores - hp.missing_eos_penalty)
        self.count_constant_scores(scores)  # no score signal in this rollout: counted, trained on
        logprobs = generation.logprobs  # generate: from its sampling pass (no second forward); vLLM: recomputed
        packed = hp.padding_free
        ref_logprobs = response_logprobs(
            self.reference, prompt_ids, prompt_mask, response_ids, response_mask, hp.temperature, padding_free=packed
        )
        values = response_values(self.critic, prompt_ids, prompt_mask, response_ids, response_mask, padding_free=packed)
        kl = kl_penalty(logprobs, ref_logprobs, hp.kl_estimator) * response_mask
        rewards, non_score = per_token_rewards(scores, kl, self.kl_controller.value, response_mask)
        advantages, returns = gae(rewards, values, response_mask, hp.gamma, hp.lam)
        if hp.whiten_advantages:
            mean, var = self._global_mean_var(advantages, response_mask)
            advantages = masked_whiten(advantages, response_mask, mean=mean, var=var)
        sequence_kl = kl.sum(dim=1)
        stats = {
            "objective/score": scores.mean(),
            "objective/kl": sequence_kl.mean(),
            "objective/non_score_reward": non_score.sum(dim=1).mean(),
            "objective/rlhf_reward": (scores + non_score.sum(dim=1)).mean(),
            "objective/entropy": (-logprobs).sum(dim=1).mean(),
            "rollout/response_length": response_mask.sum(dim=1).float().mean(),
            "rollout/eos_rate": generation.has_eos.float().mean(),
            **reward_stats,
            **engine_stats,
        }
        experience = Rollout(
            prompt_ids, prompt_mask, response_ids, response_mask, logprobs, values, advantages, returns
        )
        return experience, self._mean_over_ranks(stats)

    # -- 5: PPO epochs over minibatches -----------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hp = self.hparams
        actor_opt, critic_opt = self.optimizers()
        actor_sched, critic_sched = self.lr_schedulers()
        experience, stats = self.rollout(batch)
        size = experience.prompt_ids.size(0)
        sums: dict[str, float] = {}
        updates = 0
        lrs = {"lr/actor": actor_opt.param_groups[0]["lr"], "lr/critic": critic_opt.param_groups[0]["lr"]}
        with self.one_training_step([actor_opt, critic_opt], [actor_sched, critic_sched], batch_idx):
            for _ in range(hp.ppo_epochs):
                order = torch.randperm(size, device=self.device)
                for minibatch in [m for m in order.tensor_split(hp.num_minibatches) if len(m)]:
                    micro_batches = [
                        select_rows(experience, micro)
                        for micro in minibatch.tensor_split(hp.gradient_accumulation_steps)
                        if len(micro)
                    ]
                    minibatch_stats = {
                        **self._update(actor_opt, self.model, micro_batches, self._policy_loss, "actor"),
                        **self._update(critic_opt, self.critic, micro_batches, self._value_loss, "critic"),
                    }
                    for name, value in minibatch_stats.items():
                        sums[name] = sums.get(name, 0.0) + value
                    updates += 1
        update_stats = self._mean_over_ranks({k: torch.tensor(v / updates) for k, v in sums.items()})
        self.kl_controller.update(float(stats["objective/kl"]), size * self.trainer.world_size)
        self.iteration += 1
        logged = {**stats, **update_stats}
        logged["objective/kl_coef"] = self.kl_controller.value
        logged.update(lrs)  # the learning rates this iteration's updates used
        logged["iteration"] = self.iteration
        logged.update(self.run_counts())  # skipped steps, constant-score rollouts: the same on every rank
        # Already averaged over ranks above (one collective per iteration), so no sync_dist here.
        self.log_dict({k: float(v) for k, v in logged.items()}, batch_size=size)
        self.log("score", stats["objective/score"], prog_bar=True, batch_size=size, logger=False)
        self.log("kl", stats["objective/kl"], prog_bar=True, batch_size=size, logger=False)

    def _policy_loss(self, mb: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logprobs, entropy = response_logprobs(
            self.model,
            mb.prompt_ids,
            mb.prompt_mask,
            mb.response_ids,
            mb.response_mask,
            self.hparams.temperature,
            with_entropy=True,
            padding_free=self.hparams.padding_free,
        )
        loss, stats = ppo_policy_loss(logprobs, mb.logprobs, mb.advantages, mb.response_mask, self.hparams.clip_range)
        return loss, {
            "loss/policy": loss,
            "policy/approxkl": stats.approxkl,
            "policy/clipfrac": stats.clipfrac,
            "policy/entropy": masked_mean(entropy, mb.response_mask),
            "val/ratio": stats.ratio_mean,
            "val/ratio_var": stats.ratio_var,
        }

    def _value_loss(self, mb: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = response_values(
            self.critic,
            mb.prompt_ids,
            mb.prompt_mask,
            mb.response_ids,
            mb.response_mask,
            padding_free=self.hparams.padding_free,
        )
        loss, stats = ppo_value_loss(values, mb.values, mb.returns, mb.response_mask, self.hparams.clip_range_value)
        return loss, {
            "loss/value": loss,
            "val/clipfrac": stats.clipfrac,
            "val/explained_variance": stats.explained_variance,
        }

    def _update(
        self,
        optimizer: Any,
        module: torch.nn.Module,
        micro_batches: list[Rollout],
        loss_fn: Callable[[Rollout], tuple[torch.Tensor, dict[str, torch.Tensor]]],
        name: str,
    ) -> dict[str, float]:
        """One optimizer step over a minibatch: each micro-batch's loss (a mean over its tokens) weighted by its share
        of the minibatch's tokens, so that the summed gradient is that of the whole minibatch's token mean. ``name``
        (``actor``, ``critic``) names the optimizer where a non-finite step is counted."""
        weights = micro_batch_weights([mb.response_mask for mb in micro_batches], "token")
        loss_name = "policy loss" if name == "actor" else "value loss"
        return self.optimizer_step_over(
            optimizer, module, micro_batches, loss_fn, weights, self.hparams.max_grad_norm, name, loss_name
        )

    # -- optimizers, checkpoint, export -----------------------------------------------------------------------------

    def configure_optimizers(self) -> tuple[list, list]:
        hp = self.hparams
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else 10**9  # iterations (one step each)
        common = {
            "weight_decay": hp.weight_decay,
            "betas": tuple(hp.betas),
            "warmup_steps": hp.warmup_steps,
            "lr_schedule": hp.lr_schedule,
            "min_lr_ratio": hp.min_lr_ratio,
            "total_steps": total,
            "implementation": hp.adamw_implementation,
        }
        critic_params = list(self.critic.named_parameters())
        if isinstance(self.critic, SharedBackboneCritic):  # its adapter lives in the policy's layers
            critic_params += self.critic.adapter_parameters()
        critic_ids = {id(p) for _, p in critic_params}
        actor_params = [(n, p) for n, p in self.model.named_parameters() if id(p) not in critic_ids]
        actor, actor_sched = self.build_optimizer(actor_params, learning_rate=hp.actor_learning_rate, **common)
        critic, critic_sched = self.build_optimizer(critic_params, learning_rate=hp.critic_learning_rate, **common)
        return [actor, critic], [actor_sched, critic_sched]

    def extra_state(self) -> dict[str, Any]:
        return {"kl": self.kl_controller.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "kl" in state:
            self.kl_controller.load_state_dict(state["kl"])

    def export_hf(self, path: str) -> None:
        """The policy into ``path`` and the critic into ``<path>_critic``, each with the tokenizer (with adapters: each
        merged, and its adapter into ``<path>_adapter`` and ``<path>_critic_adapter``)."""
        hp = self.hparams
        self.save_model_hf(self.model, path, hp.policy_name_or_path)
        critic_path = os.path.normpath(path) + "_critic"
        if not isinstance(self.critic, SharedBackboneCritic):
            self.save_model_hf(self.critic, critic_path, hp.critic_name_or_path or hp.policy_name_or_path)
        elif self._trainer is None or self.trainer.is_global_zero:  # never sharded (refused under FSDP2)
            adapter_path = adapter_export_path(critic_path)
            self.critic.save_pretrained_merged(critic_path, adapter_path, base=hp.policy_name_or_path)
            for folder in (critic_path, adapter_path):
                self.tokenizer.save_pretrained(folder)
