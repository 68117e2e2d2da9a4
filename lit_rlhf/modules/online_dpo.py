"""Iterative (online) DPO: the policy answers each prompt several times, a reward source ranks the answers, and DPO
trains on pairs of them."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from lit_rlhf.engines.settings import SamplingEngine, VLLMSettings
from lit_rlhf.errors import ConfigError
from lit_rlhf.functional.dpo import REFERENCE_FREE_LOSSES, DPOLossType, dpo_loss, sequence_logps
from lit_rlhf.functional.dpo_pairs import PairRule, preference_pairs
from lit_rlhf.functional.schedules import ScheduleName
from lit_rlhf.models.adapters import LoraConfig, lora_settings
from lit_rlhf.modules.base import AdamWImplementation, adamw_flags
from lit_rlhf.modules.checks import check_minibatch_split, check_online_dpo_options
from lit_rlhf.modules.grpo import sample_and_score
from lit_rlhf.modules.online import OnlineRLModule
from lit_rlhf.rewards.base import RewardSource
from lit_rlhf.rewards.rules import WeightedSumReward
from lit_rlhf.rollout import response_logprobs, select_rows
from lit_rlhf.strategies import is_fsdp2

_DPO_STATS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
_LOGP_STATS = ("logps/chosen", "logps/rejected")


class RoundAnswers(NamedTuple):
    """A round's sampled answers, ``samples_per_prompt`` per prompt, adjacent (all tensors detached).

    Attributes:
        prompt_ids: ``(answers, prompt_len)`` left-padded prompts (each repeated for its answers); ``prompt_mask``
            their attention mask.
        response_ids: ``(answers, response_len)`` the answers; ``response_mask`` true up to and including the first
            EOS.
        ref_logps: ``(answers,)`` summed log-probability of each answer under the frozen reference (0 for answers in
            no pair and for reference-free losses).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    ref_logps: torch.Tensor


