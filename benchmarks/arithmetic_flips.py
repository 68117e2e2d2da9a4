"""Which held-out arithmetic problems an RL stage turned right, and which it broke: greedy answers of a base policy
against one or more trained ones.

    .venv/bin/python benchmarks/arithmetic_flips.py runs/arithmetic/sft/hf runs/arithmetic/ppo/hf
    .venv/bin/python benchmarks/arithmetic_flips.py runs/arithmetic/sft/hf runs/arithmetic/ppo/hf --show 3

A net gain of g problems can be many fixes and nearly as many breaks (a policy that moves a lot where its reward is
unsure) or g fixes and nothing broken. For each policy after the first this prints its greedy exact-match on the
held-out problems, how many of the base policy's wrong answers it gets right (fixed) and how many of its right
answers it gets wrong (broken), and ``--show`` examples of each.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import (  # noqa: E402
    add_held_out_arguments,
    greedy_arithmetic,
    held_out_arithmetic,
    machine_line,
    use_threads,
)


def greedy_right(policy: str, num_val: int, data_seed: int, max_new_tokens: int) -> tuple[list[bool], list, list]:
    """Per held-out problem: is the greedy answer exactly right; with the rows and the answers themselves."""
    model, tokenizer, batch = held_out_arithmetic(policy, num_val, data_seed)
    texts, right = greedy_arithmetic(model, tokenizer, batch, max_new_tokens)
    return right, batch["rows"], texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="HF policy folder the others are compared with, e.g. runs/arithmetic/sft/hf")
    parser.add_argument("policies", nargs="+", help="HF policy folders, e.g. runs/arithmetic/ppo/hf")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--show", type=int, default=0, help="examples of fixed and broken problems per policy")
    add_held_out_arguments(parser)
    args = parser.parse_args()
    use_threads(args.threads)

    print(machine_line())
    base, rows, base_texts = greedy_right(args.base, args.num_val, args.data_seed, args.max_new_tokens)
    print(f"base {args.base}: {sum(base)} of {len(base)} right ({sum(base) / len(base):.1%})")
    lines = [
        "| policy | exact-match | change (points) | fixed (of the base's wrong) | broken (of the base's right) |",
        "|---|---|---|---|---|",
    ]
    for policy in args.policies:
        right, _, texts = greedy_right(policy, args.num_val, args.data_seed, args.max_new_tokens)
        fixed = [i for i, (b, r) in enumerate(zip(base, right)) if r and not b]
        broken = [i for i, (b, r) in enumerate(zip(base, right)) if b and not r]
        change = 100 * (sum(right) - sum(base)) / len(base)
        wrong_in_base = len(base) - sum(base)
        lines.append(
            f"| {policy} | {sum(right) / len(right):.1%} | {change:+.1f} | {len(fixed)} of {wrong_in_base}"
            f" | {len(broken)} of {sum(base)} |"
        )
        for name, indices in (("fixed", fixed), ("broken", broken)):
            for i in indices[: args.show]:
                print(
                    f"{policy} {name}: {rows[i]['prompt']!r}\n  answer {rows[i]['answer']!r}\n"
                    f"  base   {base_texts[i]!r}\n  policy {texts[i]!r}"
                )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
