"""LoRA adapters in every stage: only the adapters (and score heads) train, the base weights stay as loaded, the
reference is the policy with its adapters off, the exports reload to the same outputs, checkpoints hold what trains."""

import os

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lit_rlhf.callbacks import HFExport
from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.models.adapters import AdaptersDisabled
from lit_rlhf.models.tiny import build_tiny_llama
from lit_rlhf.modules import PPOModule, RewardModule, SFTModule
from lit_rlhf.modules.grpo import GRPOModule
from lit_rlhf.rewards import ArithmeticVerifierReward, LengthReward
from lit_rlhf.rollout import response_logprobs, response_values
from tests.conftest import TINY_MODEL_CONFIG


def lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")


def fit(tmp_path, module, data, steps: int = 3) -> str:
    """``steps`` training steps with a checkpoint and an HF export under ``tmp_path``; returns the checkpoint path."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last", every_n_train_steps=steps)
    trainer = L.Trainer(
        max_steps=steps,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[checkpoint, HFExport("hf")],
    )
    trainer.fit(module, data)
    assert trainer.global_step == steps
    return checkpoint.best_model_path


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def assert_only_adapters_and_heads_trained(model, before, source_state, heads=()) -> None:
    """Every trainable parameter (a LoRA matrix or a head) changed; every frozen one equals ``source_state`` (the
    plain model loaded from the folder it came from), bit for bit."""
    trained = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trained and all(".lora_" in n or n.split(".")[0] in heads for n in trained), sorted(trained)
    assert all(any(n.startswith(h + ".") for n in trained) for h in heads)
    for name, param in model.named_parameters():
        if name in trained:
            assert not torch.equal(param, before[name]), f"{name} did not train"
        else:
            source = source_state[name.replace(".base_layer.", ".")]
            assert torch.equal(param, source), f"{name} moved"


def batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(4, 20, (3, 5), generator=generator)
    response = torch.randint(4, 20, (3, 4), generator=generator)
    return prompt, torch.ones_like(prompt), response, torch.ones_like(response, dtype=torch.bool)


def assert_exports_reproduce(tmp_path, model, name: str, base_loader) -> None:
    """``<name>/`` (merged, plain transformers) and ``<name>_adapter/`` (peft, on its base) give ``model``'s
    outputs."""
    ids = torch.cat([batch(2)[0], batch(2)[2]], dim=1)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        merged = base_loader(tmp_path / name).eval()
        assert not any(".lora_" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
        adapter_dir = tmp_path / f"{name}_adapter"
        assert os.path.isfile(adapter_dir / "adapter_config.json")
        reloaded = PeftModel.from_pretrained(base_loader(None), adapter_dir).eval()
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


def assert_checkpoint_holds_what_trains(path: str, module) -> None:
    saved = torch.load(path, map_location="cpu", weights_only=False)
    trained = {name for name, param in module.named_parameters() if param.requires_grad}
    frozen = {name for name, param in module.named_parameters() if not param.requires_grad}
    assert trained <= set(saved["state_dict"]) and not frozen & set(saved["state_dict"])
    assert saved["lit_rlhf"]["adapters"] is True
    held = sum(len(opt["state"]) for opt in saved["optimizer_states"])
    assert held == len(trained)  # one AdamW state per trained tensor, none for a frozen one


def test_sft_trains_only_the_adapters_and_its_exports_reload(tmp_path, policy_dir):
    L.seed_everything(0)
    module = SFTModule(model_name_or_path=policy_dir, peft_config=lora(), learning_rate=1e-2, max_new_tokens=4)
    before = snapshot(module.model)
    path = fit(tmp_path, module, ArithmeticDataModule(num_train=64, num_val=8, batch_size=16))
    source = AutoModelForCausalLM.from_pretrained(policy_dir).state_dict()
    assert_only_adapters_and_heads_trained(module.model, before, source)
    assert_checkpoint_holds_what_trains(path, module)
    assert_exports_reproduce(
        tmp_path, module.model, "hf", lambda p: AutoModelForCausalLM.from_pretrained(p or policy_dir)
    )


def test_reward_model_trains_adapters_and_score_head_and_its_exports_reload(tmp_path, policy_dir):
    L.seed_everything(0)
    module = RewardModule(model_name_or_path=policy_dir, peft_config=lora(), learning_rate=3e-3)
    before = snapshot(module.model)
    data = ArithmeticDataModule(format="preference", num_train=64, num_val=8, batch_size=16)
    path = fit(tmp_path, module, data)
    source = AutoModelForCausalLM.from_pretrained(policy_dir).state_dict()  # the backbone the classifier loads
    assert_only_adapters_and_heads_trained(module.model, before, source, heads=("score",))
    assert_checkpoint_holds_what_trains(path, module)
    pad = module.model.config.pad_token_id

    def load(p):
        model = AutoModelForSequenceClassification.from_pretrained(p or policy_dir, num_labels=1)
        model.config.pad_token_id = pad
        return model

    assert_exports_reproduce(tmp_path, module.model, "hf", load)


def make_ppo(policy_dir) -> PPOModule:
    L.seed_everything(0)
    return PPOModule(
        ArithmeticVerifierReward("graded_score"),
        policy_name_or_path=policy_dir,
        peft_config=lora(),
        max_new_tokens=6,
        ppo_epochs=2,
        num_minibatches=2,
        actor_learning_rate=1e-2,
        critic_learning_rate=1e-2,
    )


def make_grpo(policy_dir) -> GRPOModule:
    L.seed_everything(0)
    return GRPOModule(
        [ArithmeticVerifierReward("graded_score"), LengthReward(ideal_length=10, unit="characters")],
        reward_weights=[1.0, 0.01],  # the length reward tells an untrained policy's samples apart
        policy_name_or_path=policy_dir,
        peft_config=lora(),
        num_generations=4,
        max_new_tokens=6,
        num_iterations=2,
        num_minibatches=2,
        learning_rate=1e-2,
        beta=0.1,
    )


def assert_reference_is_the_sft_model(module, sft) -> None:
    """The reference is the policy seen with its adapters off: no second copy, and the SFT model's log-probs."""
    assert isinstance(module.reference, AdaptersDisabled) and module.reference.adapted is module.model
    assert not any(True for _ in module.reference.named_parameters(recurse=False))
    policy_storage = {p.untyped_storage().data_ptr() for p in module.model.parameters()}
    assert {p.untyped_storage().data_ptr() for p in module.reference.parameters()} <= policy_storage
    assert not any("reference" in k for k in module.state_dict())
    for seed in range(2):
        args = batch(seed)
        with torch.no_grad():
            assert torch.equal(response_logprobs(module.reference, *args, 1.0), response_logprobs(sft, *args, 1.0))


