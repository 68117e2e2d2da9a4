"""GRPO: several samples per prompt, group-normalised advantages, a clipped per-token surrogate, no critic."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch

from lit_rlhf.engines.settings import SamplingEngine, VLLMSettings
from lit_rlhf.functional.accumulation import micro_batch_weights
from lit_rlhf.functional.grpo import LossAveraging, group_advantages, grpo_loss, minibatch_rows
from lit_rlhf.functional.masking import masked_mean
from lit_rlhf.functional.schedules import ScheduleName
from lit_rlhf.generation import Generation, decode_responses
from lit_rlhf.models.adapters import LoraConfig, lora_settings
from lit_rlhf.models.shared_prompt import first_rows
from lit_rlhf.modules.base import AdamWImplementation, adamw_flags
from lit_rlhf.modules.checks import check_grpo_options, check_minibatch_split
from lit_rlhf.modules.online import OnlineRLModule
from lit_rlhf.rewards.base import RewardSource
from lit_rlhf.rewards.rules import WeightedSumReward
from lit_rlhf.rollout import grouped_response_logprobs, response_logprobs, select_rows, shared_prompt_response_logprobs


class GroupRollout(NamedTuple):
    """One generation batch: ``num_generations`` responses per prompt, adjacent (all tensors detached).

    Attributes:
        prompt_ids: ``(batch * G, prompt_len)`` left-padded prompts (each repeated ``G`` times); ``prompt_mask``
            their attention mask.
        response_ids: ``(batch * G, response_len)`` sampled responses; ``response_mask`` true up to and including
            the first EOS.
        logprobs: ``(batch * G, response_len)`` log-probabilities under the sampling policy.
        ref_logprobs: ``(batch * G, response_len)`` under the frozen reference (zeros when ``beta == 0``).
        advantages: ``(batch * G,)`` one group-normalised advantage per response.
        group: ``(batch * G,)`` the group (prompt) each response belongs to, ``0..batch-1``.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    advantages: torch.Tensor
    group: torch.Tensor


def sample_and_score(
    module: OnlineRLModule,
    batch: dict[str, Any],
    num_samples: int,
    *,
    share_prompt: bool = False,
    gather_sharded: bool = True,
    policy_logprobs: bool = True,
) -> tuple[Generation, torch.Tensor, dict[str, torch.Tensor]]:
    """Sample ``num_samples`` answers per prompt of ``batch`` with ``module``'s policy and score them (no grad).

    The sampling settings (``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``) and ``missing_eos_penalty``
    are read from ``module.hparams``; the answers of a prompt are adjacent (prompt-major). Warns when no answer
    reached EOS.

    Args:
        module: an online module (its ``model``, ``tokenizer``, ``hparams`` and :meth:`~OnlineRLModule.score`).
        batch: a prompt batch (``prompt_input_ids``, ``prompt_attention_mask``, ``rows``).
        num_samples: answers per prompt.
        share_prompt: compute each prompt once for its answers (see :func:`~lit_rlhf.generation.generate`).
        gather_sharded: under FSDP2, gather the whole policy once for the sampling.
        policy_logprobs: also return the answers' log-probabilities under the policy (see
            :meth:`~lit_rlhf.modules.engine_sampling.EngineSampling.sample`).

    Returns:
        The :class:`~lit_rlhf.generation.Generation` (``batch * num_samples`` rows), the ``(batch * num_samples,)``
        rewards (after the missing-EOS penalty) and the reward source's and the sampling engine's statistics.
    """
    hp = module.hparams
    rows = [row for row in batch["rows"] for _ in range(num_samples)]
    with torch.no_grad():
        generation, engine_stats = module.sample(
            batch["prompt_input_ids"],
            batch["prompt_attention_mask"],
            num_samples=num_samples,
            policy_logprobs=policy_logprobs,
            share_prompt=share_prompt,
            gather_sharded=gather_sharded,
        )
        if not bool(generation.has_eos.any()):
            warnings.warn(
                f"Every response of this generation batch ({len(generation.has_eos)} samples) reached "
                f"max_new_tokens={hp.max_new_tokens} without EOS; raise max_new_tokens if this persists.",
                RuntimeWarning,
                stacklevel=3,
            )
        completions = decode_responses(module.tokenizer, generation)
        rewards, reward_stats = module.score(rows, completions, generation.has_eos.tolist())
        if hp.missing_eos_penalty is not None:
            rewards = torch.where(generation.has_eos, rewards, rewards - hp.missing_eos_penalty)
    return generation, rewards, {**reward_stats, **engine_stats}


