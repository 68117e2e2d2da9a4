"""How much an RL stage could gain on the arithmetic task: pass@k of a policy on the held-out problems it gets wrong.

    .venv/bin/python benchmarks/arithmetic_pass_at_k.py runs/arithmetic/sft/hf
    .venv/bin/python benchmarks/arithmetic_pass_at_k.py runs/arithmetic/sft/hf --samples 128 --temperatures 0.7 1.0

PPO and GRPO learn from the policy's own samples: a problem whose right answer the policy never samples gives them
nothing to reinforce (only what carries over from other problems). So, for the held-out problems that the policy's
greedy answer gets wrong, this draws ``--samples`` answers per problem at each temperature and reports pass@k, the
chance that at least one of k samples is exactly right (the unbiased estimator of Chen et al. 2021 from n samples).

Read ``greedy + wrong share x pass@k`` as the exact-match a stage would reach if it turned every problem that k
samples can solve into a greedy success and no other: a rough ceiling for sharpening what the policy already
samples, not a bound on what learning could do.
"""

from __future__ import annotations

import argparse
import os
import sys
from math import comb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import (  # noqa: E402
    add_held_out_arguments,
    greedy_arithmetic,
    held_out_arithmetic,
    machine_line,
    sample_answers,
    use_threads,
)


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k from ``num_correct`` right answers among ``num_samples`` (Chen et al. 2021)."""
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - comb(num_samples - num_correct, k) / comb(num_samples, k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policy", help="HF policy folder, e.g. runs/arithmetic/sft/hf")
    parser.add_argument("--samples", type=int, default=64, help="samples per wrong problem and temperature")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 1.0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    add_held_out_arguments(parser)
    args = parser.parse_args()
    use_threads(args.threads)
    import torch

    from lit_rlhf.data.arithmetic_task import exact_match

    print(machine_line())
    model, tokenizer, batch = held_out_arithmetic(args.policy, args.num_val, args.data_seed)
    _, greedy_right = greedy_arithmetic(model, tokenizer, batch, args.max_new_tokens)
    answers = [row["answer"] for row in batch["rows"]]
    wrong = [i for i, right in enumerate(greedy_right) if not right]
    greedy_rate = 1 - len(wrong) / len(answers)
    print(f"{args.policy}: greedy exact-match {greedy_rate:.1%}; {len(wrong)} of {len(answers)} held-out wrong")
    ks = [k for k in args.ks if k <= args.samples]
    header = "| temperature | " + " | ".join(f"pass@{k} (wrong problems)" for k in ks)
    header += f" | greedy + wrong share x pass@{ks[-1]} |"
    lines = [header, "|" + "---|" * (len(ks) + 2)]
    ids, mask = batch["prompt_input_ids"][wrong], batch["prompt_attention_mask"][wrong]
    for temperature in args.temperatures:
        torch.manual_seed(args.seed)
        correct = [0] * len(wrong)
        for _ in range(args.samples):
            _, texts = sample_answers(model, tokenizer, ids, mask, args.max_new_tokens, temperature)
            for j, text in enumerate(texts):
                correct[j] += int(exact_match(text, answers[wrong[j]]))
        rates = [sum(pass_at_k(args.samples, c, k) for c in correct) / len(wrong) for k in ks]
        ceiling = greedy_rate + (1 - greedy_rate) * rates[-1]
        solved = sum(c > 0 for c in correct)
        lines.append(f"| {temperature} | " + " | ".join(f"{r:.1%}" for r in rates) + f" | {ceiling:.1%} |")
        print(f"T={temperature}: {solved} of {len(wrong)} wrong problems sampled right at least once in {args.samples}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
