"""GRPO and PPO with LoRA against full fine-tuning on the arithmetic task: held-out exact-match gain over SFT, time.

    python benchmarks/lora_arithmetic.py --sft runs/arithmetic/sft/hf
    python benchmarks/lora_arithmetic.py --sft runs/arithmetic/sft/hf --grpo-steps 150 --ppo-steps 60 --out lora.json
    python benchmarks/lora_arithmetic.py --sft runs/arithmetic/sft/hf --runs grpo_lora -- \\
        --model.init_args.learning_rate 1e-4                                  # more train.py arguments after --

Needs an SFT export (``lit-rlhf fit --config configs/arithmetic/sft.yaml`` writes ``runs/arithmetic/sft/hf``). Each
run is the README's command, ``python train.py fit --config <config>``, in a fresh temporary run folder, with the
SFT export as the policy, the same number of iterations for full fine-tuning and LoRA, one validation at the end (the
512 held-out problems answered greedily), no checkpoint and no export:

- ``grpo``: ``configs/arithmetic/grpo.yaml`` (full fine-tuning);
- ``grpo_lora``: ``configs/arithmetic/grpo_lora.yaml`` (rank-16 LoRA on every linear layer, learning rate 10x);
- ``ppo``: ``configs/arithmetic/ppo_verifier.yaml``;
- ``ppo_lora``: ``configs/arithmetic/ppo_lora.yaml`` (LoRA on actor and critic, learning rates 10x);
- ``ppo_lora_shared``: the same with ``critic_backbone: shared``.

Reported per run: process wall time (loading and the validation included), the seconds of the training batches
alone (:class:`benchmarks.common.TrainTimer`), the held-out exact-match at the end (``val/exact_match``) and its gain
over the SFT export's own (``lit_rlhf.evaluate``, the same 512 problems), and the number of trained parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import machine_line, timed_lit_run  # noqa: E402

RUNS = {
    "grpo": ("configs/arithmetic/grpo.yaml", "grpo", []),
    "grpo_lora": ("configs/arithmetic/grpo_lora.yaml", "grpo", []),
    "ppo": ("configs/arithmetic/ppo_verifier.yaml", "ppo", []),
    "ppo_lora": ("configs/arithmetic/ppo_lora.yaml", "ppo", []),
    "ppo_lora_shared": ("configs/arithmetic/ppo_lora.yaml", "ppo", ["--model.init_args.critic_backbone", "shared"]),
}
"""Run name: (config, algorithm (its iteration count), extra train.py arguments)."""


def one_run(name: str, sft: str, steps: int, extra: list[str]) -> dict:
    """``train.py fit`` of run ``name`` for ``steps`` iterations from ``sft``: its figures."""
    config, _, own = RUNS[name]
    with tempfile.TemporaryDirectory() as tmp:
        result = timed_lit_run(
            config,
            tmp,
            "--model.init_args.policy_name_or_path",
            sft,
            "--trainer.max_steps",
            str(steps),
            "--trainer.val_check_interval",
            str(steps),
            "--trainer.callbacks",
            "null",
            "--trainer.enable_checkpointing",
            "false",
            "--hf_export.dirname",
            "null",
            *own,
            *extra,
        )
    scalars = result["scalars"]
    curve = scalars["val/exact_match"]
    return {
        "config": config,
        "arguments": own + extra,
        "iterations": steps,
        "wall_s": result["wall"],
        "train_s": result["timer"]["train_s"],
        "exact_match": curve[-1][1],
        "graded_score": scalars.get("val/graded_score", [(0, float("nan"))])[-1][1],
        "timer": result["timer"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", required=True, help="the SFT export (an HF folder)")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--grpo-steps", type=int, default=150, help="GRPO iterations of every GRPO run")
    parser.add_argument("--ppo-steps", type=int, default=60, help="PPO iterations of every PPO run")
    parser.add_argument("--out", default=None, help="write every figure here as JSON")
    parser.add_argument("extra", nargs="*", help="more CLI arguments for train.py (every run), after --")
    args = parser.parse_args()
    if not os.path.isdir(args.sft):
        sys.exit(f"{args.sft} is missing: run python train.py fit --config configs/arithmetic/sft.yaml first")
    from lit_rlhf.evaluate import evaluate_arithmetic

    print(machine_line())
    baseline = evaluate_arithmetic(args.sft)["exact_match"]
    print(f"SFT export {args.sft}: held-out greedy exact-match {baseline:.1%}", flush=True)
    results = {}
    for name in args.runs:
        steps = args.grpo_steps if RUNS[name][1] == "grpo" else args.ppo_steps
        r = one_run(name, os.path.abspath(args.sft), steps, args.extra)
        r["gain"] = r["exact_match"] - baseline
        results[name] = r
        print(
            f"{name}: {steps} iterations, exact-match {r['exact_match']:.1%} ({r['gain']:+.1%} over SFT), "
            f"wall {r['wall_s']:.0f} s, training batches {r['train_s']:.0f} s",
            flush=True,
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": machine_line(), "sft_exact_match": baseline, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
