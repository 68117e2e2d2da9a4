"""Gold-metric evaluation of any HF policy on the arithmetic held-out prompts.

python -m lit_rlhf.evaluate runs/arithmetic/sft/hf            # 512 held-out prompts, greedy
python -m lit_rlhf.evaluate runs/arithmetic/ppo/hf --reward-model runs/arithmetic/reward/hf   # + mean RM score
python -m lit_rlhf.evaluate runs/arithmetic/sft/hf --json     # machine-readable
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lit_rlhf.data.arithmetic import ArithmeticDataModule
from lit_rlhf.generation import generate_for_batch
from lit_rlhf.models.loading import load_causal_lm, load_tokenizer


@torch.no_grad()
def evaluate_arithmetic(
    policy: str,
    num_val: int = 512,
    seed: int = 1234,
    batch_size: int = 256,
    max_new_tokens: int = 32,
    reward_model: str | None = None,
) -> dict[str, float]:
    """Greedy exact-match, graded score and EOS rate of ``policy`` on the held-out arithmetic problems.

    Args:
        policy: an HF folder or ``tiny-arithmetic`` (untrained, as a floor).
        num_val: held-out problems; with ``seed`` it must match the training data config to be held out.
        seed: the ArithmeticDataModule seed (1234 in the shipped configs).
        batch_size: prompts per generation batch.
        max_new_tokens: generation length.
        reward_model: a reward-model export; adds ``reward``, its mean normalised score of the same greedy answers
            (what PPO with that reward model maximises, next to the gold metrics it does not see).

    Returns:
        ``{"exact_match", "graded_score", "eos_rate", "num_prompts", "seconds"}`` (and ``"reward"``).
    """
    start = time.perf_counter()
    tokenizer = load_tokenizer(policy)
    model = load_causal_lm(policy, tokenizer).eval()
    data = ArithmeticDataModule(num_val=num_val, seed=seed, eval_batch_size=batch_size)
    data.connect(tokenizer)
    data.setup("validate")
    scorer = None
    if reward_model is not None:
        from lit_rlhf.rewards import RewardModelReward

        scorer = RewardModelReward(reward_model)
    totals: dict[str, float] = {}
    for batch in data.val_dataloader():
        generation, completions = generate_for_batch(model, tokenizer, batch, max_new_tokens)
        scores = data.score_completions(completions, batch["rows"])
        scores["eos_rate"] = generation.has_eos.float().tolist()
        if scorer is not None:
            rows = batch["rows"]
            finished = generation.has_eos.tolist()
            scores["reward"] = scorer([r["prompt"] for r in rows], completions, rows, finished).tolist()
        for name, values in scores.items():
            totals[name] = totals.get(name, 0.0) + sum(values)
    result = {name: value / num_val for name, value in totals.items()}
    return {**result, "num_prompts": num_val, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policy", help="HF model folder (e.g. runs/arithmetic/sft/hf)")
    parser.add_argument("--num-val", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--reward-model", default=None, help="also report this reward model's mean score")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = evaluate_arithmetic(
        args.policy, args.num_val, args.seed, args.batch_size, args.max_new_tokens, args.reward_model
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
    return result


if __name__ == "__main__":
    main()
