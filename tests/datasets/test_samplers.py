"""Contracts of the batch samplers: composition, determinism from (seed, epoch), coverage, rank slices."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from datasets.samplers import (
    SAMPLERS,
    ClassRandomBatchSampler,
    MPerClassBatchSampler,
    build_batch_sampler,
)
from utilities.errors import UserError

# 12 classes of uneven sizes (1..23 images), labels shuffled so indices are not grouped by class.
SIZES = [1, 2, 3, 5, 7, 8, 10, 11, 13, 17, 20, 23]
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(len(SIZES)), SIZES))


def epoch_batches(sampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_class_random_batch_composition_and_length() -> None:
    sampler = ClassRandomBatchSampler(LABELS, batch_size=12, samples_per_class=3, seed=5)
    batches = epoch_batches(sampler, 0)
    assert len(sampler) == len(LABELS) // 12 == len(batches)
    for batch in batches:
        assert len(batch) == 12
        groups = np.asarray(LABELS[batch]).reshape(4, 3)
        # each consecutive group of samples_per_class comes from one class
        assert (groups == groups[:, :1]).all()


def test_class_random_draws_with_replacement() -> None:
    # one class per group with replacement: over many batches a class repeats inside a batch and an
    # image repeats inside a group (reference behaviour, docs/reference.md §3.5)
    sampler = ClassRandomBatchSampler(LABELS, batch_size=24, samples_per_class=2, seed=1, num_batches=200)
    batches = np.asarray(epoch_batches(sampler, 0))
    assert batches.shape == (200, 24)
    repeated_class = any(max(Counter(LABELS[b][::2]).values()) > 1 for b in batches)
    repeated_image = any(b[i] == b[i + 1] for b in batches for i in range(0, 24, 2))
    assert repeated_class and repeated_image
    # classes are drawn uniformly, not proportionally to their size
    class_freq = np.bincount(LABELS[batches[:, ::2]].ravel(), minlength=len(SIZES)) / batches[:, ::2].size
    assert np.allclose(class_freq, 1 / len(SIZES), atol=0.02)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_deterministic_per_seed_and_epoch(name: str) -> None:
    first = build_batch_sampler(name, LABELS, 12, 3, seed=7)
    second = build_batch_sampler(name, list(LABELS), 12, 3, seed=7)
    assert epoch_batches(first, 3) == epoch_batches(second, 3)
    assert epoch_batches(first, 3) != epoch_batches(first, 4)
    other_seed = build_batch_sampler(name, LABELS, 12, 3, seed=8)
    assert epoch_batches(other_seed, 3) != epoch_batches(first, 3)
    assert all(isinstance(i, int) for batch in epoch_batches(first, 0) for i in batch)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_slices_concatenate_to_global_batch(name: str, world_size: int) -> None:
    single = epoch_batches(build_batch_sampler(name, LABELS, 12, 2, seed=3), 2)
    per_rank = [
        epoch_batches(build_batch_sampler(name, LABELS, 12, 2, seed=3, rank=r, world_size=world_size), 2)
        for r in range(world_size)
    ]
    assert all(len(batches) == len(single) for batches in per_rank)
    for step, batch in enumerate(single):
        assert all(len(per_rank[r][step]) == 12 // world_size for r in range(world_size))
        assert sum((per_rank[r][step] for r in range(world_size)), []) == batch


def test_m_per_class_distinct_classes_and_images() -> None:
    sampler = MPerClassBatchSampler(LABELS, batch_size=12, samples_per_class=3, seed=0)
    for epoch in range(3):
        for batch in epoch_batches(sampler, epoch):
            groups = LABELS[batch].reshape(4, 3)
            assert (groups == groups[:, :1]).all()
            assert len(set(groups[:, 0])) == 4  # distinct classes
            batch_of_big_classes = [i for i in batch if SIZES[LABELS[i]] >= 3]
            assert len(set(batch_of_big_classes)) == len(batch_of_big_classes)  # no repeated image


def test_m_per_class_covers_every_image_each_epoch() -> None:
    sampler = MPerClassBatchSampler(LABELS, batch_size=12, samples_per_class=3, seed=0)
    groups = sum(-(-s // 3) for s in SIZES)
    assert len(sampler) == -(-groups // 4)
    for epoch in range(3):
        seen = {i for batch in epoch_batches(sampler, epoch) for i in batch}
        assert seen == set(range(len(LABELS)))


def test_m_per_class_small_class_repeats_only_itself() -> None:
    # the 1-image class fills its group by repeating its single image
    sampler = MPerClassBatchSampler(LABELS, batch_size=12, samples_per_class=3, seed=0)
    lonely = int(np.flatnonzero(LABELS == 0)[0])
    groups_with_it = [
        b[k : k + 3] for b in epoch_batches(sampler, 0) for k in range(0, 12, 3) if lonely in b[k : k + 3]
    ]
    assert groups_with_it and all(group == [lonely] * 3 for group in groups_with_it)


def test_m_per_class_respects_num_batches() -> None:
    short = MPerClassBatchSampler(LABELS, batch_size=12, samples_per_class=3, seed=0, num_batches=2)
    long = MPerClassBatchSampler(LABELS, batch_size=12, samples_per_class=3, seed=0, num_batches=40)
    for sampler, expected in ((short, 2), (long, 40)):
        batches = epoch_batches(sampler, 0)
        assert len(batches) == len(sampler) == expected
        for batch in batches:
            assert len(set(LABELS[batch][::3])) == 4
    assert {i for b in epoch_batches(long, 0) for i in b} == set(range(len(LABELS)))


def test_m_per_class_needs_enough_classes() -> None:
    with pytest.raises(UserError, match="needs 4 distinct classes .* only 2"):
        MPerClassBatchSampler([0, 0, 1, 1], batch_size=8, samples_per_class=2, seed=0)


def test_size_errors() -> None:
    with pytest.raises(UserError, match=r"batch_size \(10\) must be divisible by samples_per_class \(3\)"):
        build_batch_sampler("class_random", LABELS, 10, 3, seed=0)
    with pytest.raises(UserError, match="number of processes"):
        build_batch_sampler("class_random", LABELS, 12, 2, seed=0, rank=0, world_size=5)
    with pytest.raises(UserError, match="unknown name 'nope'; valid: class_random, m_per_class"):
        build_batch_sampler("nope", LABELS, 12, 2, seed=0)
    with pytest.raises(UserError, match="exceeds the 4 training images"):
        list(ClassRandomBatchSampler([0, 0, 1, 1], batch_size=8, samples_per_class=2, seed=0))
