import torch

from lit_rlhf.functional import mask_after_eos, masked_mean, masked_sum


def test_masked_sum_and_mean_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 1]])
    # Row sums: 1 + 2 = 3 and 6; total 9 over 3 kept positions -> mean 3.
    assert masked_sum(values, mask).item() == 9.0
    assert masked_mean(values, mask).item() == 3.0
    assert torch.equal(masked_sum(values, mask, dim=1), torch.tensor([3.0, 6.0]))
    assert torch.equal(masked_mean(values, mask, dim=1), torch.tensor([1.5, 6.0]))


def test_masked_mean_of_empty_mask_is_zero_not_nan():
    values = torch.tensor([[1.0, 2.0]])
    assert masked_mean(values, torch.zeros_like(values)).item() == 0.0


def test_mask_after_eos_keeps_first_eos_and_everything_before():
    eos = 9
    tokens = torch.tensor([[5, 9, 7, 9], [5, 6, 7, 8], [9, 1, 2, 3]])
    expected = torch.tensor(
        [
            [True, True, False, False],  # EOS at 1: keep 0..1
            [True, True, True, True],  # no EOS: truncated by length, keep all
            [True, False, False, False],  # EOS first: keep only it
        ]
    )
    assert torch.equal(mask_after_eos(tokens, eos), expected)
