"""What the benchmark scripts share: the machine line and one timed ``train.py fit`` run in a temporary folder."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine_line() -> str:
    import torch

    return (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
        f", {torch.get_num_threads()} threads"
    )


def timed_fit(config: str, save_dir: str, *extra: str) -> float:
    """Run the README's ``python train.py fit --config <config>`` with runs under ``save_dir``; wall seconds."""
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "train.py",
            "fit",
            "--config",
            config,
            "--trainer.logger.init_args.save_dir",
            save_dir,
            "--trainer.enable_progress_bar",
            "false",
            *extra,
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start
