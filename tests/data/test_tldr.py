import json
import os
import re

import lightning as L
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lit_rlhf.data import DataError
from lit_rlhf.data.tldr import (
    COMPARISONS_SOURCE,
    SFT_SOURCE,
    TLDR_QUERY_FORMAT,
    TLDRDataModule,
    format_tldr_query,
)
from lit_rlhf.functional.masking import IGNORE_INDEX
from lit_rlhf.models import load_tokenizer
from lit_rlhf.modules import PPOModule, RewardModule, SFTModule
from lit_rlhf.rewards import FunctionReward
from tests.conftest import FIXTURES
from tests.helpers import quiet_trainer, save_tiny_gpt2

SFT_ROWS = os.path.join(FIXTURES, "tldr", "sft.jsonl")
COMPARISONS = os.path.join(FIXTURES, "tldr", "comparisons.jsonl")
QUERY_BUDGET = 256  # tokens of the tiny tokenizer: only the long roommate post (~590 tokens) needs cutting
POST = re.compile(r"POST: (.*)\n\nTL;DR:$", re.DOTALL)


def _strings(value):
    if isinstance(value, dict):
        return " ".join(_strings(v) for v in value.values())
    if isinstance(value, list):
        return " ".join(_strings(v) for v in value)
    return "" if value is None else str(value)


