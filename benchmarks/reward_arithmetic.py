"""Time the default arithmetic reward-model config end to end, labelling included, and record its accuracy.

    python benchmarks/reward_arithmetic.py --runs 3                      # needs runs/arithmetic/sft/hf
    python benchmarks/reward_arithmetic.py --runs 1 -- --data.init_args.pairs synthetic

Each run is the README's command (`python train.py fit --config configs/arithmetic/reward.yaml`) in a fresh
temporary run folder with an empty labelled-pair cache, so the wall time includes sampling and judging the pairs.
Reported per run and as medians: process wall time, and the final held-out pairwise accuracy overall and per
pair type (`synthetic`: correct series vs truncated / wrong term / inserted term; `near_miss`: vs a close wrong
series; `exact_vs_wrong`: the SFT model's own right answer vs its own wrong one).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import machine_line, timed_fit  # noqa: E402
from tests.helpers import read_events  # noqa: E402

METRICS = ("val/accuracy", "val/accuracy/synthetic", "val/accuracy/near_miss", "val/accuracy/exact_vs_wrong")


def one_run(config: str, extra: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        wall = timed_fit(config, tmp, "--data.init_args.pairs_cache_dir", os.path.join(tmp, "pairs"), *extra)
        scalars, _ = read_events(os.path.join(tmp, "arithmetic", "reward"))
        result = {"wall_s": wall, "steps": scalars["train/loss"][-1][0] + 1}
        for name in METRICS:
            if name in scalars:
                result[name] = scalars[name][-1][1]
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--config", default="configs/arithmetic/reward.yaml")
    parser.add_argument("extra", nargs="*", help="more CLI arguments for train.py, after --")
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(ROOT, "runs", "arithmetic", "sft", "hf")):
        sys.exit(
            "runs/arithmetic/sft/hf is missing: run python train.py fit --config configs/arithmetic/sft.yaml first"
        )
    print(machine_line())
    results = []
    for i in range(args.runs):
        results.append(one_run(args.config, args.extra))
        r = results[-1]
        accuracies = ", ".join(f"{name.removeprefix('val/')} {r[name]:.1%}" for name in METRICS if name in r)
        print(f"run {i + 1}: wall {r['wall_s']:.1f}s, {r['steps']:.0f} steps, {accuracies}", flush=True)
    for key in ("wall_s", *METRICS):
        values = [r[key] for r in results if key in r]
        if values:
            print(f"median {key}: {statistics.median(values):.4g} (min {min(values):.4g}, max {max(values):.4g})")


if __name__ == "__main__":
    main()
