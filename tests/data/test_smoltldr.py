import json
import math
import os

import pytest
import torch

from lit_rlhf.data import DataError
from lit_rlhf.data.smoltldr import SMOLTLDR, SmolTLDRDataModule
from tests.conftest import FIXTURES
from tests.helpers import fixture_texts, read_events, save_tiny_gpt2

TRAIN = os.path.join(FIXTURES, "smoltldr", "train.jsonl")
VAL = os.path.join(FIXTURES, "smoltldr", "validation.jsonl")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PPO_CONFIG = os.path.join(ROOT, "configs", "smoltldr", "ppo.yaml")
GRPO_CONFIG = PPO_CONFIG.replace("ppo.yaml", "grpo.yaml")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A tiny GPT-2 whose byte-level BPE was trained on the fixture (no pad token, no chat template).

    Its alphabet is the bytes of its training texts only, so the newlines and tags of the instructions are added.
    """
    texts = fixture_texts(TRAIN) + fixture_texts(VAL) + ["Summarize:\n\n<think> </think> <answer> </answer>"]
    return save_tiny_gpt2(str(tmp_path_factory.mktemp("gpt2")), texts)


def test_defaults_name_the_hub_dataset_and_its_validation_split():
    data = SmolTLDRDataModule()  # nothing is loaded before setup
    assert (data.format, data.row_format) == ("prompt", "prompt")
    assert (data.train, data.train_split, data.val, data.val_split) == (SMOLTLDR, "train", SMOLTLDR, "validation")
    assert SmolTLDRDataModule(format="sft", val_split="test").val_split == "test"
    with pytest.raises(ValueError, match="SmolTLDRDataModule serves format prompt / sft, got 'preference'"):
        SmolTLDRDataModule(format="preference")


def test_fixture_is_in_the_smoltldr_schema():
    for path in (TRAIN, VAL):
        rows = read_jsonl(path)
        assert rows and all(set(row) == {"prompt", "completion"} for row in rows)
        assert all(isinstance(v, str) and v.strip() for row in rows for v in row.values())


def test_prompt_rows_keep_the_tldr_as_reference_and_sft_rows_as_response(tmp_path):
    source = read_jsonl(TRAIN)
    rows = SmolTLDRDataModule(train=TRAIN, val=VAL).load_rows()
    assert (len(rows["train"]), len(rows["val"])) == (8, 3)
    assert rows["train"].numbers == list(range(1, 9))  # jsonl line numbers, for error messages
    assert rows["train"].rows[0] == {"prompt": source[0]["prompt"], "reference": source[0]["completion"]}
    assert rows["val"].rows[2]["reference"] == read_jsonl(VAL)[2]["completion"]

    sft = SmolTLDRDataModule(format="sft", train=TRAIN, val=VAL).load_rows()
    assert sft["train"].rows[1] == {"prompt": source[1]["prompt"], "response": source[1]["completion"]}

    # Other columns reach the reward sources (prompt format); `columns` renames another schema to this one.
    other = write_jsonl(tmp_path / "other.jsonl", [{"post": "A post.", "summary": "Short.", "subreddit": "r/tifu"}] * 2)
    renamed = SmolTLDRDataModule(train=other, val=other, columns={"prompt": "post", "completion": "summary"})
    row = renamed.load_rows()["train"].rows[0]
    assert (row["prompt"], row["reference"], row["subreddit"]) == ("A post.", "Short.", "r/tifu")


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ({"prompt": "A post."}, r"bad.jsonl row 2: missing field 'completion' \(present: prompt\)"),
        ({"prompt": 5, "completion": "x"}, r"bad.jsonl row 2: field 'prompt' must be str, got int 5"),
        ({"prompt": "A post.", "completion": "  "}, r"bad.jsonl row 2: field 'completion' is empty"),
    ],
)
def test_a_bad_row_names_the_file_the_row_and_the_field(tmp_path, bad_row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Fine post.", "completion": "Fine."}, bad_row])
    with pytest.raises(DataError, match=message):
        SmolTLDRDataModule(train=path, val=path).load_rows()


def test_max_rows_and_a_seeded_val_fraction():
    rows = SmolTLDRDataModule(train=TRAIN, val=VAL, max_train_rows=3, max_val_rows=1).load_rows()
    assert len(rows["train"].numbers) == 3 and len(rows["val"].numbers) == 1  # seeded subsets (test_mapped)

    # No validation source with a training file: round(0.25 * 8) = 2 rows held out, seeded.
    split = SmolTLDRDataModule(train=TRAIN, val_fraction=0.25, seed=3).load_rows()
    assert (len(split["train"]), len(split["val"])) == (6, 2)
    assert sorted(split["train"].numbers + split["val"].numbers) == list(range(1, 9))
    assert SmolTLDRDataModule(train=TRAIN, val_fraction=0.25, seed=3).load_rows()["val"].numbers == split["val"].numbers
    with pytest.raises(ValueError, match="max_train_rows must be >= 1"):
        SmolTLDRDataModule(train=TRAIN, max_train_rows=0)


def test_prompt_batches_are_left_padded_with_the_instruction_and_rows(tiny_gpt2):
    from lit_rlhf.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_gpt2)
    data = SmolTLDRDataModule(
        train=TRAIN, val=VAL, system_prompt="Summarize:", batch_size=4, max_length=1024, max_prompt_length=1000
    )
    data.connect(tokenizer)
    data.setup("fit")
    assert data.reports["train"].prompt_truncated == 0
    batch = next(iter(data.train_dataloader()))
    ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    assert set(batch) == {"prompt_input_ids", "prompt_attention_mask", "rows"} and ids.shape == mask.shape
    assert ids.size(0) == 4 and (mask[:, -1] == 1).all()  # every prompt ends at the last column
    assert torch.equal(mask, mask.sort(dim=1).values) and (mask == 0).any()  # padding only on the left
    assert (ids[mask == 0] == tokenizer.pad_token_id).all()
    for row, seq, m in zip(batch["rows"], ids, mask):
        assert tokenizer.decode(seq[m.bool()]) == f"Summarize:\n\n{row['prompt']}"  # the preamble, no chat template
        assert row["reference"] and "row_index" in row


def test_a_few_ppo_steps_from_the_config_with_length_and_format_rewards(tmp_path, tiny_gpt2):
    from transformers import AutoModelForCausalLM

    from lit_rlhf.cli import cli_main
    from lit_rlhf.rewards.rules import WeightedSumReward

    initial = AutoModelForCausalLM.from_pretrained(tiny_gpt2).state_dict()
    run_dir = tmp_path / "runs" / "smoltldr" / "ppo"
    overrides = {
        "model.init_args.policy_name_or_path": tiny_gpt2,
        "model.init_args.max_new_tokens": "8",
        "data.init_args.train": TRAIN,
        "data.init_args.val": VAL,
        "data.init_args.batch_size": "4",
        "data.init_args.eval_batch_size": "4",
        "data.init_args.max_length": "64",
        "data.init_args.max_prompt_length": "48",  # + 8 new tokens fit the tiny model's 128 positions
        "trainer.accelerator": "cpu",
        "trainer.precision": "32-true",
        "trainer.max_steps": "2",  # iterations
        "trainer.val_check_interval": "2",
        "trainer.enable_progress_bar": "false",
        "trainer.logger.init_args.save_dir": str(tmp_path / "runs"),
    }
    args = ["fit", "--config", PPO_CONFIG] + [x for key, value in overrides.items() for x in (f"--{key}", value)]
    cli = cli_main(args)

    assert cli.model.iteration == 2 and cli.trainer.global_step == 2
    reward = cli.model.reward
    assert isinstance(reward, WeightedSumReward) and reward.component_names == ["length", "format"]
    # The last call scored the last validation batch (3 posts: 4 per batch, 3 in the file).
    assert {name: len(v) for name, v in reward.last_components.items()} == {"length": 3, "format": 3}
    assert all(v <= 0 for v in reward.last_components["length"].tolist())
    assert set(reward.last_components["format"].tolist()) <= {0.0, 1.0}

    scalars, _ = read_events(str(run_dir))
    scores = [value for _, value in scalars["objective/score"]]
    assert len(scores) == 2 and all(math.isfinite(s) and s <= 1.0 for s in scores)  # length <= 0, format <= 1
    assert "val/reward" in scalars and "objective/kl" in scalars
    for name in ("length", "format"):  # each component of the weighted sum, per iteration
        assert len(scalars[f"reward/{name}/mean"]) == 2 and len(scalars[f"reward/{name}/std"]) == 2
    assert all(v <= 0 for _, v in scalars["reward/length/mean"])

    trained = cli.model.model.state_dict()
    changed = [name for name, value in initial.items() if not torch.equal(value, trained[name])]
    assert "transformer.h.0.mlp.c_fc.weight" in changed and "transformer.h.1.attn.c_attn.weight" in changed
    assert os.path.isfile(run_dir / "hf" / "model.safetensors")


def test_a_few_grpo_steps_from_the_config_log_each_reward_source(tmp_path, tiny_gpt2):
    from lit_rlhf.cli import cli_main

    run_dir = tmp_path / "runs" / "smoltldr" / "grpo"
    overrides = {
        "model.init_args.policy_name_or_path": tiny_gpt2,
        "model.init_args.max_new_tokens": "8",
        "model.init_args.num_generations": "4",
        "model.init_args.learning_rate": "1e-3",
        "data.init_args.train": TRAIN,
        "data.init_args.val": VAL,
        "data.init_args.batch_size": "2",
        "data.init_args.eval_batch_size": "4",
        "data.init_args.max_length": "64",
        "data.init_args.max_prompt_length": "48",
        "trainer.accelerator": "cpu",
        "trainer.precision": "32-true",
        "trainer.max_steps": "2",  # iterations
        "trainer.val_check_interval": "2",
        "trainer.enable_progress_bar": "false",
        "trainer.logger.init_args.save_dir": str(tmp_path / "runs"),
    }
    args = ["fit", "--config", GRPO_CONFIG] + [x for key, value in overrides.items() for x in (f"--{key}", value)]
    cli = cli_main(args)
    assert cli.model.iteration == 2 and cli.trainer.global_step == 2
    scalars, _ = read_events(str(run_dir))
    for name in ("reward", "reward_std", "frac_reward_zero_std", "kl", "val/reward"):
        assert name in scalars, name
    for name in ("length", "format"):
        assert len(scalars[f"reward/{name}/mean"]) == 2 and len(scalars[f"reward/{name}/std"]) == 2
    assert os.path.isfile(run_dir / "hf" / "model.safetensors")
