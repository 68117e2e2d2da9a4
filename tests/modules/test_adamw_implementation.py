"""``adamw_implementation`` picks torch's AdamW kernel (fused, foreach, for-loop) for every module's optimizers."""

import lightning as L
import pytest
import torch

from lit_rlhf.data.arithmetic import ArithmeticDataModule
from lit_rlhf.modules import GRPOModule, PPOModule, RewardModule, SFTModule
from lit_rlhf.modules.base import adamw_flags
from lit_rlhf.rewards import ArithmeticVerifierReward
from tests.conftest import TINY_MODEL_CONFIG
from tests.helpers import quiet_trainer


def kernel_of(optimizer: torch.optim.Optimizer) -> tuple[bool | None, bool | None]:
    return optimizer.defaults["foreach"], optimizer.defaults["fused"]


def test_flags_of_each_name_and_unknown_names_refused():
    assert adamw_flags(None) == {}
    assert adamw_flags("fused") == {"foreach": False, "fused": True}
    assert adamw_flags("foreach") == {"foreach": True, "fused": False}
    assert adamw_flags("for_loop") == {"foreach": False, "fused": False}
    with pytest.raises(ValueError, match="adamw_implementation must be one of for_loop, foreach, fused"):
        adamw_flags("apex")


@pytest.mark.parametrize("make", [SFTModule, RewardModule])
def test_unknown_name_fails_when_the_module_is_built(make):
    with pytest.raises(ValueError, match="got 'adam'"):
        make(model_config=TINY_MODEL_CONFIG, adamw_implementation="adam")


def train_sft(tmp_path, implementation):
    L.seed_everything(0)
    module = SFTModule(model_config=TINY_MODEL_CONFIG, learning_rate=1e-2, adamw_implementation=implementation)
    trainer = quiet_trainer(tmp_path / str(implementation), 4, limit_val_batches=0)
    trainer.fit(module, ArithmeticDataModule(num_train=128, num_val=8, batch_size=32))
    return module, trainer


def test_sft_kernels_compute_the_same_update(tmp_path):
    """Four SFT steps with each kernel reach the same weights up to float rounding (and away from the start: a
    kernel that skipped the update would fail); the optimizer uses the kernel."""
    weights = {}
    kernels = {None: (None, None), "for_loop": (False, False), "foreach": (True, False), "fused": (False, True)}
    for implementation, flags in kernels.items():
        module, trainer = train_sft(tmp_path, implementation)
        assert kernel_of(trainer.optimizers[0]) == flags
        weights[implementation] = {k: v.clone() for k, v in module.model.state_dict().items()}
    L.seed_everything(0)
    start = SFTModule(model_config=TINY_MODEL_CONFIG).model.state_dict()
    assert not torch.allclose(weights["fused"]["model.embed_tokens.weight"], start["model.embed_tokens.weight"])
    for implementation in ("for_loop", "foreach", "fused"):
        for name, value in weights[None].items():
            torch.testing.assert_close(weights[implementation][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_reward_model_and_grpo_optimizers_use_the_kernel(policy_dir):
    reward = RewardModule(model_config=TINY_MODEL_CONFIG, adamw_implementation="fused")
    optimizer, _ = reward.model_optimizer(total_steps=10)
    assert kernel_of(optimizer) == (False, True)
    grpo = GRPOModule([ArithmeticVerifierReward()], policy_name_or_path=policy_dir, adamw_implementation="foreach")
    optimizer, _ = grpo.model_optimizer(total_steps=10)
    assert kernel_of(optimizer) == (True, False)


def test_fused_kernel_clips_gradients_under_bf16_mixed(tmp_path, policy_dir):
    """Lightning's mixed-precision plugin refuses to clip a fused optimizer's gradients; bf16-mixed has no loss
    scale, so lit_rlhf clips them (SFT: trainer.gradient_clip_val; PPO: max_grad_norm, clipped by the module, whose
    actor and critic both step with the fused kernel)."""
    L.seed_everything(0)
    sft = SFTModule(model_config=TINY_MODEL_CONFIG, learning_rate=1e-2, adamw_implementation="fused")
    trainer = quiet_trainer(tmp_path, 2, precision="bf16-mixed", gradient_clip_val=1e-3, limit_val_batches=0)
    trainer.fit(sft, ArithmeticDataModule(num_train=64, num_val=8, batch_size=32))
    assert trainer.global_step == 2
    for p in sft.parameters():  # the same clipping, on gradients whose norm is known
        p.grad = torch.full_like(p, 1.0)
    sft.configure_gradient_clipping(trainer.optimizers[0], 1e-3, "norm")
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in sft.parameters()]))
    assert norm.item() == pytest.approx(1e-3, rel=1e-3)

    ppo = PPOModule(
        ArithmeticVerifierReward(),
        policy_name_or_path=policy_dir,
        max_new_tokens=6,
        ppo_epochs=1,
        max_grad_norm=0.5,
        adamw_implementation="fused",
    )
    trainer = quiet_trainer(tmp_path / "ppo", 2, precision="bf16-mixed", limit_val_batches=0)
    trainer.fit(ppo, ArithmeticDataModule(format="prompt", num_train=16, num_val=4, batch_size=4))
    actor, critic = trainer.optimizers
    assert kernel_of(actor) == kernel_of(critic) == (False, True)
    assert ppo.iteration == 1 and all(state["step"] == 1 for state in actor.state.values())


def test_fused_kernel_with_a_loss_scaler_and_clipping_is_refused_with_what_to_change(tmp_path):
    from lightning.pytorch.plugins.precision import MixedPrecision

    module = SFTModule(model_config=TINY_MODEL_CONFIG, adamw_implementation="fused")
    scaler = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = quiet_trainer(
        tmp_path, 1, accelerator="cpu", plugins=[scaler], gradient_clip_val=1.0, limit_val_batches=0
    )
    with pytest.raises(ValueError, match="fused cannot have its gradients clipped under precision 16-mixed"):
        trainer.fit(module, ArithmeticDataModule(num_train=32, num_val=8, batch_size=16))
