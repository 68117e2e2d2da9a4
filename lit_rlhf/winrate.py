"""``lit-rlhf winrate``: win rate of a policy against a reference (two HF causal LMs) on N prompts.

Both models answer each prompt greedily; the judge (a reward model, or an LLM asked "A or B") compares the two
answers twice, once with the policy's answer in position A and once in position B, so that a judge's preference for
a position cancels out. Each order scores 1 (policy preferred), 0.5 (no verdict) or 0; a prompt scores the mean of
its two orders and the win rate is the mean over prompts.
Prints the win rate with its confidence interval, the wins / ties / losses and a few pairs; --out writes them all,
with every pair, as JSON.

    lit-rlhf winrate --policy runs/arithmetic/ppo/hf --reference runs/arithmetic/sft/hf \\
        --prompts arithmetic --judge_reward_model runs/arithmetic/reward/hf
    lit-rlhf winrate --policy runs/tldr/ppo/hf --reference runs/tldr/sft/hf --prompts prompts.jsonl \\
        --judge_llm Qwen/Qwen2.5-0.5B-Instruct --num_prompts 200 --out runs/tldr/winrate.json
    lit-rlhf winrate ... --engine vllm      # the policy and the reference answer through a vLLM engine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lit_rlhf.cli import CommandParser, add_policy_option, add_tristate_option
from lit_rlhf.engine_options import add_engine_options, engine_settings

if TYPE_CHECKING:
    from lit_rlhf.evaluation.compare import WinRateResult
    from lit_rlhf.evaluation.judges import PairwiseJudge

ARITHMETIC = "arithmetic"
ARITHMETIC_HELD_OUT = 512
"""The held-out arithmetic problems of the shipped configs (``num_val: 512``), as ``lit-rlhf evaluate`` uses."""


def read_prompts(
    source: str, column: str = "prompt", num_prompts: int | None = None, data_seed: int = 1234
) -> list[str]:
    """The first ``num_prompts`` prompts of a file (``.jsonl``, ``.json``, ``.csv``, ``.parquet``) or ``arithmetic``.

    Args:
        source: a data file with a ``column`` of prompt texts, or ``"arithmetic"`` for the embedded held-out prompts
            (the 512 held-out problems of ``ArithmeticDataModule(num_val=512, seed=data_seed)``).
        column: the prompt column of a file.
        num_prompts: how many, from the start; ``None`` = all.
        data_seed: the arithmetic split's seed, the DataModule's ``seed`` (1234 in the shipped configs).

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
        _, held_out = split_problems(ARITHMETIC_HELD_OUT, 1, data_seed)
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
    """The judge the options name: a :class:`RewardModelJudge` or an :class:`LLMPairwiseJudge`."""
    from lit_rlhf.evaluation.judges import DEFAULT_PAIRWISE_TEMPLATE, LLMPairwiseJudge, RewardModelJudge

    if args.judge_reward_model:
        return RewardModelJudge(
            args.judge_reward_model,
            batch_size=args.batch_size,
            dtype=args.dtype,
            attn_implementation=args.attn_implementation,
        )
    template = args.judge_template or DEFAULT_PAIRWISE_TEMPLATE
    if args.judge_template and os.path.isfile(args.judge_template):
        with open(args.judge_template, encoding="utf-8") as f:
            template = f.read()
    return LLMPairwiseJudge(
        args.judge_llm,
        template=template,
        system_prompt=args.judge_system_prompt,
        use_chat_template=args.judge_chat_template,
        batch_size=args.batch_size,
        max_new_tokens=args.judge_max_new_tokens,
        dtype=args.dtype,
        attn_implementation=args.attn_implementation,
    )


def load_model(path: str, dtype: str | None, device: str, attn_implementation: str | None = None) -> tuple[Any, Any]:
    """A causal LM in eval mode on ``device`` and its tokenizer."""
    from lit_rlhf.models.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, tokenizer, dtype=dtype, attn_implementation=attn_implementation)
    return model.eval().to(device), tokenizer


