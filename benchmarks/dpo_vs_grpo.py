"""Offline DPO, iterative (online) DPO with the verifier and GRPO with the verifier at the same training time, on the
arithmetic task, all from the same SFT export: held-out exact-match after ``--budget-s`` training seconds each.

Run with the repository's ``.venv`` (needs ``runs/arithmetic/sft/hf``; offline DPO also needs the labelled pairs,
which it samples and caches under ``runs/arithmetic/labelled_pairs`` on its first run):

    .venv/bin/python benchmarks/dpo_vs_grpo.py --budget-s 300 --threads 2
    .venv/bin/python benchmarks/dpo_vs_grpo.py --budget-s 300 --out docs/benchmarks.md

Each config runs as shipped (``configs/arithmetic/dpo.yaml``, ``online_dpo.yaml``, ``grpo.yaml``) one after the
other, never at the same time, with ``trainer.max_steps`` raised so that the time budget ends the run: the
``TrainTimer`` callback of ``benchmarks/common.py`` stops training when one more step, at the mean step time so far,
would pass ``--budget-s`` training seconds (first batch start to last batch end, less validation). Work done before
the first training step is not counted: offline DPO's reference log-probabilities of every pair (its config
precomputes them) and the sampling and labelling of its pairs (cached before this script runs). Held-out exact-match:
each run's ``hf/`` export, scored by the same code (lit_rlhf's greedy generation over all held-out prompts as one
batch, and its verifier).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import (  # noqa: E402
    greedy_arithmetic,
    held_out_arithmetic,
    lit_versions,
    load_warning,
    machine_line,
    read_config,
    report,
    timed_lit_run,
    use_threads,
)

CONFIGS = {
    "offline DPO (labelled pairs)": ("configs/arithmetic/dpo.yaml", "model_name_or_path", "pairs"),
    "iterative DPO (verifier)": ("configs/arithmetic/online_dpo.yaml", "policy_name_or_path", "rounds"),
    "GRPO (verifier)": ("configs/arithmetic/grpo.yaml", "policy_name_or_path", "iterations"),
}


def exact_match(policy: str, num_val: int, data_seed: int, max_new_tokens: int) -> float:
    """Held-out greedy exact-match of the ``save_pretrained`` folder ``policy``."""
    model, tokenizer, batch = held_out_arithmetic(policy, num_val, data_seed)
    _, right = greedy_arithmetic(model, tokenizer, batch, max_new_tokens)
    return sum(right) / len(right)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="runs/arithmetic/sft/hf", help="SFT export: start of every run")
    parser.add_argument("--budget-s", type=float, default=300.0, help="training seconds per run")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), help="runs to do")
    parser.add_argument("--out", default=None, help="append the table to this markdown file")
    args = parser.parse_args()

    use_threads(args.threads)
    if not os.path.isdir(args.policy):
        sys.exit(f"{args.policy} is missing: run the SFT stage first (see the README)")
    busy = load_warning()
    print(machine_line())
    print(busy, end="")
    rows = []
    with tempfile.TemporaryDirectory(prefix="dpo_vs_grpo_") as tmp:
        for name in args.only:
            config_path, policy_key, unit = CONFIGS[name]
            config = read_config(config_path)
            data_args = config["data"]["init_args"]
            num_val, data_seed = data_args["num_val"], data_args.get("seed", 1234)
            max_new_tokens = config["model"]["init_args"].get("max_new_tokens", 20)
            if not rows:
                before = exact_match(args.policy, num_val, data_seed, max_new_tokens)
                print(f"SFT export held-out exact-match: {before:.1%}", flush=True)
            overrides = [f"--model.init_args.{policy_key}", args.policy, "--trainer.max_steps", "1000000"]
            overrides += ["--trainer.val_check_interval", "1000000", "--trainer.check_val_every_n_epoch", "null"]
            overrides += ["--trainer.num_sanity_val_steps", "0"]
            if data_args.get("labeller_policy"):
                overrides += ["--data.init_args.labeller_policy", args.policy]
            run = timed_lit_run(
                config_path, os.path.join(tmp, f"run_{len(rows)}"), *overrides, budget_s=args.budget_s, min_batches=1
            )
            steps = run["timer"]["batches"]
            per_step = data_args["batch_size"]
            if unit == "pairs":
                amount = f"{steps} steps, {steps * per_step} pairs"
            else:
                answers = config["model"]["init_args"].get("samples_per_prompt") or config["model"]["init_args"].get(
                    "num_generations"
                )
                amount = f"{steps} {unit}, {steps * per_step * answers} sampled answers"
            after = exact_match(os.path.join(run["run_dir"], "hf"), num_val, data_seed, max_new_tokens)
            row = {
                "name": name,
                "config": config_path,
                "train_s": run["timer"]["train_s"],
                "process_s": run["wall"],
                "amount": amount,
                "after": after,
            }
            rows.append(row)
            print(f"{name}: {amount} in {row['train_s']:.0f}s training, exact-match {after:.1%}", flush=True)
    lines = [
        f"| run (config) | training s | process wall s | trained on | held-out exact-match, from {before:.1%} |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} (`{r['config']}`) | {r['train_s']:.0f} | {r['process_s']:.0f} | {r['amount']} "
            f"| {r['after']:.1%} ({(r['after'] - before) * 100:+.1f}) |"
        )
    settings = f"budget: {args.budget_s:.0f} training seconds per run, {args.threads} thread(s), from {args.policy}"
    report(args.out, busy + settings, lit_versions(), "\n".join(lines))


if __name__ == "__main__":
    main()
