import pytest
import torch

from lit_rlhf.functional.accumulation import micro_batch_weights


def test_token_weights_are_shares_of_the_tokens():
    # 2 + 1 tokens in the first micro-batch, 3 in the second: half each
    first = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    second = torch.tensor([[1, 1, 1]], dtype=torch.bool)
    assert micro_batch_weights([first, second]) == [0.5, 0.5]


def test_sequence_weights_are_shares_of_the_rows():
    first = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    second = torch.tensor([[1, 1, 1]], dtype=torch.bool)
    assert micro_batch_weights([first, second], "sequence") == pytest.approx([2 / 3, 1 / 3])


def test_weighted_token_means_equal_the_whole_minibatch_mean():
    values = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    parts = [(values[:2], mask[:2]), (values[2:], mask[2:])]
    weights = micro_batch_weights([m for _, m in parts])
    combined = sum(w * v[m].mean() for w, (v, m) in zip(weights, parts))
    assert combined.item() == pytest.approx(values[mask].mean().item())  # (1+2+3+4+5+6)/6 = 3.5


def test_bad_arguments():
    with pytest.raises(ValueError, match="averaging"):
        micro_batch_weights([torch.ones(1, 1)], "batch")
    with pytest.raises(ValueError, match="without any"):
        micro_batch_weights([torch.zeros(1, 2, dtype=torch.bool)])
