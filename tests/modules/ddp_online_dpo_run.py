"""CPU (gloo) online-DPO runs for ``test_online_dpo.py``.

``python ddp_online_dpo_run.py <policy_dir> <out_dir> <devices>`` trains 2 rounds on the 8 prompts of a data set that
is exactly one global batch (8 prompts on one device, 4 on each of two ranks), with sampling replaced by fixed answers
that depend only on the prompt, the answer's place among its prompt's answers and the round
(:class:`~tests.modules.ddp_grpo_run.PromptKeyedSampler`): both layouts then pair the same answers, but the two ranks
hold different numbers of pairs. Rank ``r`` writes ``<out_dir>/rank<r>.pt``: the gradient of every optimizer step,
the final policy weights, the logged metrics and its own pair counts.

Lightning's launcher starts rank 1 by re-running this script, so it must be a standalone file.
"""

import os
import sys

import lightning as L
import torch

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.modules import OnlineDPOModule, engine_sampling
from lit_rlhf.rewards import FunctionReward
from tests.modules.ddp_grpo_run import GLOBAL_BATCH, RESPONSE_WORDS, PromptKeyedSampler
from tests.modules.wiring import digit_fraction, perturb


class RecordSteps(L.Callback):
    """The gradient of every optimizer step and, at the end, the policy, the metrics and this rank's pair counts."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.gradients: list[torch.Tensor] = []
        self.local_pairs: list[int] = []

    def on_train_start(self, trainer, pl_module):
        sample_round = pl_module.sample_round

        def recording(batch):
            answers, chosen, rejected, sums = sample_round(batch)
            self.local_pairs.append(len(chosen))
            return answers, chosen, rejected, sums

        pl_module.sample_round = recording

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        self.gradients.append(torch.cat([grad.reshape(-1) for grad in grads]).detach().clone())

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {
                "world_size": trainer.world_size,
                "iteration": pl_module.iteration,
                "gradients": self.gradients,
                "local_pairs": self.local_pairs,
                "policy": {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()},
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            },
            os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"),
        )


def same_global_batch(policy_dir: str, out_dir: str, devices: str) -> None:
    """2 online-DPO rounds on one global batch of ``GLOBAL_BATCH`` prompts over ``devices`` processes."""
    torch.set_num_threads(1)
    devices = int(devices)
    L.seed_everything(0)
    module = OnlineDPOModule(
        [FunctionReward(digit_fraction)],
        policy_name_or_path=policy_dir,
        samples_per_prompt=4,
        max_new_tokens=RESPONSE_WORDS + 1,
        pair_rule="all_pairs",  # pair counts differ between prompts, so between ranks
        num_epochs=2,
        num_minibatches=1,  # a minibatch of several would be a random draw of each rank's own pairs
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        beta=0.1,
        max_grad_norm=1e3,  # no clipping: a clipped gradient would hide a wrong weighting of the ranks' pairs
    )
    perturb(module.model, std=0.05, seed=1)  # a policy away from its reference
    engine_sampling.generate = PromptKeyedSampler(module)
    data = ArithmeticDataModule(
        format="prompt", num_train=GLOBAL_BATCH, num_val=8, batch_size=GLOBAL_BATCH // devices, eval_batch_size=8
    )
    trainer = L.Trainer(
        strategy="ddp" if devices > 1 else "auto",
        accelerator="cpu",
        devices=devices,
        max_steps=2,  # rounds, each over the whole data set
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=out_dir,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RecordSteps(out_dir)],
    )
    trainer.fit(module, data)


if __name__ == "__main__":
    same_global_batch(*sys.argv[1:4])
