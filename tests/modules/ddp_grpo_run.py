"""Two-process CPU (gloo) GRPO run for ``test_grpo_ddp.py``: ``python ddp_grpo_run.py <policy_dir> <out_dir>``.

Lightning's DDP launcher starts rank 1 by re-running this script, so it must be a standalone file. Each rank writes
what it ended with to ``<out_dir>/rank<r>.json`` for the test to compare.
"""

import json
import os
import sys

import lightning as L
import torch

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.modules import GRPOModule
from lit_rlhf.rewards import ArithmeticVerifierReward, LengthReward


class Record(L.Callback):
    """Per rank: the mean reward of each generation batch (its own prompts) and what it ended with."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.local_rewards: list[float] = []

    def on_train_start(self, trainer, pl_module):
        score = pl_module.score

        def recording(rows, completions, finished):
            rewards, stats = score(rows, completions, finished)
            if trainer.training:  # generation batches only, not validation
                self.local_rewards.append(float(rewards.mean()))
            return rewards, stats

        pl_module.score = recording

    def on_train_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        digest = float(sum(p.double().sum() for p in pl_module.model.parameters()))
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(
                {
                    "world_size": trainer.world_size,
                    "metrics": metrics,
                    "weights": digest,
                    "local_rewards": self.local_rewards,
                    "iteration": pl_module.iteration,
                },
                f,
            )


def main(policy_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0)
    module = GRPOModule(
        [ArithmeticVerifierReward("graded_score"), LengthReward(ideal_length=10, unit="characters", scale=0.1)],
        policy_name_or_path=policy_dir,
        num_generations=4,
        max_new_tokens=8,
        num_minibatches=2,
        gradient_accumulation_steps=2,
        group_minibatches=True,  # the shipped configs' options: each prompt computed once, whole groups per step
        shared_prompt_forward=True,
        learning_rate=1e-3,
        beta=0.1,
    )
    data = ArithmeticDataModule(format="prompt", num_train=64, num_val=16, batch_size=4, eval_batch_size=8)
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
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record(out_dir)],
    )
    trainer.fit(module, data)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
