"""PPO, GRPO and online DPO with ``sampling_engine: vllm``: a toy reward rises as with ``generate``, the update's
log-probabilities are the policy's own (the gap to the engine's is logged), LoRA adapters reach the engine merged,
and a run stopped and resumed from its checkpoint equals the uninterrupted one."""

import lightning as L
import pytest
import torch
from peft import LoraConfig

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.engines.settings import VLLMSettings
from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.models.tiny import build_tiny_llama
from lit_rlhf.modules import GRPOModule, OnlineDPOModule, PPOModule
from lit_rlhf.rewards import FunctionReward
from tests.engines.test_vllm_engine import VLLM_TINY_CONFIG
from tests.helpers import needs_vllm
from tests.modules.wiring import digit_fraction

pytestmark = needs_vllm()

ENGINE = VLLMSettings(kv_cache_gib=0.25)


@pytest.fixture(scope="module")
def vllm_policy_dir(tmp_path_factory):
    """A tiny untrained Llama (head_dim 32, vLLM's CPU minimum) with the word-level tokenizer, as an SFT export."""
    tokenizer = build_word_tokenizer()
    path = str(tmp_path_factory.mktemp("vllm_policy") / "sft")
    torch.manual_seed(0)
    config = {**VLLM_TINY_CONFIG, "initializer_range": 0.02, "max_position_embeddings": 128}
    build_tiny_llama(tokenizer, config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class RewardHistory(L.Callback):
    def __init__(self, key: str) -> None:
        self.key, self.values, self.gaps = key, [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics
        self.values.append(float(metrics[self.key]))
        if "engine/logprob_gap_mean" in metrics:
            self.gaps.append((float(metrics["engine/logprob_gap_mean"]), float(metrics["engine/logprob_gap_max"])))


def _trainer(tmp_path, steps, callbacks=(), **kwargs):
    return L.Trainer(
        max_steps=steps,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        val_check_interval=steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
        **kwargs,
    )


def _grpo(policy_dir, engine, **kwargs):
    options = {
        "policy_name_or_path": policy_dir,
        "num_generations": 4,
        "max_new_tokens": 6,
        "learning_rate": 3e-3,
        "beta": 0.0,
        "sampling_engine": engine,
        **({"vllm": ENGINE} if engine == "vllm" else {}),
        **kwargs,
    }
    return GRPOModule([FunctionReward(digit_fraction)], **options)


def _data(num_train=256):
    return ArithmeticDataModule(format="prompt", num_train=num_train, num_val=8, batch_size=8)


def test_grpo_with_vllm_raises_a_toy_reward_as_generate_does(tmp_path, vllm_policy_dir):
    rises = {}
    for engine in ("generate", "vllm"):
        L.seed_everything(0)
        history = RewardHistory("reward")
        module = _grpo(vllm_policy_dir, engine)
        _trainer(tmp_path / engine, 12, [history]).fit(module, _data())
        rises[engine] = sum(history.values[-3:]) / 3 - sum(history.values[:3]) / 3
        if engine == "vllm":
            assert len(history.gaps) == 12
            assert all(mean < 1e-4 and top < 1e-3 for mean, top in history.gaps)  # same float32 model
            assert module._engine is None  # closed at the end of fit
    assert rises["generate"] > 0.05 and rises["vllm"] > 0.05, rises


def test_grpo_with_vllm_resumes_exactly(tmp_path, vllm_policy_dir):
    def run(steps, root, ckpt_path=None, save_every=None):
        L.seed_everything(0)
        module = _grpo(vllm_policy_dir, "vllm", num_iterations=2, num_minibatches=2, shared_prompt_forward=True)
        checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=root, every_n_train_steps=save_every, save_top_k=-1)
        trainer = L.Trainer(
            max_steps=steps,
            default_root_dir=root,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[checkpoint] if save_every else [],
            enable_checkpointing=bool(save_every),
            limit_val_batches=0,
        )
        trainer.fit(module, _data(), ckpt_path=ckpt_path)
        return module

    whole = run(4, tmp_path / "whole")
    run(2, tmp_path / "first", save_every=2)
    (ckpt,) = (tmp_path / "first").glob("*.ckpt")
    resumed = run(4, tmp_path / "second", ckpt_path=str(ckpt))
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_ppo_with_vllm_and_lora_trains_on_the_policys_logprobs(tmp_path, vllm_policy_dir):
    L.seed_everything(0)
    module = PPOModule(
        FunctionReward(digit_fraction),
        policy_name_or_path=vllm_policy_dir,
        critic_name_or_path=vllm_policy_dir,
        max_new_tokens=6,
        ppo_epochs=1,
        num_minibatches=2,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
        actor_learning_rate=1e-2,
        sampling_engine="vllm",
        vllm=ENGINE,
    )
    history = RewardHistory("objective/score")
    trainer = _trainer(tmp_path, 3, [history])
    trainer.fit(module, _data(64))
    assert len(history.gaps) == 3
    # The adapters moved, so the engine was fed merged weights that differ from the base at later rollouts, and its
    # log-probabilities still match the policy's recomputed ones.
    assert all(mean < 1e-4 for mean, _ in history.gaps)
    assert "val/exact_match" in trainer.callback_metrics


def test_online_dpo_with_vllm_runs_its_rounds(tmp_path, vllm_policy_dir):
    L.seed_everything(0)
    module = OnlineDPOModule(
        [FunctionReward(digit_fraction)],
        policy_name_or_path=vllm_policy_dir,
        samples_per_prompt=4,
        max_new_tokens=6,
        sampling_engine="vllm",
        vllm=ENGINE,
    )
    trainer = _trainer(tmp_path, 2)
    trainer.fit(module, _data(32))
    assert trainer.global_step > 0 and "rewards/margins" in trainer.callback_metrics
