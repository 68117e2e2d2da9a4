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


def fused_clipped_ppo(policy_dir: str) -> PPOModule:
    """A small PPO module whose actor and critic step with fused AdamW and clip at ``max_grad_norm`` 0.5."""
    return PPOModule(
        ArithmeticVerifierReward(),
        policy_name_or_path=policy_dir,
        max_new_tokens=6,
        ppo_epochs=1,
        max_grad_norm=0.5,
        adamw_implementation="fused",
    )


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

    ppo = fused_clipped_ppo(policy_dir)
    trainer = quiet_trainer(tmp_path / "ppo", 1, precision="bf16-mixed", limit_val_batches=0)
    trainer.fit(ppo, ArithmeticDataModule(format="prompt", num_train=16, num_val=4, batch_size=4))
    actor, critic = trainer.optimizers
    assert kernel_of(actor) == kernel_of(critic) == (False, True)
    assert ppo.iteration == 1 and all(state["step"] == 1 for state in actor.state.values())


def loss_scaled(scale: float = 2.0**8):
    """A ``16-mixed`` precision plugin on the CPU with a dynamic loss scaler (Lightning itself turns ``16-mixed`` into
    ``bf16-mixed`` on the CPU); the small initial scale keeps the tiny model's fp16 gradients finite."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=scale))


def test_fused_kernel_under_a_loss_scaler_clips_as_lightning_clips_the_other_kernels(tmp_path):
    # Lightning refuses to clip a fused optimizer's gradients under 16-mixed; lit_rlhf clips them while still scaled,
    # at the scale times the threshold. The same run with foreach (unscaled by Lightning, then clipped) is the
    # reference.
    weights = {}
    for kernel in ("foreach", "fused"):
        L.seed_everything(0)
        module = SFTModule(model_config=TINY_MODEL_CONFIG, learning_rate=1e-2, adamw_implementation=kernel)
        start = {k: v.clone() for k, v in module.model.state_dict().items()}
        trainer = quiet_trainer(
            tmp_path / kernel,
            3,
            accelerator="cpu",
            plugins=[loss_scaled()],
            gradient_clip_val=1e-2,
            limit_val_batches=0,
        )
        trainer.fit(module, ArithmeticDataModule(num_train=96, num_val=8, batch_size=32))
        optimizer = trainer.optimizers[0]
        assert all(state["step"] == 3 for state in optimizer.state.values())  # no step skipped for overflow
        weights[kernel] = module.model.state_dict()
    assert any(not torch.equal(start[k], weights["fused"][k]) for k in start)
    for name, value in weights["foreach"].items():
        # Adam turns rounding noise in near-zero gradients into ~1e-5 moves; unscaled clipping would move ~2e-2.
        torch.testing.assert_close(weights["fused"][name], value, atol=1e-4, rtol=0, msg=name)


@pytest.mark.parametrize("kernel", ["for_loop", "fused"])
@pytest.mark.parametrize("automatic", [True, False], ids=["automatic", "manual"])
def test_clipping_under_a_loss_scaler_acts_on_the_true_gradients(tmp_path, kernel, automatic):
    # Where the gradients still carry the loss scale S when clipping runs (a fused kernel; any kernel under manual
    # optimization, as PPO and GRPO use), they are clipped to S * threshold; where Lightning has unscaled them
    # already (automatic optimization, for_loop), to the threshold.
    module = SFTModule(model_config=TINY_MODEL_CONFIG, adamw_implementation=kernel)
    module.automatic_optimization = automatic
    plugin = loss_scaled(scale=2.0**10)
    module.trainer = quiet_trainer(tmp_path, 1, accelerator="cpu", plugins=[plugin])
    optimizer, _ = module.model_optimizer(total_steps=1)
    scaled = kernel == "fused" or not automatic
    for p in module.model.parameters():
        p.grad = torch.full_like(p, 2.0**10 if scaled else 1.0)
    module.configure_gradient_clipping(optimizer, 0.5, "norm")
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.model.parameters()]))
    true_norm = norm.item() / (2.0**10 if scaled else 1.0)
    assert true_norm == pytest.approx(0.5, rel=1e-4)


def test_ppo_trains_under_a_loss_scaler_with_clipping(tmp_path, policy_dir):
    # Manual optimization: actor and critic clip while their gradients are still scaled, then the scaler steps.
    L.seed_everything(0)
    ppo = fused_clipped_ppo(policy_dir)
    trainer = quiet_trainer(tmp_path, 1, accelerator="cpu", plugins=[loss_scaled()], limit_val_batches=0)
    trainer.fit(ppo, ArithmeticDataModule(format="prompt", num_train=16, num_val=4, batch_size=4))
    actor, _ = trainer.optimizers
    assert ppo.iteration == 1 and all(state["step"] == 1 for state in actor.state.values())
