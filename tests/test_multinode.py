"""Two "nodes" of one process each on loopback: ``torchrun --nnodes 2 --node-rank {0,1}`` on 127.0.0.1, each running
``train.py fit --config configs/arithmetic/sft.yaml --trainer.num_nodes 2 --trainer.devices 1`` (the command
docs/distributed.md gives for several machines), under DDP and under FSDP2.

Each node runs in a working directory of its own and every path in the command is absolute, so anything a process
writes at a relative path would show up in its own directory: rank 0 writes the run folder, rank 1 nothing outside it
(under FSDP2 its checkpoint shard goes into the run folder, as on a shared file system).

The SLURM test starts two processes with the variables ``srun`` sets for two nodes of one task each, running the
sbatch script's command of docs/distributed.md (Lightning's own requeue off, ``--ckpt_path last``): a first start
from scratch, then a longer run resuming from ``last.ckpt``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

import pytest
import torch

from benchmarks.kill_resume import write_config
from tests.conftest import TINY_MODEL_CONFIG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train.py")
TINY_SFT = {
    "model.init_args.model_config": TINY_MODEL_CONFIG,
    "model.init_args.max_new_tokens": 8,
    "data.init_args.num_train": 64,
    "data.init_args.num_val": 8,
    "data.init_args.batch_size": 8,
    "data.init_args.eval_batch_size": 8,
    "trainer.max_steps": 4,
    "trainer.val_check_interval": 4,
    "trainer.enable_progress_bar": False,
}
CHECKPOINT = {"save_last": True, "every_n_train_steps": 2, "save_top_k": 0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment with one thread, without any SLURM variables (Lightning would take its ranks from them), plus
    ``extra``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SLURM_")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, **extra}


def run_all(launches: list[tuple[list[str], dict[str, str], Any]], timeout: float = 300) -> list[tuple[int, str, str]]:
    """Start every (command, environment, working directory) at once and wait for all; each one's (exit status,
    stdout, stderr). Any process still running at the timeout is killed."""
    processes = [
        subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for command, env, cwd in launches
    ]
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=timeout)
            results.append((process.returncode, out.decode(errors="replace"), err.decode(errors="replace")))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


def launch_two_nodes(tmp_path, strategy: str) -> tuple[str, list[tuple[int, str, str]]]:
    """Run the two nodes' torchrun commands at once; return the run folder and each node's (exit status, stdout,
    stderr)."""
    run_dir = str(tmp_path / "runs" / "arithmetic" / strategy)
    base = "configs/arithmetic/sft.yaml"
    config = write_config(str(tmp_path / f"{strategy}.yaml"), base, run_dir, TINY_SFT, CHECKPOINT)
    port = free_port()
    launches = []
    for node_rank in range(2):
        cwd = tmp_path / f"{strategy}-node{node_rank}"
        cwd.mkdir()
        command = [
            *(sys.executable, "-m", "torch.distributed.run"),  # = .venv/bin/torchrun
            *("--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node_rank)),
            *("--master-addr", "127.0.0.1", "--master-port", str(port)),
            *(TRAIN, "fit", "--config", config),
            *("--trainer.accelerator", "cpu", "--trainer.num_nodes", "2", "--trainer.devices", "1"),
            *("--trainer.strategy", strategy, "--trainer.default_root_dir", str(tmp_path / "root")),
        ]
        launches.append((command, clean_env(), cwd))
    return run_dir, run_all(launches)


def node_report(results: list[tuple[int, str, str]]) -> str:
    return "\n".join(
        f"--- node {rank}: exit status {code}\nstdout (end):\n{out[-1500:]}\nstderr (end):\n{err[-3000:]}"
        for rank, (code, out, err) in enumerate(results)
    )


def files_under(folder) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(parent, name), folder) for parent, _, names in os.walk(folder) for name in names
    )


def read_meta(last: str, strategy: str) -> dict:
    if strategy == "fsdp2":
        assert os.path.isdir(last), f"{last} is not a folder"
        shards = sorted(name for name in os.listdir(last) if name.endswith(".distcp"))
        assert shards == ["__0_0.distcp", "__1_0.distcp"], os.listdir(last)  # one shard per process
        return torch.load(os.path.join(last, "meta.pt"), weights_only=True)["lit_rlhf"]
    assert os.path.isfile(last), f"{last} is not a file"
    return torch.load(last, weights_only=True)["lit_rlhf"]


# About 10-20 s each on 2 CPU cores: FSDP2 (the sharded checkpoint written by both nodes into one folder) runs in the
# default suite, DDP with the slow tests.
@pytest.mark.parametrize("strategy", [pytest.param("ddp", marks=pytest.mark.slow), "fsdp2"])
def test_two_nodes_of_one_process_train_sft_under_torchrun(tmp_path, strategy):
    run_dir, results = launch_two_nodes(tmp_path, strategy)
    report = node_report(results)
    assert [code for code, _, _ in results] == [0, 0], report

    # Lightning read the ranks from torchrun's environment: one process per node, world size 2.
    for node_rank, (_, out, err) in enumerate(results):
        assert f"GLOBAL_RANK: {node_rank}, MEMBER: {node_rank + 1}/2" in out + err, report

    meta = read_meta(os.path.join(run_dir, "checkpoints", "last.ckpt"), strategy)
    assert meta["world_size"] == 2 and len(meta["rng_states_per_rank"]) == 2, meta.keys()
    assert meta["run"]["batch_size"] == TINY_SFT["data.init_args.batch_size"]

    # Rank 0 alone wrote the run folder: one TensorBoard file, one config; the other node's directory stays empty.
    files = files_under(run_dir)
    assert len([f for f in files if "tfevents" in os.path.basename(f)]) == 1, files
    assert "config.yaml" in files and "hf/config.json" in files, files
    assert not any(".tmp" in f or ".old-" in f for f in files), files
    for node_rank in range(2):
        assert files_under(tmp_path / f"{strategy}-node{node_rank}") == [], node_rank
    assert not os.path.exists(tmp_path / "root") or files_under(tmp_path / "root") == []

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(os.path.join(run_dir, "hf"))
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(run_dir, "hf"))
    assert model.config.hidden_size == TINY_MODEL_CONFIG["hidden_size"]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    ids = tokenizer("make a series", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()


SLURM_REQUEUE_OFF = (
    '{"class_path": "lightning.fabric.plugins.environments.SLURMEnvironment", "init_args": {"auto_requeue": false}}'
)


def launch_srun_tasks(tmp_path, config: str, run_dir: str, *extra: str) -> list[tuple[int, str, str]]:
    """The two tasks ``srun`` would start for ``#SBATCH --nodes=2 --ntasks-per-node=1``: the SLURM variables of each
    on 127.0.0.1, and docs/distributed.md's command (Lightning's own requeue off, ``--ckpt_path last``)."""
    port = free_port()
    launches = []
    for rank in range(2):
        env = clean_env(
            SLURM_NTASKS="2",
            SLURM_NTASKS_PER_NODE="1",
            SLURM_NNODES="2",
            SLURM_PROCID=str(rank),
            SLURM_LOCALID="0",
            SLURM_NODEID=str(rank),
            SLURM_JOB_ID="4242",
            SLURM_JOB_NAME="sft",
            SLURM_NODELIST="127.0.0.1",
            MASTER_PORT=str(port),
        )
        command = [
            *(sys.executable, TRAIN, "fit", "--config", config),
            *("--trainer.accelerator", "cpu", "--trainer.num_nodes", "2", "--trainer.devices", "1"),
            *("--trainer.strategy", "fsdp2", "--trainer.default_root_dir", run_dir),
            *("--trainer.plugins", SLURM_REQUEUE_OFF, "--ckpt_path", "last", *extra),
        ]
        launches.append((command, env, tmp_path))
    return run_all(launches)


@pytest.mark.slow
def test_srun_tasks_start_then_resume_from_last_with_lightnings_requeue_off(tmp_path):
    run_dir = str(tmp_path / "runs" / "arithmetic" / "slurm")
    config = write_config(str(tmp_path / "slurm.yaml"), "configs/arithmetic/sft.yaml", run_dir, TINY_SFT, CHECKPOINT)

    first = launch_srun_tasks(tmp_path, config, run_dir)
    assert [code for code, _, _ in first] == [0, 0], node_report(first)
    text = "".join(out + err for _, out, err in first)
    assert "no last checkpoint available" in text and "Restoring states" not in text, node_report(first)
    assert "auto-requeueing enabled" not in text, node_report(first)  # no SIGUSR1 handler of Lightning's
    for rank in range(2):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in text, node_report(first)

    steps = TINY_SFT["trainer.max_steps"] + 2
    again = launch_srun_tasks(tmp_path, config, run_dir, "--trainer.max_steps", str(steps))
    assert [code for code, _, _ in again] == [0, 0], node_report(again)
    last = os.path.join(run_dir, "checkpoints", "last.ckpt")
    assert f"Restoring states from the checkpoint path at {last}" in "".join(o + e for _, o, e in again)
    meta = torch.load(os.path.join(last, "meta.pt"), weights_only=True)
    assert meta["global_step"] == steps and meta["lit_rlhf"]["world_size"] == 2
    assert not [name for name in os.listdir(run_dir) if name.startswith("hpc_ckpt_")]
