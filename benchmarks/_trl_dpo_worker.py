"""TRL side of ``benchmarks/dpo_arithmetic_trl.py``: TRL's ``DPOTrainer`` on lit_rlhf's arithmetic preference pairs,
run in TRL's own virtualenv. Imports only torch, transformers, datasets and trl (no lit_rlhf).

Not meant to be run by hand: the driver writes the inputs and reads the outputs. Inputs in ``--data-dir``:

- ``train.jsonl``: ``{"prompt", "chosen", "rejected", "prompt_ids", "chosen_ids", "rejected_ids"}`` per training
  pair, in TRL's explicit-prompt preference format (responses start with a space and have no EOS: ``DPOTrainer``
  appends it); the ids are lit_rlhf's tokenization (response ids end with EOS), checked against TRL's own;
- ``heldout.jsonl``: ``{"prompt", "prompt_ids", "answer"}`` per held-out prompt (``--mode train``).

Two modes:

- ``--mode loss``: no training. The policy ``--model`` and the reference ``--ref-model`` (two different weights, so
  the log-ratios are not zero), both in eval mode, and the first ``--pairs`` training pairs in file order, cut into
  batches of ``--batch-size`` by TRL's own collator; for each ``--loss-types`` entry, ``DPOTrainer.compute_loss`` on
  every batch and the statistics TRL logs for it (``rewards/*``, ``logps/*``).
- ``--mode train``: ``trainer.train()`` from ``--model`` (the reference a frozen copy of it, loaded by TRL), the
  driver's steps, batch size, optimizer and schedule, fp32, no gradient checkpointing; the time of every optimizer
  step (a callback), then greedy answers to the held-out prompts and the trained weights saved to ``--save-dir``.

Output, ``--out`` (JSON): versions, settings and the mode's results.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings

import datasets
import torch
import transformers
import trl
from _trl_common import LogRecorder, greedy_completions, read_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer


class StepTimes(TrainerCallback):
    """``time.perf_counter()`` at the start of the first optimizer step and at the end of every step."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.ends: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        if self.start is None:
            self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def check_tokenization(trainer: DPOTrainer, rows: list[dict]) -> dict:
    """TRL tokenizes the text pairs itself; make sure it gives lit_rlhf's prompt and response ids."""
    dataset = trainer.train_dataset
    if len(dataset) != len(rows):
        raise SystemExit(f"TRL kept {len(dataset)} of {len(rows)} training pairs (max_length filter?)")
    checked = 0
    for i, row in enumerate(rows[:500]):
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            if dataset[i][key] != row[key]:
                raise SystemExit(
                    f"tokenization mismatch on pair {i} ({key}): TRL {dataset[i][key]}, lit_rlhf {row[key]}"
                )
        checked += 1
    return {"pairs_checked": checked, "columns": list(dataset.column_names)}


