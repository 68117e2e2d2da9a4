"""How GRPOModule wires the functional pieces: a reward with an obvious optimum must rise, and one generation batch's
advantages and loss must be the group normalisation and the GRPO loss applied by hand to the same tensors."""

import lightning as L
import pytest
import torch

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.functional.grpo import grpo_loss
from lit_rlhf.modules import engine_sampling
from lit_rlhf.modules.grpo import GRPOModule
from lit_rlhf.rewards import FunctionReward
from lit_rlhf.rollout import response_logprobs
from tests.helpers import quiet_trainer
from tests.modules.wiring import FixedSampler, ScoreHistory, decoded, digit_fraction, mean, perturb


def test_grpo_raises_the_reward_of_a_task_with_an_obvious_optimum(tmp_path, policy_dir):
    # Reward: the share of digits among the response's words (about 0.08 for the untrained policy, 1 at best).
    L.seed_everything(0)
    module = GRPOModule(
        [FunctionReward(digit_fraction)],
        policy_name_or_path=policy_dir,
        num_generations=4,
        max_new_tokens=6,
        num_iterations=2,
        num_minibatches=2,
        learning_rate=1e-2,
        beta=0.01,
    )
    data = ArithmeticDataModule(format="prompt", num_train=256, num_val=16, batch_size=8)
    history = ScoreHistory("reward")
    trainer = quiet_trainer(tmp_path, max_steps=10, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[history])
    trainer.fit(module, data)
    rewards = history.values["reward"]
    assert mean(rewards[-3:]) > mean(rewards[:3]) + 0.3, rewards


def make_rollout_module(policy_dir, **kwargs):
    """A GRPO module whose policy differs from its reference (perturbed weights), with a fixed prompt batch."""
    options = {
        "policy_name_or_path": policy_dir,
        "num_generations": 4,
        "max_new_tokens": 5,
        "temperature": 0.7,
        "beta": 0.3,
        "missing_eos_penalty": 0.7,
        "clip_range": 0.1,
        "clip_range_high": 0.15,
        **kwargs,
    }
    module = GRPOModule([FunctionReward(digit_fraction)], **options)
    perturb(module.model, std=0.05, seed=1)
    module.trainer = quiet_trainer(None, max_steps=1)
    data = ArithmeticDataModule(format="prompt", num_train=16, num_val=8, batch_size=3)
    data.connect(module.tokenizer)
    data.setup("fit")
    return module, next(iter(data.train_dataloader()))


def test_rollout_advantages_are_hand_applied_group_normalisation(policy_dir, monkeypatch):
    module, batch = make_rollout_module(policy_dir)
    hp, tokenizer, g = module.hparams, module.tokenizer, module.hparams.num_generations
    sampler = FixedSampler(tokenizer, length=hp.max_new_tokens)
    monkeypatch.setattr(engine_sampling, "generate", sampler)
    experience, stats = module.rollout(batch)

    (call,) = sampler.calls
    assert call["do_sample"] is True and call["num_samples"] == g and call["temperature"] == hp.temperature
    generation = sampler.generation
    ids, mask, has_eos = generation.response_ids, generation.response_mask, generation.has_eos
    assert has_eos.any() and not has_eos.all()
    prompt_ids = batch["prompt_input_ids"].repeat_interleave(g, dim=0)
    prompt_mask = batch["prompt_attention_mask"].repeat_interleave(g, dim=0)

    # Rewards of the decoded responses minus the missing-EOS penalty, then (r - group mean) / (group std + 1e-4),
    # with the unbiased std and the 1e-4 of group_advantages' documented default; the G samples of a prompt adjacent.
    rewards = torch.tensor(digit_fraction(None, decoded(tokenizer, ids, mask), None))
    rewards = rewards - hp.missing_eos_penalty * (~has_eos).float()
    groups = rewards.view(-1, g)
    expected = ((groups - groups.mean(dim=1, keepdim=True)) / (groups.std(dim=1, keepdim=True) + 1e-4)).reshape(-1)
    assert groups.std(dim=1).min() > 0  # every group has a signal
    assert torch.allclose(experience.advantages, expected, atol=1e-5)
    assert torch.equal(experience.group, torch.arange(len(groups)).repeat_interleave(g))
    assert torch.equal(experience.prompt_ids, prompt_ids) and torch.equal(experience.response_ids, ids)
    assert torch.equal(experience.logprobs, generation.logprobs)
    ref_logprobs = response_logprobs(module.reference, prompt_ids, prompt_mask, ids, mask, hp.temperature)
    assert torch.equal(experience.ref_logprobs, ref_logprobs)
    assert float(stats["reward"]) == pytest.approx(float(rewards.mean()), abs=1e-6)
    assert float(stats["reward_std"]) == pytest.approx(float(groups.std(dim=1).mean()), abs=1e-6)

    # Dr. GRPO (scale_rewards false): the centred rewards, not divided.
    module.hparams.scale_rewards = False
    experience, _ = module.rollout(batch)
    assert torch.allclose(experience.advantages, (groups - groups.mean(dim=1, keepdim=True)).reshape(-1), atol=1e-6)


def test_update_loss_is_the_functional_loss_of_the_rollout(policy_dir, monkeypatch):
    # The policy is moved after the rollout, so the ratio is not 1 and the policy differs from both the sampling
    # policy and the reference: passing any of the three log-probabilities in another's place changes the loss.
    module, batch = make_rollout_module(policy_dir)
    hp = module.hparams
    monkeypatch.setattr(engine_sampling, "generate", FixedSampler(module.tokenizer, length=hp.max_new_tokens))
    experience, _ = module.rollout(batch)
    perturb(module.model, std=0.02, seed=3)

    loss, stats = module._loss(experience)
    logprobs = response_logprobs(
        module.model,
        experience.prompt_ids,
        experience.prompt_mask,
        experience.response_ids,
        experience.response_mask,
        hp.temperature,
    )
    expected, expected_stats = grpo_loss(
        logprobs,
        experience.logprobs,
        experience.advantages,
        experience.response_mask,
        clip_range=hp.clip_range,
        clip_range_high=hp.clip_range_high,
        beta=hp.beta,
        ref_logprobs=experience.ref_logprobs,
        averaging=hp.loss_averaging,
    )
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    assert float(stats["kl"]) == pytest.approx(float(expected_stats.kl), abs=1e-6)
    assert float(expected_stats.kl) > 1e-3
    assert float(stats["policy/clipfrac"]) == pytest.approx(float(expected_stats.clipfrac))
    assert 0 < float(expected_stats.clipfrac) < 1
