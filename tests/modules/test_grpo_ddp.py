"""Two ranks (CPU, gloo) train GRPO together: under DDP the replicas stay in step with the real sampler, and under
DDP and FSDP2 they train exactly as one process does on the same global batch, with every weight trained and with
LoRA adapters (the reference then the policy with its adapters off)."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from lit_rlhf.modules import engine_sampling
from tests.helpers import run_two_rank_script

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_grpo_run.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_grpo_under_two_process_ddp_keeps_ranks_in_step(tmp_path, policy_dir):
    ranks = run_two_rank_script(SCRIPT, [policy_dir, str(tmp_path)], tmp_path)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["iteration"] for r in ranks] == [3, 3]
    # Each rank samples and scores its own prompts...
    assert ranks[0]["local_rewards"] != ranks[1]["local_rewards"]
    # ...but gradients are averaged before every optimizer step, so the replicas stay identical,
    assert ranks[0]["weights"] == ranks[1]["weights"]
    # and logged statistics are the mean over ranks.
    for name in ("reward", "reward_std", "kl", "loss/policy", "val/exact_match", "val/reward"):
        assert ranks[0]["metrics"][name] == pytest.approx(ranks[1]["metrics"][name], abs=1e-6), name
    local_mean = sum(sum(r["local_rewards"][-1:]) for r in ranks) / 2
    assert ranks[0]["metrics"]["reward"] == pytest.approx(local_mean, abs=1e-6)


def run_two_ranks(policy_dir: str, out_dir, strategy: str, variant: str = "full") -> list[dict]:
    out_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, SCRIPT, policy_dir, str(out_dir), strategy, "2", "same-global-batch", variant],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def run_one_process(policy_dir: str, out_dir, monkeypatch, variant: str = "full") -> dict:
    """The same script's run with one device, in this process (the sampler it installs is undone afterwards)."""
    out_dir.mkdir()
    spec = importlib.util.spec_from_file_location("ddp_grpo_run", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(engine_sampling, "generate", engine_sampling.generate)
    threads = torch.get_num_threads()
    try:
        script.same_global_batch(policy_dir, str(out_dir), "auto", "1", variant)
    finally:
        torch.set_num_threads(threads)
    return torch.load(out_dir / "rank0.pt", weights_only=False)


@pytest.mark.parametrize(
    ("strategy", "variant"),
    [
        ("ddp", "full"),
        pytest.param("fsdp2", "full", marks=pytest.mark.slow),  # PPO's test keeps an FSDP2 case fast
        pytest.param("ddp", "lora", marks=pytest.mark.slow),
        pytest.param("fsdp2", "lora", marks=pytest.mark.slow),
    ],
)
def test_two_ranks_train_grpo_exactly_as_one_process_on_the_same_global_batch(
    tmp_path, policy_dir, monkeypatch, strategy, variant
):
    single = run_one_process(policy_dir, tmp_path / "one", monkeypatch, variant)
    ranks = run_two_ranks(policy_dir, tmp_path / "two", strategy, variant)
    assert single["world_size"] == 1 and [r["world_size"] for r in ranks] == [2, 2]
    assert single["iteration"] == ranks[0]["iteration"] == ranks[1]["iteration"] == 2

    # Every optimizer step (2 iterations x 2 passes) applied the global batch's gradient: the mean of the ranks'
    # gradients, not their sum (the KL term to the reference, sharded too under FSDP2, included).
    assert len(single["gradients"]) == 4
    for rank in ranks:
        assert len(rank["gradients"]) == len(single["gradients"])
    for step, expected in enumerate(single["gradients"]):
        assert expected.norm() > 0, step
        scale = float(expected.abs().max())
        for rank in ranks:
            # float32 rounding of sums taken in another order: far below the factor 2 of a sum over 2 ranks
            assert float((rank["gradients"][step] - expected).abs().max()) <= 1e-5 * scale, step

    # The weights after those steps and the logged statistics (means over the ranks) are the same. AdamW divides
    # each gradient element by its own running magnitude, so an element whose gradient is about as small as the
    # rounding above moves by up to a few 1e-6 more in one layout: far below the 4e-3 the 4 steps move a weight.
    for key, expected in single["policy"].items():
        for rank in ranks:
            torch.testing.assert_close(rank["policy"][key], expected, atol=1e-5, rtol=0, msg=key)
    assert single["metrics"]["kl"] > 0 and single["metrics"]["reward_std"] > 0
    for name in ("reward", "reward_std", "kl", "loss/policy", "policy/ratio", "policy/clipfrac"):
        for rank in ranks:
            assert rank["metrics"][name] == pytest.approx(single["metrics"][name], rel=1e-5, abs=1e-7), name

    if variant == "lora":  # each step's gradient is over the adapters alone
        state = single["policy"]
        trained = [k for k in state if ".lora_A." in k or ".lora_B." in k]
        assert any(".lora_B." in k for k in trained)
        size = sum(state[k].numel() for k in trained)
        assert size < sum(value.numel() for value in state.values()) / 2
        assert {g.numel() for g in single["gradients"]} == {size}
