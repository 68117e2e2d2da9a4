"""How far a reward model can be optimised before it stops tracking the gold metric: best-of-n on the arithmetic task.

    .venv/bin/python benchmarks/arithmetic_best_of_n.py runs/arithmetic/sft/hf runs/arithmetic/reward/hf
    .venv/bin/python benchmarks/arithmetic_best_of_n.py runs/arithmetic/sft/hf runs/arithmetic/reward/hf --samples 16

For each of the held-out prompts the policy draws ``--samples`` answers at ``--temperature``; the reward model scores
them. For n = 1, 2, 4, ... the table gives the exact-match of the answer the reward model scores highest among n
(averaged over the ``samples / n`` disjoint groups of each prompt), next to pass@n, the same pick made by the
verifier (the best any reward could do with those samples). Best-of-n is the simplest optimiser of a reward: where
its exact-match falls as n grows, the reward model prefers wrong answers once pushed, and an RL stage against it
gains only up to about the optimisation pressure of the peak (Gao et al. 2023, "Scaling laws for reward model
overoptimization"). With ``--slips`` it also reports, for the policy's greedy answers that are wrong, where the
first wrong token falls and the probability the policy gave the right token there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

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


def best_of_n_table(correct, scores) -> list[tuple[int, float, float]]:
    """``(n, best-of-n exact-match, pass@n)`` for n = 1, 2, 4, ... up to the number of samples.

    Args:
        correct: ``(prompts, samples)`` 0/1 tensor, whether each sample is exactly right.
        scores: ``(prompts, samples)`` reward-model scores of the same samples.
    """
    prompts, samples = correct.shape
    rows, n = [], 1
    while n <= samples:
        groups = samples // n
        right = correct[:, : groups * n].reshape(prompts, groups, n)
        score = scores[:, : groups * n].reshape(prompts, groups, n)
        picked = right.gather(2, score.argmax(2, keepdim=True))
        rows.append((n, picked.float().mean().item(), right.amax(2).float().mean().item()))
        n *= 2
    return rows


def greedy_slips(model, tokenizer, rows, greedy) -> None:
    """Print where the wrong greedy answers first leave the reference, and the right token's probability there."""
    import torch

    from lit_rlhf.data.arithmetic_task import exact_match
    from lit_rlhf.data.tokenization import encode_prompt, encode_response

    positions, kinds, probabilities, ranks = Counter(), Counter(), [], Counter()
    for text, row in zip(greedy, rows):
        if exact_match(text, row["answer"]):
            continue
        prompt = encode_prompt(tokenizer, row["prompt"], chat=False)
        answer = encode_response(tokenizer, row["answer"])
        with torch.no_grad():
            logprobs = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
        top_tokens = logprobs.argmax(-1).tolist()
        wrong_at = [i for i, (top, target) in enumerate(zip(top_tokens, answer)) if top != target]
        if not wrong_at:
            kinds["greedy differs, teacher-forced argmax does not"] += 1
            continue
        position = wrong_at[0]
        target, top, row_logprobs = answer[position], top_tokens[position], logprobs[position]
        if target == tokenizer.eos_token_id:
            kinds["a term too many"] += 1
        elif top == tokenizer.eos_token_id:
            kinds["stops early"] += 1
        else:
            kinds["wrong term"] += 1
        positions[position] += 1
        probabilities.append(row_logprobs[target].exp().item())
        ranks[int((row_logprobs > row_logprobs[target]).sum())] += 1
    probabilities.sort()
    wrong = sum(kinds.values())
    print(f"\n{wrong} wrong greedy answers; first wrong token: {dict(kinds)}")
    print("position of the first wrong token (0 = first term):", dict(sorted(positions.items())))
    if probabilities:
        quartiles = [probabilities[int(q * (len(probabilities) - 1))] for q in (0.25, 0.5, 0.75)]
        print("policy's probability of the right token there: quartiles " + ", ".join(f"{q:.2f}" for q in quartiles))
        print("rank of the right token there (0 = top):", dict(sorted(ranks.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policy", help="HF policy folder, e.g. runs/arithmetic/sft/hf")
    parser.add_argument("reward_model", help="HF reward-model folder, e.g. runs/arithmetic/reward/hf")
    parser.add_argument("--samples", type=int, default=64, help="samples per prompt (a power of two)")
    parser.add_argument("--temperature", type=float, default=0.7, help="the PPO config's rollout temperature")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="the PPO config's max_new_tokens")
    parser.add_argument("--slips", action="store_true", help="also analyse the greedy answers' first wrong token")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    add_held_out_arguments(parser)
    args = parser.parse_args()
    use_threads(args.threads)
    import torch

    from lit_rlhf.data.arithmetic_task import exact_match
    from lit_rlhf.rewards import RewardModelReward

    print(machine_line())
    model, tokenizer, batch = held_out_arithmetic(args.policy, args.num_val, args.data_seed)
    reward = RewardModelReward(args.reward_model, normalize=False, batch_size=512)
    rows = batch["rows"]
    prompts = [row["prompt"] for row in rows]
    answers = [row["answer"] for row in rows]
    greedy, greedy_right = greedy_arithmetic(model, tokenizer, batch, args.max_new_tokens)
    greedy_rate = sum(greedy_right) / len(rows)

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    correct = torch.zeros(len(rows), args.samples)
    scores = torch.zeros(len(rows), args.samples)
    ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    for j in range(args.samples):
        generation, texts = sample_answers(model, tokenizer, ids, mask, args.max_new_tokens, args.temperature)
        correct[:, j] = torch.tensor([exact_match(t, a) for t, a in zip(texts, answers)])
        scores[:, j] = reward(prompts, texts, rows, generation.has_eos.tolist())
    print(
        f"{args.policy} (greedy exact-match {greedy_rate:.1%}) scored by {args.reward_model}: {len(rows)} prompts x "
        f"{args.samples} samples at T={args.temperature} in {time.perf_counter() - start:.0f} s"
    )
    print("| n | best-of-n by the reward model | pass@n (best-of-n by the verifier) |")
    print("|---|---|---|")
    for n, picked, oracle in best_of_n_table(correct, scores):
        print(f"| {n} | {picked:.1%} | {oracle:.1%} |")
    if args.slips:
        greedy_slips(model, tokenizer, rows, greedy)


if __name__ == "__main__":
    main()
