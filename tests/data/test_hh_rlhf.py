import copy
import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file

from lit_rlhf.cli import cli_main
from lit_rlhf.data import DataError
from lit_rlhf.data.hh_rlhf import HHRLHFDataModule, split_last_assistant_turn
from lit_rlhf.data.mapped import SkipRow
from lit_rlhf.functional.masking import IGNORE_INDEX
from tests.conftest import FIXTURES
from tests.helpers import fixture_texts, read_events, save_tiny_gpt2

TRAIN = os.path.join(FIXTURES, "hh_rlhf", "train.jsonl")
TEST = os.path.join(FIXTURES, "hh_rlhf", "test.jsonl")
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")

# A three-turn dialogue; both replies start with " Sure," so the longest common prefix would cut inside the reply.
HISTORY = "\n\nHuman: Can you help me plan a trip?\n\nAssistant: Sure, where to?\n\nHuman: Lisbon, for three days."
PROMPT = HISTORY + "\n\nAssistant:"
CHOSEN = PROMPT + " Sure, day one: the Alfama and the castle."
REJECTED = PROMPT + " Sure, but I need your dates."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny GPT-2 (no pad token, like GPT-2) whose BPE tokenizer was trained on the fixture dialogues."""
    return save_tiny_gpt2(str(tmp_path_factory.mktemp("gpt2")), fixture_texts(TRAIN) + fixture_texts(TEST))


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from lit_rlhf.models import load_tokenizer

    return load_tokenizer(model_dir)  # pads with EOS, as the SFT and PPO modules do


def datamodule(format, tokenizer=None, **kwargs):
    data = HHRLHFDataModule(format=format, train=TRAIN, val=TEST, max_length=120, max_prompt_length=100, **kwargs)
    if tokenizer is not None:
        data.connect(tokenizer)
    return data


def test_split_at_the_last_assistant_turn_keeps_the_dialogue_and_the_leading_space():
    assert split_last_assistant_turn(CHOSEN) == (PROMPT, " Sure, day one: the Alfama and the castle.")
    assert split_last_assistant_turn("\n\nHuman: Hi\n\nAssistant:") == ("\n\nHuman: Hi\n\nAssistant:", "")
    assert split_last_assistant_turn("\n\nHuman: Hi") is None


def test_rows_per_format_exact_strings():
    row = {"chosen": CHOSEN, "rejected": REJECTED}
    where = "hh.jsonl row 1"
    # Split at the turn, not at the longest common prefix (which would end inside " Sure,").
    assert datamodule("preference").convert_row(row, where) == {
        "prompt": PROMPT,
        "chosen": " Sure, day one: the Alfama and the castle.",
        "rejected": " Sure, but I need your dates.",
    }
    assert datamodule("sft").convert_row(row, where) == {
        "prompt": PROMPT,
        "response": " Sure, day one: the Alfama and the castle.",
    }
    assert datamodule("prompt").convert_row(row, where) == {"prompt": PROMPT}


def turns(*texts):
    """A dialogue from alternating human and assistant turns (each text as it follows its marker)."""
    return "".join(("\n\nHuman:" if i % 2 == 0 else "\n\nAssistant:") + t for i, t in enumerate(texts))


@pytest.mark.parametrize(
    "formats, row, reason",
    [
        (
            ("preference", "sft", "prompt"),
            {"chosen": "\n\nHuman: Hello?", "rejected": "\n\nHuman: Hi?"},
            "no assistant turn",
        ),
        (("preference",), {"chosen": turns(" a", " b"), "rejected": "\n\nHuman: a"}, "no assistant turn"),
        (
            ("preference",),  # an earlier assistant turn differs
            {"chosen": turns(" a", " Sure.", " c", " d"), "rejected": turns(" a", " No.", " c", " e")},
            "chosen and rejected differ before the last assistant turn",
        ),
        (
            ("preference",),  # the rejected dialogue has one more exchange
            {"chosen": turns(" a", " b"), "rejected": turns(" a", " b", " c", " d")},
            "chosen and rejected differ before the last assistant turn",
        ),
        (
            ("preference",),
            {"chosen": turns(" a", " Paris."), "rejected": turns(" a", " Paris. ")},
            "chosen and rejected are identical",
        ),
        (("preference",), {"chosen": turns(" a", " b"), "rejected": turns(" a", "")}, "empty rejected reply"),
        (("preference",), {"chosen": turns(" a", " b"), "rejected": turns(" a", " ")}, "empty rejected reply"),
        (("preference", "sft"), {"chosen": turns(" a", ""), "rejected": turns(" a", " b")}, "empty chosen reply"),
        (
            ("preference", "sft"),
            {"chosen": turns(" a", " b", " c"), "rejected": turns(" a", " d")},
            "chosen ends with a human turn",
        ),
        (
            ("preference",),
            {"chosen": turns(" a", " b"), "rejected": turns(" a", " d", " e")},
            "rejected ends with a human turn",
        ),
    ],
)
def test_skip_reasons(formats, row, reason):
    for format in formats:
        with pytest.raises(SkipRow, match=f"^{re.escape(reason)}$"):
            datamodule(format).convert_row(row, "hh.jsonl row 1")
    # sft and prompt only read the chosen dialogue's prompt (and, for sft, its reply): the others keep these rows.
    for format in {"sft", "prompt"} - set(formats):
        assert datamodule(format).convert_row(row, "hh.jsonl row 1")["prompt"].endswith("\n\nAssistant:")


@pytest.mark.parametrize(
    "format, train_skipped, kept_lines",
    [
        (
            "preference",
            {
                "chosen and rejected differ before the last assistant turn": 1,  # line 3
                "chosen and rejected are identical": 1,  # line 4
                "empty rejected reply": 1,  # line 5
            },
            [1, 2, 6, 7, 8],
        ),
        ("sft", {}, [1, 2, 3, 4, 5, 6, 7, 8]),
        ("prompt", {}, [1, 2, 3, 4, 5, 6, 7, 8]),
    ],
)
def test_fixture_skip_counts_per_format(tokenizer, format, train_skipped, kept_lines):
    data = datamodule(format, tokenizer)
    data.setup("fit")
    assert data.skipped == {"train": train_skipped, "val": {"no assistant turn": 1}}  # test.jsonl line 3
    assert sorted(ex["row"]["row_index"] for ex in data.train_dataset) == kept_lines
    assert sorted(ex["row"]["row_index"] for ex in data.val_dataset) == [1, 2, 4]


@pytest.mark.parametrize(
    "format, rows, message",
    [
        ("preference", [{"chosen": 3, "rejected": "x"}], r"row 2: field 'chosen' must be str, got int 3"),
        ("sft", [{"chosen": ["x"]}], r"row 2: field 'chosen' must be str, got list"),
        ("preference", [{"chosen": CHOSEN}], r"row 2: missing field 'rejected' \(present: chosen\)"),
        ("prompt", [{"rejected": REJECTED}], r"row 2: missing field 'chosen' \(present: rejected\)"),
    ],
)
def test_malformed_rows_name_file_row_and_field(tmp_path, tokenizer, format, rows, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"chosen": CHOSEN, "rejected": REJECTED}, *rows]))
    data = HHRLHFDataModule(format=format, train=str(path), val=TEST)
    data.connect(tokenizer)
    with pytest.raises(DataError, match=re.escape(str(path)) + " " + message):
        data.setup("fit")


def test_sft_and_prompt_formats_read_only_chosen(tmp_path, tokenizer):
    path = tmp_path / "chosen_only.jsonl"
    path.write_text(json.dumps({"chosen": CHOSEN}) + "\n")
    for format in ("sft", "prompt"):
        data = HHRLHFDataModule(format=format, train=str(path), val=str(path))
        data.connect(tokenizer)
        data.setup("fit")
        assert data.train_dataset[0]["row"]["prompt"] == PROMPT


def test_defaults_read_the_hub_train_and_test_splits_without_a_chat_template(tokenizer):
    data = HHRLHFDataModule()
    # Nothing is loaded before setup: these are the arguments the hub load will get.
    assert (data.format, data.train, data.train_split, data.val, data.val_split) == (
        "preference",
        "Anthropic/hh-rlhf",
        "train",
        "Anthropic/hh-rlhf",
        "test",
    )
    assert data.use_chat_template is False
    # Files instead of the hub: no default validation split is borrowed from the hub.
    local = HHRLHFDataModule(format="sft", train=TRAIN)
    assert local.val is None and local.val_split is None
    # A tokenizer with a chat template: the HH prompt is still tokenized as is.
    templated = copy.deepcopy(tokenizer)
    templated.chat_template = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}"
    data = datamodule("prompt", templated)
    data.setup("fit")
    example = data.train_dataset[0]
    assert example["prompt_ids"] == templated(example["row"]["prompt"])["input_ids"]
    assert templated.decode(example["prompt_ids"]) == example["row"]["prompt"]


def test_collated_batches_have_the_right_masks(tokenizer):
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    data = datamodule("sft", tokenizer, batch_size=4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    for i, row in enumerate(batch["rows"]):
        length = int(batch["attention_mask"][i].sum())
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        assert batch["attention_mask"][i, :length].all() and not batch["attention_mask"][i, length:].any()
        response = labels != IGNORE_INDEX  # exactly the reply and its EOS: prompt and padding are masked
        start = length - int(response.sum())
        assert response[start:length].all() and not response[:start].any() and not response[length:].any()
        assert tokenizer.decode(ids[:start]) == row["prompt"] and row["prompt"].endswith("\n\nAssistant:")
        assert tokenizer.decode(labels[start : length - 1]) == row["response"] and labels[length - 1] == eos
        assert row["response"].startswith(" ")  # the reply keeps its leading space

    data = datamodule("preference", tokenizer, batch_size=3)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    size = len(batch["rows"])
    assert batch["input_ids"].shape[0] == 2 * size and batch["margin"] is None
    for i in range(2 * size):
        row = batch["rows"][i % size]
        side = "chosen" if i < size else "rejected"  # all chosen first, then all rejected
        last = int(batch["last_index"][i])
        assert batch["attention_mask"][i, : last + 1].all() and not batch["attention_mask"][i, last + 1 :].any()
        assert batch["input_ids"][i, last] == eos  # the reward model reads the score at the EOS of the reply
        assert tokenizer.decode(batch["input_ids"][i, :last]) == row["prompt"] + row[side]

    data = datamodule("prompt", tokenizer, batch_size=4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    for i, row in enumerate(batch["rows"]):
        length = int(mask[i].sum())
        width = ids.size(1)
        assert not mask[i, : width - length].any() and mask[i, width - length :].all()  # left-padded
        assert (ids[i, : width - length] == pad).all()
        assert tokenizer.decode(ids[i, width - length :]) == row["prompt"]


def stage_args(stage, run_dir, *extra):
    """``fit`` arguments that run configs/hh_rlhf/<stage>.yaml on the fixture files, on CPU, for 2 steps."""
    return [
        "fit",
        "--config",
        os.path.join(CONFIGS, "hh_rlhf", f"{stage}.yaml"),
        "--data.init_args.train",
        TRAIN,
        "--data.init_args.val",
        TEST,
        "--data.init_args.max_length",
        "120",
        "--data.init_args.max_prompt_length",
        "100",
        "--data.init_args.batch_size",
        "2",
        "--data.init_args.eval_batch_size",
        "2",
        "--data.init_args.num_workers",
        "0",
        "--trainer.max_steps",
        "1" if stage == "ppo" else "2",  # PPO: one step is one iteration
        "--trainer.val_check_interval",
        "1" if stage == "ppo" else "2",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.precision",
        "32-true",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks",
        "[]",
        "--trainer.logger.init_args.save_dir",
        os.path.dirname(os.path.dirname(run_dir)),
        "--trainer.logger.init_args.name",
        os.path.basename(os.path.dirname(run_dir)),
        *extra,
    ]


def test_the_three_configs_train_on_the_fixture_and_chain_their_exports(tmp_path, model_dir):
    runs = tmp_path / "runs" / "hh_rlhf"
    sft = cli_main(
        stage_args(
            "sft",
            str(runs / "sft"),
            "--model.init_args.model_name_or_path",
            model_dir,
            "--model.init_args.learning_rate",
            "1e-3",
            "--model.init_args.max_new_tokens",
            "8",
        )
    )
    assert sft.trainer.global_step == 2
    initial = load_file(os.path.join(model_dir, "model.safetensors"))
    trained = load_file(str(runs / "sft" / "hf" / "model.safetensors"))
    assert any(not torch.equal(initial[name], trained[name]) for name in initial)
    scalars, _ = read_events(str(runs / "sft"))
    assert len(scalars["train/loss"]) == 2 and "val/loss" in scalars

    reward = cli_main(
        stage_args("reward", str(runs / "reward"), "--model.init_args.model_name_or_path", str(runs / "sft" / "hf"))
    )
    assert reward.trainer.global_step == 2 and reward.model.tokenizer.pad_token == "<|pad|>"
    scalars, _ = read_events(str(runs / "reward"))
    assert len(scalars["train/loss"]) == 2 and {"val/accuracy", "val/margin"} <= set(scalars)
    from transformers import AutoModelForSequenceClassification

    exported = AutoModelForSequenceClassification.from_pretrained(runs / "reward" / "hf")
    assert exported.config.num_labels == 1 and exported.config.reward_normalization["num_responses"] > 0

    reward_hf = str(runs / "reward" / "hf")
    ppo = cli_main(
        stage_args(
            "ppo",
            str(runs / "ppo"),
            "--model.init_args.policy_name_or_path",
            str(runs / "sft" / "hf"),
            "--model.init_args.critic_name_or_path",
            reward_hf,
            "--model.init_args.reward.init_args.model_name_or_path",
            reward_hf,
            "--model.init_args.max_new_tokens",
            "8",
            "--model.init_args.ppo_epochs",
            "1",
            "--model.init_args.num_minibatches",
            "1",
            "--data.init_args.max_val_rows",
            "2",
        )
    )
    assert ppo.trainer.global_step == 1 and ppo.model.iteration == 1  # one iteration: one training step
    scalars, texts = read_events(str(runs / "ppo"))
    for tag in ("objective/score", "objective/kl", "loss/policy", "loss/value", "val/reward"):
        assert tag in scalars, tag
    assert any("What should I pack for a beach day?" in t for t in texts["samples/val/text_summary"])
    # HH has no verifier: the table has no (empty) exact-match column.
    assert all("| prompt | greedy response | reward |\n" in t for t in texts["samples/val/text_summary"])
    for name in ("hf/model.safetensors", "hf_critic/model.safetensors"):
        assert os.path.isfile(runs / "ppo" / name), name


def test_the_reward_config_packs_each_dialogue_once_with_the_same_losses(tmp_path, model_dir):
    # configs/hh_rlhf/reward.yaml shares each dialogue between its two replies (KV cache); with padding_free too the
    # dialogue and both replies run packed (BPE tokens, truncated dialogues, GPT-2's learned positions).
    losses = {}
    for packed in ("false", "true"):
        run_dir = tmp_path / packed / "runs" / "hh_rlhf" / "reward"
        args = stage_args("reward", str(run_dir), "--model.init_args.model_name_or_path", model_dir)
        no_dropout = '{"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}'  # its masks follow the shapes
        cli = cli_main([*args, "--model.init_args.padding_free", packed, "--model.init_args.model_config", no_dropout])
        assert cli.model.hparams.shared_prompt_forward and cli.trainer.global_step == 2
        losses[packed] = [value for _, value in read_events(str(run_dir))[0]["train/loss"]]
    assert len(losses["true"]) == 2
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-5)
