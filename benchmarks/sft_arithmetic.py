"""Time the default arithmetic SFT config end to end and record its held-out exact-match.

    python benchmarks/sft_arithmetic.py --runs 3

Each run is the README's command (`python train.py fit --config configs/arithmetic/sft.yaml`) in a fresh
temporary run folder. Reported: process wall time (startup, data, 600 steps, 3 validations, export), the
training-loop time between the first and last logged train step, and the final val/exact_match on the 512
held-out prompts; medians over the runs.
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


def one_run(config: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        wall = timed_fit(config, tmp)
        run_dir = os.path.join(tmp, "arithmetic", "sft")
        scalars, _ = read_events(run_dir)
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(run_dir)
        events.Reload()
        losses = events.Scalars("train/loss")
        return {
            "wall_s": wall,
            "train_loop_s": losses[-1].wall_time - losses[0].wall_time,
            "exact_match": scalars["val/exact_match"][-1][1],
            "steps": losses[-1].step + 1,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--config", default="configs/arithmetic/sft.yaml")
    args = parser.parse_args()
    print(machine_line())
    results = []
    for i in range(args.runs):
        results.append(one_run(args.config))
        r = results[-1]
        print(
            f"run {i + 1}: wall {r['wall_s']:.1f}s, train loop {r['train_loop_s']:.1f}s, "
            f"exact-match {r['exact_match']:.1%} after {r['steps']:.0f} steps",
            flush=True,
        )
    for key in ("wall_s", "train_loop_s", "exact_match"):
        values = [r[key] for r in results]
        print(f"median {key}: {statistics.median(values):.4g} (min {min(values):.4g}, max {max(values):.4g})")


if __name__ == "__main__":
    main()
