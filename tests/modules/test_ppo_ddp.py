import os

import pytest

from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.models.tiny import build_tiny_llama
from tests.conftest import TINY_MODEL_CONFIG
from tests.helpers import run_two_rank_script

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_ppo_run.py")


def run_ddp(policy, out_dir, *resume_from):
    return run_two_rank_script(SCRIPT, [policy, str(out_dir), *resume_from], out_dir)


@pytest.mark.slow  # two processes, two fits: run by make test-slow
def test_ppo_under_two_process_ddp_keeps_ranks_in_step(tmp_path):
    tokenizer = build_word_tokenizer()
    policy = str(tmp_path / "sft")
    build_tiny_llama(tokenizer, TINY_MODEL_CONFIG).save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    ranks = run_ddp(policy, tmp_path)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["iteration"] for r in ranks] == [3, 3]
    # Gradients are averaged before every step of both optimizers: the two replicas stay identical.
    assert ranks[0]["weights"] == ranks[1]["weights"]
    # Rollout statistics are averaged over ranks before the adaptive KL controller sees them and before logging.
    assert ranks[0]["kl_coef"] == ranks[1]["kl_coef"]
    for name in ("objective/score", "objective/kl", "loss/policy", "loss/value", "val/exact_match", "val/reward"):
        assert ranks[0]["metrics"][name] == pytest.approx(ranks[1]["metrics"][name], abs=1e-6), name
    # Advantages are whitened over both ranks' tokens: each rank's own mean is off zero, the global mean is zero.
    for (sum0, n0), (sum1, n1) in zip(ranks[0]["advantage_sums"], ranks[1]["advantage_sums"]):
        assert abs(sum0 / n0) > 1e-3 and abs(sum1 / n1) > 1e-3
        assert (sum0 + sum1) / (n0 + n1) == pytest.approx(0.0, abs=1e-5)

    # Resume from after iteration 2: every rank continues its own random stream (its checkpointed RNG states, not
    # rank 0's), so iteration 3 samples the same responses, with the same advantages, as the uninterrupted run.
    assert ranks[0]["advantage_sums"][2] != ranks[1]["advantage_sums"][2]  # the ranks' streams differ
    (tmp_path / "resumed").mkdir()
    resumed = run_ddp(policy, tmp_path / "resumed", str(tmp_path / "checkpoints" / "mid.ckpt"))
    for rank in range(2):
        assert resumed[rank]["iteration"] == 3
        assert resumed[rank]["advantage_sums"] == [pytest.approx(ranks[rank]["advantage_sums"][2], abs=1e-5)], rank
        assert resumed[rank]["weights"] == pytest.approx(ranks[rank]["weights"], rel=1e-6)
