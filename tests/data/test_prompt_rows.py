import pytest

from lit_rlhf.data import ArithmeticDataModule, DataError, RowSet
from lit_rlhf.data.tokenization import encode_rows


def test_prompt_format_serves_left_padded_prompts_with_their_rows(word_tokenizer):
    data = ArithmeticDataModule(format="prompt", num_train=32, num_val=8, batch_size=4)
    data.connect(word_tokenizer)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    assert (
        ids.shape == mask.shape
        and ids.size(0) == 4
        and set(batch) == {"prompt_input_ids", "prompt_attention_mask", "rows"}
    )
    assert (mask[:, -1] == 1).all()  # left padding: every prompt ends at the last column
    for row, seq, m in zip(batch["rows"], ids, mask):
        assert word_tokenizer.decode(seq[m.bool()]) == row["prompt"] and "answer" in row


def test_prompts_longer_than_the_context_follow_the_policy(word_tokenizer):
    rows = RowSet.numbered("prompts.jsonl", [{"prompt": "make a series"}, {"prompt": " ".join(["series"] * 20)}], 1)
    with pytest.raises(DataError, match=r"prompts.jsonl row 2: prompt has 20 tokens > max_prompt_length 8"):
        encode_rows(rows, word_tokenizer, (), max_length=16, max_prompt_length=8, overlong="error")
    examples, report = encode_rows(rows, word_tokenizer, (), max_length=16, max_prompt_length=8)
    assert len(examples[1]["prompt_ids"]) == 8 and report.prompt_truncated == 1
    examples, report = encode_rows(rows, word_tokenizer, (), max_length=16, max_prompt_length=8, overlong="drop")
    assert [ex["row"]["row_index"] for ex in examples] == [1] and report.dropped == 1
