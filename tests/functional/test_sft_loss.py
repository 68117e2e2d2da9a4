import math

import torch

from lit_rlhf.functional import (
    IGNORE_INDEX,
    logprobs_from_logits,
    num_target_tokens,
    pack_rows,
    packed_labels,
    packed_targets,
    sft_loss,
    supervised_window,
    token_cross_entropy,
)


def test_sft_loss_counts_only_response_tokens_by_hand():
    # Vocabulary of 2. Sequence [a, b, a] where only the last token is a response token.
    # Position 1 predicts token 2 (= 0) with logits [ln 3, 0]: p = 3/4, so loss = -ln(3/4).
    logits = torch.zeros(1, 3, 2)
    logits[0, 1] = torch.tensor([math.log(3.0), 0.0])
    logits[0, 0] = torch.tensor([100.0, -100.0])  # predicts token 1 (prompt): must be ignored
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 0]])
    loss, stats = sft_loss(logits, labels)
    assert math.isclose(loss.item(), -math.log(0.75), rel_tol=1e-6)
    assert stats.num_tokens.item() == 1
    assert stats.num_correct.item() == 1  # argmax of [ln 3, 0] is token 0


def test_sft_loss_is_mean_over_all_supervised_tokens_of_the_batch():
    # Two rows, uniform logits over 4 tokens: each supervised token costs ln 4, whatever the row.
    logits = torch.zeros(2, 4, 4)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3], [IGNORE_INDEX, IGNORE_INDEX, 1, IGNORE_INDEX]])
    loss, stats = sft_loss(logits, labels)
    assert math.isclose(loss.item(), math.log(4.0), rel_tol=1e-6)
    assert stats.num_tokens.item() == 4  # 3 targets in row 0 (positions 1..3), 1 in row 1


def test_sft_loss_of_parts_with_the_batch_normalizer_adds_up_to_the_batch_loss():
    # Row 0: 2 targets with logits [ln 3, 0] (p = 3/4 for token 0, cost -ln 3/4 each); row 1: 1 target at uniform
    # logits over 2 (cost ln 2). Batch mean: (2 * -ln 0.75 + ln 2) / 3. Each row alone, divided by the batch's 3
    # targets, gives its share: 2 * -ln 0.75 / 3 and ln 2 / 3.
    logits = torch.zeros(2, 3, 2)
    logits[0, :2] = torch.tensor([math.log(3.0), 0.0])
    labels = torch.tensor([[IGNORE_INDEX, 0, 0], [IGNORE_INDEX, IGNORE_INDEX, 1]])
    total = num_target_tokens(labels)
    assert total.item() == 3
    whole, _ = sft_loss(logits, labels)
    first, first_stats = sft_loss(logits[:1], labels[:1], normalizer=total)
    second, _ = sft_loss(logits[1:], labels[1:], normalizer=total)
    assert math.isclose(whole.item(), (2 * -math.log(0.75) + math.log(2.0)) / 3, rel_tol=1e-6)
    assert math.isclose(first.item(), 2 * -math.log(0.75) / 3, rel_tol=1e-6)
    assert math.isclose((first + second).item(), whole.item(), rel_tol=1e-6)
    assert first_stats.num_tokens.item() == 2  # the part's own count, whatever the normalizer


def test_sft_loss_gradient_flows_only_through_supervised_positions():
    logits = torch.zeros(1, 3, 3, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2]])
    loss, _ = sft_loss(logits, labels)
    loss.backward()
    assert logits.grad[0, 0].abs().sum() == 0  # position 0 predicts an ignored label
    assert logits.grad[0, 2].abs().sum() == 0  # last position predicts nothing
    assert logits.grad[0, 1].abs().sum() > 0


def test_logprobs_from_logits_by_hand():
    # logits [0, ln 3] -> probabilities [1/4, 3/4].
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    tokens = torch.tensor([[1, 0]])
    expected = torch.tensor([[math.log(0.75), math.log(0.25)]])
    assert torch.allclose(logprobs_from_logits(logits, tokens), expected, atol=1e-6)
    # Ignored labels give 0 instead of indexing out of range.
    assert logprobs_from_logits(logits, torch.tensor([[IGNORE_INDEX, 0]]))[0, 0].item() == 0.0


