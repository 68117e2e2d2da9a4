import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForCausalLM

from lit_rlhf.callbacks import HFExport
from lit_rlhf.data import ArithmeticDataModule, PreferenceDataModule
from lit_rlhf.data.collate import PairCollator
from lit_rlhf.data.rows import DataError
from lit_rlhf.errors import ConfigError
from lit_rlhf.functional.logprobs import logprobs_from_logits
from lit_rlhf.models.adapters import AdaptersDisabled
from lit_rlhf.modules import DPOModule
from lit_rlhf.modules.checks import DPO_RULES
from lit_rlhf.modules.dpo import STAT_TAGS, pair_response_logps
from lit_rlhf.modules.dpo_reference import pair_keys, precompute_reference_logps
from tests.conftest import TINY_MODEL_CONFIG
from tests.helpers import save_tiny_gpt2
from tests.modules.test_sft_module import LossRecorder

NO_DROPOUT = {**TINY_MODEL_CONFIG, "attention_dropout": 0.0}
DPO_METRICS = tuple(f"{split}/{tag}" for split in ("train", "val") for tag in ("loss", *STAT_TAGS.values())) + (
    "train/lr",
    "train/nonfinite_steps",
    "val/exact_match",
    "val/eos_rate",
)


def make(tmp_path, policy_dir, max_steps, callbacks=(), module_kwargs=None, **data_kwargs):
    L.seed_everything(0)
    options = {"model_name_or_path": policy_dir, "learning_rate": 3e-3, "beta": 0.1, "max_new_tokens": 8}
    module = DPOModule(**{**options, **(module_kwargs or {})})
    data = ArithmeticDataModule(
        **{"format": "preference", "num_train": 128, "num_val": 16, "batch_size": 16, **data_kwargs}
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


def hand_batch(pad_id: int, prompt_pad: int | None = None, response_pad: int | None = None):
    """Two pairs: prompts [5, 6, 7] and [8, 9]; chosen [10, 11] / [12], rejected [13] / [14, 15, 16]."""
    examples = [
        {"prompt_ids": [5, 6, 7], "chosen_ids": [10, 11], "rejected_ids": [13], "row": {}},
        {"prompt_ids": [8, 9], "chosen_ids": [12], "rejected_ids": [14, 15, 16], "row": {}},
    ]
    batch = PairCollator(pad_id)(examples)
    if prompt_pad is not None:  # other ids on the padding positions change nothing
        batch["prompt_input_ids"][batch["prompt_attention_mask"] == 0] = prompt_pad
    if response_pad is not None:
        batch["response_input_ids"][batch["response_attention_mask"] == 0] = response_pad
    return examples, batch


@pytest.mark.parametrize("padding_free", [False, True])
def test_logps_cover_the_response_tokens_only(policy_dir, padding_free):
    model = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    examples, batch = hand_batch(pad_id=0)
    with torch.no_grad():
        sums, counts = pair_response_logps(model, batch, padding_free)
        _, other_padding = hand_batch(pad_id=0, prompt_pad=3, response_pad=4)
        padded_again, _ = pair_response_logps(model, other_padding, padding_free)
        # by hand: each full sequence alone, no padding; sum log p(token t | tokens < t) over the response positions
        expected, with_prompt = [], []
        for side in ("chosen_ids", "rejected_ids"):
            for ex in examples:
                ids = torch.tensor([ex["prompt_ids"] + ex[side]])
                token_logps = logprobs_from_logits(model(ids).logits[:, :-1], ids[:, 1:])[0]
                expected.append(token_logps[len(ex["prompt_ids"]) - 1 :].sum().item())
                with_prompt.append(token_logps.sum().item())
    assert counts.tolist() == [2.0, 1.0, 1.0, 3.0]
    torch.testing.assert_close(sums, torch.tensor(expected), atol=1e-5, rtol=0)
    torch.testing.assert_close(padded_again, sums, atol=1e-5, rtol=0)
    assert all(abs(a - b) > 1e-3 for a, b in zip(expected, with_prompt))  # the prompt tokens would have counted


def test_a_few_steps_on_a_checkable_preference_raise_the_accuracy(tmp_path):
    # A preference any reader can check: answers ending in 100 beat answers ending in 0.
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"make a series {n}", "chosen": f"{n} 100", "rejected": f"{n} 0"} for n in range(1, 99)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    L.seed_everything(0)
    module = DPOModule(model_config=TINY_MODEL_CONFIG, learning_rate=3e-3, beta=0.5, max_new_tokens=4)
    data = PreferenceDataModule(train=str(path), val_fraction=0.25, batch_size=16, max_length=16)
    trainer = L.Trainer(max_steps=12, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    before = trainer.validate(module, data, verbose=False)[0]
    trainer.fit(module, data)
    after = trainer.callback_metrics
    assert before["val/rewards/accuracies"] < 0.8 and after["val/rewards/accuracies"] == 1.0
    assert after["val/loss"] < before["val/loss"] and after["val/rewards/margins"] > 0
    assert not any(p.requires_grad for p in module.reference.parameters())


def test_metrics_checkpoint_without_reference_and_export(tmp_path, policy_dir):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last", every_n_train_steps=4)
    module, data, trainer = make(tmp_path, policy_dir, 4, callbacks=[checkpoint, HFExport("hf")])
    reference_before = {k: v.clone() for k, v in module.reference.state_dict().items()}
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    assert reference_before.keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in reference_before.items())  # the starting weights
    trainer.fit(module, data)
    for name in DPO_METRICS:
        assert name in trainer.callback_metrics, name
    assert any(not torch.equal(v, before[k]) for k, v in module.model.state_dict().items())
    assert all(torch.equal(v, reference_before[k]) for k, v in module.reference.state_dict().items())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(saved) == set(module.state_dict()) and not any("reference" in key for key in saved)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    module.model.eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, module.model(ids).logits)


