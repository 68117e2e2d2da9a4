"""Direct preference optimisation (DPO, IPO, hinge, robust, SimPO) of a causal LM on preference pairs."""

from __future__ import annotations

import copy
import gc
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import CatMetric

from lit_rlhf.errors import ConfigError
from lit_rlhf.functional.dpo import (
    REFERENCE_FREE_LOSSES,
    DPOLossType,
    DPOStats,
    dpo_loss,
    dpo_losses,
)
from lit_rlhf.functional.schedules import ScheduleName
from lit_rlhf.generation import generate_for_batch
from lit_rlhf.models.adapters import AdaptersDisabled, LoraConfig, lora_settings, quantized_load
from lit_rlhf.models.loading import ModelLoadError, load_causal_lm, load_tokenizer
from lit_rlhf.models.padding_free import check_padding_free
from lit_rlhf.modules.base import AdamWImplementation, adamw_flags
from lit_rlhf.modules.checks import check_dpo_options
from lit_rlhf.modules.dpo_logps import pair_response_logps
from lit_rlhf.modules.dpo_reference import (
    MissingReferenceError,
    ReferenceLogpCache,
    pair_keys,
    precompute_reference_logps,
)
from lit_rlhf.modules.nonfinite import GuardedModule
from lit_rlhf.sharding import is_sharded
from lit_rlhf.tables import log_table, scalar_step

STAT_TAGS = {
    "chosen_reward": "rewards/chosen",
    "rejected_reward": "rewards/rejected",
    "margin": "rewards/margins",
    "accuracy": "rewards/accuracies",
    "chosen_logps": "logps/chosen",
    "rejected_logps": "logps/rejected",
}
"""TensorBoard tag (after ``train/`` or ``val/``) of each :class:`~lit_rlhf.functional.dpo.DPOStats` field."""

__all__ = ["STAT_TAGS", "DPOModule", "pair_response_logps"]


