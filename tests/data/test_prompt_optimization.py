import csv
import os

import pytest

from lit_rlhf.data.prompt_optimization import DEFAULT_INSTRUCTION, PromptOptimizationDataModule, parse_choices
from lit_rlhf.data.rows import DataError
from tests.conftest import FIXTURES
from tests.helpers import save_tiny_gpt2

TRAIN = os.path.join(FIXTURES, "prompt_optimization", "train.csv")
HEADER = ["context", "question", "choices", "answer"]
GOOD = ["Two people, A and B, met.", "Who left first?", "['A', 'B', 'Unknown']", "Unknown"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    texts = [DEFAULT_INSTRUCTION, open(TRAIN).read(), "<system>You write prompts.<user><assistant>"]
    path = save_tiny_gpt2(str(tmp_path_factory.mktemp("gpt2")), texts)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def write_csv(path, rows, header=HEADER, encoding="utf-8"):
    with open(path, "w", encoding=encoding, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def prepare(tokenizer, train, **kwargs):
    data = PromptOptimizationDataModule(train=train, **{"max_length": 512, "max_prompt_length": 384, **kwargs})
    data.connect(tokenizer)
    data.setup("fit")
    return data


def test_fixture_rows_keep_the_parsed_choices_answer_and_fields_for_the_judge(tokenizer):
    data = prepare(tokenizer, TRAIN, val_fraction=0.25, instruction="Write a system prompt.")
    rows = [ex["row"] for ex in data.train_dataset + data.val_dataset]
    assert len(rows) == 9
    by_line = {row["row_index"]: row for row in rows}
    # Data line 2: commas and doubled quotes inside the context, a plain list literal in choices.
    assert by_line[2]["context"].startswith("A grandfather and his grandson were setting up a new phone. The grandson,")
    assert '"I give up"' in by_line[2]["context"]
    assert by_line[2]["choices"] == ["The grandfather", "The grandson", "Cannot be determined"]
    assert by_line[2]["answer"] == "The grandson" and by_line[2]["question"] == "Who was struggling with the phone?"
    # Data line 9: a choice with an apostrophe, written as a double-quoted string inside the literal.
    assert by_line[9]["choices"] == ["The nurse", "The doctor", "Can't tell"] and by_line[9]["answer"] == "Can't tell"
    assert by_line[8]["choices"][1] == "부산 출신 학생"
    for row in rows:
        assert row["prompt"] == "Write a system prompt." and row["answer"] in row["choices"]
    # Every prompt is the one fixed instruction: the same ids for every row (no chat template on this tokenizer).
    prompt_ids = {tuple(ex["prompt_ids"]) for ex in data.train_dataset}
    assert prompt_ids == {tuple(tokenizer("Write a system prompt.")["input_ids"])}


def test_val_fraction_holds_out_a_seeded_split(tokenizer):
    data = prepare(tokenizer, TRAIN, val_fraction=0.3, seed=3)
    train = [ex["row"]["row_index"] for ex in data.train_dataset]
    val = [ex["row"]["row_index"] for ex in data.val_dataset]
    assert len(val) == 3 and len(train) == 6  # round(0.3 * 9) held out
    assert sorted(train + val) == list(range(1, 10))
    again = prepare(tokenizer, TRAIN, val_fraction=0.3, seed=3)
    assert [ex["row"]["row_index"] for ex in again.val_dataset] == val


def test_default_instruction_with_a_chat_template_and_system_prompt(tokenizer, tmp_path):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    data = prepare(tokenizer, TRAIN, system_prompt="You write prompts.", max_length=1024, max_prompt_length=900)
    text = tokenizer.decode(data.train_dataset[0]["prompt_ids"])
    assert text == f"<system>You write prompts.\n<user>{DEFAULT_INSTRUCTION}\n<assistant>"
    assert data.train_dataset[0]["row"]["prompt"] == DEFAULT_INSTRUCTION


def test_a_csv_saved_with_a_byte_order_mark_reads(tokenizer, tmp_path):
    path = write_csv(tmp_path / "bom.csv", [GOOD, GOOD], encoding="utf-8-sig")
    data = prepare(tokenizer, path, val_fraction=0.5)
    assert data.train_dataset[0]["row"]["context"] == "Two people, A and B, met."


@pytest.mark.parametrize(
    "choices, answer, message",
    [
        ("['A', 'B'", "A", r"row 2: field 'choices' is not a Python list literal"),
        ("A, B, C", "A", r"row 2: field 'choices' is not a Python list literal"),
        ("[1, 2, 3]", "1", r"row 2: field 'choices' must be a list of strings, got a list of int"),
        ("{'A': 1}", "A", r"row 2: field 'choices' must be a list of strings, got dict"),
        ("['A']", "A", r"row 2: field 'choices' needs at least 2 choices"),
        ("['A', ' ']", "A", r"row 2: field 'choices' has an empty choice \(number 2\)"),
        ("['A', 'B', 'C']", "D", r"row 2: field 'answer' 'D' is not one of the choices \['A', 'B', 'C'\]"),
    ],
)
def test_bad_rows_name_the_file_row_and_field(tokenizer, tmp_path, choices, answer, message):
    path = write_csv(tmp_path / "bad.csv", [GOOD, ["ctx", "q?", choices, answer], GOOD])
    with pytest.raises(DataError, match=rf"bad\.csv {message}"):
        prepare(tokenizer, path, val_fraction=0.4)


def test_missing_column_and_ragged_row_are_named(tokenizer, tmp_path):
    path = write_csv(tmp_path / "nocol.csv", [GOOD[:3], GOOD[:3]], header=HEADER[:3])
    with pytest.raises(
        DataError, match=r"nocol\.csv row [12]: missing field 'answer' \(present: choices, context, question\)"
    ):
        prepare(tokenizer, path)
    path = write_csv(tmp_path / "ragged.csv", [GOOD, GOOD + ["extra"]])
    with pytest.raises(DataError, match=r"ragged\.csv row 2: more values than columns"):
        prepare(tokenizer, path)


def test_parse_choices_accepts_json_lists_and_strips():
    assert parse_choices([" a ", "b"], "x row 1") == ["a", "b"]
    assert parse_choices('["a, b", "c\'s"]', "x row 1") == ["a, b", "c's"]
    with pytest.raises(DataError, match="x row 1: field 'choices' must be a list of strings, got NoneType"):
        parse_choices(None, "x row 1")


def test_only_the_prompt_format_and_a_train_source():
    with pytest.raises(ValueError, match="serves format prompt, got 'sft'"):
        PromptOptimizationDataModule(format="sft", train=TRAIN)
    with pytest.raises(ValueError, match="pass train"):
        PromptOptimizationDataModule()
    with pytest.raises(ValueError, match="instruction must not be empty"):
        PromptOptimizationDataModule(train=TRAIN, instruction=" ")