def test_padded_and_packed_steps_agree(tmp_path, policy_dir):
    losses = {}
    for packed in (False, True):
        recorder = LossRecorder()
        kwargs = {"padding_free": packed, "model_config": {"attention_dropout": 0.0}}
        module, data, trainer = make(tmp_path / str(packed), policy_dir, 3, [recorder], module_kwargs=kwargs)
        trainer.fit(module, data)
        losses[packed] = recorder.losses
    for step, loss in losses[False].items():
        assert losses[True][step] == pytest.approx(loss, abs=1e-5)


def test_cached_reference_logps_equal_the_on_the_fly_ones(tmp_path, policy_dir):
    module, data, _ = make(tmp_path, policy_dir, 1, module_kwargs={"padding_free": True})
    data.connect(module.tokenizer)
    data.setup("fit")
    reference = module.reference
    collate = PairCollator(module.tokenizer.pad_token_id)
    cache = precompute_reference_logps(
        lambda batch: pair_response_logps(reference, batch, True)[0],
        [data.train_dataset, data.val_dataset],
        collate,
        data.eval_batch_size,
        torch.device("cpu"),
    )
    assert len(cache) > 0
    with torch.no_grad():
        for batch in data.val_dataloader():  # the same batches in the same order: the same forward
            on_the_fly = pair_response_logps(reference, batch, True)[0]
            assert torch.equal(cache.lookup(pair_keys(batch), "cpu"), on_the_fly)
        for batch in data.train_dataloader():  # shuffled into other batches: equal up to float rounding
            on_the_fly = pair_response_logps(reference, batch, True)[0]
            torch.testing.assert_close(cache.lookup(pair_keys(batch), "cpu"), on_the_fly)


def test_precomputed_run_drops_the_reference_and_matches_the_on_the_fly_run(tmp_path, policy_dir):
    recorders = {}
    metrics = {}
    for precompute in (False, True):
        recorders[precompute] = LossRecorder()
        module, data, trainer = make(
            tmp_path / str(precompute),
            policy_dir,
            4,
            [recorders[precompute]],
            module_kwargs={"precompute_ref_logps": precompute, "model_config": {"attention_dropout": 0.0}},
            eval_batch_size=16,
        )
        trainer.fit(module, data)
        metrics[precompute] = dict(trainer.callback_metrics)
        assert (module.reference is None) == precompute
    for step, loss in recorders[False].losses.items():
        assert recorders[True].losses[step] == pytest.approx(loss, abs=1e-6)
    assert metrics[True]["val/loss"] == pytest.approx(metrics[False]["val/loss"].item(), abs=1e-6)


