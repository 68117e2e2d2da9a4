import json
import logging
import os

import pytest
import torch

from lit_rlhf.data import DataError, PreferenceDataModule, RowSet
from lit_rlhf.data.collate import PairCollator
from lit_rlhf.data.preference_rows import encode_preference_rows, prepare_preference_rows, split_implicit_prompt
from lit_rlhf.functional.reward import last_token_index
from tests.conftest import FIXTURES
from tests.helpers import save_tiny_gpt2

PAIRS = os.path.join(FIXTURES, "preference", "pairs.jsonl")
HH = os.path.join(FIXTURES, "preference", "hh_style.jsonl")
COLUMNS = {"prompt": "question", "chosen": "good", "rejected": "bad"}


@pytest.fixture(scope="module")
def gpt2_tokenizer(tmp_path_factory):
    from lit_rlhf.models import load_tokenizer

    texts = [line for path in (PAIRS, HH) for line in open(path)]
    path = save_tiny_gpt2(str(tmp_path_factory.mktemp("gpt2")), texts)
    return load_tokenizer(path)


def rowset(*rows):
    return RowSet.numbered("pairs.jsonl", list(rows), first=1)


def test_implicit_prompt_splits_before_the_word_that_differs():
    assert split_implicit_prompt("Q: hi\nA: I think so", "Q: hi\nA: I know") == ("Q: hi\nA: I", " think so", " know")
    # The prefix ends inside a word ("Ap"): the prompt stops before that word.
    assert split_implicit_prompt("A: Apple.", "A: Apricot.") == ("A:", " Apple.", " Apricot.")
    # HH-RLHF style, with the delimiter: the prompt ends right after the last "\n\nAssistant:".
    chosen, rejected = "\n\nHuman: x\n\nAssistant: Yes.", "\n\nHuman: x\n\nAssistant: No."
    assert split_implicit_prompt(chosen, rejected, "\n\nAssistant:") == ("\n\nHuman: x\n\nAssistant:", " Yes.", " No.")


@pytest.mark.parametrize(
    "chosen, rejected, delimiter, message",
    [
        ("Yes.", "No.", None, "share no common prefix"),
        ("Q: a b", "Q: a b c", None, "nothing of chosen is left"),
        ("Q: yes", "Q: no", "Assistant:", "does not contain the delimiter"),
    ],
)
def test_implicit_prompt_errors(chosen, rejected, delimiter, message):
    with pytest.raises(ValueError, match=message):
        split_implicit_prompt(chosen, rejected, delimiter)


def test_identical_pairs_are_counted_and_skipped_or_refused(caplog):
    rows = rowset({"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a ", "rejected": "a"})
    with caplog.at_level(logging.WARNING):
        prepared, skipped = prepare_preference_rows(rows)
    assert skipped == 1 and len(prepared) == 1 and prepared.numbers == [1]
    assert "skipped 1 pairs whose chosen and rejected texts are identical (first rows: 2)" in caplog.text
    with pytest.raises(DataError, match=r"pairs.jsonl row 2: fields 'chosen' and 'rejected' are identical"):
        prepare_preference_rows(rows, identical="error")


@pytest.mark.parametrize(
    "row, kwargs, message",
    [
        ({"prompt": "p", "chosen": "a"}, {}, r"row 1: missing field 'rejected' \(columns present: chosen, prompt\)"),
        ({"prompt": "p", "chosen": "", "rejected": "b"}, {}, r"row 1: field 'chosen' is empty"),
        ({"prompt": "  ", "chosen": "a", "rejected": "b"}, {}, r"row 1: field 'prompt' is empty"),
        ({"prompt": "p", "chosen": 3, "rejected": "b"}, {}, r"row 1: field 'chosen' must be a string, got int"),
        ({"chosen": "Yes.", "rejected": "No."}, {"implicit_prompt": True}, r"row 1: implicit prompt: .*no common"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "m": "big"}, {"margin_field": "m"}, r"'m' must be a number"),
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, {"margin_field": "m"}, r"missing margin field 'm'"),
    ],
)
def test_bad_rows_name_the_row_and_field(row, kwargs, message):
    with pytest.raises(DataError, match=message):
        prepare_preference_rows(rowset(row), **kwargs)


