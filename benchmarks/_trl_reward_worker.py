"""TRL side of ``benchmarks/reward_arithmetic_trl.py``: TRL's ``RewardTrainer`` on lit_rlhf's arithmetic preference
pairs, run in TRL's own virtualenv. Imports only torch, transformers, datasets and trl (no lit_rlhf).

Not meant to be run by hand: the driver writes the inputs and reads the outputs. Inputs in ``--data-dir``:

- ``train.jsonl``: ``{"prompt", "chosen", "rejected", "prompt_ids", "chosen_ids", "rejected_ids"}`` per training
  pair, in TRL's explicit-prompt preference format (responses start with a space and have no EOS: ``RewardTrainer``
  appends it); the ids are lit_rlhf's tokenization (response ids end with EOS), checked against TRL's own;
- ``heldout.jsonl``: the same fields plus ``pair_type`` per held-out pair.

The reward model is ``AutoModelForSequenceClassification.from_pretrained(--model, num_labels=1)`` (the SFT export:
backbone loaded, new scalar head). ``--head-init lit`` re-initialises the head as lit_rlhf's ``load_reward_model``
does (normal, std 1/sqrt(hidden+1)); ``hf`` keeps transformers' init (normal, std ``initializer_range``).

Output, ``--out`` (JSON): versions, settings, training seconds (``trainer.train()`` only), steps, the metrics TRL
logged, and for each held-out pair ``r_chosen`` and ``r_rejected`` from the trained model (scored at the EOS that
ends each response, from lit_rlhf's token ids, right-padded).
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
from _trl_common import LogRecorder, read_jsonl
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer


@torch.no_grad()
def score(model: torch.nn.Module, sequences: list[list[int]], pad: int, batch_size: int) -> list[float]:
    """Scalar reward of each right-padded sequence (transformers pools at the last non-pad token)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in chunk], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk], device=device)
        scores += model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()
    model.train(was_training)
    return scores


def check_tokenization(trainer: RewardTrainer, rows: list[dict]) -> dict:
    """TRL tokenizes the text pairs itself; make sure it gives lit_rlhf's ids (prompt + response + EOS)."""
    dataset = trainer.train_dataset
    if len(dataset) != len(rows):
        raise SystemExit(f"TRL kept {len(dataset)} of {len(rows)} training pairs (max_length filter?)")
    checked = 0
    for i, row in enumerate(rows[:500]):
        for side in ("chosen", "rejected"):
            ids, expected = dataset[i][f"{side}_ids"], row["prompt_ids"] + row[f"{side}_ids"]
            if ids != expected:
                raise SystemExit(f"tokenization mismatch on pair {i} ({side}): TRL {ids}, lit_rlhf {expected}")
        checked += 1
    return {"pairs_checked": checked, "columns": list(dataset.column_names)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", required=True, help="the SFT export the reward model starts from")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True, help="pairs per step")
    parser.add_argument("--learning-rate", type=float, required=True)
    parser.add_argument("--weight-decay", type=float, required=True)
    parser.add_argument("--warmup-steps", type=int, required=True)
    parser.add_argument("--lr-schedule", choices=("cosine", "linear", "constant"), required=True)
    parser.add_argument("--min-lr-ratio", type=float, default=0.0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--center-coef", type=float, default=0.0, help="RewardConfig.center_rewards_coefficient")
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--head-init", choices=("lit", "hf"), default="lit")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-batch-size", type=int, default=256)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()

    train_rows = read_jsonl(os.path.join(args.data_dir, "train.jsonl"))
    heldout_rows = read_jsonl(os.path.join(args.data_dir, "heldout.jsonl"))

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise SystemExit("the reward model needs a pad token distinct from EOS (scores are read at the EOS)")
    transformers.set_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    head = model.score
    if args.head_init == "lit":
        torch.nn.init.normal_(head.weight, std=1.0 / (model.config.hidden_size + 1) ** 0.5)
        if head.bias is not None:
            torch.nn.init.zeros_(head.bias)

    if args.lr_schedule == "cosine":
        scheduler, scheduler_kwargs = "cosine_with_min_lr", {"min_lr_rate": args.min_lr_ratio}
    elif args.lr_schedule == "linear":
        scheduler, scheduler_kwargs = "linear", None
    else:
        scheduler, scheduler_kwargs = "constant_with_warmup", None

    train_dataset = datasets.Dataset.from_dict(
        {key: [r[key] for r in train_rows] for key in ("prompt", "chosen", "rejected")}
    )
    with tempfile.TemporaryDirectory() as output_dir:
        config = RewardConfig(
            output_dir=output_dir,
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
            center_rewards_coefficient=args.center_coef or None,
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
        recorder = LogRecorder()
        trainer = RewardTrainer(
            model=model, args=config, train_dataset=train_dataset, processing_class=tokenizer, callbacks=[recorder]
        )
        tokenization = check_tokenization(trainer, train_rows)
        train_start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - train_start
        trained = trainer.accelerator.unwrap_model(trainer.model)
        steps = int(trainer.state.global_step)
        optimizer_name = type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__

    eval_start = time.perf_counter()
    pad = tokenizer.pad_token_id
    chosen = score(trained, [r["prompt_ids"] + r["chosen_ids"] for r in heldout_rows], pad, args.eval_batch_size)
    rejected = score(trained, [r["prompt_ids"] + r["rejected_ids"] for r in heldout_rows], pad, args.eval_batch_size)
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
            "center_rewards_coefficient": config.center_rewards_coefficient,
            "head_init": args.head_init,
            "bf16": config.bf16,
            "gradient_checkpointing": config.gradient_checkpointing,
            "tokenization": tokenization,
        },
        "steps": steps,
        "pairs": steps * args.batch_size,
        "train_s": train_s,
        "eval_s": eval_s,
        "logs": recorder.logs,
        "r_chosen": chosen,
        "r_rejected": rejected,
    }
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(f"TRL reward: {steps} steps in {train_s:.1f}s ({steps * args.batch_size / train_s:.1f} pairs/s)", flush=True)


if __name__ == "__main__":
    main()
