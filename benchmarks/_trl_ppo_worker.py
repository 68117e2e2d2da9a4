"""TRL side of ``benchmarks/ppo_arithmetic_trl.py``: TRL's last ``PPOTrainer`` (``trl.experimental.ppo``) on the
arithmetic exports, run in TRL's own virtualenv. Imports only torch, transformers, datasets and trl (no lit_rlhf).

Not meant to be run by hand: the driver writes the inputs and reads the outputs. Inputs in ``--data-dir``:

- ``train.jsonl``: ``{"prompt", "prompt_ids"}`` per training prompt, tokenized by lit_rlhf;
- ``heldout.jsonl``: ``{"prompt", "prompt_ids", "answer"}`` per held-out prompt.

Output, ``--out`` (JSON): versions, the settings TRL resolved, training seconds (``trainer.train()`` only: no model
loading, no evaluation), episodes, every metrics dict TRL logged, and the greedy completions of the held-out prompts
before and after training (the driver scores them with lit_rlhf's verifier).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from _trl_common import LogRecorder, greedy_completions, read_jsonl  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402


def check_tokenization(tokenizer, rows: list[dict]) -> None:
    """TRL is handed lit_rlhf's prompt ids; make sure its own tokenizer would have produced the same ones."""
    for row in rows:
        ids = tokenizer(row["prompt"])["input_ids"]
        if ids != row["prompt_ids"]:
            raise SystemExit(f"tokenizer mismatch on {row['prompt']!r}: TRL side {ids}, lit_rlhf {row['prompt_ids']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--policy", required=True, help="SFT export: policy and reference")
    parser.add_argument("--reward-model", required=True, help="reward-model export (one-label classifier)")
    parser.add_argument("--value-model", required=True, help="where the value model starts")
    parser.add_argument("--total-episodes", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True, help="prompts per rollout")
    parser.add_argument("--num-mini-batches", type=int, required=True)
    parser.add_argument("--ppo-epochs", type=int, required=True)
    parser.add_argument("--response-length", type=int, required=True)
    parser.add_argument("--temperature", type=float, required=True)
    parser.add_argument("--kl-coef", type=float, required=True)
    parser.add_argument("--missing-eos-penalty", type=float, default=None)
    parser.add_argument("--stop-token", choices=("eos", "none"), default="eos")
    parser.add_argument("--learning-rate", type=float, required=True)
    parser.add_argument("--critic-learning-rate", type=float, default=None)
    parser.add_argument("--vf-coef", type=float, default=0.1)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--lam", type=float, default=0.95)
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

    # TRL's loop expects left-padded prompts; its collator pads with the tokenizer.
    tokenizer = AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise SystemExit("TRL's PPOTrainer masks by `ids != pad_token_id`: the tokenizer needs a pad token != EOS")
    check_tokenization(tokenizer, train_rows[:200] + heldout_rows[:200])

    load_start = time.perf_counter()
    policy = AutoModelForCausalLM.from_pretrained(args.policy)
    ref_policy = AutoModelForCausalLM.from_pretrained(args.policy)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1)
    value_model = AutoModelForSequenceClassification.from_pretrained(args.value_model, num_labels=1)
    for model in (policy, ref_policy, reward_model, value_model):
        model.config.pad_token_id = tokenizer.pad_token_id
    load_s = time.perf_counter() - load_start

    eval_start = time.perf_counter()
    before, before_eos = greedy_completions(policy, tokenizer, heldout_ids, args.response_length, args.eval_batch_size)
    eval_before_s = time.perf_counter() - eval_start

    # PPOTrainer seeds torch itself but not numpy, whose global RNG draws its minibatch permutations (it skips
    # Trainer.__init__, which would call set_seed): seed everything for run-to-run reproducibility.
    transformers.set_seed(args.seed)
    train_dataset = datasets.Dataset.from_dict({"input_ids": [r["prompt_ids"] for r in train_rows]})
    eval_dataset = datasets.Dataset.from_dict({"input_ids": heldout_ids})
    with tempfile.TemporaryDirectory() as output_dir:
        config = PPOConfig(
            output_dir=output_dir,
            # One rollout = per_device_train_batch_size * gradient_accumulation_steps prompts. Keep accumulation at
            # 1: TRL's accelerate accumulation counts micro-batches across minibatch boundaries, so with more than one
            # minibatch it would merge minibatches into one optimizer step.
            per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=1,
            num_mini_batches=args.num_mini_batches,
            num_ppo_epochs=args.ppo_epochs,
            total_episodes=args.total_episodes,
            local_rollout_forward_batch_size=args.batch_size,  # sample the whole rollout at once, as lit_rlhf does
            response_length=args.response_length,
            temperature=args.temperature,
            kl_coef=args.kl_coef,
            kl_estimator="k1",
            missing_eos_penalty=args.missing_eos_penalty,
            stop_token=None if args.stop_token == "none" else args.stop_token,
            learning_rate=args.learning_rate,
            lr_scheduler_type="constant",
            warmup_steps=0,
            vf_coef=args.vf_coef,
            cliprange=0.2,
            cliprange_value=0.2,
            gamma=args.gamma,
            lam=args.lam,
            seed=args.seed,
            # BaseConfig defaults to bf16=True and gradient_checkpointing=True; lit_rlhf trains in fp32 without.
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            use_cpu=not torch.cuda.is_available(),
            num_sample_generations=0,  # no sample tables inside the timed loop
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
        )
        optimizers = (None, None)
        if args.critic_learning_rate is not None:
            # TRL builds one AdamW over policy + value at one learning rate; lit_rlhf has one per model.
            optimizer = torch.optim.AdamW(
                [
                    {"params": list(policy.parameters()), "lr": args.learning_rate},
                    {"params": list(value_model.parameters()), "lr": args.critic_learning_rate},
                ],
                weight_decay=0.0,
            )
            optimizers = (optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
        recorder = LogRecorder()
        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=ref_policy,
            reward_model=reward_model,
            train_dataset=train_dataset,
            value_model=value_model,
            eval_dataset=eval_dataset,
            optimizers=optimizers,
            callbacks=[recorder],
        )
        train_start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - train_start
        trained = trainer.accelerator.unwrap_model(trainer.model).policy
        episodes = int(trainer.state.episode)
        optimizer_name = type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__

    eval_start = time.perf_counter()
    after, after_eos = greedy_completions(trained, tokenizer, heldout_ids, args.response_length, args.eval_batch_size)
    eval_after_s = time.perf_counter() - eval_start

    result = {
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "datasets": datasets.__version__,
            "threads": torch.get_num_threads(),
        },
        "settings": {
            "batch_size": config.batch_size,
            "mini_batch_size": config.mini_batch_size,
            "num_total_batches": config.num_total_batches,
            "num_ppo_epochs": config.num_ppo_epochs,
            "learning_rate": config.learning_rate,
            "critic_learning_rate": args.critic_learning_rate,
            "vf_coef": config.vf_coef,
            "lr_scheduler_type": str(config.lr_scheduler_type),
            "optimizer": optimizer_name,
            "bf16": config.bf16,
            "stop_token_id": trainer.stop_token_id,
        },
        "episodes": episodes,
        "train_s": train_s,
        "load_s": load_s,
        "eval_before_s": eval_before_s,
        "eval_after_s": eval_after_s,
        "logs": recorder.logs,
        "before": before,
        "before_eos": before_eos,
        "after": after,
        "after_eos": after_eos,
    }
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(f"TRL PPO: {episodes} episodes in {train_s:.1f}s ({episodes / train_s:.1f} episodes/s)", flush=True)


if __name__ == "__main__":
    main()
