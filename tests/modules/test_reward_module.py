import json
import os

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForSequenceClassification

from lit_rlhf.callbacks import HFExport
from lit_rlhf.data import ArithmeticDataModule, PreferenceDataModule
from lit_rlhf.models.loading import ModelLoadError
from lit_rlhf.models.scoring import NORMALIZATION_KEY
from lit_rlhf.modules import RewardModule
from tests.conftest import TINY_MODEL_CONFIG
from tests.helpers import save_tiny_gpt2
from tests.modules.test_sft_module import LossRecorder

REWARD_METRICS = (
    "train/loss",
    "train/accuracy",
    "train/margin",
    "train/chosen_reward_mean",
    "train/chosen_reward_std",
    "train/rejected_reward_mean",
    "train/rejected_reward_std",
    "train/lr",
    "val/loss",
    "val/accuracy",
    "val/margin",
    "val/chosen_reward_mean",
    "val/chosen_reward_std",
    "val/rejected_reward_mean",
    "val/rejected_reward_std",
    "val/accuracy/synthetic",
    "val/accuracy/near_miss",
)


def make(tmp_path, max_steps, callbacks=(), module_kwargs=None, **data_kwargs):
    L.seed_everything(0)
    module = RewardModule(model_config=TINY_MODEL_CONFIG, **{"learning_rate": 3e-3, **(module_kwargs or {})})
    data = ArithmeticDataModule(
        **{"format": "preference", "num_train": 256, "num_val": 32, "batch_size": 32, **data_kwargs}
    )
    trainer = L.Trainer(
        max_steps=max_steps,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=4,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    return module, data, trainer


def test_few_steps_raise_pairwise_accuracy(tmp_path):
    # A preference any reader can check: answers ending in 100 beat answers ending in 0.
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"make a series {n}", "chosen": f"{n} 100", "rejected": f"{n} 0"} for n in range(1, 99)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    L.seed_everything(0)
    module = RewardModule(model_config=TINY_MODEL_CONFIG, learning_rate=3e-3)
    data = PreferenceDataModule(train=str(path), val_fraction=0.25, batch_size=16, max_length=16)
    trainer = L.Trainer(max_steps=30, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    before = trainer.validate(module, data, verbose=False)[0]
    before_weights = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer.fit(module, data)
    after = trainer.callback_metrics
    for name in REWARD_METRICS[:-2]:
        assert name in after, name
    assert before["val/accuracy"] < 0.8 and after["val/accuracy"] == 1.0
    assert after["val/loss"] < before["val/loss"] and after["val/margin"] > 0
    changed = [k for k, v in module.model.state_dict().items() if not torch.equal(v, before_weights[k])]
    assert len(changed) == len(before_weights)


def test_arithmetic_pairs_log_accuracy_per_pair_type(tmp_path):
    module, data, trainer = make(tmp_path, max_steps=4)
    trainer.fit(module, data)
    for name in REWARD_METRICS:
        assert name in trainer.callback_metrics, name


def test_export_round_trip_gives_identical_scores_and_records_normalisation(tmp_path):
    module, data, trainer = make(tmp_path, max_steps=8, callbacks=[HFExport("hf")])
    trainer.fit(module, data)
    path = os.path.join(tmp_path, "hf")
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    batch = next(iter(data.val_dataloader()))
    module.eval()
    with torch.no_grad():
        ours = module(batch["input_ids"], batch["attention_mask"], batch["last_index"])
        theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    torch.testing.assert_close(ours, theirs)
    stats = getattr(model.config, NORMALIZATION_KEY)
    expected = module.response_score_stats(data.normalization_dataloader())
    assert stats["num_responses"] == expected["num_responses"] > 0
    assert stats["mean"] == pytest.approx(expected["mean"], abs=1e-5)
    assert stats["std"] == pytest.approx(expected["std"], abs=1e-5) and stats["std"] > 0


@pytest.mark.parametrize("resume_step", [4, 8])  # mid-epoch (8 batches per epoch) and at the epoch boundary
def test_resume_continues_the_same_loss_curve(tmp_path, resume_step):
    full = LossRecorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1, filename="{step}")
    module, data, trainer = make(tmp_path / "a", max_steps=12, callbacks=[full, ckpt])
    trainer.fit(module, data)

    resumed = LossRecorder()
    module, data, trainer = make(tmp_path / "b", max_steps=12, callbacks=[resumed])
    trainer.fit(module, data, ckpt_path=str(tmp_path / "ckpt" / f"step={resume_step}.ckpt"))
    assert sorted(resumed.losses) == list(range(resume_step + 1, 13))
    for step, loss in resumed.losses.items():
        assert loss == pytest.approx(full.losses[step], abs=1e-6), step


def test_prefix_loss_is_logged_and_trains(tmp_path):
    module, data, trainer = make(tmp_path, max_steps=4, module_kwargs={"prefix_loss_coef": 1.0})
    trainer.fit(module, data)
    assert torch.isfinite(trainer.callback_metrics["train/prefix_loss"])
    assert trainer.callback_metrics["train/prefix_loss"] > 0


def test_freeze_backbone_trains_only_the_head(tmp_path):
    module, data, trainer = make(tmp_path, max_steps=3, module_kwargs={"freeze_backbone": True})
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer.fit(module, data)
    changed = {k for k, v in module.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"score.weight"}


def test_model_without_pad_token_is_refused_unless_one_is_added(tmp_path):
    path = save_tiny_gpt2(str(tmp_path / "gpt2"), ["make a series", "1 2 3"])
    with pytest.raises(ModelLoadError, match="--model.init_args.pad_token"):
        RewardModule(path)
    module = RewardModule(path, pad_token="<|pad|>")
    assert module.tokenizer.pad_token == "<|pad|>" and module.model.config.pad_token_id == module.tokenizer.pad_token_id


class FirstGradients(L.Callback):
    def __init__(self):
        self.grads = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.grads is None:
            self.grads = {n: p.grad.clone() for n, p in pl_module.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "option", [("shared_prompt_forward",), ("padding_free",), ("shared_prompt_forward", "padding_free")]
)
@pytest.mark.parametrize("prefix_loss_coef", [0.0, 1.0])
def test_shared_prompt_and_padding_free_train_exactly_like_full_sequences(tmp_path, option, prefix_loss_coef):
    runs = {}
    for shared in (False, True):
        options = {**dict.fromkeys(option, shared), "prefix_loss_coef": prefix_loss_coef, "center_coef": 0.01}
        callbacks = [LossRecorder(), FirstGradients()]
        module, data, trainer = make(tmp_path / str(shared), 3, callbacks, options, num_train=96)
        trainer.fit(module, data)
        runs[shared] = (list(callbacks[0].losses.values()), callbacks[1].grads)
    (full_losses, full_grads), (shared_losses, shared_grads) = runs[False], runs[True]
    # The same losses over 3 steps, and the same gradients at the first (Adam then amplifies float noise in
    # near-zero gradients, so weights are compared through their gradients, not after several steps).
    assert len(full_losses) == 3 and shared_losses == pytest.approx(full_losses, abs=1e-5)
    assert shared_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_padding_free_refuses_gradient_checkpointing():
    with pytest.raises(ValueError, match="gradient checkpointing"):
        RewardModule(model_config=TINY_MODEL_CONFIG, padding_free=True, gradient_checkpointing=True)
