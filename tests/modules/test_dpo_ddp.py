"""Two ranks (CPU, gloo) train DPO as one process does on the same pairs: under DDP with precomputed reference
log-probabilities, under FSDP2 with the sharded reference scoring on the fly."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_dpo_run.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_two_ranks(policy_dir: str, out_dir, precompute: str, strategy: str) -> list[dict]:
    out_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, SCRIPT, policy_dir, str(out_dir), "2", precompute, strategy],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def run_one_process(policy_dir: str, out_dir, precompute: str) -> dict:
    out_dir.mkdir()
    spec = importlib.util.spec_from_file_location("ddp_dpo_run", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    threads = torch.get_num_threads()
    try:
        script.main(policy_dir, str(out_dir), "1", precompute)
    finally:
        torch.set_num_threads(threads)
    return torch.load(out_dir / "rank0.pt", weights_only=False)


@pytest.mark.slow  # two processes start: about 15 s each on 2 cores
@pytest.mark.parametrize(("strategy", "precompute"), [("ddp", "1"), ("fsdp2", "0")])
def test_two_ranks_train_dpo_as_one_process(tmp_path, policy_dir, strategy, precompute):
    single = run_one_process(policy_dir, tmp_path / "one", precompute)
    ranks = run_two_ranks(policy_dir, tmp_path / "two", precompute, strategy)
    assert single["world_size"] == 1 and [r["world_size"] for r in ranks] == [2, 2]
    # every rank holds every pair's reference log-probabilities, the single process's count
    assert [r["cache_size"] for r in ranks] == [single["cache_size"]] * 2
    assert (single["cache_size"] > 0) == (precompute == "1")
    # each step: the mean of the ranks' losses (8 pairs each) is the single process's loss over the 16 pairs
    for step, expected in enumerate(single["losses"]):
        mean = (ranks[0]["losses"][step] + ranks[1]["losses"][step]) / 2
        assert abs(mean - expected) < 1e-5, step
    for key, expected in single["model"].items():
        for rank in ranks:
            torch.testing.assert_close(rank["model"][key], expected, atol=1e-5, rtol=0, msg=key)
    # validation over the whole set: each rank scores its share, the metrics are over all pairs
    for name, expected in single["val"].items():
        for rank in ranks:
            assert abs(rank["val"][name] - expected) < 1e-5, name
