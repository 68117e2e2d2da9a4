"""Two-process CPU (gloo) run for ``test_nonfinite_guard.py``: ``python ddp_nonfinite_run.py <sft|grpo> <policy_dir>
<out_dir>``. Only rank 1's loss is NaN at one step (its gradients stay finite); every rank must skip that step.

Lightning's DDP launcher starts rank 1 by re-running this script, so it must be a standalone file. Each rank writes
what it saw to ``<out_dir>/rank<r>.json``.
"""

import json
import os
import sys

import lightning as L
import torch

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.modules import GRPOModule, SFTModule
from lit_rlhf.rewards import LengthReward

TINY_MODEL_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
BAD_STEP = 1


def digest(module) -> float:
    return float(sum(p.double().sum() for p in module.model.parameters()))


class Record(L.Callback):
    """Per rank: the weights' digest before and after each training batch, and the skipped-step counts."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.before: list[float] = []
        self.after: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before.append(digest(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append(digest(pl_module))

    def on_train_end(self, trainer, pl_module):
        record = {
            "world_size": trainer.world_size,
            "before": self.before,
            "after": self.after,
            "skipped": pl_module.nonfinite.skipped,
        }
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)


def main(stage: str, policy_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0)
    if stage == "sft":
        module = SFTModule(model_config=TINY_MODEL_CONFIG, learning_rate=1e-2)
        data = ArithmeticDataModule(num_train=64, num_val=8, batch_size=4)
        batch_loss = module._batch_loss

        def poisoned(batch):
            loss, stats = batch_loss(batch)
            bad = module.global_rank == 1 and module.trainer.global_step == BAD_STEP
            return (loss + float("nan"), stats) if bad else (loss, stats)

        module._batch_loss = poisoned
    else:
        module = GRPOModule(
            [LengthReward(ideal_length=10, unit="characters", scale=0.1)],  # rewards differ within groups
            policy_name_or_path=policy_dir,
            num_generations=4,
            max_new_tokens=6,
            num_minibatches=2,
            learning_rate=1e-3,
        )
        data = ArithmeticDataModule(format="prompt", num_train=32, num_val=8, batch_size=2)
        loss_fn = module._loss

        def poisoned(mb):
            loss, stats = loss_fn(mb)
            bad = module.global_rank == 1 and module.iteration == BAD_STEP
            return (loss + float("nan"), stats) if bad else (loss, stats)

        module._loss = poisoned
    trainer = L.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_steps=3,
        limit_val_batches=0,
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
    main(*sys.argv[1:4])