class GRPOModule(OnlineRLModule):
    """Group Relative Policy Optimization (Shao et al. 2024) with the options the field added since.

    One training batch of prompts is one iteration: each prompt is sampled ``num_generations`` times (eval mode, KV
    cache, no grad; the log-probabilities come from the sampling pass), the rewards (a weighted sum of any number of
    reward sources) are normalised within each prompt's group, and the policy takes ``num_iterations`` passes of
    ``num_minibatches`` optimizer steps of the clipped surrogate plus ``beta`` times the k3 KL to the frozen
    reference. The whole iteration is one Lightning training step: ``trainer.max_steps``, ``val_check_interval``,
    ``ModelCheckpoint(every_n_train_steps=...)`` and ``warmup_steps`` count iterations, and the LR scheduler steps
    once per iteration. With ``beta: 0`` the reference is not even loaded. There is no critic and no value loss.

    Logged per iteration: ``reward`` (mean total), ``reward_std`` (mean std within groups), ``frac_reward_zero_std``
    (groups with no signal), ``reward/<name>/mean`` and ``/std`` per source, ``completions/mean_length``,
    ``completions/eos_rate``, ``kl``, ``policy/clipfrac``, ``policy/ratio``, ``policy/entropy``, ``loss/policy``,
    ``lr``, and counts since the start of the run: ``train/nonfinite_steps`` (optimizer steps skipped for a
    non-finite loss or gradient), ``train/zero_std_groups`` (groups whose rewards were all equal) and
    ``train/zero_std_iterations`` (iterations where every group's were); at validation, what
    :class:`~lit_rlhf.modules.online.OnlineRLModule` logs (gold metrics, samples).

    Args:
        rewards: reward sources (``class_path`` entries), summed with ``reward_weights``.
        reward_weights: one weight per source (``null``: all 1).
        policy_name_or_path: the SFT export (policy and, with ``beta > 0``, the reference).
        tokenizer_name_or_path, model_config: where the tokenizer lives if not beside the policy; config overrides.
        attn_implementation: attention kernel of the policy and reference (``eager``, ``sdpa``,
            ``flash_attention_2``, ...); ``null`` lets transformers choose.
        learning_rate, weight_decay, betas, lr_schedule, min_lr_ratio: AdamW and its schedule over
            ``trainer.max_steps`` iterations.
        warmup_steps: linear warmup, in iterations.
        adamw_implementation: ``fused`` (one kernel per step, CPU and CUDA; the Hugging Face Trainer's default),
            ``foreach`` or ``for_loop``; ``null`` leaves torch's choice (``foreach`` on CUDA, ``for_loop`` on CPU).
        num_generations: samples per prompt ``G`` (>= 2).
        max_new_tokens, temperature, top_k, top_p: sampling.
        beta: KL coefficient (k3 estimator); 0 skips the reference model.
        scale_rewards: divide advantages by the group's std (``false``: Dr. GRPO).
        loss_averaging: ``token`` (every token of the minibatch weighs the same) or ``sequence`` (per-response mean,
            then mean over responses, as the GRPO paper).
        clip_range, clip_range_high: the ratio's clip range ``[1 - clip_range, 1 + clip_range_high]``
            (``clip_range_high`` null = ``clip_range``).
        num_iterations: passes over each generation batch (``mu`` in the paper; > 1 reuses samples off-policy).
        num_minibatches: optimizer steps per pass.
        group_minibatches: minibatches hold whole groups (the groups shuffled, their responses kept together, then
            split), instead of responses shuffled across groups; with ``shared_prompt_forward`` each minibatch then
            computes each prompt once for all ``G`` of its responses. When the prompts of a generation batch do not
            divide evenly into ``num_minibatches``, a group may straddle two adjacent minibatches (the number of
            optimizer steps never changes).
        shared_prompt_forward: compute each distinct prompt once and its responses on its KV cache: when sampling
            (the ``G`` samples start from copies of the prompt's cache, see :func:`~lit_rlhf.generation.generate`),
            in the reference pass and in the policy's updates
            (:func:`~lit_rlhf.rollout.shared_prompt_response_logprobs`, per micro-batch): the same samples,
            log-probabilities and gradients up to float rounding, with fewer token positions; most useful when
            prompts are long. Needs a decoder whose forward takes ``past_key_values`` (Hugging Face decoders do).
        padding_free: run the reference pass and the policy's updates on the rows' real tokens packed into one row
            (:func:`~lit_rlhf.models.padding_free.packed_forward`): the same log-probabilities and gradients up to
            float rounding, no work on padding, on any attention kernel. With ``shared_prompt_forward`` too, the
            reference pass and the updates pack each distinct prompt once with its responses, without KV cache
            (:func:`~lit_rlhf.models.padding_free.packed_prompt_forward`); sampling still shares the prompt's cache.
        gradient_accumulation_steps: micro-batches per minibatch (memory), gradients summed exactly.
        missing_eos_penalty: subtracted from the reward of responses cut by ``max_new_tokens``; ``null`` = none.
        max_grad_norm: gradient clipping norm.
        num_logged_samples: rows of the validation sample table.
        max_nonfinite_steps: an optimizer step whose loss or gradient is not finite is skipped (no weight and no
            optimizer state moves) and counted (``train/nonfinite_steps``); this many iterations in a row with a
            skipped step stop the run with an error naming the last one. ``null`` never stops.
        shard_frozen_models: under FSDP2, shard the frozen reference and reward model over the processes like the
            trained models (``false`` keeps a whole copy of each on every process: faster when they are small).
        gather_for_sampling: under FSDP2, gather the whole policy once per rollout and keep it until sampling ends;
            ``false`` gathers one decoder block at a time at every generated token (slower; for a policy whose whole
            weights do not fit on one device beside the rest).
        peft_config: LoRA adapters on the policy (``class_path: peft.LoraConfig`` with its ``init_args``): only they
            train, the reference is the policy with its adapters switched off (no second copy is loaded), checkpoints
            hold only the adapters, and the export is ``hf/`` (merged) plus ``hf_adapter/``. ``null``: full
            fine-tuning.
        load_in_4bit: load the frozen base weights in 4 bits (QLoRA; needs ``peft_config`` and ``bitsandbytes``;
            CUDA or CPU).
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
        rewards: list[RewardSource],
        reward_weights: list[float] | None = None,
        policy_name_or_path: str = "runs/arithmetic/sft/hf",
        tokenizer_name_or_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        attn_implementation: str | None = None,
        learning_rate: float = 1e-6,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: ScheduleName = "constant",
        min_lr_ratio: float = 0.0,
        adamw_implementation: AdamWImplementation | None = None,
        num_generations: int = 8,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        beta: float = 0.0,
        scale_rewards: bool = True,
        loss_averaging: LossAveraging = "token",
        clip_range: float = 0.2,
        clip_range_high: float | None = None,
        num_iterations: int = 1,
        num_minibatches: int = 1,
        group_minibatches: bool = False,
        shared_prompt_forward: bool = False,
        padding_free: bool = False,
        gradient_accumulation_steps: int = 1,
        missing_eos_penalty: float | None = None,
        max_grad_norm: float = 1.0,
        num_logged_samples: int = 8,
        max_nonfinite_steps: int | None = 3,
        shard_frozen_models: bool = True,
        gather_for_sampling: bool = True,
        peft_config: LoraConfig | None = None,
        load_in_4bit: bool = False,
        sampling_engine: SamplingEngine = "generate",
        vllm: VLLMSettings | None = None,
    ) -> None:
        super().__init__()
        check_grpo_options(locals())  # every option value, before any model loads
        adamw_flags(adamw_implementation)  # an unknown name fails here, not at the first step
        self.save_hyperparameters(ignore=["rewards", "peft_config"])
        self.use_sampling_engine(sampling_engine, vllm)
        self.hparams["peft_config"] = lora_settings(peft_config)
        self.automatic_optimization = False
        self.shard_frozen_models = shard_frozen_models
        self.setup_nonfinite_guard({"policy": "learning_rate"}, max_nonfinite_steps, "the rewards")
        self.reward = WeightedSumReward(list(rewards), reward_weights, name="reward")
        self.load_policy(
            policy_name_or_path,
            tokenizer_name_or_path,
            model_config,
            with_reference=beta > 0,
            attn_implementation=attn_implementation,
            peft_config=peft_config,
            load_in_4bit=load_in_4bit,
        )

    def setup(self, stage: str) -> None:
        """The online modules' checks, and no more minibatches than the responses of a generation batch."""
        super().setup(stage)
        batch_size = getattr(getattr(self._trainer, "datamodule", None), "batch_size", None)
        if stage == "fit" and isinstance(batch_size, int):
            rows = batch_size * self.hparams.num_generations
            check_minibatch_split(rows, self.hparams.num_minibatches, rows_name="responses")

    # -- generation batch --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, batch: dict[str, Any]) -> tuple[GroupRollout, dict[str, torch.Tensor]]:
        """Sample ``G`` responses per prompt, score them and normalise the rewards within each group."""
        hp = self.hparams
        g = hp.num_generations
        prompt_ids = batch["prompt_input_ids"].repeat_interleave(g, dim=0)
        prompt_mask = batch["prompt_attention_mask"].repeat_interleave(g, dim=0)
        generation, rewards, reward_stats = sample_and_score(
            self, batch, g, share_prompt=hp.shared_prompt_forward, gather_sharded=hp.gather_for_sampling
        )
        advantages, groups = group_advantages(rewards, g, scale_by_std=hp.scale_rewards)
        self.count_zero_std_groups(groups.std)  # groups without a reward signal: counted, trained on
        response_mask = generation.response_mask
        group = torch.arange(batch["prompt_input_ids"].size(0), device=prompt_ids.device).repeat_interleave(g)
        if hp.beta > 0:
            ref_logprobs = grouped_response_logprobs(
                self.reference,
                batch["prompt_input_ids"],
                batch["prompt_attention_mask"],
                g,
                generation.response_ids,
                response_mask,
                hp.temperature,
                share_prompt=hp.shared_prompt_forward,
                padding_free=hp.padding_free,
            )
        else:
            ref_logprobs = torch.zeros_like(generation.logprobs)
        stats = {
            "reward": rewards.mean(),
            "reward_std": groups.mean_std,
            "frac_reward_zero_std": groups.zero_std_fraction,
            "completions/mean_length": response_mask.sum(dim=1).float().mean(),
            "completions/eos_rate": generation.has_eos.float().mean(),
            **reward_stats,
        }
        experience = GroupRollout(
            prompt_ids,
            prompt_mask,
            generation.response_ids,
            response_mask,
            generation.logprobs,
            ref_logprobs,
            advantages,
            group,
        )
        return experience, stats

    # -- policy updates -----------------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hp = self.hparams
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        experience, stats = self.rollout(batch)
        size = experience.prompt_ids.size(0)
        sums: dict[str, float] = {}
        updates = 0
        lr = optimizer.param_groups[0]["lr"]  # the learning rate this iteration's updates use
        with self.one_training_step([optimizer], [scheduler], batch_idx):
            for _ in range(hp.num_iterations):
                for minibatch in self._minibatches(size):
                    micro_batches = [
                        select_rows(experience, m)
                        for m in minibatch.tensor_split(hp.gradient_accumulation_steps)
                        if len(m)
                    ]
                    weights = micro_batch_weights([mb.response_mask for mb in micro_batches], hp.loss_averaging)
                    step_stats = self.optimizer_step_over(
                        optimizer, self.model, micro_batches, self._loss, weights, hp.max_grad_norm
                    )
                    for name, value in step_stats.items():
                        sums[name] = sums.get(name, 0.0) + value
                    updates += 1
        update_stats = {k: torch.tensor(v / updates) for k, v in sums.items()}
        logged = self._mean_over_ranks({**stats, **update_stats})
        self.iteration += 1
        logged["lr"] = lr
        logged["iteration"] = self.iteration
        logged.update(self.run_counts())  # skipped steps, zero-std groups: the same on every rank
        # Already averaged over ranks above (one collective per iteration), so no sync_dist here.
        self.log_dict({k: float(v) for k, v in logged.items()}, batch_size=size)
        self.log("reward_mean", logged["reward"], prog_bar=True, batch_size=size, logger=False)
        self.log("kl_mean", logged["kl"], prog_bar=True, batch_size=size, logger=False)

    def _minibatches(self, size: int) -> list[torch.Tensor]:
        """Row indices of one pass's minibatches: a random order, whole groups together with ``group_minibatches``."""
        hp = self.hparams
        group_size = hp.num_generations if hp.group_minibatches else 1
        order = torch.randperm(size // group_size, device=self.device)  # of the groups, or of the rows
        return minibatch_rows(order, hp.num_minibatches, group_size)

    def _policy_logprobs(self, mb: GroupRollout) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's log-probabilities (with grad) and entropies of a micro-batch's responses."""
        hp = self.hparams
        if hp.shared_prompt_forward:
            rows, prompt_index = first_rows(mb.group)  # each distinct prompt once
            return shared_prompt_response_logprobs(
                self.model,
                mb.prompt_ids[rows],
                mb.prompt_mask[rows],
                prompt_index,
                mb.response_ids,
                mb.response_mask,
                hp.temperature,
                with_entropy=True,
                padding_free=hp.padding_free,
            )
        return response_logprobs(
            self.model,
            mb.prompt_ids,
            mb.prompt_mask,
            mb.response_ids,
            mb.response_mask,
            hp.temperature,
            with_entropy=True,
            padding_free=hp.padding_free,
        )

    def _loss(self, mb: GroupRollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hp = self.hparams
        logprobs, entropy = self._policy_logprobs(mb)
        loss, stats = grpo_loss(
            logprobs,
            mb.logprobs,
            mb.advantages,
            mb.response_mask,
            clip_range=hp.clip_range,
            clip_range_high=hp.clip_range_high,
            beta=hp.beta,
            ref_logprobs=mb.ref_logprobs if hp.beta > 0 else None,
            averaging=hp.loss_averaging,
        )
        return loss, {
            "loss/policy": loss,
            "kl": stats.kl,
            "policy/clipfrac": stats.clipfrac,
            "policy/ratio": stats.ratio_mean,
            "policy/entropy": masked_mean(entropy, mb.response_mask),
        }

    def configure_optimizers(self) -> tuple[list, list]:
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else 10**9  # iterations (one step each)
        optimizer, scheduler = self.model_optimizer(total)
        return [optimizer], [scheduler]