@pytest.mark.parametrize("resume_step", [4])  # mid-epoch: 8 batches per epoch
def test_resume_with_precomputed_reference_continues_the_same_loss_curve(tmp_path, policy_dir, resume_step):
    kwargs = {"precompute_ref_logps": True, "padding_free": True}
    full = LossRecorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1, filename="{step}")
    module, data, trainer = make(tmp_path / "a", policy_dir, 8, [full, ckpt], module_kwargs=kwargs)
    trainer.fit(module, data)
    resumed = LossRecorder()
    module, data, trainer = make(tmp_path / "b", policy_dir, 8, [resumed], module_kwargs=kwargs)
    trainer.fit(module, data, ckpt_path=str(tmp_path / "ckpt" / f"step={resume_step}.ckpt"))
    assert sorted(resumed.losses) == list(range(resume_step + 1, 9))
    for step, loss in resumed.losses.items():
        assert loss == pytest.approx(full.losses[step], abs=1e-6), step


def test_simpo_loads_no_reference_and_trains(tmp_path, policy_dir):
    module, data, trainer = make(tmp_path, policy_dir, 2, module_kwargs={"loss_type": "simpo", "beta": 2.0})
    assert module.reference is None and module.frozen_models() == []
    trainer.fit(module, data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("loss_type", ["ipo", "hinge", "robust"])
def test_every_reference_loss_trains(tmp_path, policy_dir, loss_type):
    module, data, trainer = make(tmp_path, policy_dir, 1, module_kwargs={"loss_type": loss_type})
    trainer.fit(module, data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_with_lora_the_reference_is_the_policy_without_adapters(tmp_path, policy_dir):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    options = {"peft_config": lora, "padding_free": True, "precompute_ref_logps": True}
    module, data, trainer = make(tmp_path, policy_dir, 2, module_kwargs=options)
    assert isinstance(module.reference, AdaptersDisabled)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer.fit(module, data)
    changed = {k for k, v in module.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".lora_" in k for k in changed)
    assert isinstance(module.reference, AdaptersDisabled) and len(module.ref_cache) > 0  # nothing to drop


def test_a_reference_with_another_tokenizer_is_refused(tmp_path, policy_dir):
    other = save_tiny_gpt2(str(tmp_path / "gpt2"), ["make a series", "1 2 3"])
    with pytest.raises(ConfigError, match="model.init_args.reference_name_or_path .* another tokenizer"):
        DPOModule(policy_dir, reference_name_or_path=other)
    module = DPOModule(policy_dir, reference_name_or_path=policy_dir)  # the same tokenizer: accepted
    assert module.reference is not None


@pytest.mark.parametrize(
    "options, key",
    [
        ({"beta": 0.0}, "model.init_args.beta"),
        ({"label_smoothing": 0.5}, "model.init_args.label_smoothing"),
        ({"loss_type": "hinge", "label_smoothing": 0.1}, "model.init_args.label_smoothing"),
        ({"loss_type": "kto"}, "model.init_args.loss_type"),
        ({"padding_free": True, "gradient_checkpointing": True}, "model.init_args.padding_free"),
    ],
)
def test_bad_options_are_refused_before_any_model_loads(options, key):
    with pytest.raises(ConfigError, match=key):
        DPOModule("no/such/model", **options)


def test_every_rule_names_an_argument_of_the_module():
    import inspect

    assert set(DPO_RULES) <= set(inspect.signature(DPOModule.__init__).parameters)


def test_overlong_and_identical_pairs_follow_the_data_policies(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"make a series {n}", "chosen": f"{n} 100", "rejected": f"{n} 0"} for n in range(1, 20)]
    rows.append({"prompt": "make a series", "chosen": "1 2 3", "rejected": "1 2 3"})  # identical: skipped
    long = " ".join(["7"] * 30)
    rows.append({"prompt": "make a series 7", "chosen": long, "rejected": "7 0"})  # longer than max_length
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    L.seed_everything(0)
    with pytest.raises(DataError, match="row 21"):
        data = PreferenceDataModule(train=str(path), val_fraction=0.25, batch_size=4, max_length=16, overlong="error")
        module = DPOModule(model_config=TINY_MODEL_CONFIG, max_new_tokens=4)
        L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path).fit(module, data)
    data = PreferenceDataModule(train=str(path), val_fraction=0.25, batch_size=4, max_length=16, overlong="truncate")
    module = DPOModule(model_config=TINY_MODEL_CONFIG, max_new_tokens=4)
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(module, data)
    report = data.reports["train"]
    assert report.identical_skipped + data.reports["val"].identical_skipped == 1
    assert report.response_truncated + data.reports["val"].response_truncated == 1
    examples = list(data.train_dataset) + list(data.val_dataset)
    assert max(len(ex["prompt_ids"]) + len(ex["chosen_ids"]) for ex in examples) <= 16
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
