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


REWARD_EXPORT = "runs/arithmetic/reward/hf"
PLOT = "runs/arithmetic/ppo_curves.png"


def scalar_curve(run_dir: str, tag: str) -> list[tuple[int, float]]:
    """``[(step, value)]`` of one TensorBoard scalar in ``run_dir`` (the last value per step, by step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        if tag in events.Tags()["scalars"]:
            points.update((e.step, e.value) for e in events.Scalars(tag))
    return sorted(points.items())


def stage_result(name: str, run_dir: str) -> tuple[str, dict[str, float]]:
    """One line of results (gold metrics and reward-model score for a policy, held-out pairwise accuracy for the
    reward model) and the policy's evaluation (empty for the reward model)."""
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
        return "held-out pairwise accuracy: " + ", ".join(parts), {}
    reward_model = REWARD_EXPORT if os.path.isdir(REWARD_EXPORT) else None
    result = evaluate_arithmetic(os.path.join(run_dir, "hf"), reward_model=reward_model)
    line = f"exact-match {result['exact_match']:.1%}, graded score {result['graded_score']:.3f}"
    if "reward" in result:
        line += f", reward-model score {result['reward']:+.3f}"
    if name == "ppo":
        objective = last_scalars(run_dir, "objective/kl")
        if "objective/kl" in objective:
            line += f", final KL {objective['objective/kl']:.3f}"
    return line, result


def plot_ppo(run_dir: str, start: dict[str, float], path: str) -> bool:
    """PNG of held-out exact-match (gold) and reward-model score over PPO iterations, from the SFT policy's values
    at iteration 0 (``start``) and PPO's validations. Returns whether it was written."""
    gold = scalar_curve(run_dir, "val/exact_match")
    reward = scalar_curve(run_dir, "val/reward")
    if not gold:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(7, 4))
    xs = [0] + [step + 1 for step, _ in gold]
    left.plot(xs, [100 * start["exact_match"]] + [100 * v for _, v in gold], "o-", color="tab:blue")
    left.set_xlabel("PPO iteration (0: the SFT policy)")
    left.set_ylabel("held-out exact-match (%), gold", color="tab:blue")
    if reward and "reward" in start:
        right = left.twinx()
        right.plot(xs, [start["reward"]] + [v for _, v in reward], "s--", color="tab:orange")
        right.set_ylabel("reward-model score (normalised)", color="tab:orange")
    left.set_title("PPO on the arithmetic task: gold metric vs the reward it optimises")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fresh", action="store_true", help="retrain every stage")
    args = parser.parse_args(argv)
    walls = {}
    for name, config, run_dir in STAGES:
        seconds, reused = run_stage(config, run_dir, args.fresh)
        walls[name] = "reused" if reused else f"{seconds:.0f}s"
    print("== evaluating on the 512 held-out prompts", flush=True)
    rows, evaluations = [], {}
    for name, _, run_dir in STAGES:
        line, evaluations[name] = stage_result(name, run_dir)
        rows.append((name, walls[name], line))
    table = ["| stage | train wall time | result (512 held-out prompts, greedy) |", "|---|---|---|"]
    table += [f"| {' | '.join(row)} |" for row in rows]
    summary = "\n".join(table)
    os.makedirs("runs/arithmetic", exist_ok=True)
    plotted = plot_ppo("runs/arithmetic/ppo", evaluations.get("sft", {}), PLOT)
    with open("runs/arithmetic/summary.md", "w") as f:
        f.write("# lit_rlhf arithmetic demo\n\n" + summary + "\n")
        if plotted:
            f.write(f"\n![PPO curves]({os.path.basename(PLOT)})\n")
    print("\n" + summary + "\n")
    print("Written to runs/arithmetic/summary.md" + (f" and {PLOT}" if plotted else "") + ".")
    print("Curves and sample tables: tensorboard --logdir runs/")


if __name__ == "__main__":
    main()
