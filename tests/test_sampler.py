"""DatasetLoader.SpeakerBalancedSampler: batch structure, caps, determinism, ranks, deferral."""
from collections import Counter

import numpy as np
import pytest

from DatasetLoader import SpeakerBalancedSampler


def labels_from_counts(counts):
    """Utterance labels for speakers with the given utterance counts, interleaved so that a
    speaker's files are not contiguous in the list."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(123).permutation(labels)


def flat_files(batches):
    return [f for batch in batches for request in batch for f in request.files]


def check_plan(batches, labels, groups_per_batch, views):
    """Every structural rule of a supervised plan, checked by direct loops."""
    for batch in batches:
        assert len(batch) == groups_per_batch
        speakers = []
        for request in batch:
            assert len(request.files) == views
            assert len(request.frames) == views and len(request.starts) == views
            assert len(set(request.files)) == views                  # distinct utterances
            group_speakers = {int(labels[f]) for f in request.files}
            assert group_speakers == {request.label}                 # one speaker per group
            assert all(0.0 <= s < 1.0 for s in request.starts)
            speakers.append(request.label)
        assert len(set(speakers)) == len(speakers)                   # no speaker twice per batch
    files = flat_files(batches)
    assert len(files) == len(set(files))                             # an utterance once per epoch


COUNTS = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 3, 5, 7]


@pytest.mark.parametrize("views, batch", [(1, 4), (2, 4), (3, 3)])
def test_structure(views, batch):
    labels = labels_from_counts(COUNTS)
    sampler = SpeakerBalancedSampler(labels, batch, views, max_seg_per_spk=500, seed=5)
    batches = sampler.plan(1)
    assert batches, "the plan should not be empty"
    check_plan(batches, labels, batch, views)


def test_iteration_yields_the_plan_of_the_current_epoch():
    labels = labels_from_counts(COUNTS)
    sampler = SpeakerBalancedSampler(labels, 4, 2, 500, seed=5)
    sampler.set_epoch(3)
    iterated = list(sampler)
    assert len(iterated) == len(sampler)
    assert iterated == SpeakerBalancedSampler(labels, 4, 2, 500, seed=5).plan(3)


@pytest.mark.parametrize("cap, views", [(4, 2), (5, 2), (3, 1), (7, 3)])
def test_per_speaker_cap(cap, views):
    labels = labels_from_counts(COUNTS)
    sampler = SpeakerBalancedSampler(labels, 3, views, max_seg_per_spk=cap, seed=1)
    for epoch in (1, 2):
        used = Counter(int(labels[f]) for f in flat_files(sampler.plan(epoch)))
        assert used, "nothing planned"
        for speaker, n in used.items():
            assert n <= cap
            assert n % views == 0


def test_cap_applies_to_every_speaker():
    # Every speaker has 10 utterances; each contributes exactly the cap of 4.
    labels = labels_from_counts([10] * 8)
    batches = SpeakerBalancedSampler(labels, 4, 2, max_seg_per_spk=4, seed=1).plan(1)
    used = Counter(int(labels[f]) for f in flat_files(batches))
    assert used == {s: 4 for s in range(8)}


def test_same_seed_and_epoch_same_plan():
    labels = labels_from_counts(COUNTS)
    a = SpeakerBalancedSampler(labels, 4, 2, 500, seed=7).plan(2)
    b = SpeakerBalancedSampler(labels, 4, 2, 500, seed=7)
    b.plan(5)                                 # planning other epochs first changes nothing
    assert b.plan(2) == a


def test_different_epoch_or_seed_changes_the_plan():
    labels = labels_from_counts(COUNTS)
    sampler = SpeakerBalancedSampler(labels, 4, 2, 500, seed=7)
    e1, e2 = flat_files(sampler.plan(1)), flat_files(sampler.plan(2))
    assert e1 != e2
    other_seed = flat_files(SpeakerBalancedSampler(labels, 4, 2, 500, seed=8).plan(1))
    assert other_seed != e1


def test_rank_split_is_disjoint_and_covers_the_plan():
    labels = labels_from_counts(COUNTS * 2)
    full = SpeakerBalancedSampler(labels, 3, 2, 500, seed=4, world_size=1).plan(6)
    ranks = []
    for rank in (0, 1):
        sampler = SpeakerBalancedSampler(labels, 3, 2, 500, seed=4, rank=rank, world_size=2)
        sampler.set_epoch(6)
        ranks.append(list(sampler))
        assert len(ranks[-1]) == len(sampler)
    r0, r1 = ranks
    assert len(r0) == len(r1) > 0
    assert not set(flat_files(r0)) & set(flat_files(r1))
    # Together the ranks see exactly the single-process plan cut to a multiple of 2 batches.
    usable = len(full) // 2 * 2
    assert len(r0) + len(r1) == usable
    interleaved = [b for pair in zip(r0, r1) for b in pair]
    assert interleaved == full[:usable]


def test_group_by_utterance_views_are_copies_of_one_utterance():
    labels = np.full(10, -1)
    sampler = SpeakerBalancedSampler(labels, 3, 2, 500, seed=2, group_by_utterance=True)
    batches = sampler.plan(1)
    assert len(batches) == 10 // 3
    firsts = []
    for batch in batches:
        assert len(batch) == 3
        for request in batch:
            assert len(request.files) == 2 and request.files[0] == request.files[1]
            firsts.append(request.files[0])
    assert len(firsts) == len(set(firsts)) == 9


@pytest.mark.parametrize("counts, batch, views, world", [
    ([5, 5, 5], 4, 2, 1),             # 3 speakers, batch of 4
    ([5, 5, 1, 1, 5], 4, 2, 1),       # 2 speakers too small for 2 views
    ([5, 5, 5, 5, 5], 3, 2, 2),       # 5 speakers, 2 ranks x 3
])
def test_infeasible_batch_size(counts, batch, views, world):
    with pytest.raises(ValueError, match="batch_size"):
        SpeakerBalancedSampler(labels_from_counts(counts), batch, views, 500, world_size=world)


def test_infeasible_for_self_supervised():
    with pytest.raises(ValueError):
        SpeakerBalancedSampler(np.full(3, -1), 4, 2, 500, group_by_utterance=True)


def test_cap_below_views_is_infeasible():
    labels = labels_from_counts([6] * 6)
    with pytest.raises(ValueError, match="max_seg_per_spk|nPerSpeaker"):
        SpeakerBalancedSampler(labels, 2, 2, max_seg_per_spk=1)


# ------------------------------------------------------------------ deferral vs dropping

def voxceleb_trainer_used(labels, batch, views, cap, seed):
    """Utterances used per epoch by voxceleb_trainer's rule: shuffle the groups and drop a
    group whose speaker is already in the batch being filled; keep whole batches only."""
    rng = np.random.default_rng(seed)
    group_speakers = []
    for speaker in np.unique(labels):
        n = min(int((labels == speaker).sum()), cap) // views
        group_speakers += [int(speaker)] * n
    batch_labels = []
    for i in rng.permutation(len(group_speakers)):
        start = len(batch_labels) // batch * batch
        if group_speakers[i] not in batch_labels[start:]:
            batch_labels.append(group_speakers[i])
    return len(batch_labels) // batch * batch * views


def best_possible_used(labels, batch, views, cap):
    """Upper bound: k full batches need sum_s min(groups_s, k) >= batch * k."""
    groups = np.array([min(c, cap) // views for c in np.unique(labels, return_counts=True)[1]])
    k = 0
    while np.minimum(groups, k + 1).sum() >= batch * (k + 1):
        k += 1
    return k * batch * views


def test_deferral_uses_more_than_dropping():
    rng = np.random.default_rng(5)
    counts = rng.integers(2, 41, size=200)                # 200 speakers, 2..40 utterances
    labels = labels_from_counts(counts)
    batch, views, cap = 100, 2, 500
    sampler = SpeakerBalancedSampler(labels, batch, views, cap, seed=3)
    ours, references = [], []
    for epoch in (1, 2, 3):
        batches = sampler.plan(epoch)
        check_plan(batches, labels, batch, views)
        used = len(flat_files(batches))
        assert sampler.stats["used"] == used
        ours.append(used)
        references.append(voxceleb_trainer_used(labels, batch, views, cap, seed=epoch))
    bound = best_possible_used(labels, batch, views, cap)
    assert min(ours) > max(references)
    assert np.mean(ours) >= 1.25 * np.mean(references)
    assert max(ours) <= bound
    assert min(ours) >= 0.9 * bound
