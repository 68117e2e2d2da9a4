"""All-identical rewards carry no signal: PPO and GRPO train on through them (no NaN, no crash) and count them."""

import lightning as L
import torch

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.functional.grpo import group_advantages
from lit_rlhf.functional.ppo import masked_whiten
from lit_rlhf.modules import GRPOModule, PPOModule
from lit_rlhf.rewards import FunctionReward


def constant_reward(prompts, completions, rows):
    """0.3 for every sample: 0.3 has no exact float, so means and stds of it are rounded."""
    return [0.3] * len(completions)


def _trainer(tmp_path, steps):
    return L.Trainer(
        max_steps=steps,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )


def test_whitening_a_constant_is_finite_and_near_zero():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    values = torch.full((3, 4), 0.3)
    whitened = masked_whiten(values, mask)
    # The variance is 0 up to rounding, and eps keeps 1/sqrt(var + eps) finite: (x - mean) is a rounding error, so
    # the result is that error times at most 1/sqrt(eps) = 1e4, far below the unit scale of whitened values.
    assert bool(torch.isfinite(whitened).all())
    assert whitened.abs().max() < 1e-2
    assert bool((whitened[~mask] == 0).all())
    # With statistics all-reduced over ranks (variance exactly 0) the same holds.
    assert torch.equal(masked_whiten(values, mask, mean=0.3, var=0.0), torch.zeros(3, 4))


def test_group_advantages_of_constant_groups_are_zero():
    advantages, stats = group_advantages(torch.full((8,), 0.3), 4)
    assert torch.equal(advantages, torch.zeros(8))  # (r - mean) / (std + eps) = 0 / eps
    assert stats.zero_std_fraction == 1 and torch.equal(stats.std, torch.zeros(2))


def test_ppo_with_constant_scores_trains_on_and_counts_the_iterations(tmp_path, policy_dir):
    L.seed_everything(0)
    module = PPOModule(
        FunctionReward(constant_reward),
        policy_name_or_path=policy_dir,
        max_new_tokens=6,
        ppo_epochs=2,
        num_minibatches=2,
        actor_learning_rate=1e-3,
        critic_learning_rate=1e-3,
        missing_eos_penalty=None,  # every score stays 0.3, finished or not
        kl_coef=0.0,
        lam=1.0,  # with the zero value head, the first rollout's advantages are the score: a constant
    )
    data = ArithmeticDataModule(format="prompt", num_train=32, num_val=8, batch_size=4)
    rollouts = []
    rollout = module.rollout

    def recording(batch):
        experience, stats = rollout(batch)
        rollouts.append(experience)
        return experience, stats

    module.rollout = recording
    trainer = _trainer(tmp_path, 3)
    trainer.fit(module, data)
    assert module.iteration == 3
    first = rollouts[0]
    assert bool(torch.isfinite(first.advantages).all()) and first.advantages.abs().max() < 1e-2  # a whitened constant
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())
    metrics = trainer.callback_metrics
    assert metrics["train/constant_score_iterations"] == 3
    assert metrics["train/nonfinite_steps/actor"] == 0 and metrics["train/nonfinite_steps/critic"] == 0
    assert all(bool(torch.isfinite(v)) for k, v in metrics.items() if k != "val/explained_variance"), metrics


def test_grpo_with_every_group_zero_std_trains_on_and_counts_groups_and_iterations(tmp_path, policy_dir):
    L.seed_everything(0)
    module = GRPOModule(
        [FunctionReward(constant_reward)],
        policy_name_or_path=policy_dir,
        num_generations=4,
        max_new_tokens=6,
        num_minibatches=2,
        learning_rate=1e-3,
        beta=0.1,
    )
    data = ArithmeticDataModule(format="prompt", num_train=32, num_val=8, batch_size=2)
    trainer = _trainer(tmp_path, 3)
    trainer.fit(module, data)
    assert module.iteration == 3
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())
    metrics = trainer.callback_metrics
    assert metrics["train/zero_std_groups"] == 3 * 2  # every prompt of every iteration
    assert metrics["train/zero_std_iterations"] == 3
    assert metrics["frac_reward_zero_std"] == 1 and metrics["train/nonfinite_steps"] == 0
    assert all(bool(torch.isfinite(v)) for v in metrics.values()), metrics
