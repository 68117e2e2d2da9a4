"""A non-finite loss or gradient skips the optimizer step, is counted, and too many in a row stop the run loudly."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.errors import ConfigError, UserError
from lit_rlhf.functional.finite import NonFiniteCounter, all_finite, first_nonfinite
from lit_rlhf.modules import GRPOModule, PPOModule, RewardModule, SFTModule
from lit_rlhf.modules.nonfinite import NonFiniteStepsError
from lit_rlhf.rewards import ArithmeticVerifierReward
from tests.conftest import TINY_MODEL_CONFIG
from tests.helpers import read_events

NAN = float("nan")

# -- the pure pieces -------------------------------------------------------------------------------------------------


def test_all_finite_and_first_nonfinite():
    ok, bad = torch.ones(3), torch.tensor([1.0, math.inf])
    assert bool(all_finite([ok, None, ok]))
    assert not bool(all_finite([ok, bad]))
    assert not bool(all_finite([torch.tensor([[0.0, NAN]])]))
    assert bool(all_finite([]))  # nothing to check: nothing wrong
    assert first_nonfinite([("a", ok), ("b", None), ("c", bad), ("d", torch.tensor(NAN))]) == "c"
    assert first_nonfinite([("a", ok)]) is None


def test_counter_counts_skips_per_optimizer_and_training_steps_in_a_row():
    counter = NonFiniteCounter(["actor", "critic"], limit=2)
    counter.skip("actor", "first")
    counter.skip("actor", "second")  # two skipped steps in one training step: still one bad training step
    assert not counter.end_step() and counter.in_a_row == 1
    assert not counter.end_step() and counter.in_a_row == 0  # a clean training step resets the run
    counter.skip("critic", "third")
    assert not counter.end_step()
    counter.skip("critic", "fourth")
    assert counter.end_step() and counter.in_a_row == 2  # two bad training steps in a row reach the limit
    assert counter.skipped == {"actor": 2, "critic": 2} and counter.last == "fourth"
    restored = NonFiniteCounter(["actor", "critic"], limit=2)
    restored.load_state_dict(counter.state_dict())
    assert restored.skipped == counter.skipped and restored.in_a_row == 2
    never = NonFiniteCounter(["model"], limit=None)
    for _ in range(5):
        never.skip("model", "x")
        assert not never.end_step()


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "3"])
def test_max_nonfinite_steps_must_be_a_positive_integer_or_null(value):
    with pytest.raises(ConfigError, match="model.init_args.max_nonfinite_steps must be an integer >= 1 or null"):
        SFTModule(model_config=TINY_MODEL_CONFIG, max_nonfinite_steps=value)


# -- helpers -----------------------------------------------------------------------------------------------------------


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _moments(optimizer):
    return [t.clone() for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


class Snapshots(L.Callback):
    """Parameters and optimizer moments of each model before and after each training batch."""

    def __init__(self, models):
        self.models = models  # {name: (module attribute, optimizer index)}
        self.before, self.after = {}, {}

    def _take(self, trainer, pl_module):
        return {
            name: (_params(getattr(pl_module, attr)), _moments(trainer.optimizers[index]))
            for name, (attr, index) in self.models.items()
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before[batch_idx] = self._take(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[batch_idx] = self._take(trainer, pl_module)

    def unchanged(self, batch_idx, name):
        (p0, m0), (p1, m1) = self.before[batch_idx][name], self.after[batch_idx][name]
        return all(torch.equal(p0[k], p1[k]) for k in p0) and _same(m0, m1)


def _trainer(tmp_path, steps, callbacks=(), logger=False):
    return L.Trainer(
        max_steps=steps,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )


def _poison_gradient(param, when):
    """Replace ``param``'s gradient by NaN whenever ``when()`` is true."""
    param.register_hook(lambda grad: torch.full_like(grad, NAN) if when() else grad)


# -- SFT and reward model (automatic optimization) ---------------------------------------------------------------------


