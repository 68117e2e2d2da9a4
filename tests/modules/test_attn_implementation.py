"""``attn_implementation`` reaches every model a module loads (policy, reference, critic, reward model)."""

import lightning as L

from lit_rlhf.data.arithmetic import ArithmeticDataModule
from lit_rlhf.modules import GRPOModule, PPOModule, RewardModule, SFTModule
from lit_rlhf.rewards import ArithmeticVerifierReward, RewardModelReward
from tests.conftest import TINY_MODEL_CONFIG
from tests.helpers import quiet_trainer


def kernel(model):
    return model.config._attn_implementation


def test_every_loaded_model_uses_the_asked_kernel_and_ppo_trains_with_it(tmp_path, policy_dir):
    assert kernel(SFTModule(model_config=TINY_MODEL_CONFIG, attn_implementation="eager").model) == "eager"
    reward_module = RewardModule(model_config=TINY_MODEL_CONFIG, attn_implementation="eager")
    assert kernel(reward_module.model) == "eager"
    rm_dir = str(tmp_path / "rm")
    reward_module.export_hf(rm_dir)  # a reward model's export: a causal LM is refused as a reward model
    assert kernel(RewardModelReward(rm_dir, normalize=False, attn_implementation="eager").model) == "eager"
    grpo = GRPOModule(
        [ArithmeticVerifierReward()], policy_name_or_path=policy_dir, beta=0.1, attn_implementation="eager"
    )
    assert kernel(grpo.model) == kernel(grpo.reference) == "eager"

    L.seed_everything(0)
    ppo = PPOModule(
        ArithmeticVerifierReward(),
        policy_name_or_path=policy_dir,
        max_new_tokens=6,
        ppo_epochs=1,
        attn_implementation="eager",
    )
    assert kernel(ppo.model) == kernel(ppo.reference) == kernel(ppo.critic) == "eager"
    assert kernel(SFTModule(model_config=TINY_MODEL_CONFIG).model) == "sdpa"  # default: transformers' choice
    trainer = quiet_trainer(tmp_path, 1, limit_val_batches=0)
    trainer.fit(ppo, ArithmeticDataModule(format="prompt", num_train=16, num_val=4, batch_size=4))
    assert ppo.iteration == 1 and trainer.global_step == 1
