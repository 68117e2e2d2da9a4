"""How PPOModule wires the functional pieces: a reward with an obvious optimum must rise, and one rollout's advantages,
returns and losses must be the functional layer's, applied by hand to the same tensors."""

import lightning as L
import pytest
import torch

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.functional.ppo import gae, masked_whiten, ppo_policy_loss, ppo_value_loss
from lit_rlhf.modules import PPOModule, engine_sampling
from lit_rlhf.rewards import FunctionReward
from lit_rlhf.rollout import response_logprobs, response_values
from tests.helpers import quiet_trainer
from tests.modules.wiring import FixedSampler, ScoreHistory, decoded, digit_fraction, mean, perturb


def test_ppo_raises_the_reward_of_a_task_with_an_obvious_optimum(tmp_path, policy_dir):
    # Reward: the share of digits among the response's words (about 0.08 for the untrained policy, 1 at best).
    # Ten iterations of 16 prompts move the policy far towards it; a flipped advantage or loss sign moves it away.
    L.seed_everything(0)
    module = PPOModule(
        FunctionReward(digit_fraction),
        policy_name_or_path=policy_dir,
        max_new_tokens=6,
        ppo_epochs=2,
        num_minibatches=2,
        actor_learning_rate=1e-2,
        critic_learning_rate=1e-2,
        kl_coef=0.01,
        kl_estimator="k3",
        missing_eos_penalty=None,
    )
    data = ArithmeticDataModule(format="prompt", num_train=256, num_val=16, batch_size=16)
    history = ScoreHistory("objective/score", "loss/value")
    trainer = quiet_trainer(tmp_path, max_steps=10, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[history])
    trainer.fit(module, data)
    scores, value_losses = history.values["objective/score"], history.values["loss/value"]
    assert mean(scores[-3:]) > mean(scores[:3]) + 0.3, scores
    # Returns lie in [0, 1] (scores in [0, 1], gamma 1, a small KL term) and so do values that follow them: the value
    # loss 0.5 * (V - R)^2 stays under 0.5. A critic pushed away from its returns leaves that range within a few steps.
    assert all(0 <= loss < 0.5 for loss in value_losses), value_losses


def make_rollout_module(policy_dir, **kwargs):
    """A PPO module whose policy, reference and critic all differ (perturbed weights, a random critic head)."""
    options = {
        "policy_name_or_path": policy_dir,
        "max_new_tokens": 5,
        "temperature": 0.7,
        "kl_coef": 0.3,
        "kl_estimator": "k3",
        "missing_eos_penalty": 0.7,
        "gamma": 0.9,
        "lam": 0.8,
        "clip_range": 0.1,
        "clip_range_value": 0.05,
        **kwargs,
    }
    module = PPOModule(FunctionReward(digit_fraction), **options)
    perturb(module.model, std=0.05, seed=1)  # the reference keeps the original weights: KL is not zero
    torch.nn.init.normal_(module.critic.score.weight, std=1.0, generator=torch.Generator().manual_seed(2))
    module.trainer = quiet_trainer(None, max_steps=1)
    data = ArithmeticDataModule(format="prompt", num_train=16, num_val=8, batch_size=8)
    data.connect(module.tokenizer)
    data.setup("fit")
    return module, next(iter(data.train_dataloader()))


