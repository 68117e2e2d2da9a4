"""Supervised fine-tuning of a causal LM on {prompt, response} rows."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MeanMetric

from lit_rlhf.functional.padding import length_chunks, pack_rows
from lit_rlhf.functional.schedules import ScheduleName
from lit_rlhf.functional.sft import (
    SFTStats,
    num_target_tokens,
    packed_targets,
    sft_loss,
    supervised_window,
    token_cross_entropy,
)
from lit_rlhf.generation import generate_for_batch
from lit_rlhf.models.adapters import LoraConfig, lora_settings, quantized_load
from lit_rlhf.models.loading import load_causal_lm, load_tokenizer
from lit_rlhf.models.padding_free import check_padding_free
from lit_rlhf.modules.base import AdamWImplementation, adamw_flags
from lit_rlhf.modules.checks import check_sft_options
from lit_rlhf.modules.nonfinite import GuardedModule
from lit_rlhf.rollout import packed_logits_at, takes_logits_to_keep
from lit_rlhf.tables import log_table, scalar_step


class SFTModule(GuardedModule):
    """Next-token cross-entropy on response tokens only (prompt and padding masked with -100).

    Logs ``train/loss`` (progress bar), ``train/perplexity``, ``train/token_accuracy``, ``train/lr``,
    ``train/nonfinite_steps`` (steps skipped for a non-finite loss or gradient: :class:`GuardedModule`); on validation
    ``val/loss``, ``val/perplexity``, ``val/token_accuracy`` (token-weighted over the whole set), greedy samples as a
    sample table (every logger and ``samples.jsonl``: :mod:`lit_rlhf.tables`), and, when the DataModule has a
    verifier, its gold metrics (``val/exact_match``...).

    Args:
        model_name_or_path: ``tiny-arithmetic`` (built-in, no download), a hub name or a ``save_pretrained`` dir.
        tokenizer_name_or_path: where the tokenizer lives if not beside the model.
        model_config: config overrides: ``LlamaConfig`` fields for the built-in model, else ``from_pretrained``
            keyword arguments (e.g. ``{attention_dropout: 0.0}``).
        dtype: weight dtype (``float32``, ``bfloat16``, ``float16``); keep ``null`` and set
            ``trainer.precision: bf16-mixed`` for mixed precision.
        trust_remote_code: passed to ``from_pretrained``.
        attn_implementation: attention kernel (``eager``, ``sdpa``, ``flash_attention_2``, ...); ``null`` lets
            transformers choose (``sdpa`` where the model supports it).
        gradient_checkpointing: trade compute for memory on large models.
        peft_config: LoRA adapters (``class_path: peft.LoraConfig`` with its ``init_args``: ``r``, ``lora_alpha``,
            ``lora_dropout``, ``target_modules`` ...): only they train, checkpoints hold only them, and the export is
            ``hf/`` (merged, a plain model) plus ``hf_adapter/`` (the adapter alone, for ``peft``). ``null``: full
            fine-tuning.
        load_in_4bit: load the frozen base weights in 4 bits (QLoRA; needs ``peft_config`` and ``bitsandbytes``;
            CUDA or CPU).
        length_chunks: run each training batch as up to this many forward passes over rows of similar length,
            each cut to its own longest row (:func:`~lit_rlhf.functional.padding.length_chunks` picks the cuts
            that leave the fewest pad positions). The batch, its loss and its gradient stay the same (up to float
            rounding); only pad positions are skipped. 1 = one pass over the padded batch.
        padding_free: run each training batch as one packed row of its real tokens
            (:func:`~lit_rlhf.models.padding_free.packed_forward`): no position is spent on padding, on any
            attention kernel (CPU included), and the LM head runs only where a response token is predicted; the
            loss and gradient are the batch's (up to float rounding). Not with ``length_chunks > 1`` or
            ``gradient_checkpointing``.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        betas: AdamW betas.
        warmup_steps: linear warmup steps.
        lr_schedule: ``cosine``, ``linear`` or ``constant`` after warmup, over ``trainer.max_steps`` (or the
            estimated number of steps).
        min_lr_ratio: floor of the decay as a fraction of ``learning_rate``.
        adamw_implementation: ``fused`` (one kernel per step, CPU and CUDA; the Hugging Face Trainer's default),
            ``foreach`` or ``for_loop``; ``null`` leaves torch's choice (``foreach`` on CUDA, ``for_loop`` on CPU).
        max_new_tokens: generation length for validation samples.
        generate_val_batches: validation batches to generate for (gold metrics, samples); ``null`` = all, 0 = none.
        num_logged_samples: rows of the sample table written each validation.
        max_nonfinite_steps: a step whose loss or gradient is not finite is skipped (no weight and no optimizer state
            moves; the step still counts for ``max_steps`` and the LR schedule) and counted
            (``train/nonfinite_steps``); this many steps in a row stop the run with an error naming the last one.
            ``null`` never stops.
    """

    def __init__(
        self,
        model_name_or_path: str = "tiny-arithmetic",
        tokenizer_name_or_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
        peft_config: LoraConfig | None = None,
        load_in_4bit: bool = False,
        length_chunks: int = 1,
        padding_free: bool = False,
        learning_rate: float = 2e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: ScheduleName = "cosine",
        min_lr_ratio: float = 0.0,
        adamw_implementation: AdamWImplementation | None = None,
        max_new_tokens: int = 64,
        generate_val_batches: int | None = None,
        num_logged_samples: int = 8,
        max_nonfinite_steps: int | None = 3,
    ) -> None:
        super().__init__()
        check_sft_options(locals())  # every option value, before any model loads
        adamw_flags(adamw_implementation)  # an unknown name fails here, not at the first step
        self.save_hyperparameters(ignore=["peft_config"])
        self.hparams["peft_config"] = lora_settings(peft_config)
        self.setup_nonfinite_guard({"model": "learning_rate"}, max_nonfinite_steps, "the training rows")
        quantized = quantized_load(load_in_4bit, model_name_or_path, peft_config)
        self.tokenizer = load_tokenizer(
            tokenizer_name_or_path or model_name_or_path, trust_remote_code=trust_remote_code
        )
        self.model = load_causal_lm(
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
            self.add_adapters(self.model, peft_config)
        if padding_free:
            check_padding_free(self.model)
        self.val_loss = MeanMetric()
        self.val_token_accuracy = MeanMetric()
        self.val_gold = torch.nn.ModuleDict()
        self._samples: list[tuple[Any, ...]] = []
        self._sample_columns: tuple[str, ...] = ()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, seq_len, vocab)``."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, stats = self._batch_loss(batch)
        size = batch["input_ids"].size(0)
        # The mean over processes: the global batch's token mean when every process holds as many tokens.
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("train/perplexity", stats.loss.exp(), batch_size=size)
        self.log("train/token_accuracy", stats.num_correct / stats.num_tokens.clamp(min=1), batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=size)
        self.watch_loss(loss, batch_idx)  # checked with the gradients before the optimizer step
        return loss

    def _batch_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, SFTStats]:
        """The batch's :func:`sft_loss`: one pass, one packed pass, or ``length_chunks`` passes over its rows."""
        if self.hparams.padding_free:
            return self._packed_batch_loss(batch)
        if self.hparams.length_chunks == 1:
            return self._padded_loss(batch["input_ids"], batch["attention_mask"], batch["labels"])
        mask = batch["attention_mask"]
        if not bool(mask[:, 0].all()):
            raise ValueError("length_chunks needs right-padded batches (every row starting with a real token)")
        chunks = length_chunks(mask.sum(dim=1), self.hparams.length_chunks)
        total = num_target_tokens(batch["labels"])
        loss, num_correct = 0.0, 0
        for rows, width in chunks:  # rows are right-padded: positions past `width` are padding in every row
            ids, mask, labels = (batch[key][rows, :width] for key in ("input_ids", "attention_mask", "labels"))
            chunk_loss, stats = self._padded_loss(ids, mask, labels, normalizer=total)
            loss, num_correct = loss + chunk_loss, num_correct + stats.num_correct
        return loss, SFTStats(loss=loss.detach(), num_tokens=total, num_correct=num_correct)

    def _padded_loss(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        normalizer: torch.Tensor | int | None = None,
    ) -> tuple[torch.Tensor, SFTStats]:
        """:func:`sft_loss` of padded rows ``(batch, seq_len)``, with the LM head only over the trailing positions
        that predict a supervised token (:func:`supervised_window`) where the model takes ``logits_to_keep``
        (Hugging Face decoders do): the positions before the earliest response of the batch cost no
        ``vocab``-wide logits."""
        if not takes_logits_to_keep(self.model):
            return sft_loss(self(input_ids, attention_mask), labels, normalizer=normalizer)
        window = supervised_window(labels)
        logits = self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=window
        ).logits
        return sft_loss(logits, labels[:, -window:], normalizer=normalizer)

    def _packed_batch_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, SFTStats]:
        """:func:`sft_loss` of the batch from one packed pass over its real tokens, with the LM head (and the
        cross-entropy) only at the positions that predict a supervised token, where the model takes
        ``logits_to_keep`` (Hugging Face decoders do): prompt positions cost no ``vocab``-wide logits."""
        layout = pack_rows(batch["attention_mask"])
        positions, targets = packed_targets(batch["labels"], layout)
        logits = packed_logits_at(self.model, batch["input_ids"], batch["attention_mask"], layout, positions)
        return token_cross_entropy(logits, targets)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, stats = self._padded_loss(batch["input_ids"], batch["attention_mask"], batch["labels"])
        tokens = stats.num_tokens.clamp(min=1).float()
        self.val_loss.update(stats.loss, weight=tokens)
        self.val_token_accuracy.update(stats.num_correct / tokens, weight=tokens)
        limit = self.hparams.generate_val_batches
        if limit is None or batch_idx < limit:
            self._validate_generations(batch)

    def _validate_generations(self, batch: dict[str, Any]) -> None:
        generation, completions = generate_for_batch(self.model, self.tokenizer, batch, self.hparams.max_new_tokens)
        rows = batch["rows"]
        datamodule = getattr(self.trainer, "datamodule", None)
        scores = datamodule.score_completions(completions, rows) if datamodule is not None else {}
        for name, values in scores.items():
            self.lazy_mean_metric(self.val_gold, name).update(
                torch.tensor(values, dtype=torch.float32, device=self.device)
            )
        self.lazy_mean_metric(self.val_gold, "eos_rate").update(generation.has_eos.float())
        room = self.hparams.num_logged_samples - len(self._samples)
        for i in range(min(room, len(completions))):
            gold = tuple(float(v[i]) for v in scores.values())  # one column per gold metric, as numbers
            self._samples.append((rows[i]["prompt"], completions[i], rows[i]["response"], *gold))
        self._sample_columns = ("prompt", "generated", "reference", *scores)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/perplexity", loss.exp())
        self.log("val/token_accuracy", self.val_token_accuracy.compute())
        self.reset_metrics(self.val_loss, self.val_token_accuracy)
        for name, metric in self.val_gold.items():
            if metric.update_count:
                self.log(f"val/{name}", metric.compute(), prog_bar=name == "exact_match")
            self.reset_metrics(metric)
        if self._samples and not self.trainer.sanity_checking:
            log_table(self.loggers, "samples/val", self._sample_columns, self._samples, scalar_step(self.trainer))
        self._samples = []