class OnlineDPOModule(OnlineRLModule):
    """Iterative DPO (online DPO): each round the policy's own answers, ranked by any reward source, become DPO pairs.

    One training batch of prompts is one round, and one Lightning training step: the policy (eval mode, no grad)
    answers each prompt ``samples_per_prompt`` times, the reward sources (a weighted sum) score every answer, and
    ``pair_rule`` pairs the answers of each prompt (:func:`~lit_rlhf.functional.dpo_pairs.preference_pairs`:
    ``best_vs_worst`` or ``all_pairs``; a prompt whose answers all score the same gives no pair). The frozen reference
    scores the paired answers once; then ``num_epochs`` passes over the round's pairs, each in ``num_minibatches``
    optimizer steps, minimise :func:`~lit_rlhf.functional.dpo.dpo_loss` on the summed response log-probabilities of
    the policy (its own distribution, temperature 1) and of the reference. ``trainer.max_steps``,
    ``val_check_interval``, ``ModelCheckpoint(every_n_train_steps=...)`` and ``warmup_steps`` count rounds, and the LR
    scheduler steps once per round.

    Under DDP each process samples its own prompts and pairs them; the processes may hold different numbers of pairs.
    Each minibatch's loss is the mean over the pairs of that minibatch on every process (each process weighs its
    pairs by the global count), so every optimizer step is the one a single process would take on all the pairs; a
    minibatch with no pair on any process is no step on any of them.

    Logged per round: ``reward`` (mean over every sampled answer), ``reward_chosen`` and ``reward_rejected`` (the
    reward sources' mean over the paired answers), ``frac_no_pair`` (prompts without a pair), ``num_pairs`` (over
    every process), ``reward/<name>/mean`` and ``/std`` per source, ``completions/mean_length``,
    ``completions/eos_rate``, then over the round's updates ``loss``, ``rewards/chosen``, ``rewards/rejected``,
    ``rewards/margins``, ``rewards/accuracies`` (DPO's implicit rewards), ``logps/chosen``, ``logps/rejected``, and
    ``lr``, ``iteration``, ``train/nonfinite_steps``; at validation, what
    :class:`~lit_rlhf.modules.online.OnlineRLModule` logs (gold metrics, samples).

    Args:
        rewards: reward sources (``class_path`` entries), summed with ``reward_weights``.
        reward_weights: one weight per source (``null``: all 1).
        policy_name_or_path: the SFT export (the policy and the frozen reference).
        tokenizer_name_or_path, model_config: where the tokenizer lives if not beside the policy; config overrides.
        attn_implementation: attention kernel of the policy and reference; ``null`` lets transformers choose.
        learning_rate, weight_decay, betas, lr_schedule, min_lr_ratio: AdamW and its schedule over
            ``trainer.max_steps`` rounds.
        warmup_steps: linear warmup, in rounds.
        adamw_implementation: ``fused``, ``foreach`` or ``for_loop``; ``null`` leaves torch's choice.
        samples_per_prompt: answers per prompt ``k`` (>= 2).
        max_new_tokens, temperature, top_k, top_p: sampling.
        pair_rule: ``best_vs_worst`` (one pair per prompt: its highest-reward answer against its lowest, ties to the
            answer sampled first) or ``all_pairs`` (every two answers whose rewards differ).
        beta: DPO's inverse temperature (the IPO regulariser for ``ipo``).
        loss_type: ``sigmoid`` (DPO), ``ipo``, ``hinge``, ``robust`` or ``simpo`` (reference-free: no reference is
            loaded).
        label_smoothing: assumed rate of flipped preferences, in ``[0, 0.5)`` (``sigmoid``: cDPO; ``robust``).
        simpo_gamma: target reward margin of ``simpo``.
        num_epochs: passes over each round's pairs.
        num_minibatches: optimizer steps per pass.
        gradient_accumulation_steps: micro-batches per minibatch (memory), gradients summed exactly.
        missing_eos_penalty: subtracted from the reward of answers cut by ``max_new_tokens``; ``null`` = none.
        max_grad_norm: gradient clipping norm.
        num_logged_samples: rows of the validation sample table.
        max_nonfinite_steps: rounds in a row with a skipped (non-finite) optimizer step before the run stops;
            ``null`` never stops.
        peft_config: LoRA adapters on the policy (``class_path: peft.LoraConfig``): only they train and the reference
            is the policy with its adapters switched off. ``null``: full fine-tuning.
        load_in_4bit: load the frozen base weights in 4 bits (QLoRA; needs ``peft_config`` and ``bitsandbytes``).
        sampling_engine: what samples each round's answers: ``generate`` (Hugging Face ``generate`` on the training
            model) or ``vllm`` (a vLLM engine in each training process, fed the policy's weights before every round;
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
        samples_per_prompt: int = 4,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        pair_rule: PairRule = "best_vs_worst",
        beta: float = 0.1,
        loss_type: DPOLossType = "sigmoid",
        label_smoothing: float = 0.0,
        simpo_gamma: float = 0.5,
        num_epochs: int = 1,
        num_minibatches: int = 1,
        gradient_accumulation_steps: int = 1,
        missing_eos_penalty: float | None = None,
        max_grad_norm: float = 1.0,
        num_logged_samples: int = 8,
        max_nonfinite_steps: int | None = 3,
        peft_config: LoraConfig | None = None,
        load_in_4bit: bool = False,
        sampling_engine: SamplingEngine = "generate",
        vllm: VLLMSettings | None = None,
    ) -> None:
        super().__init__()
        check_online_dpo_options(locals())  # every option value, before any model loads
        adamw_flags(adamw_implementation)
        self.save_hyperparameters(ignore=["rewards", "peft_config"])
        self.use_sampling_engine(sampling_engine, vllm)
        self.hparams["peft_config"] = lora_settings(peft_config)
        self.automatic_optimization = False
        self.setup_nonfinite_guard({"policy": "learning_rate"}, max_nonfinite_steps, "the rewards")
        self.reward = WeightedSumReward(list(rewards), reward_weights, name="reward")
        self.load_policy(
            policy_name_or_path,
            tokenizer_name_or_path,
            model_config,
            with_reference=loss_type not in REFERENCE_FREE_LOSSES,
            attn_implementation=attn_implementation,
            peft_config=peft_config,
            load_in_4bit=load_in_4bit,
        )

    def setup(self, stage: str) -> None:
        """The online modules' checks, one device or DDP, and no more minibatches than a round's pairs can fill."""
        super().setup(stage)
        if self._trainer is not None and is_fsdp2(self.trainer.strategy):
            raise ConfigError(
                "OnlineDPOModule trains on one device or under DDP, not under FSDP2 (--trainer.strategy fsdp2); set "
                "--trainer.strategy ddp"
            )
        batch_size = getattr(getattr(self._trainer, "datamodule", None), "batch_size", None)
        if stage == "fit" and isinstance(batch_size, int):
            k = self.hparams.samples_per_prompt
            per_prompt = 1 if self.hparams.pair_rule == "best_vs_worst" else k * (k - 1) // 2
            check_minibatch_split(batch_size * per_prompt, self.hparams.num_minibatches, rows_name="pairs (at most)")

    # -- one round: sample, score, pair, reference -----------------------------------------------------------------

    @torch.no_grad()
    def sample_round(self, batch: dict[str, Any]) -> tuple[RoundAnswers, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Answer the batch's prompts, score and pair the answers, and score the paired answers under the reference.

        Returns:
            The round's :class:`RoundAnswers`, the ``(pairs,)`` indices of the chosen and of the rejected answers, and
            sums for the round's statistics (``reward_sum``, ``answers``, ``no_pair``, ``prompts``,
            ``reward_chosen_sum``, ``reward_rejected_sum``, ``pairs``, ``length_sum``, ``eos_sum``; 0-dim tensors)
            with the reward sources' own statistics under ``sources``.
        """
        hp = self.hparams
        k = hp.samples_per_prompt
        generation, rewards, reward_stats = sample_and_score(self, batch, k, policy_logprobs=False)
        pairs = preference_pairs(rewards.view(-1, k).float(), hp.pair_rule)
        response_mask = generation.response_mask
        answers = RoundAnswers(
            batch["prompt_input_ids"].repeat_interleave(k, dim=0),
            batch["prompt_attention_mask"].repeat_interleave(k, dim=0),
            generation.response_ids,
            response_mask,
            torch.zeros(len(rewards), device=rewards.device),
        )
        if "reference" in self._frozen:
            used = torch.unique(torch.cat([pairs.chosen, pairs.rejected]))
            if len(used):
                rows = select_rows(answers, used)
                token_logps = response_logprobs(
                    self.reference, rows.prompt_ids, rows.prompt_mask, rows.response_ids, rows.response_mask
                )
                answers.ref_logps[used] = sequence_logps(token_logps, rows.response_mask)[0]
        sums = {
            "reward_sum": rewards.float().sum(),
            "answers": torch.tensor(float(len(rewards))),
            "no_pair": (~pairs.has_pair).sum().float(),
            "prompts": torch.tensor(float(len(pairs.has_pair))),
            "reward_chosen_sum": rewards[pairs.chosen].float().sum(),
            "reward_rejected_sum": rewards[pairs.rejected].float().sum(),
            "pairs": torch.tensor(float(len(pairs.chosen))),
            "length_sum": response_mask.sum().float(),
            "eos_sum": generation.has_eos.sum().float(),
            "sources": reward_stats,
        }
        return answers, pairs.chosen, pairs.rejected, sums

    # -- DPO updates ------------------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hp = self.hparams
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        answers, chosen, rejected, round_sums = self.sample_round(batch)
        sources = round_sums.pop("sources")
        # Every pass's minibatches of this process's pairs; then each minibatch's pair count over all processes, so
        # that every process weighs its pairs by the global count and skips the same empty steps.
        minibatches = [
            list(torch.randperm(len(chosen), device=chosen.device).tensor_split(hp.num_minibatches))
            for _ in range(hp.num_epochs)
        ]
        counts = torch.tensor([float(len(m)) for epoch in minibatches for m in epoch], device=self.device)
        global_counts = self._sum_over_ranks({"counts": counts})["counts"].tolist()
        world = self._world_size()
        update_sums: dict[str, float] = dict.fromkeys(("pairs_seen", *_DPO_STATS, *_LOGP_STATS), 0.0)
        lr = optimizer.param_groups[0]["lr"]  # the learning rate this round's updates use
        with self.one_training_step([optimizer], [scheduler], batch_idx):
            for step, minibatch in enumerate(m for epoch in minibatches for m in epoch):
                if global_counts[step] == 0:
                    continue  # no pair on any process: no step anywhere
                micro_batches = [m for m in minibatch.tensor_split(hp.gradient_accumulation_steps) if len(m)]
                weights = [len(m) * world / global_counts[step] for m in micro_batches]

                def loss_fn(rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                    return self._loss(answers, chosen[rows], rejected[rows], update_sums)

                self.optimizer_step_over(optimizer, self.model, micro_batches, loss_fn, weights, hp.max_grad_norm)
        logged = self._round_metrics(round_sums, sources, update_sums)
        self.iteration += 1
        logged["lr"] = lr
        logged["iteration"] = self.iteration
        logged.update(self.run_counts())
        # Already reduced over processes above, so no sync_dist here.
        self.log_dict({k: float(v) for k, v in logged.items()}, batch_size=len(batch["rows"]))
        self.log("reward_mean", logged["reward"], prog_bar=True, batch_size=len(batch["rows"]), logger=False)

    def _loss(
        self, answers: RoundAnswers, chosen: torch.Tensor, rejected: torch.Tensor, sums: dict[str, float]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The mean DPO loss of the pairs ``chosen[i]`` over ``rejected[i]`` (``(pairs,)`` answer indices); their
        statistics are added to ``sums`` (sums over pairs)."""
        hp = self.hparams
        n = len(chosen)
        rows = select_rows(answers, torch.cat([chosen, rejected]))
        token_logps = response_logprobs(
            self.model, rows.prompt_ids, rows.prompt_mask, rows.response_ids, rows.response_mask
        )
        logps, lengths = sequence_logps(token_logps, rows.response_mask)
        reference_free = hp.loss_type in REFERENCE_FREE_LOSSES
        loss, stats = dpo_loss(
            logps[:n],
            logps[n:],
            None if reference_free else rows.ref_logps[:n],
            None if reference_free else rows.ref_logps[n:],
            beta=hp.beta,
            loss_type=hp.loss_type,
            label_smoothing=hp.label_smoothing,
            chosen_lengths=lengths[:n],
            rejected_lengths=lengths[n:],
            simpo_gamma=hp.simpo_gamma,
        )
        values = (loss, stats.chosen_reward, stats.rejected_reward, stats.margin, stats.accuracy)
        values += (stats.chosen_logps, stats.rejected_logps)
        for name, value in zip((*_DPO_STATS, *_LOGP_STATS), values):
            sums[name] += float(value.detach()) * n
        sums["pairs_seen"] += n
        return loss, {}

    def _round_metrics(
        self, round_sums: dict[str, torch.Tensor], sources: dict[str, torch.Tensor], update_sums: dict[str, float]
    ) -> dict[str, torch.Tensor]:
        """The round's logged values, over every process: means from the sums, the sources' statistics averaged."""
        sums = self._sum_over_ranks({**round_sums, **{k: torch.tensor(v) for k, v in update_sums.items()}})
        logged = {
            "reward": sums["reward_sum"] / sums["answers"],
            "frac_no_pair": sums["no_pair"] / sums["prompts"],
            "num_pairs": sums["pairs"],
            "completions/mean_length": sums["length_sum"] / sums["answers"],
            "completions/eos_rate": sums["eos_sum"] / sums["answers"],
            **self._mean_over_ranks(sources),
        }
        if sums["pairs"] > 0:  # without a pair anywhere the pair statistics are undefined: not logged this round
            logged["reward_chosen"] = sums["reward_chosen_sum"] / sums["pairs"]
            logged["reward_rejected"] = sums["reward_rejected_sum"] / sums["pairs"]
            for name in (*_DPO_STATS, *_LOGP_STATS):
                logged[name] = sums[name] / sums["pairs_seen"]
        return logged

    def _sum_over_ranks(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every tensor summed over the processes, in one collective (the same shapes on every process)."""
        values = {k: torch.as_tensor(v, dtype=torch.float32, device=self.device) for k, v in values.items()}
        if self._world_size() <= 1:
            return values
        flat = torch.cat([v.reshape(-1) for v in values.values()])
        flat = self.trainer.strategy.reduce(flat, reduce_op="sum")
        out, start = {}, 0
        for name, value in values.items():
            out[name] = flat[start : start + value.numel()].reshape(value.shape)
            start += value.numel()
        return out

    def configure_optimizers(self) -> tuple[list, list]:
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else 10**9  # rounds (one step each)
        optimizer, scheduler = self.model_optimizer(total)
        return [optimizer], [scheduler]
