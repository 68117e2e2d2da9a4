"""Bradley-Terry reward-model training on preference pairs."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import CatMetric

from lit_rlhf.functional.reward import bradley_terry_loss, prefix_pair_loss
from lit_rlhf.functional.schedules import ScheduleName
from lit_rlhf.models.adapters import LoraConfig, lora_settings, quantized_load
from lit_rlhf.models.loading import load_tokenizer
from lit_rlhf.models.padding_free import check_padding_free
from lit_rlhf.models.scoring import (
    NORMALIZATION_KEY,
    ensure_distinct_pad,
    load_reward_model,
    packed_token_scores,
    score_head,
    sequence_scores,
    shared_prompt_token_scores,
    token_scores,
)
from lit_rlhf.modules.base import AdamWImplementation, adamw_flags
from lit_rlhf.modules.checks import check_reward_options
from lit_rlhf.modules.nonfinite import GuardedModule
from lit_rlhf.tables import log_table, scalar_step


class RewardModule(GuardedModule):
    """A reward model trained with ``-log sigmoid(r_chosen - r_rejected - margin)`` (+ optional centring).

    The model is an ``AutoModelForSequenceClassification`` with one label (the format TRL and OpenRLHF reward
    models use), initialised from the SFT export, scored at the EOS that ends each response.

    Logs ``train/{loss,accuracy,margin,chosen_reward_mean,chosen_reward_std,rejected_reward_mean,
    rejected_reward_std,lr}``, ``train/nonfinite_steps`` (steps skipped for a non-finite loss or gradient:
    :class:`GuardedModule`) and the same under ``val/`` over the whole validation set, ``val/accuracy/<type>``
    per ``pair_type`` when rows have one (the arithmetic pairs do), and a sample table of pairs with both scores.
    At the end of fit, records the mean and std of its scores on the DataModule's
    :meth:`~lit_rlhf.data.base.RLHFDataModule.normalization_dataloader` responses (the validation responses; for
    labelled arithmetic pairs, the SFT model's own samples) in the export's ``config.reward_normalization``, for
    PPO to normalise scores.

    Args:
        model_name_or_path: the SFT export (e.g. ``runs/arithmetic/sft/hf``), a reward-model dir or hub name, or
            ``tiny-arithmetic`` (a fresh tiny model, for tests).
        tokenizer_name_or_path: where the tokenizer lives if not beside the model.
        pad_token: added as pad token when the tokenizer has none or pads with EOS (else that is an error).
        model_config: config overrides (``LlamaConfig`` fields for the built-in model).
        dtype: weight dtype; keep ``null`` and use ``trainer.precision: bf16-mixed`` for mixed precision.
        trust_remote_code: passed to ``from_pretrained``.
        attn_implementation: attention kernel (``eager``, ``sdpa``, ``flash_attention_2``, ...); ``null`` lets
            transformers choose (``sdpa`` where the model supports it).
        gradient_checkpointing: trade compute for memory on large models.
        freeze_backbone: train only the score head (a linear probe on the SFT features).
        peft_config: LoRA adapters on the backbone (``class_path: peft.LoraConfig`` with its ``init_args``), the
            score head trained in full beside them; checkpoints hold only those, and the export is ``hf/`` (merged, a
            plain model) plus ``hf_adapter/`` (the adapter and the head, for ``peft``). ``null``: full fine-tuning.
        load_in_4bit: load the frozen base weights in 4 bits (QLoRA; needs ``peft_config`` and ``bitsandbytes``;
            CUDA or CPU).
        center_coef: weight of ``mean((r_chosen + r_rejected)^2)``, keeping scores centred (TRL uses 0.01).
        prefix_loss_coef: weight of :func:`~lit_rlhf.functional.reward.prefix_pair_loss`, a Bradley-Terry loss on
            every aligned prefix after the two responses part, for pairs whose row says ``chosen_correct: true``
            (the chosen answer is verified right, as in the arithmetic pairs). 0 disables it.
        shared_prompt_forward: in training, run each pair's prompt once and both responses on its KV cache
            (:func:`~lit_rlhf.models.scoring.shared_prompt_token_scores`): the same scores and gradients as two full
            sequences, with ``P + 2R`` instead of ``2(P + R)`` token positions. Off under ``gradient_checkpointing``
            (no KV cache there). Validation always scores full sequences.
        padding_free: in training, run the batch's real tokens packed into one row
            (:func:`~lit_rlhf.models.scoring.packed_token_scores`): the same scores and gradients, no position
            spent on padding, on any attention kernel (CPU included). With ``shared_prompt_forward`` too, each
            prompt and both its responses are packed once, without KV cache: ``P + 2R`` real tokens per pair, no
            padding. Not with ``gradient_checkpointing``. Validation always scores padded batches.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not on biases and norms).
        betas: AdamW betas.
        warmup_steps: linear warmup steps.
        lr_schedule: ``cosine``, ``linear`` or ``constant`` after warmup, over ``trainer.max_steps``.
        min_lr_ratio: floor of the decay as a fraction of ``learning_rate``.
        adamw_implementation: ``fused`` (one kernel per step, CPU and CUDA; the Hugging Face Trainer's default),
            ``foreach`` or ``for_loop``; ``null`` leaves torch's choice (``foreach`` on CUDA, ``for_loop`` on CPU).
        num_logged_pairs: rows of the sample table written each validation.
        max_nonfinite_steps: a step whose loss or gradient is not finite is skipped (no weight and no optimizer state
            moves; the step still counts for ``max_steps`` and the LR schedule) and counted
            (``train/nonfinite_steps``); this many steps in a row stop the run with an error naming the last one.
            ``null`` never stops.
    """

    def __init__(
        self,
        model_name_or_path: str = "tiny-arithmetic",
        tokenizer_name_or_path: str | None = None,
        pad_token: str | None = None,
        model_config: dict[str, Any] | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
        freeze_backbone: bool = False,
        peft_config: LoraConfig | None = None,
        load_in_4bit: bool = False,
        center_coef: float = 0.0,
        prefix_loss_coef: float = 0.0,
        shared_prompt_forward: bool = False,
        padding_free: bool = False,
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: ScheduleName = "cosine",
        min_lr_ratio: float = 0.0,
        adamw_implementation: AdamWImplementation | None = None,
        num_logged_pairs: int = 8,
        max_nonfinite_steps: int | None = 3,
    ) -> None:
        super().__init__()
        check_reward_options(locals())  # every option value, before any model loads
        adamw_flags(adamw_implementation)  # an unknown name fails here, not at the first step
        self.save_hyperparameters(ignore=["peft_config"])
        self.hparams["peft_config"] = lora_settings(peft_config)
        self.setup_nonfinite_guard({"model": "learning_rate"}, max_nonfinite_steps, "the pairs and their margins")
        quantized = quantized_load(load_in_4bit, model_name_or_path, peft_config)
        source = tokenizer_name_or_path or model_name_or_path
        self.tokenizer = load_tokenizer(source, pad_with_eos=False, trust_remote_code=trust_remote_code)
        ensure_distinct_pad(self.tokenizer, pad_token, source)
        self.model = load_reward_model(
            model_name_or_path,
            self.tokenizer,
            config_overrides={**(model_config or {}), **quantized.load_kwargs},
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
        )
        self.model = quantized.prepare(self.model, gradient_checkpointing)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        if peft_config is not None:
            self.add_adapters(self.model, peft_config, trained_heads=("score",))
        if padding_free:
            check_padding_free(self.model)
        if freeze_backbone:
            head = {id(p) for p in score_head(self.model).parameters()}
            for param in self.model.parameters():
                param.requires_grad_(id(param) in head)
        self.val_chosen = CatMetric()
        self.val_rejected = CatMetric()
        self.val_margin = CatMetric()
        self.val_by_type = torch.nn.ModuleDict()
        self._samples: list[tuple[str, str, str, str, str]] = []

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, last_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores ``(batch,)`` read at each sequence's last real token."""
        return sequence_scores(self.model, input_ids, attention_mask, last_index)

    def _pair_scores(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self(batch["input_ids"], batch["attention_mask"], batch["last_index"])
        num_pairs = len(batch["rows"])
        return scores[:num_pairs], scores[num_pairs:]

    def _shares_prompts(self, batch: dict[str, Any]) -> bool:
        """Whether this training batch runs the prompt once for both responses (see ``shared_prompt_forward``)."""
        return (
            self.hparams.shared_prompt_forward
            and not self.hparams.gradient_checkpointing  # HF turns the KV cache off under gradient checkpointing
            and bool((batch["response_attention_mask"].sum(dim=1) > 0).all())
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        num_pairs = len(batch["rows"])
        coef = self.hparams.prefix_loss_coef
        ids, last, per_token = batch["input_ids"], batch["last_index"], None
        if self._shares_prompts(batch):  # scores at response positions only: what both losses read
            ids, last = batch["response_input_ids"], batch["response_last_index"]
            per_token = shared_prompt_token_scores(
                self.model,
                batch["prompt_input_ids"],
                batch["prompt_attention_mask"],
                ids,
                batch["response_attention_mask"],
                padding_free=self.hparams.padding_free,
            )
        elif self.hparams.padding_free:
            per_token = packed_token_scores(self.model, ids, batch["attention_mask"])
        elif coef:
            per_token = token_scores(self.model, ids, batch["attention_mask"])
        if per_token is None:
            scores = self(ids, batch["attention_mask"], last)
        else:
            scores = per_token[torch.arange(per_token.size(0), device=per_token.device), last]
        chosen, rejected = scores[:num_pairs], scores[num_pairs:]
        loss, stats = bradley_terry_loss(chosen, rejected, batch["margin"], self.hparams.center_coef)
        size = chosen.size(0)
        # The mean over processes: the global batch's loss when every process holds as many pairs.
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        if coef:
            prefix_loss, _ = prefix_pair_loss(
                per_token[:num_pairs],
                per_token[num_pairs:],
                ids[:num_pairs],
                ids[num_pairs:],
                last[:num_pairs],
                last[num_pairs:],
                batch["chosen_correct"],
            )
            self.log("train/prefix_loss", prefix_loss, batch_size=size)
            loss = loss + coef * prefix_loss
        self.log("train/accuracy", stats.accuracy, prog_bar=True, batch_size=size)
        for name in ("margin", "chosen_mean", "chosen_std", "rejected_mean", "rejected_std"):
            self.log(f"train/{_metric_name(name)}", getattr(stats, name), batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=size)
        self.watch_loss(loss, batch_idx)  # checked with the gradients before the optimizer step
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        chosen, rejected = self._pair_scores(batch)
        margin = batch["margin"] if batch["margin"] is not None else torch.zeros_like(chosen)
        self.val_chosen.update(chosen)
        self.val_rejected.update(rejected)
        self.val_margin.update(margin)
        correct = (chosen > rejected).float()
        rows = batch["rows"]
        for pair_type in sorted({row["pair_type"] for row in rows if "pair_type" in row}):
            mask = torch.tensor([row.get("pair_type") == pair_type for row in rows], device=self.device)
            self.lazy_mean_metric(self.val_by_type, pair_type).update(correct[mask])
        room = self.hparams.num_logged_pairs - len(self._samples)
        for i in range(min(room, len(rows))):
            row = rows[i]
            scores = round(chosen[i].item(), 4), round(rejected[i].item(), 4)
            pair_type = str(row.get("pair_type", ""))
            self._samples.append((row["prompt"], row["chosen"], row["rejected"], *scores, pair_type))

    def on_validation_start(self) -> None:
        # One metric per pair type of the whole validation set, created in the same order on every rank: under DDP a
        # rank whose shard lacks a type still joins that metric's sync, and the syncs pair up type by type.
        datamodule = getattr(self.trainer, "datamodule", None)
        for pair_type in sorted({str(ex["row"]["pair_type"]) for ex in _val_examples(datamodule) if _pair_type(ex)}):
            self.lazy_mean_metric(self.val_by_type, pair_type)

    def on_validation_epoch_end(self) -> None:
        chosen, rejected, margin = (m.compute() for m in (self.val_chosen, self.val_rejected, self.val_margin))
        margin = margin if bool(margin.any()) else None
        loss, stats = bradley_terry_loss(chosen, rejected, margin, self.hparams.center_coef)
        self.log("val/loss", loss)
        self.log("val/accuracy", stats.accuracy, prog_bar=True)
        for name in ("margin", "chosen_mean", "chosen_std", "rejected_mean", "rejected_std"):
            self.log(f"val/{_metric_name(name)}", getattr(stats, name))
        self.reset_metrics(self.val_chosen, self.val_rejected, self.val_margin)
        distributed = self.trainer.world_size > 1
        for pair_type, metric in sorted(self.val_by_type.items()):
            if distributed or metric.update_count:  # under DDP every rank syncs every metric, in the same order
                self.log(f"val/accuracy/{pair_type}", metric.compute())
            self.reset_metrics(metric)
        if self._samples and not self.trainer.sanity_checking:
            header = ("prompt", "chosen", "rejected", "r_chosen", "r_rejected", "pair type")
            log_table(self.loggers, "samples/val_pairs", header, self._samples, scalar_step(self.trainer))
        self._samples = []

    def on_train_end(self) -> None:
        """Record the score statistics PPO normalises with (before the HF export callback writes the model)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or getattr(datamodule, "val_dataset", None) is None:
            return
        stats = self.response_score_stats(datamodule.normalization_dataloader())
        setattr(self.model.config, NORMALIZATION_KEY, stats)
        self.print(
            f"Reward normalisation on {stats['num_responses']} held-out responses: "
            f"mean {stats['mean']:.4f}, std {stats['std']:.4f}"
        )

    @torch.no_grad()
    def response_score_stats(self, loader: Any) -> dict[str, float]:
        """Mean and std of the scores of the distinct (prompt, response) sequences in a pair loader.

        Args:
            loader: batches from :class:`~lit_rlhf.data.collate.PairCollator`.

        Returns:
            ``{"mean", "std", "num_responses"}`` over the distinct sequences (both sides of every pair).
        """
        was_training = self.model.training
        self.model.eval()
        seen: set[tuple[int, ...]] = set()
        scores = []
        for batch in loader:
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            batch_scores = self(ids, mask, batch["last_index"].to(self.device))
            for i in range(ids.size(0)):
                key = tuple(ids[i][mask[i].bool()].tolist())
                if key not in seen:
                    seen.add(key)
                    scores.append(batch_scores[i])
        self.model.train(was_training)
        values = torch.stack(scores).double()
        return {"mean": values.mean().item(), "std": values.std(unbiased=False).item(), "num_responses": len(scores)}


def _metric_name(stat: str) -> str:
    """``chosen_mean`` -> ``chosen_reward_mean``; ``margin`` stays."""
    return stat.replace("_mean", "_reward_mean").replace("_std", "_reward_std")


def _val_examples(datamodule: Any) -> list[Any]:
    """The validation examples of ``datamodule`` (empty when it has none loaded)."""
    examples = getattr(datamodule, "val_dataset", None) if datamodule is not None else None
    return list(examples) if examples is not None else []


def _pair_type(example: Any) -> bool:
    """Whether a validation example carries a ``pair_type`` (the arithmetic pairs do)."""
    row = example.get("row") if isinstance(example, dict) else None
    return isinstance(row, dict) and row.get("pair_type") is not None