def read(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny GPT-2 whose byte-level BPE is trained on the fixtures, with room for 1024 positions."""
    path = str(tmp_path_factory.mktemp("tldr_gpt2"))
    texts = [_strings(row) for p in (SFT_ROWS, COMPARISONS) for row in read(p)]
    save_tiny_gpt2(path, texts + [TLDR_QUERY_FORMAT])  # the BPE drops characters it never saw ('D', '/')
    config = GPT2Config.from_pretrained(path)
    config.n_positions = 1024  # save_tiny_gpt2 allows 128; queries here are up to QUERY_BUDGET tokens
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return load_tokenizer(model_dir)


def datamodule(tokenizer, **kwargs):
    data = TLDRDataModule(**{"max_query_length": QUERY_BUDGET, "batch_size": 2, **kwargs})
    data.connect(tokenizer)
    return data


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_query_format_is_exact(tokenizer):
    # Surrounding whitespace of every field is stripped.
    query, truncated = format_tldr_query(" AskReddit ", " Best pizza topping? ", "\nPineapple, fight me. \n", tokenizer)
    assert query == "SUBREDDIT: r/AskReddit\n\nTITLE: Best pizza topping?\n\nPOST: Pineapple, fight me.\n\nTL;DR:"
    assert truncated is False


def test_long_post_is_cut_at_the_last_whitespace_that_fits(tokenizer):
    row = read(SFT_ROWS)[0]
    query, truncated = format_tldr_query(row["subreddit"], row["title"], row["post"], tokenizer, QUERY_BUDGET)
    assert truncated and query.endswith("\n\nTL;DR:") and query.startswith("SUBREDDIT: r/relationship_advice\n\n")
    assert len(tokenizer(query)["input_ids"]) <= QUERY_BUDGET
    cut = POST.search(query).group(1)
    original = row["post"].strip()
    assert 0 < len(cut) < len(original) and original.startswith(cut)
    assert not cut[-1].isspace() and original[len(cut)].isspace()  # no word is split
    # The longest such prefix: one more word does not fit.
    next_word = re.match(r"\s+\S+", original[len(cut) :]).group(0)
    longer = query.replace(f"POST: {cut}\n", f"POST: {cut}{next_word}\n")
    assert len(tokenizer(longer)["input_ids"]) > QUERY_BUDGET


def test_query_that_cannot_fit_is_refused(tokenizer):
    with pytest.raises(ValueError, match="even with an empty post"):
        format_tldr_query("AskReddit", "a title that is much too long " * 5, "post", tokenizer, 20)


def test_default_sources_and_validation_splits():
    sft = TLDRDataModule(format="sft")
    assert (sft.train, sft.val, sft.train_split, sft.val_split, sft.config_name) == (
        SFT_SOURCE,
        SFT_SOURCE,
        "train",
        "validation",
        None,
    )
    assert (sft.max_prompt_length, sft.max_length, sft.use_chat_template) == (512, 565, False)
    pref = TLDRDataModule(format="preference", max_query_length=256)
    assert (pref.train, pref.val, pref.val_split, pref.config_name) == (
        COMPARISONS_SOURCE,
        COMPARISONS_SOURCE,
        "validation",
        "comparisons",
    )
    assert pref.max_length == 256 + 169
    with pytest.raises(ValueError, match="max_query_length, not max_prompt_length"):
        TLDRDataModule(max_prompt_length=100)
    with pytest.raises(ValueError, match="must exceed max_query_length"):
        TLDRDataModule(max_query_length=512, max_length=512)


def test_sft_rows_batches_and_truncation_count(tokenizer):
    data = datamodule(tokenizer, format="sft", train=SFT_ROWS, val=SFT_ROWS, max_length=QUERY_BUDGET + 64)
    data.setup("fit")
    assert data.queries_truncated == {"train": 1, "val": 1} and data.skipped == {"train": {}, "val": {}}
    rows = [ex["row"] for ex in data.val_dataset]
    source = read(SFT_ROWS)
    assert [r["id"] for r in rows] == [r["id"] for r in source]
    assert rows[1]["response"] == " " + source[1]["summary"]  # one leading space, as in the N+ details
    assert rows[1]["prompt"] == (
        f"SUBREDDIT: r/personalfinance\n\nTITLE: {source[1]['title']}\n\nPOST: {source[1]['post']}\n\nTL;DR:"
    )
    batch = next(iter(data.val_dataloader()))
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    for i, example in enumerate(data.val_dataset[:2]):
        n_prompt, n_response = len(example["prompt_ids"]), len(example["response_ids"])
        assert n_prompt <= QUERY_BUDGET and mask[i].sum() == n_prompt + n_response
        assert (labels[i, :n_prompt] == IGNORE_INDEX).all()  # the query is never a target
        assert torch.equal(labels[i, n_prompt : n_prompt + n_response], ids[i, n_prompt : n_prompt + n_response])
        assert (labels[i, n_prompt + n_response :] == IGNORE_INDEX).all()  # nor is padding
        response = labels[i][labels[i] != IGNORE_INDEX].tolist()
        assert response[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(response[:-1]) == " " + source[i]["summary"]
    assert batch["prompt_input_ids"].shape[0] == 2  # left-padded prompts for generation on validation


def test_sft_from_csv_and_parquet_with_held_out_fraction_and_row_limits(tmp_path, tokenizer):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    source = read(SFT_ROWS)
    csv_path = tmp_path / "tldr.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(source[0]))
        writer.writeheader()
        writer.writerows(source)
    data = datamodule(tokenizer, format="sft", train=str(csv_path), val_fraction=0.25, max_train_rows=4)
    data.setup("fit")
    assert len(data.train_dataset) == 4 and len(data.val_dataset) == 2  # 8 rows: 2 held out, 6 -> 4 kept (seeded)
    ids = {ex["row"]["id"] for ex in data.train_dataset} | {ex["row"]["id"] for ex in data.val_dataset}
    assert len(ids) == 6
    parquet_path = tmp_path / "comparisons.parquet"
    pq.write_table(pa.Table.from_pylist(read(COMPARISONS)), parquet_path)  # nested structs, as on the hub
    data = datamodule(tokenizer, format="preference", train=str(parquet_path), val=COMPARISONS, max_val_rows=3)
    data.setup("fit")
    assert len(data.train_dataset) == 6 and len(data.val_dataset) == 3


def test_comparisons_choice_swap_skips_and_truncation(tokenizer):
    data = datamodule(tokenizer, format="preference", train=COMPARISONS, val=COMPARISONS)
    data.setup("fit")
    skipped = {"identical summaries": 1, "no post (news article)": 1}
    assert data.skipped == {"train": skipped, "val": skipped}
    assert data.queries_truncated == {"train": 1, "val": 1}
    rows = {ex["row"]["row_index"]: ex["row"] for ex in data.train_dataset}
    assert sorted(rows) == [1, 2, 3, 6, 7, 8]  # jsonl lines; 4 (identical) and 5 (CNN/DM article) are skipped
    source = read(COMPARISONS)
    assert rows[1]["chosen"] == source[0]["summaries"][0]["text"]  # choice 0
    assert rows[2]["chosen"] == source[1]["summaries"][1]["text"]  # choice 1: the second summary wins
    assert rows[2]["rejected"] == " dog barks"
    assert rows[2]["prompt"].startswith("SUBREDDIT: r/dogs\n\nTITLE: Rescue dog won't stop barking at my partner\n\n")
    assert rows[3]["prompt"].endswith("\n\nTL;DR:") and len(tokenizer(rows[3]["prompt"])["input_ids"]) <= 256
    assert rows[2]["id"] == "t3_7g8h9i"

    batch = next(iter(data.val_dataloader()))
    ids, mask, last = batch["input_ids"], batch["attention_mask"], batch["last_index"]
    assert ids.shape[0] == 4 and batch["margin"] is None  # 2 chosen, then 2 rejected
    first = data.val_dataset[0]
    n_prompt = len(first["prompt_ids"])
    assert ids[0][mask[0].bool()].tolist() == first["prompt_ids"] + first["chosen_ids"]
    assert ids[2][mask[2].bool()].tolist() == first["prompt_ids"] + first["rejected_ids"]
    assert torch.equal(ids[0, :n_prompt], ids[2, :n_prompt])  # a pair shares its query
    assert all(ids[i, last[i]].item() == tokenizer.eos_token_id for i in range(4))  # the score is read at EOS


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda row: row.update(choice=2), r"bad.jsonl row 2: field 'choice' must be 0 or 1, got 2"),
        (lambda row: row["info"].pop("title"), r"bad.jsonl row 2: missing field 'info.title' \(present: article, id"),
        (lambda row: row["summaries"].pop(), r"bad.jsonl row 2: field 'summaries' must hold 2 summaries, got 1"),
        (lambda row: row["info"].update(post=None), r"bad.jsonl row 2: field 'info.post' must be str, got NoneType"),
        (lambda row: row["summaries"][1].pop("text"), r"bad.jsonl row 2: summaries\[1\]: missing field 'text'"),
    ],
)
def test_bad_comparison_names_file_row_and_field(tmp_path, tokenizer, change, message):
    good, bad = read(COMPARISONS)[:2]
    change(bad)
    path = write_jsonl(tmp_path / "bad.jsonl", [good, bad])
    data = datamodule(tokenizer, format="preference", train=path, val=path)
    with pytest.raises(DataError, match=message):
        data.setup("fit")


def test_sft_row_errors_and_skips(tmp_path, tokenizer):
    source = read(SFT_ROWS)[1:3]
    path = write_jsonl(tmp_path / "bad.jsonl", [source[0], {**source[1], "summary": "  "}])
    with pytest.raises(DataError, match=r"bad.jsonl row 2: field 'summary' is empty"):
        datamodule(tokenizer, train=path, val=path).setup("fit")
    huge_title = {**source[1], "title": "why " * 200}
    path = write_jsonl(tmp_path / "long.jsonl", [source[0], huge_title])
    data = datamodule(tokenizer, train=path, val=path)
    data.setup("fit")
    reason = f"query over max_query_length={QUERY_BUDGET} even with an empty post"
    assert data.skipped["train"] == {reason: 1} and len(data.train_dataset) == 1


def test_prompt_rows_keep_the_reference_and_load_with_workers(tokenizer):
    data = datamodule(tokenizer, format="prompt", train=SFT_ROWS, val=SFT_ROWS, num_workers=1)
    data.setup("fit")
    source = read(SFT_ROWS)
    row = data.val_dataset[2]["row"]
    assert row["reference"] == source[2]["summary"] and "response" not in row
    batch = next(iter(data.train_dataloader()))  # through a worker process
    ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    assert ids.shape[0] == 2 and (mask[:, -1] == 1).all()  # left-padded: every prompt ends in the last column
    for i in range(2):
        text = tokenizer.decode(ids[i][mask[i].bool()])
        assert text == batch["rows"][i]["prompt"] and text.endswith("\n\nTL;DR:")


def trainer(tmp_path, max_steps, **kwargs):
    return quiet_trainer(tmp_path, max_steps, num_sanity_val_steps=0, limit_val_batches=1, **kwargs)


def changed(before, module):
    return [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]


def test_sft_module_trains_on_tldr(tmp_path, model_dir):
    L.seed_everything(0)
    module = SFTModule(model_dir, learning_rate=1e-3, max_new_tokens=4, num_logged_samples=0)
    data = TLDRDataModule(format="sft", train=SFT_ROWS, val_fraction=0.25, max_query_length=QUERY_BUDGET, batch_size=2)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    fit = trainer(tmp_path, max_steps=2, val_check_interval=2)
    fit.fit(module, data)
    assert fit.global_step == 2 and data.queries_truncated["train"] + data.queries_truncated["val"] == 1
    assert len(changed(before, module.model)) == len(before)
    assert {"train/loss", "val/loss", "val/token_accuracy"} <= set(fit.callback_metrics)


def test_reward_module_trains_on_comparisons(tmp_path, model_dir):
    L.seed_everything(0)
    module = RewardModule(model_dir, pad_token="<|pad|>", learning_rate=1e-3, num_logged_pairs=0)
    data = TLDRDataModule(
        format="preference", train=COMPARISONS, val=COMPARISONS, max_query_length=QUERY_BUDGET, batch_size=2
    )
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    fit = trainer(tmp_path, max_steps=2, val_check_interval=2)
    fit.fit(module, data)
    assert fit.global_step == 2 and data.skipped["train"] == {"identical summaries": 1, "no post (news article)": 1}
    assert module.tokenizer.pad_token_id != module.tokenizer.eos_token_id
    assert changed(before, module.model)
    assert {"train/loss", "train/accuracy", "val/accuracy", "val/margin"} <= set(fit.callback_metrics)


def overlap_with_reference(prompts, completions, rows):
    """Share of the reference summary's words that the completion uses (a crude ROUGE-1 recall)."""
    scores = []
    for completion, row in zip(completions, rows):
        reference = set(row["reference"].lower().split())
        scores.append(len(reference & set(completion.lower().split())) / len(reference))
    return scores


@pytest.mark.filterwarnings("ignore:Every response of this rollout batch")  # an untrained policy rarely emits EOS
def test_ppo_module_trains_on_tldr_prompts(tmp_path, model_dir):
    L.seed_everything(0)
    seen = []

    def reward(prompts, completions, rows):
        seen.extend(rows)
        return overlap_with_reference(prompts, completions, rows)

    module = PPOModule(
        FunctionReward(reward),
        policy_name_or_path=model_dir,
        max_new_tokens=6,
        temperature=0.7,
        ppo_epochs=1,
        num_minibatches=1,
        actor_learning_rate=1e-3,
        critic_learning_rate=1e-3,
        num_logged_samples=0,
    )
    data = TLDRDataModule(format="prompt", train=SFT_ROWS, val=SFT_ROWS, max_query_length=QUERY_BUDGET, batch_size=4)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    fit = trainer(tmp_path, max_steps=2, val_check_interval=2, check_val_every_n_epoch=None)  # 2 iterations
    fit.fit(module, data)
    assert module.iteration == 2 and fit.global_step == 2
    assert changed(before, module.model)
    assert seen and all(row["prompt"].endswith("\n\nTL;DR:") and row["reference"] for row in seen)
    assert {"objective/score", "objective/kl", "loss/policy", "loss/value", "val/reward"} <= set(fit.callback_metrics)


def cli_args(stage, runs, max_steps, *overrides):
    """``fit`` arguments running the shipped ``configs/tldr/<stage>.yaml`` on the fixtures and CPU, into ``runs``."""
    config = os.path.join(os.path.dirname(FIXTURES), "..", "configs", "tldr", f"{stage}.yaml")
    return [
        "fit",
        "--config",
        config,
        "--data.init_args.max_query_length",
        str(QUERY_BUDGET),
        "--data.init_args.num_workers",
        "0",
        "--trainer.max_steps",
        str(max_steps),
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(runs),
        *overrides,
    ]


def test_the_three_tldr_configs_run_in_sequence(tmp_path, model_dir):
    from lit_rlhf.cli import cli_main
    from tests.helpers import read_events

    runs = tmp_path / "runs"
    small = ["--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "2"]
    once = ["--trainer.accumulate_grad_batches", "1", "--trainer.val_check_interval", "2"]
    sft = cli_main(
        cli_args("sft", runs, 2, *small, *once, "--model.init_args.model_name_or_path", model_dir)
        + ["--data.init_args.train", SFT_ROWS, "--data.init_args.val", SFT_ROWS]
        + ["--model.init_args.max_new_tokens", "4", "--model.init_args.generate_val_batches", "1"]
    )
    assert sft.trainer.global_step == 2 and sft.datamodule.queries_truncated == {"train": 1, "val": 1}
    sft_hf = str(runs / "tldr" / "sft" / "hf")

    reward = cli_main(
        cli_args("reward", runs, 2, *small, *once, "--model.init_args.model_name_or_path", sft_hf)
        + ["--data.init_args.train", COMPARISONS, "--data.init_args.val", COMPARISONS]
    )
    assert reward.trainer.global_step == 2 and reward.model.tokenizer.pad_token == "[PAD]"
    reward_hf = str(runs / "tldr" / "reward" / "hf")
    with open(os.path.join(reward_hf, "config.json")) as f:
        assert json.load(f)["reward_normalization"]["num_responses"] > 0

    ppo = cli_main(
        cli_args("ppo", runs, 1, "--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size", "4")
        + ["--data.init_args.train", SFT_ROWS, "--data.init_args.val", SFT_ROWS, "--data.init_args.max_val_rows", "4"]
        + ["--model.init_args.policy_name_or_path", sft_hf, "--model.init_args.critic_name_or_path", reward_hf]
        + ["--model.init_args.reward.init_args.model_name_or_path", reward_hf, "--model.init_args.max_new_tokens", "6"]
        + ["--trainer.val_check_interval", "1"]
    )
    assert ppo.trainer.global_step == 1 and ppo.model.iteration == 1
    scalars, _ = read_events(str(runs / "tldr" / "ppo"))
    assert {"objective/score", "objective/kl", "val/reward"} <= set(scalars)
    for name in ("hf/model.safetensors", "hf_critic/model.safetensors", "checkpoints/last.ckpt"):
        assert os.path.isfile(runs / "tldr" / "ppo" / name), name
