import lightning as L
import pytest
import torch

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.modules import PPOModule
from lit_rlhf.rewards import ArithmeticVerifierReward

PPO_METRICS = (
    "objective/score",
    "objective/kl",
    "objective/entropy",
    "objective/rlhf_reward",
    "objective/non_score_reward",
    "objective/kl_coef",
    "policy/approxkl",
    "policy/clipfrac",
    "policy/entropy",
    "loss/policy",
    "loss/value",
    "val/clipfrac",
    "val/ratio",
    "val/ratio_var",
    "val/explained_variance",
    "rollout/response_length",
    "rollout/eos_rate",
    "lr/actor",
    "lr/critic",
    "val/exact_match",
    "val/graded_score",
    "val/reward",
    "val/eos_rate",
)


def make(tmp_path, policy_dir, iterations, **module_kwargs):
    L.seed_everything(0)
    module = PPOModule(
        ArithmeticVerifierReward("graded_score"),
        policy_name_or_path=policy_dir,
        max_new_tokens=8,
        ppo_epochs=2,
        num_minibatches=2,
        actor_learning_rate=1e-3,
        critic_learning_rate=1e-3,
        **module_kwargs,
    )
    data = ArithmeticDataModule(format="prompt", num_train=64, num_val=16, batch_size=8)
    trainer = L.Trainer(
        max_steps=iterations,  # one training step per PPO iteration
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=iterations,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    return module, data, trainer


def test_a_few_iterations_change_actor_and_critic_but_not_the_reference(tmp_path, policy_dir):
    module, data, trainer = make(tmp_path, policy_dir, iterations=3)
    actor = {k: v.clone() for k, v in module.model.state_dict().items()}
    critic = {k: v.clone() for k, v in module.critic.state_dict().items()}
    reference = {k: v.clone() for k, v in module.reference.state_dict().items()}
    trainer.fit(module, data)
    assert module.iteration == 3 and trainer.global_step == 3
    assert all(not torch.equal(v, actor[k]) for k, v in module.model.state_dict().items() if "norm" not in k)
    assert any(not torch.equal(v, critic[k]) for k, v in module.critic.state_dict().items())
    assert all(torch.equal(v, reference[k]) for k, v in module.reference.state_dict().items())
    for name in PPO_METRICS:
        assert name in trainer.callback_metrics, name
    assert not any(k.startswith("_frozen") or "reference" in k for k in module.state_dict())


class Recorder(L.Callback):
    def __init__(self):
        self.values = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics
        self.values[pl_module.iteration] = (metrics["loss/policy"].item(), metrics["objective/score"].item())


class TrainingState(L.Callback):
    """Per iteration: the KL coefficient after it and the learning rates it used; at the end, each optimizer's rate."""

    def __init__(self):
        self.values, self.final_lrs = {}, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics
        self.values[pl_module.iteration] = tuple(
            float(metrics[name]) for name in ("objective/kl_coef", "lr/actor", "lr/critic")
        )

    def on_train_end(self, trainer, pl_module):
        self.final_lrs = [[group["lr"] for group in opt.param_groups] for opt in trainer.optimizers]


def test_resume_continues_the_same_run(tmp_path, policy_dir):
    from lightning.pytorch.callbacks import ModelCheckpoint

    # A schedule that changes every iteration (warmup, then cosine decay), different peak rates for actor and critic,
    # and an adaptive KL coefficient: a resume that restarted any of them would show in the values compared below.
    options = {"adaptive_kl_target": 1.0, "warmup_steps": 1, "lr_schedule": "cosine", "min_lr_ratio": 0.1}
    runs = []
    for name, ckpt_path in (("full", None), ("resumed", str(tmp_path / "ckpt" / "step=2.ckpt"))):
        recorder, state = Recorder(), TrainingState()
        module, data, trainer = make(tmp_path / name, policy_dir, iterations=4, **options)
        module.hparams.critic_learning_rate = 3e-3
        trainer.callbacks += [recorder, state]
        if ckpt_path is None:
            trainer.callbacks.append(
                ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, filename="{step}")
            )
        trainer.fit(module, data, ckpt_path=ckpt_path)
        runs.append((recorder, state, module.kl_controller.value))
    (full, full_state, full_kl_coef), (resumed, resumed_state, resumed_kl_coef) = runs
    assert sorted(resumed.values) == sorted(resumed_state.values) == [3, 4]
    for iteration, (loss, score) in resumed.values.items():
        assert loss == pytest.approx(full.values[iteration][0], abs=1e-6), iteration
        assert score == pytest.approx(full.values[iteration][1], abs=1e-6), iteration
        # KL coefficient and both learning rates exactly as in the uninterrupted run
        assert resumed_state.values[iteration] == full_state.values[iteration], iteration
    assert resumed_state.final_lrs == full_state.final_lrs
    assert resumed_kl_coef == full_kl_coef
    # Not trivially equal: the coefficient moved each iteration, and each rate differs between iterations and models.
    kl_coefs = [full_state.values[i][0] for i in range(1, 5)]
    assert len(set(kl_coefs)) == 4 and 0.05 not in kl_coefs
    actor_lrs = [full_state.values[i][1] for i in range(1, 5)]
    critic_lrs = [full_state.values[i][2] for i in range(1, 5)]
    assert len(set(actor_lrs)) == 4 and len(set(critic_lrs)) == 4
    assert actor_lrs[2:] != critic_lrs[2:]


