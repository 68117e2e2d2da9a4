"""The embedded demo: SFT on the arithmetic task, then held-out exact-match. Run by ``make demo``.

Each stage runs the same command a user would type (``python train.py fit --config ...``). A stage whose ``hf/``
export already exists is reused; ``--fresh`` (``make demo FRESH=1``) retrains it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from lit_rlhf.evaluate import evaluate_arithmetic

STAGES = (("sft", "configs/arithmetic/sft.yaml", "runs/arithmetic/sft"),)


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fresh", action="store_true", help="retrain every stage")
    args = parser.parse_args(argv)
    rows = []
    for name, config, run_dir in STAGES:
        seconds, reused = run_stage(config, run_dir, args.fresh)
        result = evaluate_arithmetic(os.path.join(run_dir, "hf"))
        wall = "reused" if reused else f"{seconds:.0f}s"
        rows.append((name, wall, f"{result['exact_match']:.1%}", f"{result['graded_score']:.3f}"))
    table = ["| stage | train wall time | held-out exact-match (512, greedy) | graded score |", "|---|---|---|---|"]
    table += [f"| {' | '.join(row)} |" for row in rows]
    summary = "\n".join(table)
    os.makedirs("runs/arithmetic", exist_ok=True)
    with open("runs/arithmetic/summary.md", "w") as f:
        f.write("# lit_rlhf arithmetic demo\n\n" + summary + "\n")
    print("\n" + summary + "\n")
    print("Written to runs/arithmetic/summary.md. Curves and sample tables: tensorboard --logdir runs/")


if __name__ == "__main__":
    main()
