"""Win rate of a policy against a reference (any two HF causal LMs) on N prompts, each pair judged in both orders.

python -m lit_rlhf.winrate --policy runs/arithmetic/ppo/hf --reference runs/arithmetic/sft/hf \\
    --prompts arithmetic --judge-reward-model runs/arithmetic/reward/hf
python -m lit_rlhf.winrate --policy runs/tldr/ppo/hf --reference runs/tldr/sft/hf --prompts prompts.jsonl \\
    --judge-llm Qwen/Qwen2.5-0.5B-Instruct --num-prompts 200 --out runs/tldr/winrate.json

Both models answer greedily; the judge (a reward model, or an LLM asked "A or B") compares the two answers once
with the policy's in position A and once in position B. Prints the win rate with its confidence interval, the
wins / ties / losses and a few pairs; --out writes them all (and every pair) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch

from lit_rlhf.evaluation.compare import WinRateResult, win_rate
from lit_rlhf.evaluation.judges import DEFAULT_PAIRWISE_TEMPLATE, LLMPairwiseJudge, PairwiseJudge, RewardModelJudge
from lit_rlhf.models.loading import load_causal_lm, load_tokenizer

ARITHMETIC = "arithmetic"
ARITHMETIC_HELD_OUT = 512
"""The held-out arithmetic problems of the shipped configs (``num_val: 512``), as ``lit_rlhf.evaluate`` uses."""


def read_prompts(source: str, column: str = "prompt", num_prompts: int | None = None, seed: int = 1234) -> list[str]:
    """The first ``num_prompts`` prompts of a file (``.jsonl``, ``.json``, ``.csv``, ``.parquet``) or ``arithmetic``.

    Args:
        source: a data file with a ``column`` of prompt texts, or ``"arithmetic"`` for the embedded held-out prompts
            (the 512 held-out problems of ``ArithmeticDataModule(num_val=512, seed=seed)``).
        column: the prompt column of a file.
        num_prompts: how many, from the start; ``None`` = all.
        seed: the arithmetic split's seed (1234 in the shipped configs).

    Raises:
        DataError: a missing file, or a row without a non-empty ``column`` string (named by file and row).
        ValueError: ``num_prompts`` below 1 or above what ``arithmetic`` holds.
    """
    if num_prompts is not None and num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    if source == ARITHMETIC:
        from lit_rlhf.data.arithmetic_task import split_problems

        if num_prompts is not None and num_prompts > ARITHMETIC_HELD_OUT:
            raise ValueError(f"arithmetic has {ARITHMETIC_HELD_OUT} held-out prompts, asked for {num_prompts}")
        _, held_out = split_problems(ARITHMETIC_HELD_OUT, 1, seed)
        return [problem.prompt for problem in held_out[:num_prompts]]
    from lit_rlhf.data.rows import validate_text_rows
    from lit_rlhf.data.sources import is_local_file, load_rows

    if not is_local_file(source):
        raise ValueError(f"--prompts must be a .jsonl, .json, .csv or .parquet file or {ARITHMETIC!r}, got {source!r}")
    rowset = load_rows(source)
    if num_prompts is not None:
        rowset = rowset.subset(rowset.dataset, range(min(num_prompts, len(rowset))))
    validate_text_rows(rowset, [column])
    return [row[column] for row in rowset.rows]


def build_judge(args: argparse.Namespace) -> PairwiseJudge:
    if args.judge_reward_model:
        return RewardModelJudge(
            args.judge_reward_model,
            batch_size=args.batch_size,
            dtype=args.dtype,
            attn_implementation=args.attn_implementation,
        )
    template = args.template or DEFAULT_PAIRWISE_TEMPLATE
    if args.template and os.path.isfile(args.template):
        with open(args.template, encoding="utf-8") as f:
            template = f.read()
    return LLMPairwiseJudge(
        args.judge_llm,
        template=template,
        system_prompt=args.system_prompt,
        use_chat_template=args.judge_chat_template,
        batch_size=args.batch_size,
        max_new_tokens=args.judge_max_new_tokens,
        dtype=args.dtype,
        attn_implementation=args.attn_implementation,
    )


def load_model(path: str, dtype: str | None, device: str, attn_implementation: str | None = None) -> tuple[Any, Any]:
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, tokenizer, dtype=dtype, attn_implementation=attn_implementation)
    return model.eval().to(device), tokenizer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="HF causal LM folder or hub name (the model under test)")
    parser.add_argument("--reference", required=True, help="HF causal LM folder or hub name (the model to beat)")
    parser.add_argument("--prompts", required=True, help=f"a .jsonl/.json/.csv/.parquet file or {ARITHMETIC!r}")
    parser.add_argument("--prompt-column", default="prompt", help="column of the prompt texts in the file")
    parser.add_argument("--num-prompts", type=int, default=None, help="the first N prompts (default: all)")
    parser.add_argument("--arithmetic-seed", type=int, default=1234, help="seed of the arithmetic held-out split")
    judge = parser.add_mutually_exclusive_group(required=True)
    judge.add_argument("--judge-reward-model", help="reward-model folder: the higher score wins")
    judge.add_argument("--judge-llm", help="causal LM folder or hub name, asked 'A or B' greedily")
    parser.add_argument(
        "--template", help="LLM judge prompt (text or a file) with {prompt}, {response_a}, {response_b}"
    )
    parser.add_argument("--system-prompt", help="LLM judge system message")
    parser.add_argument(
        "--judge-chat-template", action=argparse.BooleanOptionalAction, default=None, help="default: if it has one"
    )
    parser.add_argument("--judge-max-new-tokens", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest policy / reference response")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generation (and judge) batch")
    parser.add_argument(
        "--use-chat-template",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap the prompts in each model's chat template (default: if it has one; never for arithmetic)",
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument(
        "--attn-implementation",
        default=None,
        help="attention kernel of the policy, reference and judge (eager, sdpa, flash_attention_2; default: "
        "transformers' choice)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--ci-method", choices=["bootstrap", "normal"], default="bootstrap")
    parser.add_argument("--num-resamples", type=int, default=10_000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--show", type=int, default=3, help="pairs to print")
    parser.add_argument("--out", help="write the figures and every pair to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> WinRateResult:
    args = parse_args(argv)
    start = time.perf_counter()
    prompts = read_prompts(args.prompts, args.prompt_column, args.num_prompts, args.arithmetic_seed)
    use_chat_template = False if args.prompts == ARITHMETIC else args.use_chat_template
    policy, policy_tokenizer = load_model(args.policy, args.dtype, args.device, args.attn_implementation)
    reference, reference_tokenizer = load_model(args.reference, args.dtype, args.device, args.attn_implementation)
    judge = build_judge(args).to(args.device)
    result = win_rate(
        policy,
        reference,
        prompts,
        judge,
        args.max_new_tokens,
        args.batch_size,
        tokenizer=policy_tokenizer,
        reference_tokenizer=reference_tokenizer,
        use_chat_template=use_chat_template,
        confidence=args.confidence,
        ci_method=args.ci_method,
        num_resamples=args.num_resamples,
        seed=args.seed,
    )
    seconds = time.perf_counter() - start
    judge_name = f"reward model {args.judge_reward_model}" if args.judge_reward_model else f"LLM {args.judge_llm}"
    print(f"{args.policy} vs {args.reference} on {result.num_pairs} prompts ({args.prompts}), judge: {judge_name}")
    print(result.table())
    for pair in result.pairs[: args.show]:
        print(
            f"\nprompt: {pair.prompt!r:.200}\n  policy:    {pair.policy_response!r:.200}\n"
            f"  reference: {pair.reference_response!r:.200}\n"
            f"  verdicts: {pair.verdict_policy_as_a} (policy as A), {pair.verdict_policy_as_b} (policy as B)"
        )
    print(f"\n({seconds:.1f}s)")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        record = {
            "policy": args.policy,
            "reference": args.reference,
            "prompts": args.prompts,
            "judge": {"reward_model": args.judge_reward_model, "llm": args.judge_llm},
            "max_new_tokens": args.max_new_tokens,
            "seconds": seconds,
            **result.to_dict(),
        }
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, ensure_ascii=False)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
