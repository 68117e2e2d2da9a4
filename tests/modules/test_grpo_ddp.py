import os

import pytest

from tests.helpers import run_two_rank_script

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_grpo_run.py")


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