class DPOModule(GuardedModule):
    """Direct preference optimisation of a causal LM (the SFT export) on {prompt, chosen, rejected} pairs.

    Each step computes the summed response log-probabilities of both answers of every pair under the policy and under
    a frozen reference, and minimises :func:`~lit_rlhf.functional.dpo.dpo_loss` (``loss_type``: ``sigmoid`` DPO,
    cDPO with ``label_smoothing``, ``robust``, ``hinge``, ``ipo``, or the reference-free ``simpo``). The reference is
    a copy of the starting weights (or ``reference_name_or_path``), kept out of checkpoints and made again from its
    source; with ``peft_config`` it is the policy with its adapters switched off (no second copy); ``simpo`` loads
    none. With ``precompute_ref_logps`` the reference scores every training and validation pair once before training
    and is then dropped from memory.

    Logs ``train/loss``, ``train/rewards/chosen``, ``train/rewards/rejected``, ``train/rewards/margins``,
    ``train/rewards/accuracies`` (DPO's implicit rewards ``beta * (log pi - log ref)``), ``train/logps/chosen``,
    ``train/logps/rejected``, ``train/lr``, ``train/nonfinite_steps`` each step, and the same under ``val/`` over
    the whole validation set; at validation the policy also answers the distinct validation prompts greedily, and
    the DataModule's gold metrics (arithmetic: ``val/exact_match``, ``val/graded_score``) and ``val/eos_rate`` are
    logged with a sample table (prompt, chosen, rejected, both implicit rewards, the greedy answer).

    Args:
        model_name_or_path: the SFT export (e.g. ``runs/arithmetic/sft/hf``), a hub name, or ``tiny-arithmetic``
            (a fresh tiny model, for tests).
        tokenizer_name_or_path: where the tokenizer lives if not beside the model.
        reference_name_or_path: the frozen reference; ``null``: a frozen copy of the policy's starting weights. Its
            tokenizer must be the policy's. Not with ``peft_config``; unused by ``simpo``.
        model_config: config overrides (``LlamaConfig`` fields for the built-in model, else ``from_pretrained``
            keyword arguments), applied to the policy and the reference.
        dtype: weight dtype; keep ``null`` and use ``trainer.precision: bf16-mixed`` for mixed precision.
        trust_remote_code: passed to ``from_pretrained``.
        attn_implementation: attention kernel; ``null`` lets transformers choose.
        gradient_checkpointing: trade compute for memory on large models.
        peft_config: LoRA adapters (``class_path: peft.LoraConfig``): only they train, the reference is the policy
            with its adapters off, and the export is ``hf/`` (merged) plus ``hf_adapter/``. ``null``: full
            fine-tuning.
        load_in_4bit: load the frozen base weights in 4 bits (QLoRA; needs ``peft_config`` and ``bitsandbytes``).
        beta: inverse temperature of the implicit reward (the IPO regulariser for ``ipo``); > 0.
        loss_type: ``sigmoid``, ``ipo``, ``hinge``, ``robust`` or ``simpo``.
        label_smoothing: assumed rate of flipped preferences, in ``[0, 0.5)``; ``sigmoid`` (cDPO) and ``robust``
            only.
        simpo_gamma: target reward margin of ``simpo``.
        precompute_ref_logps: score every training and validation pair with the reference once at the start of
            fit (eval mode, no grad), keyed by the pairs' token ids, then drop the reference from memory. A resumed
            run computes them again (the same values).
        padding_free: each pair's prompt once and both responses packed into one row, no padding, the LM head only
            on response positions (training, validation and the reference alike); the same values up to float
            rounding. Not with ``gradient_checkpointing``.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not on biases and norms).
        betas: AdamW betas.
        warmup_steps: linear warmup steps.
        lr_schedule: ``cosine``, ``linear`` or ``constant`` after warmup, over ``trainer.max_steps``.
        min_lr_ratio: floor of the decay as a fraction of ``learning_rate``.
        adamw_implementation: ``fused``, ``foreach`` or ``for_loop``; ``null`` leaves torch's choice.
        max_new_tokens: length of the greedy validation answers.
        generate_val_batches: validation batches whose prompts are answered (gold metrics, samples); ``null`` =
            all, 0 = none.
        num_logged_samples: rows of the sample table written each validation.
        max_nonfinite_steps: a step whose loss or gradient is not finite is skipped and counted
            (``train/nonfinite_steps``); this many in a row stop the run. ``null`` never stops.
    """

    def __init__(
        self,
        model_name_or_path: str = "tiny-arithmetic",
        tokenizer_name_or_path: str | None = None,
        reference_name_or_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
        peft_config: LoraConfig | None = None,
        load_in_4bit: bool = False,
        beta: float = 0.1,
        loss_type: DPOLossType = "sigmoid",
        label_smoothing: float = 0.0,
        simpo_gamma: float = 0.5,
        precompute_ref_logps: bool = False,
        padding_free: bool = False,
        learning_rate: float = 1e-6,
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
        check_dpo_options(locals())  # every option value, before any model loads
        adamw_flags(adamw_implementation)
        self.save_hyperparameters(ignore=["peft_config"])
        self.hparams["peft_config"] = lora_settings(peft_config)
        self.setup_nonfinite_guard({"model": "learning_rate"}, max_nonfinite_steps, "the pairs")
        quantized = quantized_load(load_in_4bit, model_name_or_path, peft_config)
        source = tokenizer_name_or_path or model_name_or_path
        self.tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
        load = {
            "dtype": dtype,
            "trust_remote_code": trust_remote_code,
            "attn_implementation": attn_implementation,
        }
        overrides = model_config or {}
        self.model = load_causal_lm(
            model_name_or_path, self.tokenizer, config_overrides={**overrides, **quantized.load_kwargs}, **load
        )
        self._frozen: dict[str, torch.nn.Module] = {}  # a plain dict: not submodules, so not in the checkpoint
        if loss_type not in REFERENCE_FREE_LOSSES and peft_config is None:
            if reference_name_or_path is None:  # the starting weights, copied before any training
                reference = copy.deepcopy(self.model)
            else:
                self._check_reference_tokenizer(reference_name_or_path, trust_remote_code)
                reference = load_causal_lm(reference_name_or_path, self.tokenizer, config_overrides=overrides, **load)
            self._frozen["reference"] = reference.eval().requires_grad_(False)
        self.model = quantized.prepare(self.model, gradient_checkpointing)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        if peft_config is not None:
            self.add_adapters(self.model, peft_config)
            if loss_type not in REFERENCE_FREE_LOSSES:
                self._frozen["reference"] = AdaptersDisabled(self.model)
        if padding_free:
            check_padding_free(self.model)
        self.ref_cache: ReferenceLogpCache | None = None
        self.val_logps = torch.nn.ModuleDict({name: CatMetric() for name in _VAL_COLUMNS})
        self.val_gold = torch.nn.ModuleDict()
        self._val_answers: dict[str, str] = {}  # prompt -> greedy answer, in this validation
        self._samples: list[tuple[Any, ...]] = []

    def _check_reference_tokenizer(self, path: str, trust_remote_code: bool) -> None:
        """Refuse a reference whose tokenizer (vocabulary) differs from the policy's."""
        key = "model.init_args.reference_name_or_path"
        try:
            theirs = load_tokenizer(path, trust_remote_code=trust_remote_code).get_vocab()
        except ModelLoadError:
            return  # a folder of weights only: it reads the policy's tokens
        ours = self.tokenizer.get_vocab()
        if theirs != ours:
            raise ConfigError(
                f"{key} {path!r} has another tokenizer ({len(theirs)} tokens) than the policy's ({len(ours)} "
                "tokens): DPO compares the log-probabilities of the same token ids under both models; give a "
                f"reference trained with the policy's tokenizer, or set --{key} null to use the policy's own weights"
            )

    # -- the reference -----------------------------------------------------------------------------------------------

    @property
    def reference(self) -> torch.nn.Module | None:
        """The frozen reference (``None`` for ``simpo`` or after ``precompute_ref_logps`` dropped it)."""
        return self._frozen.get("reference")

    def frozen_models(self) -> list[torch.nn.Module]:
        return list(self._frozen.values())

    def reference_logps(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """``(2 * pairs,)`` summed response log-probabilities under the reference (cached or computed, no grad);
        ``None`` for a reference-free loss."""
        if self.hparams.loss_type in REFERENCE_FREE_LOSSES:
            return None
        if self.ref_cache is not None:
            cached = self.ref_cache.lookup(pair_keys(batch), self.device)
            if cached is not None:
                return cached
        if self.reference is None:
            raise MissingReferenceError(
                "a pair has no precomputed reference log-probabilities (model.init_args.precompute_ref_logps scored "
                "the training and validation pairs of this fit and dropped the reference); set "
                "--model.init_args.precompute_ref_logps false to score new pairs"
            )
        with torch.no_grad():
            return pair_response_logps(self.reference, batch, self.hparams.padding_free)[0]

    def _move_frozen_to_module_device(self) -> None:
        for frozen in self._frozen.values():
            if not is_sharded(frozen):
                frozen.to(self.device)

    def on_fit_start(self) -> None:
        self._move_frozen_to_module_device()
        if self.hparams.precompute_ref_logps and self.reference is not None:
            self._precompute()

    def on_validation_start(self) -> None:
        self._move_frozen_to_module_device()

    def teardown(self, stage: str) -> None:
        self._move_frozen_to_module_device()

    def _precompute(self) -> None:
        """Score every training and validation pair with the reference, then drop it (unless it is the policy)."""
        from lit_rlhf.data.collate import PairCollator

        datamodule = getattr(self.trainer, "datamodule", None)
        datasets = [getattr(datamodule, name, None) for name in ("train_dataset", "val_dataset")]
        datasets = [d for d in datasets if d is not None]
        if not datasets:
            rank_zero_warn(
                "model.init_args.precompute_ref_logps needs a lit_rlhf DataModule (its pairs are scored before "
                "training); without one the reference scores each batch as it comes"
            )
            return
        world_size = self.trainer.world_size

        def gather(values: dict[bytes, float]) -> list[dict[bytes, float]]:
            parts: list[Any] = [None] * world_size
            torch.distributed.all_gather_object(parts, values)
            return parts

        reference = self.reference
        self.ref_cache = precompute_reference_logps(
            lambda batch: pair_response_logps(reference, batch, self.hparams.padding_free)[0],
            datasets,
            PairCollator(self.tokenizer.pad_token_id),
            getattr(datamodule, "eval_batch_size", None) or datamodule.batch_size,
            self.device,
            rank=self.global_rank,
            world_size=world_size,
            gather=gather if world_size > 1 else None,
        )
        if not isinstance(reference, AdaptersDisabled):
            del self._frozen["reference"], reference
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.print(f"Reference log-probabilities precomputed for {len(self.ref_cache)} responses")

    # -- training ----------------------------------------------------------------------------------------------------

    def _loss(
        self, logps: torch.Tensor, counts: torch.Tensor, ref: torch.Tensor | None
    ) -> tuple[torch.Tensor, DPOStats]:
        """:func:`dpo_loss` of ``(2 * pairs,)`` policy and reference log-probabilities, chosen first."""
        num_pairs = logps.size(0) // 2
        return dpo_loss(
            logps[:num_pairs],
            logps[num_pairs:],
            None if ref is None else ref[:num_pairs],
            None if ref is None else ref[num_pairs:],
            **self._loss_options(counts[:num_pairs], counts[num_pairs:]),
        )

    def _loss_options(self, chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor) -> dict[str, Any]:
        """The keyword arguments of :func:`~lit_rlhf.functional.dpo.dpo_losses` from the options and the lengths."""
        hp = self.hparams
        return {
            "beta": hp.beta,
            "loss_type": hp.loss_type,
            "label_smoothing": hp.label_smoothing,
            "chosen_lengths": chosen_lengths,
            "rejected_lengths": rejected_lengths,
            "simpo_gamma": hp.simpo_gamma,
        }

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        ref = self.reference_logps(batch)
        logps, counts = pair_response_logps(self.model, batch, self.hparams.padding_free)
        loss, stats = self._loss(logps, counts, ref)
        size = len(batch["rows"])
        # The mean over processes: the global batch's loss when every process holds as many pairs.
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        for field, tag in STAT_TAGS.items():
            self.log(f"train/{tag}", getattr(stats, field), batch_size=size, prog_bar=field == "accuracy")
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=size)
        self.watch_loss(loss, batch_idx)  # checked with the gradients before the optimizer step
        return loss

    # -- validation --------------------------------------------------------------------------------------------------

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logps, counts = pair_response_logps(self.model, batch, self.hparams.padding_free)
        ref = self.reference_logps(batch)
        ref = torch.zeros_like(logps) if ref is None else ref
        num_pairs = len(batch["rows"])
        columns = {
            "chosen": logps[:num_pairs],
            "rejected": logps[num_pairs:],
            "ref_chosen": ref[:num_pairs],
            "ref_rejected": ref[num_pairs:],
            "chosen_len": counts[:num_pairs],
            "rejected_len": counts[num_pairs:],
        }
        for name, values in columns.items():
            self.val_logps[name].update(values)
        answers: dict[str, str] = {}
        limit = self.hparams.generate_val_batches
        if limit is None or batch_idx < limit:
            answers = self._validate_generations(batch)
        room = self.hparams.num_logged_samples - len(self._samples)
        if room > 0:
            _, chosen_reward, rejected_reward = self._implicit_rewards(columns)
            for i, row in enumerate(batch["rows"][:room]):
                rewards = round(chosen_reward[i].item(), 4), round(rejected_reward[i].item(), 4)
                answer = answers.get(row["prompt"], "")
                self._samples.append((row["prompt"], row["chosen"], row["rejected"], *rewards, answer))

    def _implicit_rewards(self, columns: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-pair :func:`~lit_rlhf.functional.dpo.dpo_losses` (losses, chosen and rejected rewards) of ``columns``."""
        no_ref = self.hparams.loss_type in REFERENCE_FREE_LOSSES
        return dpo_losses(
            columns["chosen"],
            columns["rejected"],
            None if no_ref else columns["ref_chosen"],
            None if no_ref else columns["ref_rejected"],
            **self._loss_options(columns["chosen_len"], columns["rejected_len"]),
        )

    def _validate_generations(self, batch: dict[str, Any]) -> dict[str, str]:
        """Answer the prompts of ``batch`` not answered yet in this validation (greedy) and score them (gold metrics);
        returns every answer of this validation so far, by prompt."""
        rows = batch["rows"]
        keep, seen = [], set(self._val_answers)
        for i, row in enumerate(rows):
            if row["prompt"] not in seen:
                seen.add(row["prompt"])
                keep.append(i)
        if not keep:
            return self._val_answers
        index = torch.tensor(keep, device=batch["prompt_input_ids"].device)
        prompts = {
            "prompt_input_ids": batch["prompt_input_ids"][index],
            "prompt_attention_mask": batch["prompt_attention_mask"][index],
        }
        kept_rows = [rows[i] for i in keep]
        generation, completions = generate_for_batch(self.model, self.tokenizer, prompts, self.hparams.max_new_tokens)
        datamodule = getattr(self.trainer, "datamodule", None)
        scores = datamodule.score_completions(completions, kept_rows) if datamodule is not None else {}
        for name, values in scores.items():
            self.lazy_mean_metric(self.val_gold, name).update(
                torch.tensor(values, dtype=torch.float32, device=self.device)
            )
        self.lazy_mean_metric(self.val_gold, "eos_rate").update(generation.has_eos.float())
        self._val_answers.update((row["prompt"], completion) for row, completion in zip(kept_rows, completions))
        return self._val_answers

    def on_validation_epoch_end(self) -> None:
        columns = {name: metric.compute() for name, metric in self.val_logps.items()}
        no_ref = self.hparams.loss_type in REFERENCE_FREE_LOSSES
        loss, stats = self._loss(
            torch.cat([columns["chosen"], columns["rejected"]]),
            torch.cat([columns["chosen_len"], columns["rejected_len"]]),
            None if no_ref else torch.cat([columns["ref_chosen"], columns["ref_rejected"]]),
        )
        self.log("val/loss", loss, prog_bar=True)
        for field, tag in STAT_TAGS.items():
            self.log(f"val/{tag}", getattr(stats, field))
        self.reset_metrics(*self.val_logps.values())
        for name, metric in self.val_gold.items():
            if metric.update_count:
                self.log(f"val/{name}", metric.compute(), prog_bar=name == "exact_match")
            self.reset_metrics(metric)
        if self._samples and not self.trainer.sanity_checking:
            header = ("prompt", "chosen", "rejected", "reward_chosen", "reward_rejected", "greedy answer")
            log_table(self.loggers, "samples/val_pairs", header, self._samples, scalar_step(self.trainer))
        self._samples = []
        self._val_answers = {}


_VAL_COLUMNS = ("chosen", "rejected", "ref_chosen", "ref_rejected", "chosen_len", "rejected_len")
"""Per-pair values gathered over the whole validation set."""
