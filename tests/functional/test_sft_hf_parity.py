"""lit_rlhf's SFT loss and LR schedule against the Hugging Face Trainer's (what TRL's ``SFTTrainer`` runs on).

``benchmarks/sft_trl_parity.py`` compares the two systems end to end; these tests pin the pieces without TRL.
"""

import pytest
import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup
from transformers.loss.loss_utils import ForCausalLMLoss

from lit_rlhf.functional import IGNORE_INDEX, num_target_tokens, sft_loss
from lit_rlhf.functional.schedules import warmup_decay_factor


def random_batch(rows: int, seq_len: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and labels with a prompt of random length per row (ignored) and right padding (ignored)."""
    logits = torch.randn(rows, seq_len, vocab)
    labels = torch.randint(0, vocab, (rows, seq_len))
    for i in range(rows):
        prompt = int(torch.randint(1, seq_len // 2, ()))
        end = int(torch.randint(prompt + 1, seq_len + 1, ()))
        labels[i, :prompt] = IGNORE_INDEX
        labels[i, end:] = IGNORE_INDEX
    return logits, labels


def test_sft_loss_equals_transformers_causal_lm_loss_over_the_batchs_supervised_tokens():
    logits, labels = random_batch(rows=6, seq_len=12, vocab=11)
    ours, stats = sft_loss(logits, labels)
    # The Trainer counts the batch's supervised targets (labels[..., 1:]) as num_items_in_batch.
    num_items = (labels[..., 1:] != IGNORE_INDEX).sum()
    theirs = ForCausalLMLoss(logits, labels, vocab_size=11, num_items_in_batch=num_items)
    assert stats.num_tokens == num_items == num_target_tokens(labels)
    torch.testing.assert_close(ours, theirs)
    # and not the mean of per-row means: rows of different lengths weigh by their token counts
    per_row = torch.stack([sft_loss(logits[i : i + 1], labels[i : i + 1])[0] for i in range(6)])
    assert not torch.allclose(ours, per_row.mean())


def test_sft_loss_of_parts_adds_up_as_the_trainers_gradient_accumulation():
    """Parts of a batch divided by the whole batch's count add up to the batch's loss, as the Trainer's
    micro-batches divided by ``num_items_in_batch`` do."""
    logits, labels = random_batch(rows=8, seq_len=10, vocab=7)
    total = num_target_tokens(labels)
    ours = sum(sft_loss(logits[i : i + 2], labels[i : i + 2], normalizer=total)[0] for i in range(0, 8, 2))
    theirs = sum(
        ForCausalLMLoss(logits[i : i + 2], labels[i : i + 2], vocab_size=7, num_items_in_batch=total)
        for i in range(0, 8, 2)
    )
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours, sft_loss(logits, labels)[0])


@pytest.mark.parametrize("warmup", [0, 1, 30])
def test_cosine_schedule_equals_hugging_faces_cosine_with_min_lr_after_warmup(warmup):
    """After warmup, the factors of every step equal ``cosine_with_min_lr``'s; during warmup lit_rlhf's step ``s`` is
    ``(s + 1) / (warmup + 1)`` where Hugging Face's is ``s / warmup`` (its first step has LR 0)."""
    total, floor = 120, 0.1
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    theirs = get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total, min_lr_rate=floor).lr_lambdas[0]
    for step in range(total + 1):
        ours = warmup_decay_factor(step, warmup, total, "cosine", floor)
        if step < warmup:
            assert ours == pytest.approx((step + 1) / (warmup + 1))
            assert theirs(step) == pytest.approx(step / warmup)
        else:
            assert ours == pytest.approx(theirs(step), abs=1e-12), step