def _sft(max_nonfinite_steps=3):
    L.seed_everything(0)
    module = SFTModule(model_config=TINY_MODEL_CONFIG, learning_rate=1e-2, max_nonfinite_steps=max_nonfinite_steps)
    return module, ArithmeticDataModule(num_train=64, num_val=8, batch_size=8)


def test_sft_skips_a_step_with_a_nan_loss_counts_it_and_trains_on(tmp_path):
    module, data = _sft()
    batch_loss = module._batch_loss

    def loss_nan_at_step_1(batch):
        loss, stats = batch_loss(batch)
        return (loss * NAN, stats) if module.trainer.global_step == 1 else (loss, stats)

    module._batch_loss = loss_nan_at_step_1
    snapshots = Snapshots({"model": ("model", 0)})
    logger = TensorBoardLogger(str(tmp_path), name="", version="run")
    trainer = _trainer(tmp_path, 4, [snapshots], logger=logger)
    trainer.fit(module, data)
    assert trainer.global_step == 4  # the skipped step still counts for max_steps and the LR schedule
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4
    assert snapshots.unchanged(1, "model")  # no weight and no AdamW moment moved at the bad step
    assert not snapshots.unchanged(2, "model") and not snapshots.unchanged(3, "model")  # and training went on
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())
    scalars, _ = read_events(logger.log_dir)
    assert [value for _, value in sorted(scalars["train/nonfinite_steps"])] == [0.0, 1.0, 1.0, 1.0]


def test_sft_stops_after_max_nonfinite_steps_in_a_row_naming_the_step_and_batch(tmp_path):
    module, data = _sft(max_nonfinite_steps=3)
    trainer = _trainer(tmp_path, 10)
    first = next(p for p in module.model.parameters() if p.requires_grad)
    _poison_gradient(first, lambda: trainer.global_step >= 2)
    with pytest.raises(NonFiniteStepsError) as raised:
        trainer.fit(module, data)
    message = str(raised.value)
    assert isinstance(raised.value, UserError) and "\n" not in message
    assert message.startswith("SFTModule: 3 training steps in a row had a non-finite loss or gradient")
    assert "the last at step 4 (batch 4 of epoch 0): the gradient of model.model.embed_tokens.weight" in message
    assert "--model.init_args.learning_rate" in message and "--model.init_args.max_nonfinite_steps" in message
    assert module.nonfinite.skipped == {"model": 3}


def test_sft_with_max_nonfinite_steps_null_never_stops(tmp_path):
    module, data = _sft(max_nonfinite_steps=None)
    trainer = _trainer(tmp_path, 3)
    _poison_gradient(next(module.model.parameters()), lambda: True)
    before = _params(module.model)
    trainer.fit(module, data)
    assert trainer.global_step == 3 and module.nonfinite.skipped == {"model": 3}
    assert all(torch.equal(before[k], v) for k, v in _params(module.model).items())


def test_reward_model_skips_a_nan_loss_and_stops_on_a_run_of_them(tmp_path):
    L.seed_everything(0)
    module = RewardModule(model_config=TINY_MODEL_CONFIG, learning_rate=3e-3, max_nonfinite_steps=2)
    data = ArithmeticDataModule(format="preference", num_train=64, num_val=8, batch_size=8)
    bad_steps = {1, 3, 4}
    from lit_rlhf.modules import reward as reward_module

    loss_fn = reward_module.bradley_terry_loss

    def poisoned(*args, **kwargs):
        loss, stats = loss_fn(*args, **kwargs)
        return (loss * NAN, stats) if module.trainer.global_step in bad_steps else (loss, stats)

    snapshots = Snapshots({"model": ("model", 0)})
    trainer = _trainer(tmp_path, 8, [snapshots])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reward_module, "bradley_terry_loss", poisoned)
        with pytest.raises(NonFiniteStepsError, match=r"RewardModule: 2 training steps in a row .* step 4 \(batch 4"):
            trainer.fit(module, data)
    assert snapshots.unchanged(1, "model") and not snapshots.unchanged(2, "model") and snapshots.unchanged(3, "model")
    assert "the loss is nan" in module.nonfinite.last
    assert trainer.callback_metrics["train/nonfinite_steps"] == 2  # logged at step 3; step 4 stopped the run


