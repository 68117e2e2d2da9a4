"""TRL side of ``benchmarks/grpo_arithmetic_trl.py``: TRL 1.16's ``GRPOTrainer`` on the arithmetic SFT export with the
verifier's exact match as the reward, run in TRL's own virtualenv. Imports only torch, transformers, datasets and
trl (no lit_rlhf: the reward rule is copied below from ``lit_rlhf/data/arithmetic_task.py``).

Not meant to be run by hand: the driver writes the inputs and reads the outputs. Inputs in ``--data-dir``:

- ``train.jsonl``: ``{"prompt", "prompt_ids", "answer"}`` per training prompt, tokenized by lit_rlhf;
- ``heldout.jsonl``: ``{"prompt", "prompt_ids", "answer"}`` per held-out prompt.

TRL is given the prompt text (``GRPOTrainer`` tokenizes it itself, with ``processing_class(text=prompts)``); the
worker checks first that the tokenizer gives lit_rlhf's ids for every prompt and reports any mismatch.

How lit_rlhf's ``GRPOModule`` settings map onto ``GRPOConfig`` (TRL 1.16):

- one lit_rlhf iteration = ``--prompts-per-batch`` prompts x ``--num-generations`` samples = TRL's generation batch;
- lit_rlhf's ``num_minibatches`` optimizer steps per pass = TRL's ``steps_per_generation``, with
  ``per_device_train_batch_size`` = completions per optimizer step (generation batch / steps_per_generation; TRL
  counts completions there, not prompts) and ``gradient_accumulation_steps = 1``; ``num_iterations`` is the same
  name on both sides; so TRL's ``max_steps`` = iterations x steps_per_generation x num_iterations;
- ``loss_averaging: token`` = ``loss_type="bnpo"`` (token mean over the optimizer step's own completions);
  ``"dapo"`` divides by the generation batch's tokens / steps_per_generation instead, ``"grpo"`` = ``sequence``.

Output, ``--out`` (JSON): versions, the settings TRL resolved, training seconds (``trainer.train()`` only: no model
loading, no evaluation; and the first-step-begin to last-step-end part of it), completions sampled, every metrics
dict TRL logged, the first reward-function calls' (completion, answer, reward) for the driver to re-check with
lit_rlhf's verifier, the tokenization check, and the greedy completions of the held-out prompts before and after
training (the driver scores them with lit_rlhf's verifier).
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
from trl import GRPOConfig, GRPOTrainer


def exact_match(completion: str, answer: str) -> float:
    """lit_rlhf's ``arithmetic_task.exact_match``, copied: 1.0 if the completion lists exactly the reference terms
    (whitespace-insensitive), else 0.0."""
    return float(completion.split() == answer.split())


class VerifierReward:
    """TRL reward function (``reward_func(prompts, completions, **dataset_columns)``): the verifier's exact match,
    ``1`` or ``0``, as lit_rlhf's ``ArithmeticVerifierReward(metric="exact_match")``. Counts the completions it
    scores and keeps the first ``keep`` (completion, answer, reward) for the driver's cross-check."""

    __name__ = "arithmetic_verifier"  # TRL logs rewards/<__name__>/mean

    def __init__(self, keep: int = 512) -> None:
        self.keep = keep
        self.completions = 0
        self.samples: list[list] = []

    def __call__(self, prompts, completions, answer, **kwargs) -> list[float]:
        rewards = [exact_match(c, a) for c, a in zip(completions, answer, strict=True)]
        self.completions += len(completions)
        room = self.keep - len(self.samples)
        if room > 0:
            self.samples += [[c, a, r] for c, a, r in zip(completions[:room], answer[:room], rewards[:room])]
        return rewards


