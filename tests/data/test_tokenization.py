import logging

import pytest
import torch

from lit_rlhf.data import DataError, RowSet
from lit_rlhf.data.collate import SFTCollator, pad_left
from lit_rlhf.data.tokenization import encode_sft_rows
from lit_rlhf.functional import IGNORE_INDEX


def _rows(*pairs):
    return RowSet.numbered("fixture.jsonl", [{"prompt": p, "response": r} for p, r in pairs], first=1)


def test_labels_mask_prompt_and_padding(word_tokenizer):
    tok = word_tokenizer
    examples, report = encode_sft_rows(_rows(("Let 5 be", "1 2"), ("make a series", "7")), tok, max_length=16)
    batch = SFTCollator(tok.pad_token_id, with_prompts=True)(examples)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    # Row 0: 3 prompt words + "1 2" + EOS = 6 tokens; row 1: 3 + 1 + 1 = 5, padded with one pad.
    assert batch["input_ids"][0].tolist() == ids("Let 5 be 1 2") + [eos]
    assert batch["input_ids"][1].tolist() == ids("make a series 7") + [eos, pad]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX] * 3 + ids("1 2") + [eos]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX] * 3 + ids("7") + [eos, IGNORE_INDEX]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 1, 0]
    # Prompts for generation are left-padded.
    assert batch["prompt_input_ids"].shape == (2, 3)
    assert batch["rows"][1]["row_index"] == 2
    assert report.num_rows == 2 and report.dropped == 0


def test_pad_left_by_hand():
    ids, mask = pad_left([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_overlong_prompt_truncate_keeps_its_end_and_is_counted(word_tokenizer, caplog):
    rows = _rows(("Let 1 2 3 4 5 6 7", "8"), ("Let 1", "2"))
    with caplog.at_level(logging.WARNING):
        examples, report = encode_sft_rows(rows, word_tokenizer, max_length=8, max_prompt_length=4)
    ids = lambda text: word_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert examples[0]["prompt_ids"] == ids("4 5 6 7")
    assert report.prompt_truncated == 1 and report.response_truncated == 0 and report.examples == [1]
    assert "1 prompts truncated" in caplog.text


def test_overlong_response_is_cut_at_max_length(word_tokenizer):
    examples, report = encode_sft_rows(_rows(("Let", "1 2 3 4 5 6")), word_tokenizer, max_length=4)
    assert len(examples[0]["prompt_ids"]) + len(examples[0]["response_ids"]) == 4
    assert word_tokenizer.eos_token_id not in examples[0]["response_ids"]
    assert report.response_truncated == 1


def test_overlong_drop_and_error_policies(word_tokenizer):
    rows = _rows(("Let 1", "2"), ("Let 1 2 3 4 5 6 7", "8"))
    examples, report = encode_sft_rows(rows, word_tokenizer, max_length=8, max_prompt_length=4, overlong="drop")
    assert len(examples) == 1 and report.dropped == 1
    with pytest.raises(DataError, match=r"fixture.jsonl row 2: prompt has 8 tokens > max_prompt_length 4"):
        encode_sft_rows(rows, word_tokenizer, max_length=8, max_prompt_length=4, overlong="error")


def test_every_row_dropped_is_an_error(word_tokenizer):
    with pytest.raises(DataError, match="no rows left"):
        encode_sft_rows(_rows(("Let 1 2 3", "4")), word_tokenizer, max_length=4, max_prompt_length=2, overlong="drop")


def test_chat_template_wraps_the_prompt(word_tokenizer):
    tok = word_tokenizer
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}value{% endif %}"
    )
    examples, _ = encode_sft_rows(_rows(("Let 5", "1")), tok, max_length=16)
    assert examples[0]["prompt_ids"] == tok("Let 5 value", add_special_tokens=False)["input_ids"]
    examples, _ = encode_sft_rows(_rows(("Let 5", "1")), tok, max_length=16, use_chat_template=False)
    assert examples[0]["prompt_ids"] == tok("Let 5", add_special_tokens=False)["input_ids"]


def test_collated_batch_is_long_tensors(word_tokenizer):
    examples, _ = encode_sft_rows(_rows(("Let 5", "1")), word_tokenizer, max_length=16)
    batch = SFTCollator(word_tokenizer.pad_token_id)(examples)
    assert batch["input_ids"].dtype == torch.long and "prompt_input_ids" not in batch


def test_a_pair_cut_to_the_same_tokens_is_dropped_and_counted(word_tokenizer, caplog):
    from lit_rlhf.data.tokenization import encode_rows

    rows = RowSet.numbered(
        "pairs.jsonl",
        [
            {"prompt": "Let", "chosen": "1 2 3 4 5 6", "rejected": "1 2 3 4 5 7"},  # equal once cut to 4 tokens
            {"prompt": "Let", "chosen": "1 2", "rejected": "1 3"},
        ],
        first=1,
    )
    with caplog.at_level(logging.WARNING):
        examples, report = encode_rows(rows, word_tokenizer, ("chosen", "rejected"), max_length=5)
    assert [ex["row"]["row_index"] for ex in examples] == [2]
    assert report.truncated_identical == 1 and report.response_truncated == 1
    assert "1 pairs dropped whose responses were equal once cut" in caplog.text
