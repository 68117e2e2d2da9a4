from lit_rlhf.data.sampler import ResumableSampler


def test_order_depends_only_on_seed_and_epoch():
    a, b = ResumableSampler(20, seed=3), ResumableSampler(20, seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b)
    b.set_epoch(2)
    assert list(a) != list(b)
    assert sorted(a) == list(range(20))


def test_skip_once_resumes_mid_epoch_then_full_epochs_again():
    sampler = ResumableSampler(10, seed=0)
    full = list(sampler)
    sampler.skip_once(4)
    assert list(sampler) == full[4:]
    assert list(sampler) == full  # the skip applies once
    assert len(sampler) == 10  # Lightning counts the skipped batches itself


def test_ranks_get_disjoint_shards():
    shards = [list(ResumableSampler(10, num_replicas=2, rank=r, seed=1)) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(10))


def _batches(order, size):
    return [order[i : i + size] for i in range(0, len(order), size)]


def test_group_by_length_batches_hold_similar_lengths_and_every_sample_once():
    import random

    lengths = [random.Random(i).randint(5, 40) for i in range(103)]
    sampler = ResumableSampler(103, seed=4, lengths=lengths, batch_size=8, group_batches=4)
    order = list(sampler)
    assert sorted(order) == list(range(103))
    batches = _batches(order, 8)
    assert [len(b) for b in batches[:-1]] == [8] * 12 and len(batches[-1]) == 7  # only the last batch is short
    # padded tokens (batch size x longest) are far fewer than with the plain shuffle of the same seed
    plain = list(ResumableSampler(103, seed=4))
    padded = lambda o: sum(len(b) * max(lengths[i] for i in b) for b in _batches(o, 8))  # noqa: E731
    assert padded(order) < 0.85 * padded(plain)
    # within a mega-batch of 4 batches the samples are sorted, so each batch spans a small range
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # longest batch first


def test_group_by_length_is_deterministic_per_epoch_and_resumes():
    lengths = list(range(50))
    a = ResumableSampler(50, seed=1, lengths=lengths, batch_size=5, group_batches=2)
    b = ResumableSampler(50, seed=1, lengths=lengths, batch_size=5, group_batches=2)
    a.set_epoch(3)
    b.set_epoch(3)
    full = list(a)
    assert full == list(b)
    b.skip_once(15)
    assert list(b) == full[15:]
    b.set_epoch(4)
    assert list(b) != full


def test_group_by_length_per_rank_shards_stay_disjoint():
    lengths = [i % 17 for i in range(40)]
    shards = [list(ResumableSampler(40, 2, r, seed=2, lengths=lengths, batch_size=4)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(40))


def test_group_by_length_needs_batch_size_and_matching_lengths():
    import pytest

    with pytest.raises(ValueError, match="batch_size"):
        ResumableSampler(3, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match="2 entries for 3"):
        ResumableSampler(3, lengths=[1, 2], batch_size=2)