def test_rollout_advantages_and_returns_are_hand_applied_gae_and_whitening(policy_dir, monkeypatch):
    module, batch = make_rollout_module(policy_dir)
    hp, tokenizer = module.hparams, module.tokenizer
    sampler = FixedSampler(tokenizer, length=hp.max_new_tokens)
    monkeypatch.setattr(engine_sampling, "generate", sampler)
    given = []
    module.reward.function = lambda prompts, completions, rows: (
        given.append(completions) or digit_fraction(prompts, completions, rows)
    )
    experience, stats = module.rollout(batch)

    (call,) = sampler.calls
    assert call["do_sample"] is True and call["max_new_tokens"] == hp.max_new_tokens
    assert call["temperature"] == hp.temperature
    generation = sampler.generation
    ids, mask, has_eos = generation.response_ids, generation.response_mask, generation.has_eos
    assert has_eos.any() and not has_eos.all()  # both kinds of row, so the missing-EOS penalty shows
    prompt_ids, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]

    # 2. scores of the decoded responses, minus the penalty where EOS is missing
    texts = decoded(tokenizer, ids, mask)
    assert given == [texts]
    scores = torch.tensor(digit_fraction(None, texts, None)) - hp.missing_eos_penalty * (~has_eos).float()
    # 3. per-token reward: -kl_coef * k3(policy || reference) on every response token, the score on the last one
    ref_logprobs = response_logprobs(module.reference, prompt_ids, prompt_mask, ids, mask, hp.temperature)
    log_r = ref_logprobs - generation.logprobs  # log(ref / policy) of the sampled tokens
    k3 = ((torch.exp(log_r) - 1) - log_r) * mask
    assert float(k3[mask].mean()) > 1e-2  # the perturbed policy is away from the reference
    rewards = -hp.kl_coef * k3
    last = mask.sum(dim=1) - 1
    rewards[torch.arange(len(ids)), last] += scores
    # 4. values of the rollout's critic, GAE, returns before whitening, advantages whitened over the batch
    values = response_values(module.critic, prompt_ids, prompt_mask, ids, mask)
    assert values[mask].abs().min() > 0
    advantages, returns = gae(rewards, values, mask, hp.gamma, hp.lam)
    whitened = masked_whiten(advantages, mask)

    assert torch.equal(experience.response_ids, ids) and torch.equal(experience.response_mask, mask)
    assert torch.equal(experience.logprobs, generation.logprobs)
    assert torch.equal(experience.values, values)
    assert torch.allclose(experience.returns, returns, atol=1e-6)
    assert torch.allclose(experience.advantages, whitened, atol=1e-5)
    assert float(stats["objective/score"]) == pytest.approx(float(scores.mean()), abs=1e-6)
    assert float(stats["objective/kl"]) == pytest.approx(float(k3.sum(dim=1).mean()), abs=1e-6)
    assert float(stats["objective/non_score_reward"]) == pytest.approx(
        float(-hp.kl_coef * k3.sum(dim=1).mean()), abs=1e-6
    )
    assert float(stats["rollout/eos_rate"]) == pytest.approx(float(has_eos.float().mean()))

    # Without whitening the advantages are GAE's own.
    module.hparams.whiten_advantages = False
    experience, _ = module.rollout(batch)
    assert torch.allclose(experience.advantages, advantages, atol=1e-6)
    assert torch.allclose(experience.returns, returns, atol=1e-6)


def test_update_losses_are_the_functional_losses_of_the_rollout(policy_dir, monkeypatch):
    # The actor and critic are moved after the rollout, so the ratio is not 1 and the values are not the old ones:
    # swapping the new and old log-probabilities, or the returns and old values, changes the losses.
    module, batch = make_rollout_module(policy_dir)
    hp = module.hparams
    monkeypatch.setattr(engine_sampling, "generate", FixedSampler(module.tokenizer, length=hp.max_new_tokens))
    experience, _ = module.rollout(batch)
    perturb(module.model, std=0.02, seed=3)
    perturb(module.critic, std=0.02, seed=4)
    args = (experience.prompt_ids, experience.prompt_mask, experience.response_ids, experience.response_mask)

    loss, stats = module._policy_loss(experience)
    logprobs = response_logprobs(module.model, *args, hp.temperature)
    expected, expected_stats = ppo_policy_loss(
        logprobs, experience.logprobs, experience.advantages, experience.response_mask, hp.clip_range
    )
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    assert float(stats["policy/clipfrac"]) == pytest.approx(float(expected_stats.clipfrac))
    assert 0 < float(expected_stats.clipfrac) < 1  # the clip is active on some tokens, not all
    assert float(stats["val/ratio"]) == pytest.approx(float(expected_stats.ratio_mean), abs=1e-6)

    loss, stats = module._value_loss(experience)
    values = response_values(module.critic, *args)
    expected, expected_stats = ppo_value_loss(
        values, experience.values, experience.returns, experience.response_mask, hp.clip_range_value
    )
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    assert float(stats["val/clipfrac"]) == pytest.approx(float(expected_stats.clipfrac))
    assert 0 < float(expected_stats.clipfrac) < 1
