"""PPO's shared-backbone critic: its adapter never touches the policy, it trains apart, and its export reloads."""

from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lit_rlhf.errors import ConfigError
from lit_rlhf.models.shared_critic import CRITIC_ADAPTER, SharedBackboneCritic
from lit_rlhf.modules import PPOModule
from lit_rlhf.rewards import ArithmeticVerifierReward
from lit_rlhf.rollout import response_logprobs, response_values

LORA = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")


def shared_ppo(policy_dir: str) -> PPOModule:
    return PPOModule(
        reward=ArithmeticVerifierReward(), policy_name_or_path=policy_dir, peft_config=LORA, critic_backbone="shared"
    )


def batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(4, 20, (3, 5), generator=generator)
    response = torch.randint(4, 20, (3, 4), generator=generator)
    return prompt, torch.ones_like(prompt), response, torch.ones_like(response, dtype=torch.bool)


def nudge(params) -> None:
    with torch.no_grad():
        for _, param in params:
            param.add_(0.05)


def test_no_second_backbone_is_loaded_and_the_critic_adapter_leaves_the_policy_alone(policy_dir):
    module = shared_ppo(policy_dir)
    assert [name for name, _ in module.critic.named_parameters()] == ["score.weight"]
    assert isinstance(module.critic, SharedBackboneCritic) and module.critic.policy is module.model
    module.eval()
    args = batch()
    before = response_logprobs(module.model, *args, 1.0)
    nudge(module.critic.adapter_parameters())
    assert torch.equal(response_logprobs(module.model, *args, 1.0), before)  # not applied to the policy's passes
    reference = response_logprobs(module.reference, *args, 1.0)
    sft = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    assert torch.equal(reference, response_logprobs(sft, *args, 1.0))  # nor to the reference


def test_the_actor_and_critic_optimizers_hold_disjoint_parameters(policy_dir):
    module = shared_ppo(policy_dir)
    module._trainer = SimpleNamespace(max_steps=5)  # configure_optimizers reads trainer.max_steps
    (actor, critic), _ = module.configure_optimizers()
    names = {id(p): n for n, p in module.named_parameters()}
    actor_names = {names[id(p)] for g in actor.param_groups for p in g["params"]}
    critic_names = {names[id(p)] for g in critic.param_groups for p in g["params"]}
    assert not actor_names & critic_names
    assert critic_names == {n for n in names.values() if f".{CRITIC_ADAPTER}." in n} | {"critic.score.weight"}
    assert all(".lora_" in n and ".default." in n for n in actor_names)


def test_values_move_with_the_critic_adapter_and_the_export_reproduces_them(policy_dir, tmp_path):
    module = shared_ppo(policy_dir)
    module.eval()
    args = batch(1)
    assert torch.equal(response_values(module.critic, *args), torch.zeros(3, 4))  # a zero head predicts 0
    nudge([("score", module.critic.score.weight)])
    head_only = response_values(module.critic, *args)
    nudge(module.critic.adapter_parameters())
    nudge([(n, p) for n, p in module.model.named_parameters() if ".default." in n])
    values = response_values(module.critic, *args)
    assert not torch.allclose(values, head_only)
    module.critic.save_pretrained_merged(str(tmp_path / "critic"), str(tmp_path / "critic_adapter"), base=policy_dir)
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "critic").eval()
    torch.testing.assert_close(response_values(merged, *args), values, rtol=1e-5, atol=1e-5)
    base = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "critic_adapter").eval()
    ids = torch.cat([args[0], args[2]], dim=1)
    torch.testing.assert_close(reloaded(input_ids=ids).logits, merged(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_a_shared_critic_needs_adapters(policy_dir):
    with pytest.raises(ConfigError, match="critic_backbone shared .* needs model.init_args.peft_config"):
        PPOModule(reward=ArithmeticVerifierReward(), policy_name_or_path=policy_dir, critic_backbone="shared")
