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
