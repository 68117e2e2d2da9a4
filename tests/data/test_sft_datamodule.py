import json
import logging
import os

import pytest

from lit_rlhf.data import ArithmeticDataModule, DataError, SFTDataModule
from lit_rlhf.functional import IGNORE_INDEX

QA_FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "sft", "qa.jsonl")
COLUMNS = {"prompt": "question", "response": "answer"}


def _qa_tokenizer():
    from lit_rlhf.models import build_word_tokenizer
    from tests.helpers import fixture_texts

    words = sorted({w for text in fixture_texts(QA_FIXTURE) for w in text.split()})
    return build_word_tokenizer(words)


def test_held_out_split_is_seeded_disjoint_and_keeps_file_row_numbers():
    tok = _qa_tokenizer()
    data = SFTDataModule(train=QA_FIXTURE, columns=COLUMNS, val_fraction=0.25, seed=3, batch_size=4)
    data.connect(tok)
    data.setup("fit")
    train_rows = {ex["row"]["row_index"] for ex in data.train_dataset}
    val_rows = {ex["row"]["row_index"] for ex in data.val_dataset}
    assert len(val_rows) == 6 and len(train_rows) == 18
    assert not train_rows & val_rows and train_rows | val_rows == set(range(1, 25))  # jsonl lines 1..24
    again = SFTDataModule(train=QA_FIXTURE, columns=COLUMNS, val_fraction=0.25, seed=3)
    again.connect(tok)
    again.setup("fit")
    assert {ex["row"]["row_index"] for ex in again.val_dataset} == val_rows
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and (batch["labels"] != IGNORE_INDEX).any()


def test_explicit_val_file_and_csv(tmp_path):
    tok = _qa_tokenizer()
    rows = [json.loads(line) for line in open(QA_FIXTURE)]
    csv_path = tmp_path / "val.csv"
    csv_path.write_text("question,answer\n" + "".join(f"{r['question']},{r['answer']}\n" for r in rows[:3]))
    data = SFTDataModule(train=QA_FIXTURE, val=str(csv_path), columns=COLUMNS)
    data.connect(tok)
    data.setup("fit")
    assert len(data.train_dataset) == 24 and len(data.val_dataset) == 3


def test_a_datasets_folder_loads_through_datasets(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text(open(QA_FIXTURE).read())
    data = SFTDataModule(train=str(folder), columns=COLUMNS, val_fraction=0.1)
    data.connect(_qa_tokenizer())
    data.setup("fit")
    assert len(data.train_dataset) + len(data.val_dataset) == 24


def test_bad_rows_are_named_through_the_datamodule(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "What is 1 plus 2?", "response": "3"}\n{"prompt": "What is 2 plus 2?"}\n')
    data = SFTDataModule(train=str(path))
    data.connect(_qa_tokenizer())
    with pytest.raises(DataError, match=r"train.jsonl row 2: missing field 'response'"):
        data.setup("fit")
    data = SFTDataModule(train=str(tmp_path / "missing.jsonl"))
    data.connect(_qa_tokenizer())
    with pytest.raises(DataError, match="data file not found"):
        data.setup("fit")


def test_truncation_counts_are_logged(caplog):
    data = SFTDataModule(train=QA_FIXTURE, columns=COLUMNS, max_length=8, max_prompt_length=4)
    data.connect(_qa_tokenizer())
    with caplog.at_level(logging.WARNING):
        data.setup("fit")
    total = data.reports["train"].prompt_truncated + data.reports["val"].prompt_truncated
    assert total == 24  # every question has 5 words > 4
    assert "prompts truncated" in caplog.text


def test_datamodule_without_tokenizer_says_how_to_fix():
    with pytest.raises(DataError, match=r"connect\(tokenizer\)"):
        ArithmeticDataModule().setup("fit")


def test_arithmetic_verifier_scores_completions():
    data = ArithmeticDataModule()
    rows = [{"answer": "1 3 5 7"}, {"answer": "2 4"}]
    scores = data.score_completions(["1 3 5 7", "2 5"], rows)
    assert scores == {"exact_match": [1.0, 0.0], "graded_score": [1.0, 0.5]}


@pytest.mark.parametrize("fmt", ["sft", "preference"])
def test_group_by_length_cuts_padding_in_training_batches(fmt):
    from lit_rlhf.models.tiny import build_word_tokenizer

    def padding_share(group: bool) -> float:
        data = ArithmeticDataModule(format=fmt, num_train=2000, batch_size=32, group_by_length=group)
        data.connect(build_word_tokenizer())
        data.setup("fit")
        real = total = 0
        for batch in data.train_dataloader():
            real += int(batch["attention_mask"].sum())
            total += batch["attention_mask"].numel()
        return 1 - real / total

    plain, grouped = padding_share(False), padding_share(True)
    assert plain > 0.15 and grouped < plain / 3