class NumericLogRecorder(LogRecorder):
    """``LogRecorder`` that skips values TRL logs as ``None`` (a metric with no valid value in the window)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        numeric = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float)) or hasattr(v, "item")}
        return super().on_log(args, state, control, logs=numeric, **kwargs)


class StepClock(TrainerCallback):
    """``time.perf_counter()`` at the first optimizer step's begin and at the last one's end."""

    def __init__(self) -> None:
        self.first_begin: float | None = None
        self.last_end: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_begin is None:
            self.first_begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.last_end = time.perf_counter()


def check_tokenization(tokenizer, rows: list[dict]) -> dict:
    """``GRPOTrainer`` tokenizes the prompt text (``processing_class(text=prompts)``): compare with lit_rlhf's ids."""
    ids = tokenizer(text=[r["prompt"] for r in rows])["input_ids"]
    bad = [i for i, (got, row) in enumerate(zip(ids, rows, strict=True)) if got != row["prompt_ids"]]
    first = None
    if bad:
        row = rows[bad[0]]
        first = {"prompt": row["prompt"], "trl": ids[bad[0]], "lit_rlhf": row["prompt_ids"]}
        print(f"WARNING: {len(bad)} of {len(rows)} prompts tokenize differently in TRL: {first}", flush=True)
    return {"rows_checked": len(rows), "mismatches": len(bad), "first_mismatch": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--policy", required=True, help="SFT export")
    parser.add_argument("--iterations", type=int, required=True, help="generation batches to train on")
    parser.add_argument("--prompts-per-batch", type=int, required=True, help="prompts per generation batch")
    parser.add_argument("--num-generations", type=int, required=True)
    parser.add_argument(
        "--num-minibatches", type=int, required=True, help="optimizer steps per pass (TRL: steps_per_generation)"
    )
    parser.add_argument("--num-iterations", type=int, default=1, help="passes over each generation batch")
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--temperature", type=float, required=True)
    parser.add_argument("--learning-rate", type=float, required=True)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=0.0)
    parser.add_argument("--epsilon", type=float, default=0.2)
    parser.add_argument("--loss-type", choices=("bnpo", "dapo", "grpo"), default="bnpo")
    parser.add_argument("--scale-rewards", choices=("group", "none"), default="group")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-batch-size", type=int, default=256)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()

    train_rows = read_jsonl(os.path.join(args.data_dir, "train.jsonl"))
    heldout_rows = read_jsonl(os.path.join(args.data_dir, "heldout.jsonl"))
    heldout_ids = [r["prompt_ids"] for r in heldout_rows]

    tokenizer = AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    tokenization = check_tokenization(tokenizer, train_rows + heldout_rows)

    load_start = time.perf_counter()
    policy = AutoModelForCausalLM.from_pretrained(args.policy)
    policy.config.pad_token_id = tokenizer.pad_token_id
    load_s = time.perf_counter() - load_start

    eval_start = time.perf_counter()
    before, before_eos = greedy_completions(policy, tokenizer, heldout_ids, args.max_new_tokens, args.eval_batch_size)
    eval_before_s = time.perf_counter() - eval_start

    completions_per_batch = args.prompts_per_batch * args.num_generations
    if completions_per_batch % args.num_minibatches:
        raise SystemExit(f"{completions_per_batch} completions per batch do not split into {args.num_minibatches}")
    train_dataset = datasets.Dataset.from_dict(
        {"prompt": [r["prompt"] for r in train_rows], "answer": [r["answer"] for r in train_rows]}
    )
    reward = VerifierReward()
    with tempfile.TemporaryDirectory() as output_dir:
        config = GRPOConfig(
            output_dir=output_dir,
            # completions per optimizer step; the generation batch is this x steps_per_generation
            per_device_train_batch_size=completions_per_batch // args.num_minibatches,
            steps_per_generation=args.num_minibatches,
            gradient_accumulation_steps=1,
            num_generations=args.num_generations,
            num_iterations=args.num_iterations,
            max_steps=args.iterations * args.num_minibatches * args.num_iterations,
            max_completion_length=args.max_new_tokens,
            temperature=args.temperature,
            top_p=1.0,
            top_k=0,
            use_vllm=False,
            beta=args.beta,
            epsilon=args.epsilon,
            loss_type=args.loss_type,
            scale_rewards=args.scale_rewards,
            mask_truncated_completions=False,
            learning_rate=args.learning_rate,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=args.weight_decay,
            max_grad_norm=args.max_grad_norm,
            seed=args.seed,
            # BaseConfig defaults to bf16=True and gradient_checkpointing=True; lit_rlhf trains in fp32 without.
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            use_cpu=not torch.cuda.is_available(),
            logging_steps=args.num_minibatches * args.num_iterations,  # one log per generation batch
            log_completions=False,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        recorder, clock = NumericLogRecorder(), StepClock()
        trainer = GRPOTrainer(
            model=policy,
            reward_funcs=[reward],
            args=config,
            train_dataset=train_dataset,
            processing_class=tokenizer,
            callbacks=[recorder, clock],
        )
        train_start = time.perf_counter()
        trainer.train()
        train_end = time.perf_counter()
        train_s = train_end - train_start
        trained = trainer.accelerator.unwrap_model(trainer.model)
        steps = int(trainer.state.global_step)
        optimizer_name = type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__
        settings = {
            "per_device_train_batch_size": config.per_device_train_batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "steps_per_generation": config.steps_per_generation,
            "generation_batch_size": config.generation_batch_size,
            "num_generations": config.num_generations,
            "num_iterations": config.num_iterations,
            "max_steps": config.max_steps,
            "max_completion_length": config.max_completion_length,
            "temperature": config.temperature,
            "beta": config.beta,
            "epsilon": config.epsilon,
            "loss_type": config.loss_type,
            "scale_rewards": config.scale_rewards,
            "learning_rate": config.learning_rate,
            "lr_scheduler_type": str(config.lr_scheduler_type),
            "weight_decay": config.weight_decay,
            "max_grad_norm": config.max_grad_norm,
            "optimizer": optimizer_name,
            "bf16": config.bf16,
            "gradient_checkpointing": config.gradient_checkpointing,
            "eos_token_ids": list(trainer.eos_token_ids),
            "pad_token_id": tokenizer.pad_token_id,
            # an extra no-grad forward over each generation batch when steps_per_generation > accumulation steps
            "recomputes_old_logprobs": config.gradient_accumulation_steps
            % (config.steps_per_generation * config.num_iterations)
            != 0,
        }

    eval_start = time.perf_counter()
    after, after_eos = greedy_completions(trained, tokenizer, heldout_ids, args.max_new_tokens, args.eval_batch_size)
    eval_after_s = time.perf_counter() - eval_start

    answers = [r["answer"] for r in heldout_rows]
    result = {
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "datasets": datasets.__version__,
            "threads": torch.get_num_threads(),
        },
        "settings": settings,
        "tokenization": tokenization,
        "steps": steps,
        "completions": reward.completions,
        "train_s": train_s,
        "before_first_step_s": (clock.first_begin - train_start) if clock.first_begin else float("nan"),
        "after_last_step_s": (train_end - clock.last_end) if clock.last_end else float("nan"),
        "load_s": load_s,
        "eval_before_s": eval_before_s,
        "eval_after_s": eval_after_s,
        "logs": recorder.logs,
        "reward_samples": reward.samples,
        "before": before,
        "before_eos": before_eos,
        "after": after,
        "after_eos": after_eos,
        # the worker's own rule on the held-out answers; the driver compares with lit_rlhf's verifier
        "own_exact_match": {
            "before": sum(map(exact_match, before, answers)) / len(answers),
            "after": sum(map(exact_match, after, answers)) / len(answers),
        },
    }
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(
        f"TRL GRPO: {reward.completions} completions, {steps} optimizer steps in {train_s:.1f}s "
        f"({reward.completions / train_s:.1f} completions/s)",
        flush=True,
    )


if __name__ == "__main__":
    main()