def test_counts_survive_a_checkpoint(tmp_path):
    module, _ = _sft()
    module.nonfinite.skip("model", "x")
    module.nonfinite.end_step()
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    restored, _ = _sft()
    restored.on_load_checkpoint(checkpoint)
    assert restored.nonfinite.skipped == {"model": 1} and restored.nonfinite.in_a_row == 1


# -- PPO and GRPO (manual optimization: each optimizer step inside an iteration) ---------------------------------------


def _ppo(policy_dir, **kwargs):
    L.seed_everything(0)
    module = PPOModule(
        ArithmeticVerifierReward("graded_score"),
        policy_name_or_path=policy_dir,
        max_new_tokens=6,
        ppo_epochs=2,
        num_minibatches=2,
        actor_learning_rate=1e-3,
        critic_learning_rate=1e-3,
        **kwargs,
    )
    return module, ArithmeticDataModule(format="prompt", num_train=32, num_val=8, batch_size=4)


def test_ppo_skips_every_actor_step_of_an_iteration_with_a_nan_policy_loss_and_trains_on(tmp_path, policy_dir):
    module, data = _ppo(policy_dir)
    policy_loss = module._policy_loss

    def nan_in_iteration_1(mb):
        loss, stats = policy_loss(mb)
        return (loss * NAN, stats) if module.iteration == 1 else (loss, stats)

    module._policy_loss = nan_in_iteration_1
    snapshots = Snapshots({"actor": ("model", 0), "critic": ("critic", 1)})
    trainer = _trainer(tmp_path, 3, [snapshots])
    trainer.fit(module, data)
    assert module.iteration == 3
    assert [config.scheduler.last_epoch for config in trainer.lr_scheduler_configs] == [3, 3]  # once per iteration
    assert snapshots.unchanged(1, "actor") and not snapshots.unchanged(1, "critic")  # only the actor's steps skipped
    assert not snapshots.unchanged(2, "actor")  # and the next iteration trained the actor again
    metrics = trainer.callback_metrics
    assert metrics["train/nonfinite_steps/actor"] == 4  # ppo_epochs * num_minibatches actor steps
    assert metrics["train/nonfinite_steps/critic"] == 0
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())


def test_ppo_stops_after_max_nonfinite_iterations_naming_iteration_batch_and_critic(tmp_path, policy_dir):
    module, data = _ppo(policy_dir, max_nonfinite_steps=2)
    head = [p for p in module.critic.parameters() if p.requires_grad][-1]
    _poison_gradient(head, lambda: module.iteration >= 1)
    trainer = _trainer(tmp_path, 6)
    with pytest.raises(NonFiniteStepsError) as raised:
        trainer.fit(module, data)
    message = str(raised.value)
    assert message.startswith("PPOModule: 2 iterations in a row had a non-finite loss or gradient")
    assert "the last at iteration 2 (batch 2 of epoch 0), critic step 4 of the iteration: the gradient of" in message
    assert "(the value loss is " in message and "--model.init_args.critic_learning_rate" in message
    assert module.nonfinite.skipped == {"actor": 0, "critic": 8}
    assert trainer.global_step == 2  # the iteration that stopped the run is not counted


def _grpo(policy_dir, **kwargs):
    L.seed_everything(0)
    module = GRPOModule(
        [ArithmeticVerifierReward("graded_score")],
        policy_name_or_path=policy_dir,
        num_generations=4,
        max_new_tokens=6,
        num_iterations=2,
        num_minibatches=2,
        learning_rate=1e-3,
        beta=0.1,
        **kwargs,
    )
    return module, ArithmeticDataModule(format="prompt", num_train=32, num_val=8, batch_size=2)


