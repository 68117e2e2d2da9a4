"""DPO on one data set, in one process or split over two (CPU, gloo), for ``test_dpo_ddp.py``.

``python ddp_dpo_run.py <policy_dir> <out_dir> <devices> <precompute> [<strategy>]`` trains 2 optimizer steps over
32 synthetic arithmetic pairs (a global batch of 16: 16 pairs on one device, 8 on each of two ranks; the ranks' shares
of a step are the pairs the single process takes in that step), and rank ``r`` writes ``<out_dir>/rank<r>.pt``: the
training losses, the validation metrics and the final (whole) weights. With ``precompute`` 1 the reference
log-probabilities are precomputed, each rank scoring part of the pairs and sharing them. Lightning's DDP launcher
starts rank 1 by re-running this script, so it is a standalone file.
"""

import os
import sys

import lightning as L
import torch

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.modules import DPOModule
from lit_rlhf.sharding import full_tensor

GLOBAL_BATCH = 16


class Record(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module):
        state = {k: full_tensor(v).detach().clone() for k, v in pl_module.model.state_dict().items()}
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        cache = 0 if pl_module.ref_cache is None else len(pl_module.ref_cache)
        record = {"world_size": trainer.world_size, "losses": self.losses, "model": state, "val": metrics}
        record["cache_size"] = cache
        torch.save(record, os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))


def main(policy_dir: str, out_dir: str, devices: str, precompute: str = "0", strategy: str = "ddp") -> None:
    torch.set_num_threads(1)
    devices = int(devices)
    L.seed_everything(0)
    module = DPOModule(
        policy_dir,
        learning_rate=1e-3,
        beta=0.5,
        max_new_tokens=4,
        precompute_ref_logps=precompute == "1",
        model_config={"attention_dropout": 0.0},
    )
    data = ArithmeticDataModule(
        format="preference", num_train=2 * GLOBAL_BATCH, num_val=8, batch_size=GLOBAL_BATCH // devices
    )
    trainer = L.Trainer(
        strategy=strategy if devices > 1 else "auto",
        accelerator="cpu",
        devices=devices,
        max_steps=2,
        val_check_interval=2,
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
    main(*sys.argv[1:])
