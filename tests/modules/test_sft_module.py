import os

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_rlhf.callbacks import HFExport
from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.generation import generate
from lit_rlhf.modules import CheckpointMismatchError, SFTModule
from tests.conftest import TINY_MODEL_CONFIG
from tests.helpers import SFT_METRICS


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = outputs["loss"].item()


def make(tmp_path, max_steps, callbacks=(), **data_kwargs):
    L.seed_everything(0)
    module = SFTModule(model_config=TINY_MODEL_CONFIG, learning_rate=1e-2, max_new_tokens=16, warmup_steps=2)
    data = ArithmeticDataModule(**{"num_train": 256, "num_val": 32, "batch_size": 32, **data_kwargs})
    trainer = L.Trainer(
        max_steps=max_steps,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        val_check_interval=4,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    return module, data, trainer


def test_few_steps_change_weights_and_lower_loss(tmp_path):
    recorder = LossRecorder()
    module, data, trainer = make(tmp_path, max_steps=12, callbacks=[recorder])
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer.fit(module, data)
    changed = [k for k, v in module.model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)
    losses = [recorder.losses[s] for s in sorted(recorder.losses)]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3
    metrics = trainer.callback_metrics
    for name in SFT_METRICS:
        assert name in metrics, name
    assert torch.isclose(metrics["val/perplexity"], metrics["val/loss"].exp())


def test_export_round_trip_generates_the_same_tokens(tmp_path):
    module, data, trainer = make(tmp_path, max_steps=8, callbacks=[HFExport("hf")])
    trainer.fit(module, data)
    path = os.path.join(tmp_path, "hf")
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = next(iter(data.val_dataloader()))
    kwargs = dict(max_new_tokens=16, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    ours = generate(module.model, batch["prompt_input_ids"], batch["prompt_attention_mask"], **kwargs)
    theirs = generate(model, batch["prompt_input_ids"], batch["prompt_attention_mask"], **kwargs)
    assert torch.equal(ours.response_ids, theirs.response_ids)
    assert tokenizer("Let 5 be")["input_ids"] == module.tokenizer("Let 5 be")["input_ids"]


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
    assert trainer.global_step == 12


def test_checkpoint_of_another_module_class_is_refused(tmp_path):
    class OtherModule(SFTModule):
        pass

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    module, data, trainer = make(tmp_path, max_steps=2, callbacks=[ckpt])
    trainer.fit(module, data)
    L.seed_everything(0)
    other = OtherModule(model_config=TINY_MODEL_CONFIG)
    trainer = L.Trainer(max_steps=4, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(CheckpointMismatchError, match="written by lit_rlhf.modules.sft.SFTModule"):
        trainer.fit(other, data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))


def test_bf16_mixed_precision_trains(tmp_path):
    L.seed_everything(0)
    module = SFTModule(model_config=TINY_MODEL_CONFIG, learning_rate=1e-2)
    data = ArithmeticDataModule(num_train=64, num_val=16, batch_size=16)
    trainer = L.Trainer(
        max_steps=3,
        precision="bf16-mixed",
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, data)
    assert trainer.global_step == 3 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert next(module.model.parameters()).dtype == torch.float32  # mixed: weights stay float32


def test_rng_states_of_another_world_size_fall_back_to_rank_zero_with_a_warning():
    module = SFTModule(model_config=TINY_MODEL_CONFIG)
    own, other = {"torch": "rank 0"}, {"torch": "rank 1"}
    assert module._own_rng_states({"rng_states": own}) is own  # one process, as saved
    with pytest.warns(UserWarning, match="RNG states of 2 rank"):
        assert module._own_rng_states({"rng_states": own, "rng_states_per_rank": [own, other]}) is own
    assert module._own_rng_states({"rng_states": own, "rng_states_per_rank": [own]}) is own


@pytest.mark.parametrize(
    "option, keeps_logits",
    [({"length_chunks": 3}, True), ({"padding_free": True}, True), ({"padding_free": True}, False)],
    ids=["length_chunks", "padding_free", "padding_free_all_logits"],
)
def test_chunked_and_padding_free_passes_give_the_loss_and_gradients_of_the_padded_batch(
    tmp_path, monkeypatch, option, keeps_logits
):
    """Also for a model without ``logits_to_keep``, where the packed pass computes every position's logits."""
    monkeypatch.setattr("lit_rlhf.rollout.takes_logits_to_keep", lambda model: keeps_logits)
    module, data, _ = make(tmp_path, max_steps=1)
    data.connect(module.tokenizer)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    lengths = batch["attention_mask"].sum(dim=1)
    assert lengths.min() < lengths.max()  # rows of several lengths, so fewer positions are computed
    results = []
    for settings in ({"length_chunks": 1, "padding_free": False}, option):
        module.hparams.update(settings)
        module.model.zero_grad()
        loss, stats = module._batch_loss(batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.model.named_parameters()}
        results.append((loss.item(), stats.num_tokens.item(), stats.num_correct.item(), grads))
    (loss, tokens, correct, grads), (other_loss, other_tokens, other_correct, other_grads) = results
    assert other_loss == pytest.approx(loss, rel=1e-6) and (other_tokens, other_correct) == (tokens, correct)
    for name, grad in grads.items():
        torch.testing.assert_close(other_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_padding_free_runs_the_lm_head_only_where_a_response_token_is_predicted(tmp_path):
    module, data, _ = make(tmp_path, max_steps=1)
    data.connect(module.tokenizer)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module.hparams.padding_free = True
    head_rows = []
    module.model.get_output_embeddings().register_forward_hook(lambda m, i, o: head_rows.append(i[0].shape[:-1]))
    _, stats = module._batch_loss(batch)
    real_tokens = int(batch["attention_mask"].sum())
    assert head_rows == [torch.Size([1, int(stats.num_tokens)])] and int(stats.num_tokens) < real_tokens


def test_padded_pass_runs_the_lm_head_from_the_first_predicted_response_token_with_the_same_loss(
    tmp_path, monkeypatch
):
    module, data, _ = make(tmp_path, max_steps=1)
    data.connect(module.tokenizer)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    head_rows = []
    module.model.get_output_embeddings().register_forward_hook(lambda m, i, o: head_rows.append(i[0].shape[:-1]))
    results = []
    for keeps_logits in (False, True):  # every position's logits (a model without logits_to_keep), then the window
        monkeypatch.setattr("lit_rlhf.modules.sft.takes_logits_to_keep", lambda model, keeps=keeps_logits: keeps)
        module.model.zero_grad()
        loss, stats = module._batch_loss(batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.model.named_parameters()}
        results.append((loss.item(), stats.num_tokens.item(), stats.num_correct.item(), grads))
    rows, width = batch["input_ids"].shape
    first_prompt_end = int((batch["labels"] != -100).long().argmax(dim=1).min())  # the earliest response token
    assert head_rows == [torch.Size([rows, width]), torch.Size([rows, width - first_prompt_end + 1])]
    (loss, tokens, correct, grads), (window_loss, window_tokens, window_correct, window_grads) = results
    assert window_loss == pytest.approx(loss, rel=1e-6) and (window_tokens, window_correct) == (tokens, correct)
    for name, grad in grads.items():
        torch.testing.assert_close(window_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_length_chunks_trains_and_refuses_bad_settings(tmp_path):
    recorder = LossRecorder()
    module, data, trainer = make(tmp_path, 3, [recorder], num_train=128)
    module.hparams.length_chunks = 2
    trainer.fit(module, data)
    assert len(recorder.losses) == 3 and trainer.callback_metrics["train/token_accuracy"] > 0
    with pytest.raises(ValueError, match="length_chunks"):
        SFTModule(model_config=TINY_MODEL_CONFIG, length_chunks=0)
    left = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])}
    with pytest.raises(ValueError, match="right-padded"):
        module._batch_loss({**left, "labels": left["input_ids"]})


def test_padding_free_trains_and_refuses_bad_settings(tmp_path):
    recorder = LossRecorder()
    module, data, trainer = make(tmp_path, 3, [recorder], num_train=128)
    module.hparams.padding_free = True
    trainer.fit(module, data)
    assert len(recorder.losses) == 3 and trainer.callback_metrics["train/token_accuracy"] > 0
    with pytest.raises(ValueError, match="padding_free or length_chunks"):
        SFTModule(model_config=TINY_MODEL_CONFIG, padding_free=True, length_chunks=2)
    with pytest.raises(ValueError, match="gradient checkpointing"):
        SFTModule(model_config=TINY_MODEL_CONFIG, padding_free=True, gradient_checkpointing=True)


def test_optimizer_is_the_hugging_face_trainers_adamw_recipe():
    """The same parameters decayed as the Trainer's name-based rule (what TRL's SFTTrainer uses), with its AdamW
    betas and eps: ``benchmarks/sft_trl_parity.py`` shows the two systems then take the same steps."""
    from transformers import Trainer, TrainingArguments

    module = SFTModule(model_config=TINY_MODEL_CONFIG, weight_decay=0.01, adamw_implementation="fused")
    optimizer, _ = module.model_optimizer(total_steps=10)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    hf_names = set(Trainer.get_decay_parameter_names(None, module.model))  # tied weights under both names
    hf_decayed = {id(p) for n, p in module.model.named_parameters(remove_duplicate=False) if n in hf_names}
    assert decayed == hf_decayed and 0 < len(decayed) < len(list(module.model.parameters()))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(module.model.parameters()))
    defaults = TrainingArguments.__dataclass_fields__
    for group in optimizer.param_groups:
        assert group["betas"] == (defaults["adam_beta1"].default, defaults["adam_beta2"].default)
        assert group["eps"] == defaults["adam_epsilon"].default
        assert group["fused"]  # the Trainer's default optim is adamw_torch_fused
        assert group["weight_decay"] in (0.0, 0.01)
