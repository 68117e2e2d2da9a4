"""GRPO with the vLLM engine on two CPU processes (run by tests/engines/test_vllm_distributed.py, one strategy a run):
``python vllm_distributed_run.py STRATEGY POLICY_DIR OUT_DIR``. Rank 0 saves the trained policy's weights and the
logged engine statistics to ``OUT_DIR/result.pt``,
and whether the process group outlived the engines to ``OUT_DIR/after_fit.pt``."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from lit_rlhf.data import ArithmeticDataModule  # noqa: E402
from lit_rlhf.engines.settings import VLLMSettings  # noqa: E402
from lit_rlhf.modules import GRPOModule  # noqa: E402
from lit_rlhf.rewards import FunctionReward  # noqa: E402
from lit_rlhf.sharding import full_tensor  # noqa: E402
from tests.modules.wiring import digit_fraction  # noqa: E402


class SaveResult(L.Callback):
    """Rank 0 saves the whole policy weights and the logged figures at the end of training (before teardown)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        state = {k: full_tensor(v).detach().clone() for k, v in pl_module.model.state_dict().items()}
        if trainer.global_rank == 0:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            torch.save({"state": state, "metrics": metrics}, os.path.join(self.out_dir, "result.pt"))


def main(strategy: str, policy_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0)
    module = GRPOModule(
        [FunctionReward(digit_fraction)],
        policy_name_or_path=policy_dir,
        num_generations=4,
        max_new_tokens=6,
        learning_rate=3e-3,
        beta=0.0,
        sampling_engine="vllm",
        vllm=VLLMSettings(kv_cache_gib=0.25),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=3,
        default_root_dir=out_dir,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        callbacks=[SaveResult(out_dir)],
    )
    trainer.fit(module, ArithmeticDataModule(format="prompt", num_train=64, num_val=8, batch_size=4))
    # Closing the engines at the end of fit leaves the training's process group to it.
    alive = torch.distributed.is_initialized() and torch.distributed.get_world_size() == 2
    if trainer.global_rank == 0:
        torch.save({"process_group_alive": alive}, os.path.join(out_dir, "after_fit.pt"))


if __name__ == "__main__":
    main(*sys.argv[1:4])
