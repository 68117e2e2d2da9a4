"""PPO and GRPO exports reload bit-equal to the trained models, and a PPO checkpoint holds no frozen model."""

import os

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lit_rlhf.callbacks import HFExport
from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.models.scoring import load_reward_model
from lit_rlhf.models.tiny import build_tiny_llama
from lit_rlhf.modules import PPOModule
from lit_rlhf.modules.grpo import GRPOModule
from lit_rlhf.rewards import RewardModelReward
from tests.conftest import TINY_MODEL_CONFIG
from tests.modules.wiring import digit_fraction

WIDE = {**TINY_MODEL_CONFIG, "hidden_size": 64, "intermediate_size": 128}
"""Wide enough that a frozen model's tensors outweigh the checkpoint's per-tensor file overhead several times."""


def save_policy(path: str) -> str:
    tokenizer = build_word_tokenizer()
    build_tiny_llama(tokenizer, WIDE).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_reward_model(path: str) -> str:
    """A sequence classifier with one label, wider than the policy (so none of its tensors has a policy's shape)."""
    tokenizer = build_word_tokenizer()
    config = build_tiny_llama(tokenizer, {**WIDE, "hidden_size": 96}).config
    config.num_labels = 1
    AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def fit(tmp_path, module, batch_size: int = 8) -> str:
    """Two iterations with an HF export into ``tmp_path/hf``; returns the path of the checkpoint written at the end."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last", every_n_train_steps=2)
    trainer = L.Trainer(
        max_steps=2,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[checkpoint, HFExport("hf")],
    )
    trainer.fit(module, ArithmeticDataModule(format="prompt", num_train=32, num_val=8, batch_size=batch_size))
    assert os.path.isfile(checkpoint.best_model_path)
    return checkpoint.best_model_path


def assert_bit_equal(reloaded: torch.nn.Module, trained: torch.nn.Module) -> None:
    expected = trained.state_dict()
    got = reloaded.state_dict()
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and torch.equal(got[name], value), name


def assert_trained(model: torch.nn.Module, initial: dict[str, torch.Tensor]) -> None:
    """The export is of the trained weights, not of those it started from."""
    assert any(not torch.equal(v, initial[k]) for k, v in model.state_dict().items())


def tensor_bytes(obj) -> int:
    """Bytes of the distinct tensor storages anywhere in a nested checkpoint structure (tied weights count once)."""
    seen, total, stack = set(), 0, [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return total


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_ppo_exports_reload_bit_equal_and_its_checkpoint_holds_no_frozen_model(tmp_path):
    reward = RewardModelReward(save_reward_model(str(tmp_path / "rm")), normalize=False)
    L.seed_everything(0)
    module = PPOModule(
        reward,
        policy_name_or_path=save_policy(str(tmp_path / "sft")),
        max_new_tokens=6,
        ppo_epochs=1,
        actor_learning_rate=1e-3,
        critic_learning_rate=1e-3,
    )
    initial_actor = {k: v.clone() for k, v in module.model.state_dict().items()}
    initial_critic = {k: v.clone() for k, v in module.critic.state_dict().items()}
    path = fit(tmp_path, module)
    assert_trained(module.model, initial_actor)
    assert_trained(module.critic, initial_critic)

    # hf/ is the actor, as any Hugging Face tool loads it; hf_critic/ is the critic, as lit_rlhf loads a value model.
    assert_bit_equal(AutoModelForCausalLM.from_pretrained(tmp_path / "hf"), module.model)
    critic_dir = str(tmp_path / "hf_critic")
    assert_bit_equal(load_reward_model(critic_dir, build_word_tokenizer()), module.critic)
    assert_bit_equal(AutoModelForSequenceClassification.from_pretrained(critic_dir), module.critic)

    # The checkpoint file holds the actor and the critic with their optimizer states; the reference policy and the
    # reward model (reloaded from their sources on resume) are in it neither by name nor by size.
    saved = torch.load(path, map_location="cpu", weights_only=False)
    state = saved["state_dict"]
    assert set(state) == {f"model.{k}" for k in module.model.state_dict()} | {
        f"critic.{k}" for k in module.critic.state_dict()
    }
    trained_bytes = tensor_bytes(dict(module.model.state_dict())) + tensor_bytes(dict(module.critic.state_dict()))
    assert tensor_bytes(state) == trained_bytes
    frozen_bytes = min(parameter_bytes(module.reference), parameter_bytes(reward.model))
    optimizer_bytes = tensor_bytes(saved["optimizer_states"])
    rest = {k: v for k, v in saved.items() if k not in ("state_dict", "optimizer_states")}
    assert tensor_bytes(rest) < frozen_bytes  # RNG states and counters: less than any frozen model
    assert os.path.getsize(path) < trained_bytes + optimizer_bytes + frozen_bytes


def test_grpo_export_reloads_bit_equal(tmp_path, policy_dir):
    from lit_rlhf.rewards import FunctionReward

    L.seed_everything(0)
    module = GRPOModule(
        [FunctionReward(digit_fraction)],
        policy_name_or_path=policy_dir,
        num_generations=2,
        max_new_tokens=6,
        learning_rate=1e-3,
        beta=0.1,
    )
    initial = {k: v.clone() for k, v in module.model.state_dict().items()}
    path = fit(tmp_path, module, batch_size=4)
    assert_trained(module.model, initial)
    assert_bit_equal(AutoModelForCausalLM.from_pretrained(tmp_path / "hf"), module.model)
    assert not os.path.exists(tmp_path / "hf_critic")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert set(saved["state_dict"]) == {f"model.{k}" for k in module.model.state_dict()}