@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_online_stages_train_adapters_with_the_sft_model_as_reference(tmp_path, policy_dir, stage):
    module = make_ppo(policy_dir) if stage == "ppo" else make_grpo(policy_dir)
    sft = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    assert_reference_is_the_sft_model(module, sft)
    before = snapshot(module.model)
    critic_before = snapshot(module.critic) if stage == "ppo" else None
    data = ArithmeticDataModule(format="prompt", num_train=64, num_val=8, batch_size=8 if stage == "ppo" else 4)
    path = fit(tmp_path, module, data)
    source = sft.state_dict()
    assert_only_adapters_and_heads_trained(module.model, before, source)
    assert_reference_is_the_sft_model(module, sft)  # still after training steps
    args = batch(3)
    with torch.no_grad():  # and the policy itself moved away from it
        assert not torch.equal(response_logprobs(module.model, *args, 1.0), response_logprobs(sft, *args, 1.0))
    assert_checkpoint_holds_what_trains(path, module)
    assert_exports_reproduce(
        tmp_path, module.model, "hf", lambda p: AutoModelForCausalLM.from_pretrained(p or policy_dir)
    )
    if stage == "ppo":
        assert_only_adapters_and_heads_trained(module.critic, critic_before, source, heads=("score",))

        def load(p):
            return AutoModelForSequenceClassification.from_pretrained(p or policy_dir, num_labels=1)

        assert_exports_reproduce(tmp_path, module.critic, "hf_critic", load)
        merged = load(tmp_path / "hf_critic").eval()
        module.critic.eval()
        with torch.no_grad():
            torch.testing.assert_close(response_values(merged, *args), response_values(module.critic, *args))


def test_an_adapter_checkpoint_leaves_out_a_tied_output_head(tmp_path, policy_dir):
    L.seed_everything(0)
    module = SFTModule(model_name_or_path=policy_dir, peft_config=lora(), max_new_tokens=4)
    assert module.model.config.tie_word_embeddings
    path = fit(tmp_path, module, ArithmeticDataModule(num_train=16, num_val=8, batch_size=8), steps=1)
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert set(saved["state_dict"]) == {name for name, param in module.named_parameters() if param.requires_grad}


LARGER = {**TINY_MODEL_CONFIG, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4}
"""Large enough that the tensors, not a checkpoint's fixed overhead, set its size."""


def checkpoint_size(tmp_path, policy_dir: str, peft_config) -> tuple[int, SFTModule]:
    L.seed_everything(0)
    module = SFTModule(model_name_or_path=policy_dir, peft_config=peft_config, max_new_tokens=4)
    trainer = L.Trainer(
        max_steps=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, ArithmeticDataModule(num_train=8, num_val=8, batch_size=8))
    path = str(tmp_path / "last.ckpt")
    trainer.save_checkpoint(path)
    return os.path.getsize(path), module


def test_an_adapter_checkpoint_is_a_small_fraction_of_a_full_one(tmp_path):
    tokenizer = build_word_tokenizer()
    policy_dir = str(tmp_path / "base")
    build_tiny_llama(tokenizer, LARGER).save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    full_size, full = checkpoint_size(tmp_path / "full", policy_dir, None)
    lora_size, adapted = checkpoint_size(tmp_path / "lora", policy_dir, lora())
    total = sum(p.numel() for p in full.parameters())
    trained = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    # Both checkpoints hold their trained tensors three times (weights and AdamW's two moments); the full one holds
    # every parameter, the adapter one the LoRA matrices only. Beyond that ratio, allow the fixed part of a file
    # (pickled names, RNG states, hyperparameters) which weighs relatively more in the small one: at most twice it.
    ratio = trained / total
    assert ratio < 0.1
    assert lora_size / full_size < 2 * ratio, (lora_size, full_size, ratio)
