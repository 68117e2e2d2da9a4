"""The vLLM engine under DDP and FSDP2 (two CPU processes, one engine each): FSDP2, whose engines are fed weights
gathered tensor by tensor, trains exactly as DDP, whose engines are fed whole ones; closing the engines leaves the
training's process group alive."""

import os
import subprocess
import sys

import pytest
import torch

from tests.engines.test_vllm_modules import vllm_policy_dir  # noqa: F401
from tests.helpers import needs_vllm

pytestmark = needs_vllm()

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vllm_distributed_run.py")


def _run(strategy: str, policy_dir: str, out_dir) -> dict:
    out_dir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, SCRIPT, strategy, policy_dir, str(out_dir)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(out_dir / "after_fit.pt")["process_group_alive"]
    return torch.load(out_dir / "result.pt", weights_only=False)


def test_fsdp2_with_vllm_trains_as_ddp_with_vllm(tmp_path, vllm_policy_dir):  # noqa: F811
    ddp = _run("ddp", vllm_policy_dir, tmp_path / "ddp")
    fsdp2 = _run("fsdp2", vllm_policy_dir, tmp_path / "fsdp2")
    for name, value in ddp["state"].items():
        torch.testing.assert_close(fsdp2["state"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    for result in (ddp, fsdp2):
        assert result["metrics"]["engine/logprob_gap_mean"] < 1e-4
    assert ddp["metrics"]["reward"] == pytest.approx(fsdp2["metrics"]["reward"], abs=1e-6)