def test_gradient_accumulation_gives_the_same_update(tmp_path, policy_dir):
    weights = []
    for steps in (1, 2):
        module, data, trainer = make(tmp_path / str(steps), policy_dir, iterations=1, gradient_accumulation_steps=steps)
        trainer.fit(module, data)
        weights.append({k: v.clone() for k, v in module.model.state_dict().items()})
    moved = 0
    for name, value in weights[0].items():
        assert torch.allclose(value, weights[1][name], atol=1e-5), name
        moved += int(not torch.equal(value, weights[1][name]))
    assert moved > 0  # not trivially equal: the two runs summed their gradients in a different order


def test_a_rollout_where_every_sample_is_truncated_warns_and_trains_on(tmp_path, policy_dir):
    module, data, trainer = make(tmp_path, policy_dir, iterations=1)
    module.hparams.max_new_tokens = 1  # the untrained tiny policy never says EOS first
    with pytest.warns(RuntimeWarning, match="reached max_new_tokens=1 without EOS"):
        trainer.fit(module, data)
    assert module.iteration == 1
    assert trainer.callback_metrics["rollout/eos_rate"] == 0.0


def test_prompts_and_responses_longer_than_the_context_are_refused_before_training(tmp_path, policy_dir):
    module, data, trainer = make(tmp_path, policy_dir, iterations=1)
    data.max_length, data.max_prompt_length = 200, 125  # the tiny Llama has 128 positions: 125 + 8 new do not fit
    with pytest.raises(ValueError, match=r"prompts of up to 125 tokens .* exceed the policy's context of 128"):
        trainer.fit(module, data)
    assert module.iteration == 0


def test_padding_free_gives_the_same_update(tmp_path, policy_dir):
    # Reference and critic passes of the rollout, and the actor and critic updates, on packed rows.
    weights = []
    for padding_free in (False, True):
        module, data, trainer = make(tmp_path / str(padding_free), policy_dir, iterations=1, padding_free=padding_free)
        trainer.fit(module, data)
        weights.append(
            {k: v.clone() for k, v in [*module.model.state_dict().items(), *module.critic.state_dict().items()]}
        )
    for name, value in weights[0].items():
        assert torch.allclose(value, weights[1][name], atol=1e-5), name


def test_deepspeed_fsdp1_and_tensor_parallel_are_refused_before_training(tmp_path, policy_dir):
    from lightning.pytorch.strategies import (
        DDPStrategy,
        DeepSpeedStrategy,
        FSDPStrategy,
        ModelParallelStrategy,
        SingleDeviceStrategy,
    )

    from lit_rlhf.errors import ConfigError
    from lit_rlhf.strategies import FSDP2Strategy, check_strategy

    for accepted in (SingleDeviceStrategy("cpu"), DDPStrategy(), FSDP2Strategy(), ModelParallelStrategy(2, 1)):
        check_strategy(accepted, "PPOModule", num_processes=2)
    deepspeed = DeepSpeedStrategy.__new__(DeepSpeedStrategy)  # a DDPStrategy subclass; building one needs deepspeed
    for strategy, match in (
        (FSDPStrategy(), "does not train under Lightning's FSDPStrategy \\(FSDP1\\); shard the models with FSDP2"),
        (deepspeed, "does not train under DeepSpeed; shard the models with FSDP2 instead: --trainer.strategy fsdp2"),
        (ModelParallelStrategy(1, 2), "does not implement tensor parallelism .*tensor_parallel_size=2"),
        (ModelParallelStrategy(), "does not implement tensor parallelism .*tensor_parallel_size=2"),  # auto: 1 x 2
    ):
        with pytest.raises(ConfigError, match=f"PPOModule {match}"):
            check_strategy(strategy, "PPOModule", num_processes=2)
    # The module's setup asks too (Lightning runs FSDP1 on GPUs only, so a trainer that holds one stands in).
    module, _, trainer = make(tmp_path, policy_dir, iterations=1)
    trainer._accelerator_connector.strategy = FSDPStrategy()
    module.trainer = trainer
    with pytest.raises(ConfigError, match="FSDPStrategy \\(FSDP1\\)"):
        module.setup("fit")


class LearningRates(L.Callback):
    def __init__(self):
        self.actor, self.critic, self.steps = [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.actor.append(trainer.callback_metrics["lr/actor"].item())
        self.critic.append(trainer.callback_metrics["lr/critic"].item())
        self.steps.append(trainer.global_step)


def test_run_length_checkpoints_and_warmup_count_iterations(tmp_path, policy_dir):
    # Each iteration steps both optimizers ppo_epochs x num_minibatches = 4 times, and is still ONE training step:
    # max_steps=4 runs 4 iterations, a checkpoint every 2 steps lands after iterations 2 and 4, and a warmup of 2
    # with a linear decay over the 4 iterations sets each iteration's rate once (factors (s+1)/3 while s < 2, then
    # 1 - (s - 2)/2; see functional.schedules).
    from lightning.pytorch.callbacks import ModelCheckpoint

    lrs = LearningRates()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    module, data, trainer = make(tmp_path, policy_dir, iterations=4, warmup_steps=2, lr_schedule="linear")
    trainer.callbacks += [lrs, ckpt]
    trainer.fit(module, data)
    assert module.iteration == 4 and trainer.global_step == 4 and lrs.steps == [1, 2, 3, 4]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step=2.ckpt", "step=4.ckpt"]
    assert lrs.actor == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 0.5e-3])
    assert lrs.critic == pytest.approx(lrs.actor)
    actor, critic = trainer.optimizers
    assert all(state["step"] == 4 * 4 for opt in (actor, critic) for state in opt.state.values())


def test_an_unknown_kl_estimator_is_refused_when_the_module_is_built(policy_dir):
    with pytest.raises(ValueError, match="kl_estimator must be one of k1, k3, got 'k2'"):
        PPOModule(ArithmeticVerifierReward(), policy_name_or_path=policy_dir, kl_estimator="k2")
