"""TRL side of ``benchmarks/sft_arithmetic_trl.py``: TRL's ``SFTTrainer`` on the arithmetic SFT rows, run in TRL's
own virtualenv. Imports only torch, transformers, datasets and trl (no lit_rlhf).

Not meant to be run by hand: the driver writes the inputs and reads the outputs. Inputs in ``--data-dir``:

- ``train.jsonl``: ``{"prompt", "completion", "prompt_ids", "completion_ids"}`` per training row, in TRL's
  prompt-completion format (the completion starts with a space and has no EOS: ``SFTTrainer`` appends it); the ids
  are lit_rlhf's tokenization (completion ids end with EOS), checked against TRL's own;
- ``heldout.jsonl``: ``{"prompt", "prompt_ids", "answer"}`` per held-out prompt.

``--model`` is a ``save_pretrained`` folder with the freshly initialised tiny Llama and its tokenizer (the driver
writes it, so that both systems start from the same weights).

Output, ``--out`` (JSON): versions, the settings TRL resolved, training seconds (``trainer.train()`` only: no model
loading, no dataset tokenization, no evaluation), steps, every metrics dict TRL logged, and the greedy completions
of the held-out prompts after training (the driver scores them with lit_rlhf's verifier). ``--save-model DIR`` also
saves the trained model and tokenizer there.

``--probe PATH`` trains nothing: it writes what ``benchmarks/sft_trl_parity.py`` compares (see :func:`probe`).
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
from trl import SFTConfig, SFTTrainer


def check_tokenization(trainer: SFTTrainer, rows: list[dict], completion_only: bool) -> dict:
    """TRL tokenizes the text rows itself; make sure it gives lit_rlhf's ids and supervises the same tokens."""
    dataset = trainer.train_dataset
    checked = 0
    for i, row in enumerate(rows[:500]):
        ids = dataset[i]["input_ids"]
        expected = row["prompt_ids"] + row["completion_ids"]
        if ids != expected:
            raise SystemExit(f"tokenization mismatch on row {i}: TRL {ids}, lit_rlhf {expected}")
        labels = dataset[i].get("labels")
        if completion_only and labels is not None:
            supervised = [t for t in labels if t != -100]
            if supervised != row["completion_ids"]:
                raise SystemExit(f"supervised tokens differ on row {i}: TRL {supervised}, lit_rlhf completion ids")
        checked += 1
    return {"rows_checked": checked, "columns": list(dataset.column_names)}


