"""The embedded demo: SFT, the reward model, then PPO on the arithmetic task, with a summary. Run by ``make demo``.

Each stage runs the same command a user would type (``python train.py fit --config ...``). A stage whose ``hf/``
export already exists is reused; ``--fresh`` (``make demo FRESH=1``) retrains it.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import time

from lit_rlhf.evaluate import evaluate_arithmetic

STAGES = (
    ("sft", "configs/arithmetic/sft.yaml", "runs/arithmetic/sft"),
    ("reward", "configs/arithmetic/reward.yaml", "runs/arithmetic/reward"),
    ("ppo", "configs/arithmetic/ppo.yaml", "runs/arithmetic/ppo"),
)


def run_stage(config: str, run_dir: str, fresh: bool) -> tuple[float | None, bool]:
    """Train one stage unless its export exists; returns (wall seconds or None if reused, reused?)."""
    if os.path.isdir(os.path.join(run_dir, "hf")) and not fresh:
        print(f"== reusing {run_dir}/hf (make demo FRESH=1 to retrain)", flush=True)
        return None, True
    if fresh and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    command = [sys.executable, "train.py", "fit", "--config", config]
    print(f"== {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start, False


def last_scalars(run_dir: str, prefix: str) -> dict[str, float]:
    """The last value of every TensorBoard scalar under ``prefix`` in ``run_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, tuple[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            if tag.startswith(prefix):
                last = events.Scalars(tag)[-1]
                if tag not in values or last.step >= values[tag][0]:
                    values[tag] = (last.step, last.value)
    return {tag: value for tag, (_, value) in values.items()}


def stage_result(name: str, run_dir: str) -> str:
    """One line of results: gold metrics for a policy, held-out pairwise accuracy for the reward model."""
    if name == "reward":
        acc = last_scalars(run_dir, "val/accuracy")
        parts = [
            f"{label} {acc[tag]:.1%}"
            for label, tag in (
                ("right-vs-wrong SFT answers", "val/accuracy/exact_vs_wrong"),
                ("synthetic", "val/accuracy/synthetic"),
                ("near-miss", "val/accuracy/near_miss"),
            )
            if tag in acc
        ]
        return "held-out pairwise accuracy: " + ", ".join(parts)
    result = evaluate_arithmetic(os.path.join(run_dir, "hf"))
    line = f"held-out exact-match {result['exact_match']:.1%}, graded score {result['graded_score']:.3f}"
    if name == "ppo":
        objective = last_scalars(run_dir, "objective/kl")
        if "objective/kl" in objective:
            line += f", final KL {objective['objective/kl']:.3f}"
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fresh", action="store_true", help="retrain every stage")
    args = parser.parse_args(argv)
    rows = []
    for name, config, run_dir in STAGES:
        seconds, reused = run_stage(config, run_dir, args.fresh)
        wall = "reused" if reused else f"{seconds:.0f}s"
        rows.append((name, wall, stage_result(name, run_dir)))
    table = ["| stage | train wall time | result (512 held-out prompts, greedy) |", "|---|---|---|"]
    table += [f"| {' | '.join(row)} |" for row in rows]
    summary = "\n".join(table)
    os.makedirs("runs/arithmetic", exist_ok=True)
    with open("runs/arithmetic/summary.md", "w") as f:
        f.write("# lit_rlhf arithmetic demo\n\n" + summary + "\n")
    print("\n" + summary + "\n")
    print("Written to runs/arithmetic/summary.md. Curves and sample tables: tensorboard --logdir runs/")


if __name__ == "__main__":
    main()