def build_parser(prog: str = "lit-rlhf winrate") -> CommandParser:
    """The options of ``lit-rlhf winrate``."""
    parser = CommandParser(prog, __doc__)
    add_policy_option(parser, "the model under test: an HF causal-LM folder or hub name")
    parser.add_option(
        "--reference", required=True, metavar="PATH", help="the model to beat: an HF causal-LM folder or hub name"
    )
    parser.add_option(
        "--prompts",
        required=True,
        metavar="SOURCE",
        help=f"a .jsonl/.json/.csv/.parquet file with a prompt column, or {ARITHMETIC!r} (the held-out arithmetic "
        "prompts of the shipped configs)",
    )
    parser.add_option(
        "--prompt_column",
        "--prompt-column",
        default="prompt",
        metavar="NAME",
        help="column of the prompt texts in the file (default: %(default)s)",
    )
    parser.add_option(
        "--num_prompts",
        "--num-prompts",
        type=int,
        default=None,
        metavar="N",
        help="judge the first N prompts (default: all)",
    )
    parser.add_option(
        "--data_seed",
        "--arithmetic-seed",
        type=int,
        default=1234,
        metavar="SEED",
        help=f"with --prompts {ARITHMETIC}: seed of the train/held-out split, as the training config's data seed "
        "(default: %(default)s)",
    )
    judge = parser.add_mutually_exclusive_group(required=True)
    parser.add_option(
        "--judge_reward_model",
        "--judge-reward-model",
        group=judge,
        metavar="PATH",
        help="judge with this reward model: the higher score wins (one of the two judges is required)",
    )
    parser.add_option(
        "--judge_llm",
        "--judge-llm",
        group=judge,
        metavar="PATH",
        help="judge with this causal LM (folder or hub name), asked greedily which answer, A or B, is better",
    )
    parser.add_option(
        "--judge_template",
        "--template",
        default=None,
        metavar="TEXT_OR_FILE",
        help="LLM judge prompt, or a file holding it, with {prompt}, {response_a} and {response_b} "
        "(default: a built-in template asking which response answers the prompt better)",
    )
    parser.add_option(
        "--judge_system_prompt",
        "--system-prompt",
        default=None,
        metavar="TEXT",
        help="LLM judge system message (default: none)",
    )
    add_tristate_option(
        parser,
        "--judge_chat_template",
        "judge-chat-template",
        "wrap the LLM judge's prompt in its chat template; auto: if its tokenizer has one (default: auto)",
    )
    parser.add_option(
        "--judge_max_new_tokens",
        "--judge-max-new-tokens",
        type=int,
        default=4,
        metavar="N",
        help="longest LLM judge verdict, in tokens (default: %(default)s)",
    )
    parser.add_option(
        "--max_new_tokens",
        "--max-new-tokens",
        type=int,
        default=64,
        metavar="N",
        help="longest policy / reference answer, in tokens (default: %(default)s)",
    )
    parser.add_option(
        "--batch_size",
        "--batch-size",
        type=int,
        default=16,
        metavar="N",
        help="prompts per generation (and judge) batch (default: %(default)s)",
    )
    add_tristate_option(
        parser,
        "--use_chat_template",
        "use-chat-template",
        f"wrap the prompts in each model's chat template; auto: if it has one; never with --prompts {ARITHMETIC} "
        "(default: auto)",
    )
    parser.add_option(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="weights of the policy, reference and judge (default: as saved)",
    )
    parser.add_option(
        "--attn_implementation",
        "--attn-implementation",
        default=None,
        metavar="NAME",
        help="attention kernel of the policy, reference and judge: eager, sdpa, flash_attention_2 "
        "(default: transformers' choice)",
    )
    parser.add_option(
        "--device",
        default="auto",
        help="cuda, cpu, cuda:1, ...; auto: a GPU when one is visible; with --engine vllm, the judge's "
        "(default: %(default)s)",
    )
    add_engine_options(parser)
    parser.add_option(
        "--confidence",
        type=float,
        default=0.95,
        metavar="LEVEL",
        help="level of the confidence interval, between 0 and 1 (default: %(default)s)",
    )
    parser.add_option(
        "--ci_method",
        "--ci-method",
        choices=["bootstrap", "normal"],
        default="bootstrap",
        help="confidence interval: percentile bootstrap over prompts, or the normal approximation "
        "(default: %(default)s)",
    )
    parser.add_option(
        "--num_resamples",
        "--num-resamples",
        type=int,
        default=10_000,
        metavar="N",
        help="bootstrap resamples (default: %(default)s)",
    )
    parser.add_option(
        "--bootstrap_seed",
        type=int,
        default=0,
        metavar="SEED",
        help="seed of the bootstrap resampling (default: %(default)s)",
    )
    parser.add_option(
        "--show", type=int, default=3, metavar="N", help="prompts whose answers and verdicts are printed (default: 3)"
    )
    parser.add_option(
        "--out",
        default=None,
        metavar="FILE",
        help="write the figures, the settings and every pair with its verdicts to this JSON file (default: none)",
    )
    return parser


def parse_args(argv: Sequence[str] | None, prog: str = "lit-rlhf winrate") -> argparse.Namespace:
    """Parse ``lit-rlhf winrate`` options (``device`` resolved: ``auto`` becomes ``cuda`` or ``cpu``)."""
    from lit_rlhf.models.loading import resolve_device

    args = build_parser(prog).parse_args(argv)
    args.device = resolve_device(args.device)
    return args


def main(argv: Sequence[str] | None = None, prog: str = "lit-rlhf winrate") -> WinRateResult:
    """``lit-rlhf winrate``: generate, judge both orders, print the table (and with ``--out``, write JSON)."""
    args = parse_args(argv, prog)
    settings = engine_settings(args, dtype=args.dtype)  # without vLLM, --engine vllm stops here, before any load
    from lit_rlhf.evaluation.compare import win_rate
    from lit_rlhf.models.loading import load_tokenizer

    start = time.perf_counter()
    prompts = read_prompts(args.prompts, args.prompt_column, args.num_prompts, args.data_seed)
    use_chat_template = False if args.prompts == ARITHMETIC else args.use_chat_template
    if settings is None:
        policy, policy_tokenizer = load_model(args.policy, args.dtype, args.device, args.attn_implementation)
        reference, reference_tokenizer = load_model(args.reference, args.dtype, args.device, args.attn_implementation)
    else:  # each engine loads its model when it answers
        policy, policy_tokenizer = args.policy, load_tokenizer(args.policy)
        reference, reference_tokenizer = args.reference, load_tokenizer(args.reference)
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
        seed=args.bootstrap_seed,
        engine=args.engine,
        vllm=settings,
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
            "engine": args.engine,
            "seconds": seconds,
            **result.to_dict(),
        }
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, ensure_ascii=False)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":  # python -m lit_rlhf.winrate: lit-rlhf winrate, its errors as one line
    from lit_rlhf.cli import main as cli_main

    sys.argv[0] = "lit-rlhf"
    cli_main(["winrate", *sys.argv[1:]])
