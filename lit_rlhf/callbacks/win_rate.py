"""Win rate of the policy being trained against its reference, judged at the end of validations."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from lit_rlhf.errors import ConfigError
from lit_rlhf.evaluation.compare import WinRateResult, win_rate
from lit_rlhf.evaluation.judges import PairwiseJudge
from lit_rlhf.functional.winrate import CIMethod
from lit_rlhf.models.loading import load_causal_lm
from lit_rlhf.strategies import is_fsdp2
from lit_rlhf.tables import log_table, scalar_step


class WinRateCallback(L.Callback):
    """At the end of every ``every_n_validations``-th validation (never the sanity check), the greedy responses of
    ``pl_module.model`` and of the reference to the first ``num_prompts`` validation prompts, judged in both orders.

    .. code-block:: yaml

        trainer:
          callbacks:
            - class_path: lit_rlhf.callbacks.win_rate.WinRateCallback
              init_args:
                judge:
                  class_path: lit_rlhf.evaluation.RewardModelJudge
                  init_args: {model_name_or_path: runs/arithmetic/reward/hf}
                num_prompts: 64

    Logs ``val/win_rate``, ``val/win_rate_ci_low``, ``val/win_rate_ci_high``, ``val/tie_rate`` and
    ``val/abstain_rate`` (see :func:`~lit_rlhf.functional.winrate.win_rate_stats`) with the module's ``log``, so at
    the same step as its other ``val/`` metrics, and the sample table ``samples/win_rate`` (the first
    ``num_logged_pairs`` pairs with both verdicts).

    - Prompts: the first ``num_prompts`` examples of ``trainer.datamodule.val_dataset``, with the ``prompt_ids`` the
      DataModule encoded (chat template and all) for generation and the row's ``prompt`` text for the judge; without
      a ``val_dataset``, the first batches of the validation dataloader.
    - Reference: ``pl_module.reference`` (PPO; GRPO with ``beta > 0``). A module without one (GRPO with ``beta: 0``,
      or SFT) gets one loaded once from its ``policy_name_or_path`` (or ``model_name_or_path``) hyperparameter with
      its ``model_config``, kept in this callback, outside the module's state: never trained, never checkpointed.
      (For the built-in untrained ``tiny-arithmetic`` name that is a fresh random model, not the starting one.)
    - The judge and the reference are moved to the module's device before each evaluation. The judge is not a
      ``torch.nn.Module`` child of anything: checkpoints hold only this callback's validation counter (so
      ``every_n_validations`` keeps its rhythm after a resume).
    - Data parallel (DDP): only global rank 0 generates, judges and logs (``rank_zero_only=True``: the metrics are
      not available for checkpoint monitoring); the other ranks wait at the next collective. This needs a model
      that is whole on rank 0 and an evaluation shorter than the process group's timeout, so it is refused under
      FSDP2 (evaluate the exported ``hf/`` with ``lit-rlhf winrate`` after training instead).

    Args:
        judge: a :class:`~lit_rlhf.evaluation.judges.PairwiseJudge` (``class_path`` in YAML).
        num_prompts: validation prompts judged (fewer if the validation set is smaller).
        every_n_validations: judge at every n-th validation.
        max_new_tokens: response length; ``None`` = the module's ``max_new_tokens`` hyperparameter (else 64).
        batch_size: prompts per generation batch; ``None`` = the DataModule's ``eval_batch_size`` (else all).
        num_logged_pairs: rows of the ``samples/win_rate`` table.
        confidence, ci_method, num_resamples, seed: the interval (see
            :func:`~lit_rlhf.functional.winrate.win_rate_stats`).

    Attributes:
        last_result: the latest :class:`~lit_rlhf.evaluation.compare.WinRateResult` (on rank 0), with every pair.
    """

    def __init__(
        self,
        judge: PairwiseJudge,
        num_prompts: int = 64,
        every_n_validations: int = 1,
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
        num_logged_pairs: int = 4,
        confidence: float = 0.95,
        ci_method: CIMethod = "bootstrap",
        num_resamples: int = 10_000,
        seed: int = 0,
    ) -> None:
        if num_prompts < 1 or every_n_validations < 1:
            raise ValueError(
                f"num_prompts and every_n_validations must be >= 1, got {num_prompts} and {every_n_validations}"
            )
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 or null, got {max_new_tokens}")
        if not isinstance(judge, PairwiseJudge):
            raise TypeError(f"judge must be a lit_rlhf.evaluation.PairwiseJudge, got {type(judge).__name__}")
        self.judge = judge
        self.num_prompts = num_prompts
        self.every_n_validations = every_n_validations
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.num_logged_pairs = num_logged_pairs
        self.interval = {"confidence": confidence, "ci_method": ci_method, "num_resamples": num_resamples, "seed": seed}
        self.validations = 0
        self.last_result: WinRateResult | None = None
        self._reference: torch.nn.Module | None = None  # a plain attribute: only loaded when the module has none
        # The reference is frozen and answers greedily: its responses to the same prompts are generated once.
        self._reference_responses: tuple[tuple, list[str]] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(judge=getattr(self.judge, "name", type(self.judge).__name__))

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))

    # -- the reference ---------------------------------------------------------------------------------------------

    @staticmethod
    def module_reference(pl_module: L.LightningModule) -> torch.nn.Module | None:
        """The module's own frozen reference, or ``None`` when it has none (e.g. GRPO with ``beta: 0``)."""
        try:
            return pl_module.reference
        except (AttributeError, RuntimeError):
            return None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if is_fsdp2(trainer.strategy):
            raise ConfigError(
                "WinRateCallback generates on rank 0 alone, which needs the whole policy there; under FSDP2 it is "
                "sharded over the processes: remove the callback and compare the exported hf/ folder after training "
                "with `lit-rlhf winrate`"
            )
        for name in ("model", "tokenizer"):
            if getattr(pl_module, name, None) is None:
                raise TypeError(f"WinRateCallback needs a module with a `{name}` (a lit_rlhf module)")
        if trainer.is_global_zero and self._reference is None and self.module_reference(pl_module) is None:
            self._reference = self.load_reference(pl_module)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning has moved the module back to the CPU by now; the judge and a reference of our own follow it, so
        # they hold no accelerator memory after the run.
        with torch.inference_mode(False):
            self.judge.to(pl_module.device)
            if self._reference is not None:
                self._reference.to(pl_module.device)

    @staticmethod
    def load_reference(pl_module: L.LightningModule) -> torch.nn.Module:
        """The reference as the module loads its policy: from ``policy_name_or_path`` (or ``model_name_or_path``)
        with the module's tokenizer and ``model_config``; frozen, in eval mode, on the CPU."""
        hparams = pl_module.hparams
        path = hparams.get("policy_name_or_path") or hparams.get("model_name_or_path")
        if not path:
            raise ValueError(
                f"WinRateCallback: {type(pl_module).__name__} has no reference model and no policy_name_or_path "
                "hyperparameter to load one from"
            )
        with torch.inference_mode(False):
            model = load_causal_lm(path, pl_module.tokenizer, config_overrides=hparams.get("model_config")).eval()
        return model.requires_grad_(False)

    # -- prompts ---------------------------------------------------------------------------------------------------

    def validation_prompts(self, trainer: L.Trainer) -> tuple[list[str], list[list[int]]]:
        """The first ``num_prompts`` validation prompts: texts (for the judge) and the policy's prompt ids.

        Raises:
            ValueError: no validation data, or examples without a ``prompt`` text and prompt ids.
        """
        dataset = getattr(getattr(trainer, "datamodule", None), "val_dataset", None)
        if dataset is not None and len(dataset) > 0:
            examples = [dataset[i] for i in range(min(self.num_prompts, len(dataset)))]
            if all(isinstance(ex, dict) and "prompt_ids" in ex and "prompt" in ex.get("row", {}) for ex in examples):
                return [ex["row"]["prompt"] for ex in examples], [list(ex["prompt_ids"]) for ex in examples]
        loaders = trainer.val_dataloaders
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        prompts: list[str] = []
        ids: list[list[int]] = []
        for batch in loaders if loaders is not None else ():
            if not isinstance(batch, dict) or not {"rows", "prompt_input_ids", "prompt_attention_mask"} <= set(batch):
                raise ValueError(
                    "WinRateCallback needs validation examples with prompt ids and a 'prompt' text: a DataModule's "
                    "val_dataset of {prompt_ids, row} or batches with rows, prompt_input_ids and prompt_attention_mask"
                )
            for row, row_ids, mask in zip(batch["rows"], batch["prompt_input_ids"], batch["prompt_attention_mask"]):
                prompts.append(row["prompt"])
                ids.append(row_ids[mask.bool()].tolist())
                if len(prompts) == self.num_prompts:
                    return prompts, ids
        if not prompts:
            raise ValueError("WinRateCallback: there are no validation prompts to judge")
        return prompts, ids

    # -- the evaluation --------------------------------------------------------------------------------------------

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        if self.validations % self.every_n_validations or not trainer.is_global_zero:
            return
        result = self.evaluate(trainer, pl_module)
        for name, value in (
            ("val/win_rate", result.win_rate),
            ("val/win_rate_ci_low", result.ci_low),
            ("val/win_rate_ci_high", result.ci_high),
            ("val/tie_rate", result.tie_rate),
            ("val/abstain_rate", result.abstain_rate),
        ):
            pl_module.log(name, value, rank_zero_only=True)
        if self.num_logged_pairs > 0:
            step = scalar_step(trainer)  # beside the val/win_rate scalars
            headline, columns, rows = self.sample_table(result)
            log_table(pl_module.loggers, "samples/win_rate", columns, rows, step, headline=headline)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> WinRateResult:
        """Generate, judge both orders and keep the result in :attr:`last_result`."""
        prompts, prompt_ids = self.validation_prompts(trainer)
        reference = self.module_reference(pl_module)
        with torch.inference_mode(False):  # moved weights stay normal tensors, not inference-mode ones
            if reference is None:
                if self._reference is None:
                    self._reference = self.load_reference(pl_module)
                reference = self._reference.to(pl_module.device)
            self.judge.to(pl_module.device)
        max_new_tokens = self.max_new_tokens or pl_module.hparams.get("max_new_tokens") or 64
        batch_size = self.batch_size or getattr(trainer.datamodule, "eval_batch_size", None) or len(prompts)
        key = (tuple(map(tuple, prompt_ids)), max_new_tokens)
        cached = self._reference_responses
        self.last_result = win_rate(
            pl_module.model,
            reference,
            prompts,
            self.judge,
            max_new_tokens,
            batch_size,
            tokenizer=pl_module.tokenizer,
            prompt_ids=prompt_ids,
            reference_responses=cached[1] if cached is not None and cached[0] == key else None,
            **self.interval,
        )
        self._reference_responses = (key, [p.reference_response for p in self.last_result.pairs])
        return self.last_result

    def sample_table(self, result: WinRateResult) -> tuple[str, tuple[str, ...], list[tuple[Any, ...]]]:
        """A line with the figures, the column names and the first ``num_logged_pairs`` pairs as rows."""
        rows = [
            (
                p.prompt,
                p.policy_response,
                p.reference_response,
                p.verdict_policy_as_a or "-",
                p.verdict_policy_as_b or "-",
                p.score,
            )
            for p in result.pairs[: self.num_logged_pairs]
        ]
        headline = (
            f"win rate {result.win_rate:.3f} [{result.ci_low:.3f}, {result.ci_high:.3f}] over {result.num_pairs} "
            f"prompts: {result.wins} wins, {result.ties} ties, {result.losses} losses"
        )
        columns = ("prompt", "policy", "reference", "verdict, policy as A", "verdict, policy as B", "score")
        return headline, columns, rows
