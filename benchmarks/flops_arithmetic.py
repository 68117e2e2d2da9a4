"""Model FLOP/s of each training stage as a fraction of this machine's measured float32 matmul peak.

    python benchmarks/flops_arithmetic.py                  # SFT, reward, PPO (verifier) configs, 3 timings each
    python benchmarks/flops_arithmetic.py --steps 16 --ppo-iterations 4 --runs 5

Needs `runs/arithmetic/sft/hf` (the reward and PPO stages start from it). For each config: `fit` is built from the
config exactly as `python train.py fit --config ...` builds it (LightningCLI, run=False), then run twice for the
same number of training steps (optimizer steps for SFT and the reward model, iterations for PPO, each of which
takes 2 x ppo_epochs x num_minibatches optimizer steps): once under `torch.utils.flop_counter.FlopCounterMode` to
count the FLOPs of every matmul/attention op it executes (forward, backward, generation with KV cache, reference and
critic passes), once uninstrumented to time the training batches (first batch start to last batch end, so data setup
and model loading are left out; median of `--runs`). Validation, checkpoints and the export are off.
The peak is the median rate of 2048x2048 float32 matmuls (`torch.mm`) on the same threads, measured in the same
run. Counted FLOPs are the model's work, padding included (what the hardware computes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import TrainTimer, machine_line  # noqa: E402

STAGES = {
    "sft": ("configs/arithmetic/sft.yaml", []),
    "reward": ("configs/arithmetic/reward.yaml", ["--data.init_args.pairs", "synthetic"]),
    "ppo (verifier)": ("configs/arithmetic/ppo_verifier.yaml", []),
}


def matmul_peak(size: int = 2048, seconds: float = 2.0) -> float:
    """Median float32 FLOP/s of ``size x size`` matmuls over ``seconds``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    rates = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * size**3 / (time.perf_counter() - start))
    return statistics.median(rates)


def fit(config: str, extra: list[str], steps: int, count: bool, scratch: str) -> tuple[float, int]:
    """(seconds of the training batches, FLOPs counted or 0) of ``trainer.fit`` for ``steps`` training steps."""
    from torch.utils.flop_counter import FlopCounterMode

    from lit_rlhf.cli import cli_main

    args = [
        "--config",
        config,
        *extra,
        "--trainer.max_steps",
        str(steps),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.callbacks",
        "null",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--hf_export.dirname",
        "null",
        "--trainer.default_root_dir",
        scratch,  # LightningCLI writes its config.yaml there
    ]
    cli = cli_main(args, run=False)
    timer = TrainTimer()
    cli.trainer.callbacks.append(timer)
    counter = FlopCounterMode(display=False) if count else None
    if counter is not None:
        with counter:
            cli.trainer.fit(cli.model, cli.datamodule)
    else:
        cli.trainer.fit(cli.model, cli.datamodule)
    return timer.seconds, counter.get_total_flops() if counter is not None else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=32, help="SFT and reward-model optimizer steps per measured fit")
    parser.add_argument("--ppo-iterations", type=int, default=8, help="PPO iterations per measured fit")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(ROOT, "runs", "arithmetic", "sft", "hf")):
        sys.exit(
            "runs/arithmetic/sft/hf is missing: run python train.py fit --config configs/arithmetic/sft.yaml first"
        )
    os.chdir(ROOT)
    print(machine_line())
    peak = matmul_peak()
    print(f"float32 matmul peak (2048x2048 torch.mm, median): {peak / 1e9:.1f} GFLOP/s")
    print("| stage | training steps | model GFLOP per step | wall s (median) | model GFLOP/s | fraction of peak |")
    print("|---|---|---|---|---|---|")
    for name in args.stages:
        config, extra = STAGES[name]
        steps = args.ppo_iterations if name.startswith("ppo") else args.steps
        with tempfile.TemporaryDirectory() as scratch:
            fit(config, extra, 2, count=False, scratch=scratch)  # warm-up: imports, first-call allocations
            _, flops = fit(config, extra, steps, count=True, scratch=scratch)
            walls = [fit(config, extra, steps, count=False, scratch=scratch)[0] for _ in range(args.runs)]
        wall = statistics.median(walls)
        rate = flops / wall
        print(
            f"| {name} | {steps} | {flops / steps / 1e9:.2f} | {wall:.2f} | {rate / 1e9:.2f} | "
            f"{rate / peak:.1%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