def test_margins_are_read_as_floats():
    prepared, _ = prepare_preference_rows(
        rowset({"prompt": "p", "chosen": "a", "rejected": "b", "m": "1.5"}), margin_field="m"
    )
    assert prepared.rows[0]["margin"] == 1.5


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pair_collator_puts_chosen_first_and_finds_the_last_tokens(padding_side):
    examples = [
        {"prompt_ids": [1, 2], "chosen_ids": [3, 9], "rejected_ids": [4, 5, 6, 9], "margin": None, "row": {"i": 0}},
        {"prompt_ids": [1], "chosen_ids": [7, 8, 9], "rejected_ids": [9], "margin": None, "row": {"i": 1}},
    ]
    batch = PairCollator(pad_id=0, padding_side=padding_side)(examples)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (4, 6) and batch["margin"] is None and [r["i"] for r in batch["rows"]] == [0, 1]
    expected = [[1, 2, 3, 9], [1, 7, 8, 9], [1, 2, 4, 5, 6, 9], [1, 9]]  # chosen 0, chosen 1, rejected 0, rejected 1
    for i, sequence in enumerate(expected):
        assert ids[i][mask[i].bool()].tolist() == sequence
        assert ids[i, batch["last_index"][i]].item() == 9  # every sequence ends with its EOS (9)
    assert torch.equal(batch["last_index"], last_token_index(mask))
    right_last = [3, 3, 5, 1] if padding_side == "right" else [5, 5, 5, 5]
    assert batch["last_index"].tolist() == right_last


def test_pair_collator_margins_and_correct_flags():
    examples = [
        {"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3], "margin": 1.0, "row": {"chosen_correct": True}},
        {"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3], "margin": 0.5, "row": {}},
    ]
    batch = PairCollator(pad_id=0)(examples)
    assert batch["margin"].tolist() == [1.0, 0.5] and batch["chosen_correct"].tolist() == [True, False]
    with pytest.raises(ValueError, match="some pairs of the batch have a margin"):
        PairCollator(pad_id=0)([examples[0], {**examples[1], "margin": None}])


def test_overlong_pairs_follow_the_policy(gpt2_tokenizer):
    long = " ".join(["word"] * 40)
    rows, _ = prepare_preference_rows(rowset({"prompt": "short prompt", "chosen": long, "rejected": "ok"}))
    with pytest.raises(DataError, match=r"pairs.jsonl row 1: prompt \+ response have \d+ tokens > max_length 24"):
        encode_preference_rows(rows, gpt2_tokenizer, max_length=24, max_prompt_length=14, overlong="error")
    examples, report = encode_preference_rows(rows, gpt2_tokenizer, max_length=24, max_prompt_length=14)
    ex = examples[0]
    assert len(ex["prompt_ids"]) + len(ex["chosen_ids"]) == 24 and ex["chosen_ids"][-1] != gpt2_tokenizer.eos_token_id
    assert ex["rejected_ids"][-1] == gpt2_tokenizer.eos_token_id  # the short side keeps its EOS
    assert report.response_truncated == 1
    rows2, _ = prepare_preference_rows(
        rowset({"prompt": "a b", "chosen": long, "rejected": "x"}, {"prompt": "a b", "chosen": "y", "rejected": "z"})
    )
    examples, report = encode_preference_rows(rows2, gpt2_tokenizer, max_length=24, overlong="drop")
    assert len(examples) == 1 and report.dropped == 1 and examples[0]["row"]["row_index"] == 2


def test_preference_datamodule_reads_columns_margins_and_reports_identical(gpt2_tokenizer):
    data = PreferenceDataModule(
        train=PAIRS, columns={**COLUMNS, "gap": "gap"}, margin_field="gap", val_fraction=0.34, batch_size=2, seed=0
    )
    data.connect(gpt2_tokenizer)
    data.setup("fit")
    reports = data.reports
    assert reports["train"].identical_skipped + reports["val"].identical_skipped == 1
    assert len(data.train_dataset) + len(data.val_dataset) == 5
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].size(0) == 4 and batch["margin"].dtype == torch.float32
    texts = gpt2_tokenizer.batch_decode(batch["input_ids"][:, :-1])
    assert all("What" in t or "Name" in t or "Capital" in t for t in texts)


def test_preference_datamodule_from_csv_and_identical_error(tmp_path, gpt2_tokenizer):
    path = tmp_path / "pairs.csv"
    rows = [json.loads(line) for line in open(PAIRS)]
    path.write_text("question,good,bad\n" + "".join(f'"{r["question"]}",{r["good"]},{r["bad"]}\n' for r in rows))
    data = PreferenceDataModule(train=str(path), val=str(path), columns=COLUMNS, identical="error")
    data.connect(gpt2_tokenizer)
    with pytest.raises(DataError, match=r"pairs.csv row 4: fields 'chosen' and 'rejected' are identical"):
        data.setup("fit")


def test_hh_style_implicit_prompts(gpt2_tokenizer):
    data = PreferenceDataModule(train=HH, val=HH, implicit_prompt=True, prompt_delimiter="\n\nAssistant:")
    data.connect(gpt2_tokenizer)
    data.setup("fit")
    rows = [ex["row"] for ex in data.train_dataset]
    assert rows[1]["prompt"].endswith("Again?\n\nAssistant:") and rows[1]["chosen"] == " Hello there."
    assert rows[2]["chosen"] == " Apple." and rows[2]["rejected"] == " Apricot stone."