def test_packed_labels_ignore_each_rows_first_label_by_hand():
    x = IGNORE_INDEX
    labels = torch.tensor([[7, 8, 9, x], [x, x, 5, 6]])  # row 0 supervised from its first token on
    layout = pack_rows(torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]]))
    # Packed: row 0 = [7, 8, 9], row 1 = [x, 5, 6]; each row's first label is dropped (the previous row's last
    # token sits before it in the packed row, and nothing in its own row predicts it).
    assert packed_labels(labels, layout).tolist() == [x, 8, 9, x, 5, 6]


def test_sft_loss_on_packed_rows_and_on_the_kept_logits_equals_the_padded_batch():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    labels = torch.randint(0, 5, (3, 6))
    labels[:, :2] = IGNORE_INDEX
    labels[mask == 0] = IGNORE_INDEX
    logits = torch.randn(3, 6, 5)
    layout = pack_rows(mask)
    packed_logits = logits.flatten(0, 1)[layout.token_index].unsqueeze(0)
    loss, stats = sft_loss(logits, labels)
    packed_loss, packed_stats = sft_loss(packed_logits, packed_labels(labels, layout).unsqueeze(0))
    assert math.isclose(packed_loss.item(), loss.item(), rel_tol=1e-6)
    assert (packed_stats.num_tokens.item(), packed_stats.num_correct.item()) == (
        stats.num_tokens.item(),
        stats.num_correct.item(),
    )
    # The same from the logits of the positions that predict a target only (one per target).
    positions, targets = packed_targets(labels, layout)
    assert positions.numel() == stats.num_tokens.item()
    kept_loss, kept_stats = token_cross_entropy(packed_logits[0, positions], targets)
    assert math.isclose(kept_loss.item(), loss.item(), rel_tol=1e-6)
    assert (kept_stats.num_tokens.item(), kept_stats.num_correct.item()) == (
        stats.num_tokens.item(),
        stats.num_correct.item(),
    )


def test_packed_targets_by_hand():
    x = IGNORE_INDEX
    labels = torch.tensor([[7, 8, 9, x], [x, x, 5, 6]])
    layout = pack_rows(torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]]))
    # Packed labels [x, 8, 9, x, 5, 6] (above): position t predicts label t + 1, so positions 0, 1 (row 0's 7, 8)
    # predict 8, 9; position 2 (row 0's last token) predicts nothing; positions 3, 4 predict 5, 6.
    positions, targets = packed_targets(labels, layout)
    assert positions.tolist() == [0, 1, 3, 4]
    assert targets.tolist() == [8, 9, 5, 6]


def test_token_cross_entropy_by_hand():
    # Two targets: logits [ln 3, 0] for token 0 (cost -ln 3/4, right) and uniform over 2 for token 1 (cost ln 2;
    # argmax picks token 0: wrong). A third position is ignored.
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0], [50.0, -50.0]])
    loss, stats = token_cross_entropy(logits, torch.tensor([0, 1, IGNORE_INDEX]))
    assert math.isclose(loss.item(), (-math.log(0.75) + math.log(2.0)) / 2, rel_tol=1e-6)
    assert (stats.num_tokens.item(), stats.num_correct.item()) == (2, 1)
    halved, _ = token_cross_entropy(logits, torch.tensor([0, 1, IGNORE_INDEX]), normalizer=4)
    assert math.isclose(halved.item(), loss.item() / 2, rel_tol=1e-6)


def test_supervised_window_by_hand_and_the_loss_of_the_window_equals_the_batch_loss():
    x = IGNORE_INDEX
    # Row 0's first label (3) is never predicted; the first predicted one is row 0's 5 at position 2, predicted by
    # position 1: the window is positions 1..4 of 5. The predicted labels are 5, 6, 7, 8.
    labels = torch.tensor([[3, x, 5, 6, x], [x, x, x, 7, 8]])
    assert supervised_window(labels) == 4
    assert supervised_window(torch.tensor([[x, x, x, 7]])) == 2  # position 2 predicts the 7
    assert supervised_window(torch.full((2, 5), x)) == 5  # nothing supervised: every position, as before
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 9)
    loss, stats = sft_loss(logits, labels)
    window_loss, window_stats = sft_loss(logits[:, -4:], labels[:, -4:])
    assert math.isclose(window_loss.item(), loss.item(), rel_tol=1e-6)
    assert (window_stats.num_tokens.item(), window_stats.num_correct.item()) == (4, stats.num_correct.item())
