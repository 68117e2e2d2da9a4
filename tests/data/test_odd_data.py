"""Small and odd data: empty files, fewer rows than a batch, uneven shards across processes, a ``columns`` entry
naming a missing column, files of an unsupported kind, text the tokenizer cannot read, over-long rows. Each ends in
one ``DataError`` line naming the file (and row, option or column) and the fix, or in the behaviour stated in
docs/datasets.md."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from lit_rlhf.data import (
    DataError,
    HHRLHFDataModule,
    PreferenceDataModule,
    PromptDataModule,
    SFTDataModule,
    SmolTLDRDataModule,
    TLDRDataModule,
)
from lit_rlhf.data.arithmetic_labels import read_cache
from lit_rlhf.data.prompt_optimization import PromptOptimizationDataModule
from lit_rlhf.data.sampler import EvalShardSampler, ResumableSampler, eval_shard
from lit_rlhf.data.sources import FILE_SUFFIXES, load_rows
from lit_rlhf.data.tokenization import (
    UNKNOWN_CHECK_ROWS,
    UNKNOWN_ERROR_SHARE,
    UNKNOWN_WARN_SHARE,
    count_unknown_tokens,
)
from lit_rlhf.errors import UserError

KNOWN = "make a series of 1 2 3"  # words of the word-level tokenizer's vocabulary
ROWS = {
    "sft": {"prompt": KNOWN, "response": "4 5 6"},
    "preference": {"prompt": KNOWN, "chosen": "4 5 6", "rejected": "4 5 7"},
    "prompt": {"prompt": KNOWN, "answer": "4 5 6"},
}
MODULES = {"sft": SFTDataModule, "preference": PreferenceDataModule, "prompt": PromptDataModule}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, UserError)
    return message


# -- 1: empty files ---------------------------------------------------------------------------------------------------

EMPTY_FILES = [
    ("empty.jsonl", ""),
    ("blank.jsonl", "\n   \n\n"),
    ("empty.json", ""),
    ("list.json", "[]"),
    ("header.csv", "prompt,response\n"),
    ("nothing.csv", ""),
]


@pytest.mark.parametrize("format", sorted(MODULES))
@pytest.mark.parametrize(("name", "text"), EMPTY_FILES)
def test_an_empty_training_file_is_refused_naming_it_and_the_option(tmp_path, format, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as err:
        MODULES[format](train=str(path)).load_rows()
    message = one_line(err)
    assert message.startswith(f"{path} (data.init_args.train): the file has no rows")
    assert "give data.init_args.train a file with at least one row" in message


@pytest.mark.parametrize("format", sorted(MODULES))
def test_an_empty_validation_file_is_refused_naming_it_and_the_option(tmp_path, format):
    train = write_jsonl(tmp_path / "train.jsonl", [ROWS[format]] * 3)
    val = tmp_path / "val.jsonl"
    val.write_text("\n\n")
    with pytest.raises(DataError) as err:
        MODULES[format](train=train, val=str(val)).load_rows()
    assert one_line(err).startswith(f"{val} (data.init_args.val): the file has no rows")


@pytest.mark.parametrize(
    ("module", "name", "text"),
    [
        (lambda path: TLDRDataModule(format="sft", train=path), "tldr.jsonl", ""),
        (lambda path: TLDRDataModule(format="preference", train=path), "comparisons.jsonl", "\n"),
        (lambda path: HHRLHFDataModule(format="preference", train=path), "hh.jsonl", ""),
        (lambda path: SmolTLDRDataModule(train=path), "smol.jsonl", ""),
        (lambda path: PromptOptimizationDataModule(train=path), "qa.csv", "context,question,choices,answer\n"),
    ],
)
def test_dataset_modules_refuse_an_empty_file_the_same_way(tmp_path, module, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as err:
        module(str(path)).load_rows()
    assert one_line(err).startswith(f"{path} (data.init_args.train): the file has no rows")


def test_an_empty_hub_split_names_the_split_option(monkeypatch):
    import datasets

    class Empty:
        def to_list(self):
            return []

    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: Empty())
    with pytest.raises(DataError) as err:
        SFTDataModule(train="org/data", train_split="test").load_rows()
    message = one_line(err)
    assert message.startswith("org/data[test] (data.init_args.train): the split has no rows")
    assert "data.init_args.train_split" in message


def test_a_damaged_labelled_pair_cache_names_the_line_and_the_fix(tmp_path):
    path = tmp_path / "arithmetic-labelled-0123.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "1", "rejected": "2"}) + "\n" + '{"prompt": "p", "cho\n')
    with pytest.raises(DataError) as err:
        read_cache(str(path))
    message = one_line(err)
    assert message.startswith(f"{path} row 2: not a labelled pair") and "delete it to label the pairs again" in message


# -- 2: fewer rows than one batch -------------------------------------------------------------------------------------


def test_a_single_row_cannot_hold_out_a_validation_split(tmp_path):
    train = write_jsonl(tmp_path / "one.jsonl", [ROWS["sft"]])
    with pytest.raises(DataError) as err:
        SFTDataModule(train=train).load_rows()
    message = one_line(err)
    assert "1 row, too few to hold out a validation split" in message and "data.init_args.val" in message


def test_a_large_val_fraction_still_leaves_a_training_row(tmp_path):
    train = write_jsonl(tmp_path / "two.jsonl", [ROWS["sft"]] * 2)
    rows = SFTDataModule(train=train, val_fraction=0.9).load_rows()
    assert [len(rows["train"]), len(rows["val"])] == [1, 1]


@pytest.mark.parametrize("format", sorted(MODULES))
def test_fewer_rows_than_one_batch_give_one_short_batch(tmp_path, word_tokenizer, format):
    """No rows are dropped: the training and validation loaders keep a short last batch."""
    train = write_jsonl(tmp_path / "train.jsonl", [ROWS[format]] * 3)
    val = write_jsonl(tmp_path / "val.jsonl", [ROWS[format]] * 2)
    data = MODULES[format](train=train, val=val, batch_size=8, max_length=32)
    data.connect(word_tokenizer)
    with pytest.warns(UserWarning, match=rf"\[train\] {train}: 3 rows, fewer than data.init_args.batch_size 8"):
        data.setup("fit")
    key = {"sft": "input_ids", "preference": "input_ids", "prompt": "prompt_input_ids"}[format]
    per_row = 2 if format == "preference" else 1  # a pair is two sequences
    assert [b[key].size(0) for b in data.train_dataloader()] == [3 * per_row]
    assert [b[key].size(0) for b in data.val_dataloader()] == [2 * per_row]


# -- 4: uneven shards across processes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_rows", "world_size"), [(5, 2), (7, 3), (2, 4), (8, 4)])
def test_training_shards_are_padded_by_repetition_to_equal_length(num_rows, world_size):
    shards = [
        list(ResumableSampler(num_rows, num_replicas=world_size, rank=rank, seed=3)) for rank in range(world_size)
    ]
    per_rank = -(-num_rows // world_size)
    assert [len(s) for s in shards] == [per_rank] * world_size  # every rank runs the same number of steps
    seen = [i for shard in shards for i in shard]
    assert set(seen) == set(range(num_rows))  # every row is trained on
    assert len(seen) - num_rows == per_rank * world_size - num_rows  # the padding: repeated rows only


@pytest.mark.parametrize(("num_rows", "world_size"), [(5, 2), (7, 3), (4, 4), (9, 4)])
def test_validation_shards_count_every_row_once(num_rows, world_size):
    shards = [list(EvalShardSampler(num_rows, num_replicas=world_size, rank=rank)) for rank in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(num_rows))  # none repeated, none left out
    assert [len(s) for s in shards] == [len(eval_shard(num_rows, world_size, r)) for r in range(world_size)]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1 and min(map(len, shards)) >= 1
    assert [len(EvalShardSampler(num_rows, world_size, r)) for r in range(world_size)] == [len(s) for s in shards]


def fake_trainer(world_size: int, rank: int) -> SimpleNamespace:
    return SimpleNamespace(world_size=world_size, global_rank=rank, fit_loop=SimpleNamespace(restarting=False))


def test_validation_loader_shards_rows_and_normalisation_reads_them_all(tmp_path, word_tokenizer):
    rows = [{"prompt": f"{KNOWN} {i}", "chosen": "4 5 6", "rejected": "4 5 7"} for i in range(5)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    seen = []
    for rank in range(2):
        data = PreferenceDataModule(train=path, val=path, eval_batch_size=2, max_length=32)
        data.connect(word_tokenizer)
        data.setup("fit")
        data.trainer = fake_trainer(2, rank)
        loader = data.val_dataloader()
        assert isinstance(loader.sampler, EvalShardSampler)
        seen += [row["row_index"] for batch in loader for row in batch["rows"]]
        everything = [row["row_index"] for batch in data.normalization_dataloader() for row in batch["rows"]]
        assert everything == list(range(1, 6))  # not sharded: the same statistics on every process
    assert sorted(seen) == list(range(1, 6))


def test_under_fsdp2_every_process_validates_as_many_batches_the_rest_left_out_with_a_warning(
    tmp_path, word_tokenizer
):
    from lit_rlhf.strategies import FSDP2Strategy

    rows = [{"prompt": f"{KNOWN} {i}", "chosen": "4 5 6", "rejected": "4 5 7"} for i in range(5)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    batches, seen = [], []
    for rank in range(2):
        data = PreferenceDataModule(train=path, val=path, eval_batch_size=2, max_length=32)
        data.connect(word_tokenizer)
        data.setup("fit")
        data.trainer = SimpleNamespace(**vars(fake_trainer(2, rank)), strategy=FSDP2Strategy())
        with pytest.warns(UserWarning, match="under FSDP2 .* the last 1 of the 5 validation rows are left out"):
            loader = data.val_dataloader()
        batches.append(len(loader))
        seen += [row["row_index"] for batch in loader for row in batch["rows"]]
    # Each forward of a sharded model is a collective: both processes run the same number of batches (under DDP,
    # 3 rows and 2 rows would be 2 batches and 1).
    assert batches == [1, 1]
    assert sorted(seen) == [1, 2, 3, 4]


def test_fewer_validation_rows_than_processes_is_refused_with_the_numbers(tmp_path, word_tokenizer):
    path = write_jsonl(tmp_path / "val.jsonl", [ROWS["sft"]] * 2)
    data = SFTDataModule(train=path, val=path, max_length=32)
    data.connect(word_tokenizer)
    data.setup("fit")
    data.trainer = fake_trainer(4, 0)
    with pytest.raises(DataError) as err:
        data.val_dataloader()
    message = one_line(err)
    assert "the validation split has 2 rows for 4 processes" in message and "at least 4 validation rows" in message


# -- 5: a columns entry naming a missing column -----------------------------------------------------------------------


def test_columns_naming_a_missing_column_names_key_column_file_and_columns_present(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}] * 3)
    with pytest.raises(DataError) as err:
        SFTDataModule(train=path, columns={"prompt": "question", "response": "answr"}).load_rows()
    message = one_line(err)
    assert message.startswith(f"{path} row 1: data.init_args.columns maps 'response' to column 'answr'")
    assert "(columns present: answer, question)" in message
    assert "set data.init_args.columns.response to one of the columns present" in message


def test_columns_are_checked_in_the_validation_file_too(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"q": "x", "a": "y"}] * 2)
    val = write_jsonl(tmp_path / "val.jsonl", [{"q": "x", "a": "y"}, {"q": "x", "answer": "y"}])
    with pytest.raises(DataError, match=rf"^{val} row 2: data.init_args.columns maps 'response' to column 'a'"):
        SFTDataModule(train=train, val=val, columns={"prompt": "q", "response": "a"}).load_rows()


# -- 6: files of another kind -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["train.txt", "train.tsv", "train"])
def test_an_existing_file_of_another_kind_names_the_accepted_suffixes(tmp_path, name):
    path = tmp_path / name
    path.write_text("make a series\n")
    with pytest.raises(DataError) as err:
        load_rows(str(path))
    message = one_line(err)
    assert message.startswith(f"{path}: a data file must end in ")
    assert all(suffix in message for suffix in FILE_SUFFIXES)


def test_suffixes_are_read_in_any_letter_case(tmp_path):
    path = write_jsonl(tmp_path / "TRAIN.JSONL", [ROWS["sft"]] * 2)
    assert len(load_rows(path)) == 2


def test_a_missing_path_with_another_suffix_gets_the_suffix_hint(monkeypatch):
    import datasets

    def fail(*args, **kwargs):
        raise FileNotFoundError("Couldn't find any data file at\n data/train.txt.")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError) as err:
        load_rows("data/train.txt")
    assert one_line(err).endswith("a local data file must end in .jsonl, .json, .csv or .parquet")


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"prompt": "caf\u00e9"}, ensure_ascii=False).encode("latin-1") + b"\n")
    with pytest.raises(DataError) as err:
        load_rows(str(path))
    assert one_line(err).startswith(f"{path}: not UTF-8 text")


# -- 7: text the tokenizer cannot read --------------------------------------------------------------------------------


def test_text_that_is_mostly_unknown_tokens_is_refused(tmp_path, word_tokenizer):
    rows = [{"prompt": "hello world foo", "response": "bar baz"}] * 4
    path = write_jsonl(tmp_path / "english.jsonl", rows)
    data = SFTDataModule(train=path, val=path)
    data.connect(word_tokenizer)
    with pytest.raises(DataError) as err:
        data.setup("fit")
    message = one_line(err)
    assert message.startswith(f"{path}: 20 of the 20 tokens (100%) of its first 4 rows are the unknown token '<unk>'")
    assert "row 1, field 'prompt'" in message and "the model's own tokenizer" in message


def test_some_unknown_tokens_warn_and_train_on(tmp_path, word_tokenizer, caplog):
    share = 1 / 4  # one word of four in every row
    assert UNKNOWN_WARN_SHARE < share <= UNKNOWN_ERROR_SHARE
    rows = [{"prompt": "make a series hello", "answer": "1"}] * 3
    path = write_jsonl(tmp_path / "prompts.jsonl", rows)
    data = PromptDataModule(train=path, val=path)
    data.connect(word_tokenizer)
    with caplog.at_level(logging.WARNING):
        data.setup("fit")
    assert len(data.train_dataset) == 3
    assert f"{path}: 3 of the 12 tokens (25%)" in caplog.text and "row 1, field 'prompt'" in caplog.text


def test_known_text_passes_silently(tmp_path, word_tokenizer, caplog):
    path = write_jsonl(tmp_path / "pairs.jsonl", [ROWS["preference"]] * 3)
    data = PreferenceDataModule(train=path, val=path)
    data.connect(word_tokenizer)
    with caplog.at_level(logging.WARNING):
        data.setup("fit")
    assert "unknown token" not in caplog.text


def test_only_the_first_rows_are_counted(word_tokenizer):
    from lit_rlhf.data.rows import RowSet

    rows = RowSet.numbered("x", [{"prompt": KNOWN}] * UNKNOWN_CHECK_ROWS + [{"prompt": "hello"}], first=1)
    assert count_unknown_tokens(rows, word_tokenizer, ("prompt",))[0] == 0
    unknown, total, example = count_unknown_tokens(rows, word_tokenizer, ("prompt",), max_rows=len(rows))
    assert (unknown, example) == (1, (UNKNOWN_CHECK_ROWS + 1, "prompt", "hello"))


# -- 8: rows too long for max_length ----------------------------------------------------------------------------------


def test_overlong_error_names_the_policy_option_and_the_limit(tmp_path, word_tokenizer):
    rows = [{"prompt": KNOWN, "response": " ".join(["7"] * 40)}] * 2
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    data = SFTDataModule(train=path, val=path, max_length=16, overlong="error")
    data.connect(word_tokenizer)
    with pytest.raises(DataError) as err:
        data.setup("fit")
    message = one_line(err)
    tokens = len(KNOWN.split()) + 40 + 1  # prompt words, response words, EOS
    assert message.startswith(
        f"{path} row 1: prompt + response have {tokens} tokens > max_length 16 (overlong is 'error')"
    )
    assert "raise data.init_args.max_length, or set data.init_args.overlong to truncate" in message