def test_grpo_skips_nan_steps_then_stops_on_a_run_of_them(tmp_path, policy_dir):
    module, data = _grpo(policy_dir, max_nonfinite_steps=2)
    loss = module._loss
    bad = {0, 2, 3}

    def poisoned(mb):
        value, stats = loss(mb)
        return (value + NAN, stats) if module.iteration in bad else (value, stats)  # NaN loss, finite gradient

    module._loss = poisoned
    snapshots = Snapshots({"policy": ("model", 0)})
    trainer = _trainer(tmp_path, 8, [snapshots])
    with pytest.raises(NonFiniteStepsError) as raised:
        trainer.fit(module, data)
    assert snapshots.unchanged(0, "policy") and not snapshots.unchanged(1, "policy")
    assert snapshots.unchanged(2, "policy")
    assert "iteration 3 (batch 3 of epoch 0), policy step 4 of the iteration: the policy loss is nan" in str(
        raised.value
    )
    assert "--model.init_args.learning_rate" in str(raised.value)
    assert trainer.callback_metrics["train/nonfinite_steps"] == 8  # iterations 0 and 2, as logged at iteration 2


# -- 16-mixed: the GradScaler skips overflowing gradients itself ------------------------------------------------------


def _amp_trainer(tmp_path, steps, callbacks=()):
    from lightning.pytorch.plugins.precision import MixedPrecision

    # 16-mixed with its GradScaler, on the CPU (what `precision: 16-mixed` builds on a GPU).
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16))
    trainer = L.Trainer(
        max_steps=steps,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
        plugins=[plugin],
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    return trainer, plugin.scaler


def test_under_16_mixed_overflowing_gradients_are_left_to_the_grad_scaler(tmp_path):
    module, data = _sft(max_nonfinite_steps=2)
    trainer, scaler = _amp_trainer(tmp_path, 5)
    _poison_gradient(next(module.model.parameters()), lambda: trainer.global_step in (1, 2, 3))
    trainer.fit(module, data)  # three overflows in a row: the scaler's business, not a reason to stop
    assert trainer.global_step == 5 and module.nonfinite.skipped == {"model": 0}
    assert scaler.get_scale() == 2.0**16 / 2**3  # it skipped them and halved its scale at each


@pytest.mark.parametrize("adamw_implementation", [None, "fused"])
def test_under_16_mixed_a_nan_loss_with_finite_gradients_is_skipped_and_counted(tmp_path, adamw_implementation):
    L.seed_everything(0)
    module = SFTModule(model_config=TINY_MODEL_CONFIG, learning_rate=1e-2, adamw_implementation=adamw_implementation)
    data = ArithmeticDataModule(num_train=64, num_val=8, batch_size=8)
    batch_loss = module._batch_loss

    def nan_loss_at_step_1(batch):  # the loss is NaN, its gradient is not: only the loss check can catch it
        loss, stats = batch_loss(batch)
        return (loss + NAN, stats) if module.trainer.global_step == 1 else (loss, stats)

    module._batch_loss = nan_loss_at_step_1
    snapshots = Snapshots({"model": ("model", 0)})
    trainer, _ = _amp_trainer(tmp_path, 3, [snapshots])
    trainer.fit(module, data)
    assert snapshots.unchanged(1, "model") and not snapshots.unchanged(2, "model")
    assert module.nonfinite.skipped == {"model": 1}


# -- DDP: every rank skips the step that one rank found non-finite ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_under_ddp_every_rank_skips_the_step_one_rank_found_non_finite(tmp_path, policy_dir, stage):
    import os

    from tests.helpers import run_two_rank_script

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_nonfinite_run.py")
    ranks = run_two_rank_script(script, [stage, policy_dir, str(tmp_path)], tmp_path)
    assert [r["world_size"] for r in ranks] == [2, 2]
    expected = {"sft": {"model": 1}, "grpo": {"policy": 2}}[stage]  # GRPO: both steps of iteration 1
    assert [r["skipped"] for r in ranks] == [expected, expected]  # only rank 1's loss was NaN
    for rank in ranks:
        assert rank["before"][1] == rank["after"][1]  # the step was skipped on rank 0 too
        assert rank["before"][2] != rank["after"][2]  # and training went on
    assert ranks[0]["after"] == ranks[1]["after"]  # the replicas stayed identical
