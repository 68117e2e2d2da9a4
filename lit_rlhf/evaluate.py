"""``lit-rlhf evaluate``: the gold metric of any HF policy on the held-out arithmetic prompts.

Greedy answers to the held-out problems of the arithmetic-series task, scored by its verifier: exact-match (the
whole series right), graded score (partial credit) and EOS rate; with ``--reward_model``, also that reward model's
mean normalised score of the same answers (what PPO with it maximises, beside the gold metric it does not see).

    lit-rlhf evaluate --policy runs/arithmetic/sft/hf                 # 512 held-out prompts, greedy
    lit-rlhf evaluate --policy runs/arithmetic/ppo/hf --reward_model runs/arithmetic/reward/hf
    lit-rlhf evaluate --policy runs/arithmetic/sft/hf --json          # one JSON object on stdout
    lit-rlhf evaluate --policy runs/arithmetic/sft/hf --engine vllm   # answered by a vLLM engine
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lit_rlhf.engines.settings import VLLMSettings

DEFAULT_NUM_VAL = 512
DEFAULT_DATA_SEED = 1234


def evaluate_arithmetic(
    policy: str,
    num_val: int = DEFAULT_NUM_VAL,
    data_seed: int = DEFAULT_DATA_SEED,
    batch_size: int = 256,
    max_new_tokens: int = 32,
    reward_model: str | None = None,
    device: str | None = None,
    *,
    engine: str = "generate",
    vllm: VLLMSettings | None = None,
) -> dict[str, float]:
    """Greedy exact-match, graded score and EOS rate of ``policy`` on the held-out arithmetic problems.

    Args:
        policy: an HF folder or hub name, or ``tiny-arithmetic`` (the untrained embedded model, as a floor).
        num_val: held-out problems; with ``data_seed`` it must match the training data config (``num_val``,
            ``seed`` of ``ArithmeticDataModule``) for the problems to be held out.
        data_seed: the ``ArithmeticDataModule`` seed that draws the split (1234 in the shipped configs).
        batch_size: prompts per generation batch.
        max_new_tokens: longest answer, in tokens.
        reward_model: a reward-model export; adds ``reward``, its mean normalised score of the same greedy answers.
        device: ``cuda``, ``cpu``, ...; ``None`` or ``auto``: a GPU when one is visible (with ``engine="vllm"``,
            the reward model's; the engine takes the GPU when there is one).
        engine: ``generate`` (Hugging Face ``generate`` on the loaded policy) or ``vllm`` (a vLLM engine on the
            policy's folder, closed at the end); both answer greedily, decoded by the policy's tokenizer.
        vllm: the vLLM engine's settings (default :class:`~lit_rlhf.engines.settings.VLLMSettings`).

    Returns:
        ``{"exact_match", "graded_score", "eos_rate", "num_prompts", "seconds"}`` (and ``"reward"``): rates and scores
        are means over the ``num_val`` prompts.

    Raises:
        ConfigError: an unknown ``engine``, or ``vllm`` without vLLM installed (before any model loads).
    """
    from lit_rlhf.engines.settings import check_engine

    check_engine(engine)

    import torch

    from lit_rlhf.data.arithmetic import ArithmeticDataModule
    from lit_rlhf.evaluation.engine import open_engine, unpadded
    from lit_rlhf.generation import Generation, decode_responses, generate_for_batch
    from lit_rlhf.models.loading import load_causal_lm, load_tokenizer, resolve_device

    start = time.perf_counter()
    device = resolve_device(device)
    tokenizer = load_tokenizer(policy)
    if engine == "vllm":
        sampler = open_engine(policy, tokenizer, vllm)

        def answer(batch: dict) -> tuple[Generation, list[str]]:
            prompts = unpadded(batch["prompt_input_ids"], batch["prompt_attention_mask"])
            generation = sampler.generate(
                prompts,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                device=device,
            )
            return generation, decode_responses(tokenizer, generation)

    else:
        sampler = None
        model = load_causal_lm(policy, tokenizer).eval().to(device)

        def answer(batch: dict) -> tuple[Generation, list[str]]:
            return generate_for_batch(model, tokenizer, batch, max_new_tokens)

    try:
        data = ArithmeticDataModule(num_val=num_val, seed=data_seed, eval_batch_size=batch_size)
        data.connect(tokenizer)
        data.setup("validate")
        scorer = None
        if reward_model is not None:
            from lit_rlhf.rewards import RewardModelReward

            scorer = RewardModelReward(reward_model).to(device)
        totals: dict[str, float] = {}
        with torch.no_grad():
            for batch in data.val_dataloader():
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                generation, completions = answer(batch)
                scores = data.score_completions(completions, batch["rows"])
                scores["eos_rate"] = generation.has_eos.float().tolist()
                if scorer is not None:
                    rows = batch["rows"]
                    finished = generation.has_eos.tolist()
                    scores["reward"] = scorer([r["prompt"] for r in rows], completions, rows, finished).tolist()
                for name, values in scores.items():
                    totals[name] = totals.get(name, 0.0) + sum(values)
    finally:
        if sampler is not None:
            sampler.close()
    result = {name: value / num_val for name, value in totals.items()}
    return {**result, "num_prompts": num_val, "seconds": time.perf_counter() - start}


def build_parser(prog: str = "lit-rlhf evaluate"):
    """The options of ``lit-rlhf evaluate``."""
    from lit_rlhf.cli import CommandParser, add_policy_option
    from lit_rlhf.engine_options import add_engine_options

    parser = CommandParser(prog, __doc__)
    add_policy_option(
        parser,
        "the policy to evaluate: an HF folder (e.g. runs/arithmetic/sft/hf), a hub name, or tiny-arithmetic "
        "(the untrained embedded model)",
        positional_alias=True,
    )
    parser.add_option(
        "--num_val",
        "--num-val",
        type=int,
        default=DEFAULT_NUM_VAL,
        metavar="N",
        help="held-out problems to answer; must equal the training config's data num_val (default: %(default)s)",
    )
    parser.add_option(
        "--data_seed",
        type=int,
        default=DEFAULT_DATA_SEED,
        metavar="SEED",
        help="seed of the train/held-out split; must equal the training config's data seed (default: %(default)s)",
    )
    parser.add_option(
        "--batch_size",
        "--batch-size",
        type=int,
        default=256,
        metavar="N",
        help="prompts per generation batch (default: %(default)s)",
    )
    parser.add_option(
        "--max_new_tokens",
        "--max-new-tokens",
        type=int,
        default=32,
        metavar="N",
        help="longest answer, in tokens (default: %(default)s)",
    )
    parser.add_option(
        "--reward_model",
        "--reward-model",
        default=None,
        metavar="PATH",
        help="also report this reward model's mean normalised score of the same answers (default: none)",
    )
    parser.add_option(
        "--device",
        default="auto",
        help="cuda, cpu, cuda:1, ...; auto: a GPU when one is visible; with --engine vllm, the reward model's "
        "(default: %(default)s)",
    )
    add_engine_options(parser)
    parser.add_option("--json", action="store_true", help="print one JSON object instead of a sentence")
    parser.add_option("--out", default=None, metavar="FILE", help="also write the results to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "lit-rlhf evaluate") -> dict[str, float]:
    """``lit-rlhf evaluate``: print (and with ``--out``, write) the results of :func:`evaluate_arithmetic`."""
    from lit_rlhf.engine_options import engine_settings

    args = build_parser(prog).parse_args(argv)
    settings = engine_settings(args)  # without vLLM, --engine vllm stops here, before any model loads
    result = evaluate_arithmetic(
        args.policy,
        args.num_val,
        args.data_seed,
        args.batch_size,
        args.max_new_tokens,
        args.reward_model,
        args.device,
        engine=args.engine,
        vllm=settings,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.policy}: exact-match {result['exact_match']:.1%}, graded score {result['graded_score']:.3f}, "
            f"EOS rate {result['eos_rate']:.1%}"
            + (f", reward-model score {result['reward']:+.3f}" if "reward" in result else "")
            + f" on {result['num_prompts']} held-out prompts ({result['seconds']:.1f}s)"
        )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            record = {"policy": args.policy, "reward_model": args.reward_model, "engine": args.engine, **result}
            json.dump(record, f, indent=2)
        if not args.json:
            print(f"wrote {args.out}")
    return result


if __name__ == "__main__":  # python -m lit_rlhf.evaluate: lit-rlhf evaluate, its errors as one line
    from lit_rlhf.cli import main as cli_main

    sys.argv[0] = "lit-rlhf"
    cli_main(["evaluate", *sys.argv[1:]])