def dpo_config(args: argparse.Namespace, output_dir: str, loss_type: str) -> DPOConfig:
    if args.lr_schedule == "cosine":
        scheduler, scheduler_kwargs = "cosine_with_min_lr", {"min_lr_rate": args.min_lr_ratio}
    elif args.lr_schedule == "linear":
        scheduler, scheduler_kwargs = "linear", None
    else:
        scheduler, scheduler_kwargs = "constant_with_warmup", None
    return DPOConfig(
        output_dir=output_dir,
        max_length=args.max_length,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_steps=max(args.steps, 1),
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        adam_beta1=args.adam_betas[0],
        adam_beta2=args.adam_betas[1],
        lr_scheduler_type=scheduler,
        lr_scheduler_kwargs=scheduler_kwargs,
        warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm,
        beta=args.beta,
        loss_type=[loss_type],
        label_smoothing=args.label_smoothing if loss_type == "robust" else 0.0,
        precompute_ref_log_probs=args.precompute_ref_logps,
        # TRL's BaseConfig defaults to bf16 and gradient_checkpointing=True; lit_rlhf trains in fp32 without.
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        seed=args.seed,
        logging_steps=max(1, min(10, args.steps)),
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def text_dataset(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({key: [r[key] for r in rows] for key in ("prompt", "chosen", "rejected")})


def loss_check(args: argparse.Namespace, tokenizer, rows: list[dict]) -> dict:
    """TRL's loss and statistics on fixed batches, policy ``--model`` against reference ``--ref-model``."""
    rows = rows[: args.pairs]
    results = {}
    tokenization = None
    for loss_type in args.loss_types:
        policy = AutoModelForCausalLM.from_pretrained(args.model).eval()
        ref = AutoModelForCausalLM.from_pretrained(args.ref_model).eval()
        with tempfile.TemporaryDirectory() as output_dir:
            trainer = DPOTrainer(
                model=policy,
                ref_model=ref,
                args=dpo_config(args, output_dir, loss_type),
                train_dataset=text_dataset(rows),
                processing_class=tokenizer,
            )
            tokenization = check_tokenization(trainer, rows)
            trainer.model.eval()
            losses, stats = [], []
            for start in range(0, len(rows), args.batch_size):
                examples = [trainer.train_dataset[i] for i in range(start, min(start + args.batch_size, len(rows)))]
                inputs = trainer.data_collator(examples)
                with torch.no_grad():
                    loss = trainer.compute_loss(trainer.model, inputs)
                losses.append(float(loss))
                metrics = trainer._metrics["eval"]
                stats.append({name: metrics[name][-1] for name in metrics if isinstance(metrics[name], list)})
                metrics.clear()
            results[loss_type] = {
                "losses": losses,
                "stats": stats,
                "label_smoothing": trainer.label_smoothing,
                "beta": trainer.beta,
            }
    return {"loss_check": results, "tokenization": tokenization, "batches": len(results[args.loss_types[0]]["losses"])}


def train(args: argparse.Namespace, tokenizer, rows: list[dict]) -> dict:
    """``trainer.train()``, step times, greedy held-out answers, the trained weights in ``--save-dir``."""
    heldout_rows = read_jsonl(os.path.join(args.data_dir, "heldout.jsonl"))
    transformers.set_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    with tempfile.TemporaryDirectory() as output_dir:
        recorder, step_times = LogRecorder(), StepTimes()
        trainer = DPOTrainer(
            model=model,
            args=dpo_config(args, output_dir, args.loss_types[0]),
            train_dataset=text_dataset(rows),
            processing_class=tokenizer,
            callbacks=[recorder, step_times],
        )
        tokenization = check_tokenization(trainer, rows)
        train_start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - train_start
        trained = trainer.accelerator.unwrap_model(trainer.model)
        steps = int(trainer.state.global_step)
        optimizer_name = type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__
        settings = {
            "lr_scheduler_type": str(trainer.args.lr_scheduler_type),
            "optimizer": optimizer_name,
            "optim": str(trainer.args.optim),
            "loss_type": trainer.loss_types,
            "beta": trainer.beta,
            "precompute_ref_log_probs": trainer.precompute_ref_logps,
            "ref_model_kept": trainer.ref_model is not None,
            "bf16": trainer.args.bf16,
            "gradient_checkpointing": trainer.args.gradient_checkpointing,
            "disable_dropout": trainer.args.disable_dropout,
            "tokenization": tokenization,
        }
    completions, eos = greedy_completions(
        trained, tokenizer, [r["prompt_ids"] for r in heldout_rows], args.max_new_tokens, args.eval_batch_size
    )
    if args.save_dir:
        trained.save_pretrained(args.save_dir)
        tokenizer.save_pretrained(args.save_dir)
    return {
        "settings": settings,
        "steps": steps,
        "pairs": steps * args.batch_size,
        "train_s": train_s,
        "step_start": step_times.start,
        "step_ends": step_times.ends,
        "logs": recorder.logs,
        "completions": completions,
        "eos": eos,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("loss", "train"), required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", required=True, help="the policy (the SFT export, or for --mode loss any weights)")
    parser.add_argument("--ref-model", default=None, help="--mode loss: the reference weights")
    parser.add_argument("--pairs", type=int, default=64, help="--mode loss: the first N training pairs")
    parser.add_argument("--loss-types", nargs="+", default=["sigmoid"])
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="for the robust loss")
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--batch-size", type=int, required=True, help="pairs per step")
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--adam-betas", type=float, nargs=2, default=(0.9, 0.999))
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--lr-schedule", choices=("cosine", "linear", "constant"), default="constant")
    parser.add_argument("--min-lr-ratio", type=float, default=0.0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--precompute-ref-logps", action="store_true")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--save-dir", default=None)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-batch-size", type=int, default=256)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    os.environ.setdefault("TQDM_DISABLE", "1")

    rows = read_jsonl(os.path.join(args.data_dir, "train.jsonl"))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    result = loss_check(args, tokenizer, rows) if args.mode == "loss" else train(args, tokenizer, rows)
    result["versions"] = {
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "datasets": datasets.__version__,
        "threads": torch.get_num_threads(),
    }
    with open(args.out, "w") as f:
        json.dump(result, f)
    if args.mode == "train":
        print(f"TRL DPO: {result['steps']} steps in {result['train_s']:.1f}s", flush=True)


if __name__ == "__main__":
    main()
