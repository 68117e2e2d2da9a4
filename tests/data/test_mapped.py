import json
import logging

import pytest

from lit_rlhf.data import DataError, MappedRowsDataModule, PromptDataModule, SkipRow, require_field


class QADataModule(MappedRowsDataModule):
    """A toy dataset in its own schema: {q: {text}, a, skip?} → SFT or prompt rows."""

    formats = ("sft", "prompt")
    sources = {"sft": {"train": "org/qa-sft", "val_split": "validation"}}

    def convert_row(self, row, where):
        if row.get("skip"):
            raise SkipRow("marked skip")
        question = require_field(row, "q.text", where)
        answer = require_field(row, "a", where)
        if self.row_format == "sft":
            return {"prompt": question, "response": answer}
        return {"prompt": question, "answer": answer}


@pytest.fixture
def word_tokenizer():
    """The word-level tokenizer, knowing the words of these rows (their text would otherwise be mostly ``<unk>``)."""
    from lit_rlhf.data.arithmetic_task import vocabulary
    from lit_rlhf.models import build_word_tokenizer

    return build_word_tokenizer([*vocabulary(), "what", "is", "it", "q"])


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _rows(n):
    return [{"q": {"text": f"what is {i}"}, "a": f"it is {i}"} for i in range(n)]


def test_rows_are_mapped_skips_counted_and_logged(tmp_path, word_tokenizer, caplog):
    rows = _rows(10)
    rows[3]["skip"] = rows[7]["skip"] = True
    train = _write(tmp_path / "train.jsonl", rows)
    data = QADataModule(format="prompt", train=train, val_fraction=0.25, seed=0, max_length=32)
    data.connect(word_tokenizer)
    with caplog.at_level(logging.INFO):
        data.setup("fit")
    assert len(data.train_dataset) + len(data.val_dataset) == 8
    assert sum(data.skipped[s].get("marked skip", 0) for s in ("train", "val")) == 2
    assert "marked skip" in caplog.text
    example = data.train_dataset[0]
    assert example["row"]["answer"].startswith("it is") and example["row"]["prompt"].startswith("what is")


def test_bad_row_names_dataset_row_and_nested_field(tmp_path, word_tokenizer):
    rows = _rows(4)
    rows[2]["q"] = {"txt": "typo"}
    train = _write(tmp_path / "train.jsonl", rows)
    data = QADataModule(train=train, val=train)
    data.connect(word_tokenizer)
    with pytest.raises(DataError, match=r"train.jsonl row 3: missing field 'q.text' \(present: txt\)"):
        data.setup("fit")
    rows[2]["q"] = {"text": 5}
    _write(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=r"row 3: field 'q.text' must be str, got int 5"):
        QADataModule(train=train, val=train).load_rows()


def test_max_rows_defaults_and_format_checks(tmp_path):
    train = _write(tmp_path / "train.jsonl", _rows(10))
    rows = QADataModule(train=train, val=train, max_train_rows=3, max_val_rows=2).load_rows()
    assert [len(rows["train"]), len(rows["val"])] == [3, 2]
    numbers = rows["train"].numbers  # jsonl lines, for messages: a seeded subset in file order, not the first rows
    assert numbers == sorted(numbers) and set(numbers) <= set(range(1, 11)) and numbers != [1, 2, 3]
    assert [r["prompt"] for r in rows["train"].rows] == [f"what is {n - 1}" for n in numbers]
    again = QADataModule(train=train, val=train, max_train_rows=3, max_val_rows=2).load_rows()
    assert again["train"].numbers == numbers and again["val"].numbers == rows["val"].numbers
    other = QADataModule(train=train, val=train, max_train_rows=3, seed=5).load_rows()
    assert other["train"].numbers != numbers
    default = QADataModule()
    assert (default.train, default.val_split) == ("org/qa-sft", "validation")
    with pytest.raises(ValueError, match="pass train"):
        QADataModule(format="prompt")  # no default source for prompts
    with pytest.raises(ValueError, match="serves format sft / prompt, got 'preference'"):
        QADataModule(format="preference", train=train)
    every = [{**r, "skip": True} for r in _rows(3)]
    with pytest.raises(DataError, match="no usable rows.*3 marked skip"):
        QADataModule(train=_write(tmp_path / "skip.jsonl", every), val=train).load_rows()


def test_prompt_datamodule_keeps_every_field_for_rewards(tmp_path, word_tokenizer):
    rows = [{"question": f"q {i}", "answer": str(i)} for i in range(6)]
    data = PromptDataModule(
        train=_write(tmp_path / "p.jsonl", rows), columns={"prompt": "question"}, val_fraction=0.5, batch_size=2
    )
    data.connect(word_tokenizer)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["prompt_input_ids"].shape == batch["prompt_attention_mask"].shape
    assert {"prompt", "answer"} <= set(batch["rows"][0])


def test_data_dir_reaches_datasets_for_hub_sources_only(tmp_path, monkeypatch):
    import datasets

    calls = []

    class Fake:
        def __init__(self, rows):
            self.rows = rows

        def to_list(self):
            return self.rows

    def fake_load_dataset(name, config_name=None, split="train", **kwargs):
        calls.append((name, config_name, split, kwargs))
        return Fake(_rows(4))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = QADataModule(data_dir="harmless-base").load_rows()
    assert calls == [
        ("org/qa-sft", None, "train", {"data_dir": "harmless-base"}),
        ("org/qa-sft", None, "validation", {"data_dir": "harmless-base"}),
    ]
    assert rows["val"].dataset == "org/qa-sft/harmless-base[validation]"
    local = _write(tmp_path / "train.jsonl", _rows(4))
    QADataModule(train=local, val=local, data_dir="ignored-for-files").load_rows()
    assert len(calls) == 2


def test_a_validation_split_of_the_default_source_can_be_chosen(monkeypatch):
    import datasets

    splits = []

    class Fake:
        def to_list(self):
            return _rows(3)

    def fake_load_dataset(name, config_name=None, split="train", **kwargs):
        splits.append(split)
        return Fake()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    QADataModule(val_split="test").load_rows()
    assert splits == ["train", "test"]