class SequentialSFTTrainer(SFTTrainer):
    """``SFTTrainer`` that takes the training rows in file order (for :func:`probe`: the same batches as lit_rlhf)."""

    def _get_train_sampler(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


class StopAfter(TrainerCallback):
    """Ends ``trainer.train()`` after ``steps`` optimizer steps, leaving the schedule's length as configured."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_training_stop = True


def build_trainer(
    args: argparse.Namespace,
    train_rows: list[dict],
    tokenizer,
    output_dir: str,
    callbacks: list,
    sequential: bool = False,
    logging_steps: int | None = None,
) -> SFTTrainer:
    """``SFTTrainer`` on ``train_rows`` with the driver's settings, from the weights in ``args.model``."""
    model = AutoModelForCausalLM.from_pretrained(args.model)
    model.config.pad_token_id = tokenizer.pad_token_id

    # lit_rlhf's schedules, in Hugging Face's names: cosine decays to min_lr_ratio, linear to 0 (lit_rlhf: to the
    # floor too), constant keeps the LR after warmup.
    if args.lr_schedule == "cosine":
        scheduler, scheduler_kwargs = "cosine_with_min_lr", {"min_lr_rate": args.min_lr_ratio}
    elif args.lr_schedule == "linear":
        scheduler, scheduler_kwargs = "linear", None
    else:
        scheduler, scheduler_kwargs = "constant_with_warmup", None

    train_dataset = datasets.Dataset.from_dict(
        {"prompt": [r["prompt"] for r in train_rows], "completion": [r["completion"] for r in train_rows]}
    )
    config = SFTConfig(
        output_dir=output_dir,
        completion_only_loss=True,
        packing=False,
        padding_free=False,
        max_length=args.max_length,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        lr_scheduler_type=scheduler,
        lr_scheduler_kwargs=scheduler_kwargs,
        warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm,
        # TRL's BaseConfig defaults to bf16 (when fp16 is unset) and gradient_checkpointing=True; lit_rlhf's SFT
        # config trains in fp32 without checkpointing.
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        seed=args.seed,
        logging_steps=logging_steps or max(1, min(10, args.steps)),
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer_class = SequentialSFTTrainer if sequential else SFTTrainer
    return trainer_class(
        model=model, args=config, train_dataset=train_dataset, processing_class=tokenizer, callbacks=callbacks
    )


def probe(args: argparse.Namespace, train_rows: list[dict], tokenizer) -> None:
    """What ``benchmarks/sft_trl_parity.py`` compares, into ``args.probe`` (``torch.save``): the optimizer's
    parameter groups, the schedule's LR factor of every step, the loss and gradients of the first
    ``--batch-size`` rows at the start weights, and ``--probe-steps`` real training steps on the rows in file order
    (per-step loss, gradient norm and LR, then the weights)."""
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(args, train_rows, tokenizer, output_dir, [], sequential=True)
        trainer.create_optimizer_and_scheduler(num_training_steps=args.steps)
        names = {id(p): n for n, p in trainer.model.named_parameters()}
        groups = [
            {"names": [names[id(p)] for p in g["params"]], **{k: v for k, v in g.items() if k != "params"}}
            for g in trainer.optimizer.param_groups
        ]
        factors = [trainer.lr_scheduler.lr_lambdas[0](step) for step in range(args.steps + 1)]
        batch = next(iter(trainer.get_train_dataloader()))
        model = trainer.model
        model.train()
        num_items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        first = {
            "loss": float(loss),
            "num_items_in_batch": int(num_items) if num_items is not None else None,
            "grads": grads,
            "input_ids": batch["input_ids"].clone(),
            "labels": batch["labels"].clone(),
            "batch_keys": sorted(batch.keys()),
        }
    steps = {}
    if args.probe_steps:
        recorder = LogRecorder()
        with tempfile.TemporaryDirectory() as output_dir:
            trainer = build_trainer(
                args,
                train_rows,
                tokenizer,
                output_dir,
                [recorder, StopAfter(args.probe_steps)],
                sequential=True,
                logging_steps=1,
            )
            trainer.train()
            weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        steps = {"logs": recorder.logs, "weights": weights, "steps": int(trainer.state.global_step)}
    torch.save({"groups": groups, "lr_factors": factors, "first_batch": first, "steps": steps}, args.probe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", required=True, help="save_pretrained folder of the fresh model + tokenizer")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--learning-rate", type=float, required=True)
    parser.add_argument("--weight-decay", type=float, required=True)
    parser.add_argument("--warmup-steps", type=int, required=True)
    parser.add_argument("--lr-schedule", choices=("cosine", "linear", "constant"), required=True)
    parser.add_argument("--min-lr-ratio", type=float, required=True)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--save-model", default=None, help="save the trained model and tokenizer to this folder")
    parser.add_argument("--probe", default=None, help="write the parity probe here instead of training (see probe)")
    parser.add_argument("--probe-steps", type=int, default=0, help="training steps the probe runs in row order")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()

    train_rows = read_jsonl(os.path.join(args.data_dir, "train.jsonl"))
    heldout_rows = read_jsonl(os.path.join(args.data_dir, "heldout.jsonl"))

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.probe:
        probe(args, train_rows, tokenizer)
        return
    with tempfile.TemporaryDirectory() as output_dir:
        recorder = LogRecorder()
        trainer = build_trainer(args, train_rows, tokenizer, output_dir, [recorder])
        config = trainer.args
        tokenization = check_tokenization(trainer, train_rows, completion_only=True)
        train_start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - train_start
        trained = trainer.accelerator.unwrap_model(trainer.model)
        if args.save_model:
            trained.save_pretrained(args.save_model)
            tokenizer.save_pretrained(args.save_model)
        steps = int(trainer.state.global_step)
        optimizer_name = type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__
        last_lr = trainer.lr_scheduler.get_last_lr()[0]

    eval_start = time.perf_counter()
    completions, eos = greedy_completions(
        trained, tokenizer, [r["prompt_ids"] for r in heldout_rows], args.max_new_tokens, args.eval_batch_size
    )
    eval_s = time.perf_counter() - eval_start

    result = {
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "datasets": datasets.__version__,
            "threads": torch.get_num_threads(),
        },
        "settings": {
            "lr_scheduler_type": str(config.lr_scheduler_type),
            "lr_scheduler_kwargs": config.lr_scheduler_kwargs,
            "optimizer": optimizer_name,
            "last_lr": last_lr,
            "bf16": config.bf16,
            "gradient_checkpointing": config.gradient_checkpointing,
            "completion_only_loss": config.completion_only_loss,
            "tokenization": tokenization,
        },
        "steps": steps,
        "samples": steps * args.batch_size,
        "train_s": train_s,
        "eval_s": eval_s,
        "logs": recorder.logs,
        "completions": completions,
        "eos": eos,
    }
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(f"TRL SFT: {steps} steps in {train_s:.1f}s ({steps * args.batch_size / train_s:.1f} samples/s)", flush=True)


if __name__ == "__main__":
    main()
