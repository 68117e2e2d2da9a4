"""Small data in the modules: fewer rows than one batch, and a last batch with fewer rows than ``num_minibatches``.

The training loader keeps a short last batch (``drop_last`` is off), so such a batch trains as a smaller batch:
SFT on the rows there are; PPO and GRPO split it into ``min(num_minibatches, rows)`` non-empty minibatches, each one
optimizer step whose micro-batch loss weights add up to 1.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.modules import GRPOModule, PPOModule, SFTModule
from lit_rlhf.rewards import ArithmeticVerifierReward
from tests.conftest import TINY_MODEL_CONFIG

# Four new tokens are too few for the untrained policy to stop: the modules warn about it, expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Every response of this:RuntimeWarning")


def tiny_trainer(tmp_path, max_steps: int) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        val_check_interval=max_steps,
        check_val_every_n_epoch=None,
    )


class BatchSizes(L.Callback):
    """The rows of each training and validation batch."""

    def __init__(self, key: str):
        self.key, self.train, self.val = key, [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.train.append(batch[self.key].size(0))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val.append(batch[self.key].size(0))


def record_optimizer_steps(module) -> list[tuple[int, list[int], float]]:
    """Wrap ``module.optimizer_step_over`` to record, per optimizer step: the iteration, the rows of each micro-batch
    and the sum of the micro-batch loss weights."""
    steps = []
    original = module.optimizer_step_over

    def spy(optimizer, model, micro_batches, loss_fn, weights, *args, **kwargs):
        rows = [mb.response_mask.size(0) for mb in micro_batches]
        steps.append((module.iteration, rows, float(sum(weights))))
        return original(optimizer, model, micro_batches, loss_fn, weights, *args, **kwargs)

    module.optimizer_step_over = spy
    return steps


def per_iteration(steps) -> dict[int, list[list[int]]]:
    out: dict[int, list[list[int]]] = {}
    for iteration, rows, _ in steps:
        out.setdefault(iteration, []).append(rows)
    return out


def test_sft_trains_and_validates_on_fewer_rows_than_one_batch(tmp_path):
    L.seed_everything(0)
    module = SFTModule(model_config=TINY_MODEL_CONFIG, learning_rate=1e-3, generate_val_batches=1, max_new_tokens=4)
    data = ArithmeticDataModule(format="sft", num_train=3, num_val=2, batch_size=8, eval_batch_size=8)
    sizes = BatchSizes("input_ids")
    trainer = tiny_trainer(tmp_path, max_steps=2)
    trainer.callbacks.append(sizes)
    trainer.fit(module, data)
    assert trainer.global_step == 2
    assert sizes.train == [3, 3]  # one short batch per epoch, nothing dropped
    assert sizes.val == [2]
    assert math.isfinite(float(trainer.callback_metrics["val/loss"]))


def test_ppo_last_batch_smaller_than_num_minibatches(tmp_path, policy_dir):
    L.seed_everything(0)
    module = PPOModule(
        ArithmeticVerifierReward("graded_score"),
        policy_name_or_path=policy_dir,
        max_new_tokens=4,
        ppo_epochs=2,
        num_minibatches=2,
        gradient_accumulation_steps=2,
        actor_learning_rate=1e-3,
        critic_learning_rate=1e-3,
    )
    # 5 prompts in batches of 4: the second iteration has 1 prompt for 2 minibatches.
    data = ArithmeticDataModule(format="prompt", num_train=5, num_val=2, batch_size=4)
    steps = record_optimizer_steps(module)
    trainer = tiny_trainer(tmp_path, max_steps=2)
    trainer.fit(module, data)
    assert module.iteration == 2 and trainer.global_step == 2
    iterations = per_iteration(steps)
    # Each minibatch steps the actor, then the critic, on the same micro-batches; ppo_epochs passes.
    assert iterations[0] == [[1, 1]] * 8  # 2 epochs x 2 minibatches x (actor, critic), 2 prompts in 2 micro-batches
    assert iterations[1] == [[1]] * 4  # 2 epochs x 1 minibatch x (actor, critic): no empty minibatch
    assert all(abs(total - 1.0) < 1e-6 for _, _, total in steps)
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    assert all(torch.isfinite(p).all() for p in module.critic.parameters())
    assert math.isfinite(float(trainer.callback_metrics["loss/policy"]))


def test_grpo_last_batch_smaller_than_num_minibatches(tmp_path, policy_dir):
    L.seed_everything(0)
    module = GRPOModule(
        rewards=[ArithmeticVerifierReward("graded_score")],
        policy_name_or_path=policy_dir,
        num_generations=2,
        max_new_tokens=4,
        num_iterations=1,
        num_minibatches=4,
        group_minibatches=True,
        learning_rate=1e-3,
        beta=0.1,
    )
    # 5 prompts in batches of 2 (4 responses, one per minibatch); the third iteration has 1 prompt, 2 responses.
    data = ArithmeticDataModule(format="prompt", num_train=5, num_val=2, batch_size=2)
    steps = record_optimizer_steps(module)
    trainer = tiny_trainer(tmp_path, max_steps=3)
    trainer.fit(module, data)
    assert module.iteration == 3
    iterations = per_iteration(steps)
    assert iterations[0] == iterations[1] == [[1]] * 4
    assert iterations[2] == [[1]] * 2  # 2 responses for 4 minibatches: 2 steps, none empty
    assert all(abs(total - 1.0) < 1e-6 for _, _, total in steps)
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    assert math.isfinite(float(trainer.callback_metrics["loss/policy"]))
