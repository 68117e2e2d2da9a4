"""Two-process CPU (gloo) PPO run for ``test_ppo_ddp.py``: ``python ddp_ppo_run.py <policy_dir> <out_dir> [<ckpt>]``.

Lightning's DDP launcher starts rank 1 by re-running this script, so it must be a standalone file. Each rank writes
what it ended with to ``<out_dir>/rank<r>.json`` for the test to compare. A fresh run gives each rank its own random
stream and saves ``<out_dir>/checkpoints/mid.ckpt`` after iteration 2; with ``<ckpt>`` the run resumes from it.
"""

import json
import os
import sys

import lightning as L
import torch

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.modules import PPOModule
from lit_rlhf.rewards import ArithmeticVerifierReward


class Record(L.Callback):
    """Per rank: the sum and count of whitened advantages of every rollout and the metrics logged at the end."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.advantage_sums: list[tuple[float, int]] = []

    def on_train_start(self, trainer, pl_module):
        rollout = pl_module.rollout  # wrapped once: every rollout is recorded once

        def recording(batch):
            experience, stats = rollout(batch)
            mask = experience.response_mask
            self.advantage_sums.append((float(experience.advantages[mask].sum()), int(mask.sum())))
            return experience, stats

        pl_module.rollout = recording

    def on_train_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        digest = {
            name: float(sum(p.double().sum() for p in module.parameters()))
            for name, module in (("actor", pl_module.model), ("critic", pl_module.critic))
        }
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(
                {
                    "world_size": trainer.world_size,
                    "metrics": metrics,
                    "weights": digest,
                    "advantage_sums": self.advantage_sums,
                    "kl_coef": pl_module.kl_controller.value,
                    "iteration": pl_module.iteration,
                },
                f,
            )


class RankStreams(L.Callback):
    """Seed each rank differently when training starts (the module restores its checkpointed states after this)."""

    def on_train_start(self, trainer, pl_module):
        torch.manual_seed(100 + trainer.global_rank)


def main(policy_dir: str, out_dir: str, resume_from: str | None = None) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0)
    module = PPOModule(
        ArithmeticVerifierReward("graded_score"),
        policy_name_or_path=policy_dir,
        max_new_tokens=8,
        ppo_epochs=1,
        num_minibatches=2,
        gradient_accumulation_steps=2,
        actor_learning_rate=1e-3,
        critic_learning_rate=1e-3,
        adaptive_kl_target=0.5,
    )
    data = ArithmeticDataModule(format="prompt", num_train=64, num_val=16, batch_size=8, eval_batch_size=8)
    trainer = L.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_steps=3,  # iterations
        val_check_interval=3,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        default_root_dir=out_dir,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            RankStreams(),
            Record(out_dir),
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=os.path.join(out_dir, "checkpoints"), filename="mid", every_n_train_steps=2, save_top_k=-1
            ),
        ],
    )
    trainer.fit(module, data, ckpt_path=resume_from)


if __name__ == "__main__":
    main(*sys.argv[1:])
