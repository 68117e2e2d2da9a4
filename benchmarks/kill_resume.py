"""Kill a PPO run with SIGKILL at random moments, resume it each time from last.ckpt, and compare the result with the
uninterrupted run: bit-equal exports (policy and critic), the same steps and values of every TensorBoard tag, the same
sample rows.

    OMP_NUM_THREADS=1 python benchmarks/kill_resume.py                    # 10 kills over a 200-iteration run
    OMP_NUM_THREADS=1 python benchmarks/kill_resume.py --kills 3 --iterations 40 --policy runs/arithmetic/sft/hf

Each run is the README's command, `python train.py fit --config <config>` (configs/arithmetic/ppo_verifier.yaml with
the sizes below), and each resume the same command with `--ckpt_path <run>/checkpoints/last.ckpt`. Every kill waits
for the run to write a new checkpoint (so that each resume makes progress), then strikes after a random delay, or, at
every third kill, as soon as a checkpoint write shows up (a temporary file in checkpoints/, or else a new
last.ckpt): the moment a truncated file would appear if checkpoints were written in place. Without `--policy` the
policy is a tiny untrained Llama built here (no download). tests/test_kill_resume.py runs the same check with 3 kills.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TEMP_SUFFIX = ".tmp"  # lit_rlhf.checkpoint_io.TEMP_SUFFIX (not imported: this module loads no torch until needed)
UNCHECKED_TAGS = ("epoch",)
"""Lightning logs ``epoch`` with every logging call, so twice at a validation step in any run: not compared."""

TINY_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


def build_policy(path: str, model_config: dict | None = None) -> str:
    """Save an untrained tiny Llama with the word-level arithmetic tokenizer to ``path`` (an "SFT export")."""
    from lit_rlhf.models import build_word_tokenizer
    from lit_rlhf.models.tiny import build_tiny_llama

    tokenizer = build_word_tokenizer()
    build_tiny_llama(tokenizer, model_config or TINY_LLAMA).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_config(path: str, base: str, run_dir: str, overrides: dict, checkpoint: dict | None = None) -> str:
    """Write to ``path`` the config ``base`` (relative to the repository) with ``overrides`` (dotted keys), its run
    folder moved to ``run_dir`` and, if given, the init_args of its first callback (ModelCheckpoint) replaced."""
    import yaml

    with open(os.path.join(ROOT, base)) as f:
        config = yaml.safe_load(f)
    for dotted, value in overrides.items():
        node = config
        *parents, key = dotted.split(".")
        for parent in parents:
            node = node[parent]
        node[key] = value
    logger = config["trainer"]["logger"]["init_args"]
    logger["save_dir"] = os.path.dirname(os.path.dirname(run_dir))
    logger["name"] = os.path.basename(os.path.dirname(run_dir))
    logger["version"] = os.path.basename(run_dir)
    if checkpoint is not None:
        config["trainer"]["callbacks"][0]["init_args"] = checkpoint
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def launch(config: str, ckpt_path: str | None = None) -> subprocess.Popen:
    """Start ``python train.py fit --config <config> [--ckpt_path ...]`` (one thread, output kept for errors)."""
    command = [sys.executable, "train.py", "fit", "--config", config]
    if ckpt_path is not None:
        command += ["--ckpt_path", ckpt_path]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 3600) -> None:
    """Wait for ``process``; raise with the end of its error output if it failed."""
    _, err = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"train.py exited with {process.returncode}:\n{err[-3000:]}")


def kill_at(process: subprocess.Popen, folder: str, moment: str, delay: float, timeout: float = 600) -> str | None:
    """SIGKILL ``process`` after it wrote a new checkpoint to ``folder``: ``delay`` seconds later (``moment="random"``)
    or as soon as a checkpoint write shows up (``moment="writing"``).

    Returns:
        What the kill hit: ``"temporary file present"`` (a write in progress), ``"new last.ckpt"``, ``"random"``, or
        ``None`` when the run finished first.
    """
    last = os.path.join(folder, "last.ckpt")
    before = os.stat(last).st_mtime_ns if os.path.exists(last) else None
    deadline = time.monotonic() + timeout
    hit = None
    while time.monotonic() < deadline and process.poll() is None:
        writing = os.path.isdir(folder) and any(name.endswith(TEMP_SUFFIX) for name in os.listdir(folder))
        new = os.path.exists(last) and os.stat(last).st_mtime_ns != before
        if moment == "writing" and (writing or new):
            hit = "temporary file present" if writing else "new last.ckpt"
            break
        if moment == "random" and new:
            time.sleep(delay)
            hit = "random"
            break
        time.sleep(0.0005)
    if process.poll() is not None:
        return None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return hit


def read_tags(run_dir: str) -> dict[str, list[tuple[int, object]]]:
    """Every tag of ``run_dir`` as TensorBoard reads the folder: ``{tag: [(step, value or text)]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_dir, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags: dict[str, list[tuple[int, object]]] = {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }
    for tag in events.Tags()["tensors"]:
        tags[tag] = [(e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors(tag)]
    return tags


def step_problems(tags: dict[str, list[tuple[int, object]]]) -> list[str]:
    """Tags whose steps repeat or go back (``epoch`` excepted)."""
    problems = []
    for tag, values in tags.items():
        steps = [s for s, _ in values]
        if tag not in UNCHECKED_TAGS and any(b <= a for a, b in zip(steps, steps[1:])):
            problems.append(f"{tag}: steps {steps}")
    return problems


def compare_runs(run_dir: str, reference_dir: str, exports: tuple[str, ...]) -> dict:
    """How the run in ``run_dir`` differs from ``reference_dir``; every list empty means the same run.

    Returns:
        ``{"tensors": number compared, "export_differences": [...], "tags": number compared, "tag_differences":
        [...], "repeated_steps": [...], "sample_rows": number, "sample_differences": bool, "temp_files": [...]}``.
    """
    import torch
    from safetensors.torch import load_file

    from lit_rlhf.tables import read_jsonl

    report: dict = {"tensors": 0, "export_differences": []}
    for export in exports:
        ours = load_file(os.path.join(run_dir, export, "model.safetensors"))
        theirs = load_file(os.path.join(reference_dir, export, "model.safetensors"))
        if ours.keys() != theirs.keys():
            report["export_differences"].append(f"{export}: other tensor names")
            continue
        for name, tensor in ours.items():
            report["tensors"] += 1
            if not torch.equal(tensor, theirs[name]):
                report["export_differences"].append(f"{export}/{name}")
    tags, reference = read_tags(run_dir), read_tags(reference_dir)
    report["tags"] = len(tags)
    report["tag_differences"] = sorted(set(tags) ^ set(reference))
    for tag in sorted(set(tags) & set(reference)):
        if tag in UNCHECKED_TAGS:
            continue
        ours_, theirs_ = ([(s, repr(v)) for s, v in values] for values in (tags[tag], reference[tag]))  # NaN == NaN
        if ours_ != theirs_:
            report["tag_differences"].append(tag)
    report["repeated_steps"] = step_problems(tags)
    rows = read_jsonl(os.path.join(run_dir, "samples.jsonl"))
    report["sample_rows"] = len(rows)
    report["sample_differences"] = rows != read_jsonl(os.path.join(reference_dir, "samples.jsonl"))
    checkpoints = os.path.join(run_dir, "checkpoints")
    report["temp_files"] = [name for name in os.listdir(checkpoints) if name.endswith(TEMP_SUFFIX)]
    return report


def same_run(report: dict) -> bool:
    return not (
        report["export_differences"]
        or report["tag_differences"]
        or report["repeated_steps"]
        or report["sample_differences"]
        or report["temp_files"]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200, help="PPO iterations of the run (trainer.max_steps)")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--checkpoint_every", type=int, default=10, help="iterations between checkpoints")
    parser.add_argument("--val_every", type=int, default=20, help="iterations between validations")
    parser.add_argument("--batch_size", type=int, default=32, help="prompts per iteration")
    parser.add_argument(
        "--max_delay",
        type=float,
        default=None,
        help="longest random delay after a checkpoint (s); "
        "default: the measured time between two checkpoints of the uninterrupted run",
    )
    parser.add_argument("--policy", default=None, help="an HF causal LM folder; default: a tiny untrained Llama")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--keep", default=None, help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args(argv)

    from benchmarks.common import machine_line

    print(machine_line(), flush=True)
    work = args.keep or tempfile.mkdtemp(prefix="kill_resume_")
    policy = args.policy or build_policy(os.path.join(work, "policy"))
    overrides = {
        "model.init_args.policy_name_or_path": policy,
        "model.init_args.max_new_tokens": 12,
        "data.init_args.num_train": 20 * args.batch_size,  # several epochs: kills land mid-epoch and at its ends
        "data.init_args.num_val": 64,
        "data.init_args.batch_size": args.batch_size,
        "data.init_args.eval_batch_size": 64,
        "trainer.max_steps": args.iterations,
        "trainer.val_check_interval": args.val_every,
        "trainer.enable_progress_bar": False,
    }
    checkpoint = {"save_last": True, "every_n_train_steps": args.checkpoint_every, "save_top_k": 0}
    runs = os.path.join(work, "runs", "arithmetic")
    configs = {
        name: write_config(
            os.path.join(work, f"{name}.yaml"),
            "configs/arithmetic/ppo_verifier.yaml",
            os.path.join(runs, name),
            overrides,
            checkpoint,
        )
        for name in ("reference", "killed")
    }

    start = time.perf_counter()
    finish(launch(configs["reference"]))
    reference_s = time.perf_counter() - start
    first, last = _checkpoint_span(os.path.join(runs, "reference"))
    between = (last - first) / max(1, args.iterations // args.checkpoint_every - 1)
    max_delay = args.max_delay if args.max_delay is not None else between
    print(f"uninterrupted run: {reference_s:.0f} s wall, {between:.1f} s between checkpoints", flush=True)

    rng = random.Random(args.seed)
    folder = os.path.join(runs, "killed", "checkpoints")
    start = time.perf_counter()
    process = launch(configs["killed"])
    kills = []
    for k in range(args.kills):
        moment = "writing" if k % 3 == 1 else "random"
        hit = kill_at(process, folder, moment, rng.uniform(0.0, max_delay))
        resumed_from = _checkpoint_iteration(os.path.join(folder, "last.ckpt"))
        kills.append({"kill": k + 1, "moment": moment, "hit": hit, "resumed_from_iteration": resumed_from})
        print(f"kill {k + 1}: {hit or 'run finished first'}; resuming from iteration {resumed_from}", flush=True)
        process = launch(configs["killed"], os.path.join(folder, "last.ckpt"))
    finish(process)
    killed_s = time.perf_counter() - start

    report = compare_runs(os.path.join(runs, "killed"), os.path.join(runs, "reference"), ("hf", "hf_critic"))
    result = {
        "iterations": args.iterations,
        "kills_landed": sum(k["hit"] is not None for k in kills),
        "kills": kills,
        "reference_wall_s": round(reference_s, 1),
        "killed_and_resumed_wall_s": round(killed_s, 1),
        "same_run": same_run(report),
        **report,
    }
    print(json.dumps(result), flush=True)
    return 0 if result["same_run"] else 1


def _checkpoint_span(run_dir: str) -> tuple[float, float]:
    """Wall times of the first and last training event of ``run_dir`` (for the time between checkpoints)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    tag = "objective/score" if "objective/score" in events.Tags()["scalars"] else sorted(events.Tags()["scalars"])[0]
    times = [e.wall_time for e in events.Scalars(tag)]
    return times[0], times[-1]


def _checkpoint_iteration(path: str) -> int | None:
    import torch

    if not os.path.exists(path):
        return None
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


if __name__ == "__main__":
    sys.exit(main())
