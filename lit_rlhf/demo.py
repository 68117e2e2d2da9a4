"""``lit-rlhf demo``: SFT, the reward model, then PPO on the arithmetic-series task, and a results table.

Each stage is the command a user would type, ``lit-rlhf fit --config configs/arithmetic/<stage>.yaml``, run with the
configs shipped beside the package from any working directory; the run folders go to ``runs/`` under the current
directory (or ``--output_dir``). A stage whose ``hf/`` export already exists is reused; ``--fresh`` retrains it.
Afterwards each policy is evaluated on the 512 held-out prompts (``lit-rlhf evaluate``) and the table is printed and
written to ``runs/arithmetic/summary.md`` with a plot of the PPO curves.

    lit-rlhf demo                                        # runs/ in the current directory
    lit-rlhf demo --output_dir /tmp/demo --fresh
    lit-rlhf demo --sft_args "--trainer.max_steps 200"   # extra fit options for one stage
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lit_rlhf.cli import CommandParser

STAGES = (
    ("sft", "arithmetic/sft.yaml", "runs/arithmetic/sft"),
    ("reward", "arithmetic/reward.yaml", "runs/arithmetic/reward"),
    ("ppo", "arithmetic/ppo.yaml", "runs/arithmetic/ppo"),
)
"""``(stage, config under the config folder, run folder under the output folder)``, in training order."""

REWARD_EXPORT = "runs/arithmetic/reward/hf"
PLOT = "runs/arithmetic/ppo_curves.png"
SUMMARY = "runs/arithmetic/summary.md"


def package_root() -> str:
    """The folder that holds the ``lit_rlhf`` package (the repository root for a source checkout)."""
    import lit_rlhf

    return os.path.dirname(os.path.dirname(os.path.abspath(lit_rlhf.__file__)))


def shipped_config_dir() -> str | None:
    """The shipped ``configs/`` folder: inside the package if it is packaged there, else beside the package (a
    checkout, or an editable install of one). ``None`` when neither holds ``arithmetic/sft.yaml``."""
    root = package_root()
    for candidate in (os.path.join(root, "lit_rlhf", "configs"), os.path.join(root, "configs")):
        if os.path.isfile(os.path.join(candidate, STAGES[0][1])):
            return candidate
    return None


def stage_command(config: str, extra: Sequence[str] = ()) -> list[str]:
    """``lit-rlhf fit --config <config> <extra>`` as a subprocess of this Python."""
    return [sys.executable, "-m", "lit_rlhf", "fit", "--config", config, *extra]


def run_stage(
    config: str, run_dir: str, output_dir: str, fresh: bool, extra: Sequence[str] = ()
) -> tuple[float | None, bool]:
    """Train one stage in ``output_dir`` unless its export exists.

    Returns:
        ``(wall seconds, False)`` after training, ``(None, True)`` when the export was reused.

    Raises:
        SystemExit: the stage failed (its own error is printed above).
    """
    run_path = os.path.join(output_dir, run_dir)
    if os.path.isdir(os.path.join(run_path, "hf")) and not fresh:
        print(f"== reusing {run_path}/hf (--fresh retrains it)", flush=True)
        return None, True
    if fresh and os.path.isdir(run_path):
        shutil.rmtree(run_path)
    command = stage_command(config, extra)
    print(f"== lit-rlhf {shlex.join(command[3:])}   (in {output_dir})", flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root(), env.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=output_dir, env=env)
    if done.returncode != 0:
        raise SystemExit(f"lit-rlhf demo: the stage {config} failed (exit code {done.returncode}); see above")
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


def stage_result(name: str, run_dir: str, reward_export: str = REWARD_EXPORT) -> tuple[str, dict[str, float]]:
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
    from lit_rlhf.evaluate import evaluate_arithmetic

    reward_model = reward_export if os.path.isdir(reward_export) else None
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


def build_parser(prog: str = "lit-rlhf demo") -> CommandParser:
    """The options of ``lit-rlhf demo``."""
    from lit_rlhf.cli import CommandParser

    parser = CommandParser(prog, __doc__)
    parser.add_option("--fresh", action="store_true", help="retrain every stage, even when its export exists")
    parser.add_option(
        "--output_dir",
        default=".",
        metavar="DIR",
        help="where runs/ is written (created if missing; default: the current directory)",
    )
    parser.add_option(
        "--config_dir",
        default=None,
        metavar="DIR",
        help="folder holding arithmetic/{sft,reward,ppo}.yaml (default: the configs shipped with lit_rlhf)",
    )
    for name, _, _ in STAGES:
        parser.add_option(
            f"--{name}_args",
            default="",
            metavar="OPTIONS",
            help=f"extra options for the {name} stage's fit command, one quoted string (default: none)",
        )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "lit-rlhf demo") -> str:
    """``lit-rlhf demo``: train the stages that need it, evaluate, print and write the table.

    Returns:
        The summary markdown file.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    config_dir = args.config_dir or shipped_config_dir()
    if config_dir is None or not os.path.isfile(os.path.join(config_dir, STAGES[0][1])):
        parser.error(
            f"no arithmetic configs in {config_dir or 'the folders beside lit_rlhf (' + package_root() + ')'}; "
            "pass --config_dir, the configs/ folder of a lit_rlhf checkout"
        )
    config_dir = os.path.abspath(config_dir)
    output_dir = os.path.abspath(args.output_dir)
    os.makedirs(output_dir, exist_ok=True)
    walls = {}
    for name, config, run_dir in STAGES:
        extra = shlex.split(getattr(args, f"{name}_args"))
        seconds, reused = run_stage(os.path.join(config_dir, config), run_dir, output_dir, args.fresh, extra)
        walls[name] = "reused" if reused else f"{seconds:.0f}s"
    print("== evaluating on the 512 held-out prompts", flush=True)
    rows, evaluations = [], {}
    for name, _, run_dir in STAGES:
        line, evaluations[name] = stage_result(
            name, os.path.join(output_dir, run_dir), os.path.join(output_dir, REWARD_EXPORT)
        )
        rows.append((name, walls[name], line))
    table = ["| stage | train wall time | result (512 held-out prompts, greedy) |", "|---|---|---|"]
    table += [f"| {' | '.join(row)} |" for row in rows]
    summary = "\n".join(table)
    summary_path, plot_path = os.path.join(output_dir, SUMMARY), os.path.join(output_dir, PLOT)
    os.makedirs(os.path.dirname(summary_path), exist_ok=True)
    plotted = plot_ppo(os.path.join(output_dir, "runs/arithmetic/ppo"), evaluations.get("sft", {}), plot_path)
    with open(summary_path, "w") as f:
        f.write("# lit_rlhf arithmetic demo\n\n" + summary + "\n")
        if plotted:
            f.write(f"\n![PPO curves]({os.path.basename(PLOT)})\n")
    print("\n" + summary + "\n")
    print(f"Written to {summary_path}" + (f" and {plot_path}" if plotted else "") + ".")
    print(f"Curves and sample tables: tensorboard --logdir {os.path.relpath(os.path.join(output_dir, 'runs'))}")
    return summary_path


if __name__ == "__main__":
    main()
