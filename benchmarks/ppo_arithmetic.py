"""Time the PPO configs end to end and record the gold exact-match gain over the SFT policy.

    python benchmarks/ppo_arithmetic.py                                   # both configs, one run each
    python benchmarks/ppo_arithmetic.py --configs configs/arithmetic/ppo_verifier.yaml --runs 3
    python benchmarks/ppo_arithmetic.py -- --trainer.max_steps 100       # more train.py arguments after --

Needs `runs/arithmetic/sft/hf` (and `runs/arithmetic/reward/hf` for `ppo.yaml`). Each run is the README's command
(`python train.py fit --config <config>`) in a fresh temporary run folder. Reported per run: process wall time
(loading, validations and export included), iterations, the held-out greedy exact-match at every validation with
the wall time it was reached at (TensorBoard event times), the final KL and reward-source score, and the gain over
the SFT export's own exact-match (`lit_rlhf.evaluate`, same 512 prompts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import machine_line, timed_fit  # noqa: E402

SFT = os.path.join(ROOT, "runs", "arithmetic", "sft", "hf")


def read_with_times(run_dir: str) -> dict[str, list[tuple[int, float, float]]]:
    """``{tag: [(step, wall_time, value)]}`` of the scalars in ``run_dir``'s event files."""
    import glob

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float, float]]] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.wall_time, e.value) for e in events.Scalars(tag))
    return out


def one_run(config: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        wall = timed_fit(config, tmp, "--trainer.callbacks", "null", *extra)
        versions = os.listdir(os.path.join(tmp, "arithmetic"))
        scalars = read_with_times(os.path.join(tmp, "arithmetic", versions[0]))
    curve = [(step + 1, t - start, v) for step, t, v in scalars["val/exact_match"]]
    return {
        "wall_s": wall,
        "iterations": scalars["objective/kl"][-1][0] + 1,
        "curve": curve,
        "exact_match": curve[-1][2],
        "kl": scalars["objective/kl"][-1][2],
        "val_reward": scalars["val/reward"][-1][2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--configs", nargs="+", default=["configs/arithmetic/ppo_verifier.yaml", "configs/arithmetic/ppo.yaml"]
    )
    parser.add_argument("extra", nargs="*", help="more CLI arguments for train.py, after --")
    args = parser.parse_args()
    if not os.path.isdir(SFT):
        sys.exit(
            "runs/arithmetic/sft/hf is missing: run python train.py fit --config configs/arithmetic/sft.yaml first"
        )
    from lit_rlhf.evaluate import evaluate_arithmetic

    print(machine_line())
    baseline = evaluate_arithmetic(SFT)["exact_match"]
    print(f"SFT export: held-out greedy exact-match {baseline:.1%}")
    for config in args.configs:
        results = []
        for i in range(args.runs):
            r = one_run(config, args.extra)
            results.append(r)
            curve = ", ".join(f"it {it}: {v:.1%} @ {t:.0f}s" for it, t, v in r["curve"])
            print(
                f"{config} run {i + 1}: wall {r['wall_s']:.0f}s, {r['iterations']} iterations, exact-match "
                f"{baseline:.1%} -> {r['exact_match']:.1%} ({(r['exact_match'] - baseline) * 100:+.1f} points), "
                f"final KL {r['kl']:.3f}, val/reward {r['val_reward']:.3f}\n  curve: {curve}",
                flush=True,
            )
        if args.runs > 1:
            for key in ("wall_s", "exact_match", "kl"):
                values = [r[key] for r in results]
                print(f"  median {key}: {statistics.median(values):.4g} (min {min(values):.4g}, max {max(values):.4g})")


if __name__ == "__main__":
    main()
