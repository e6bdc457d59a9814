"""Start-up at scale: the sampler's array plan equals the per-group loop it replaces, draw for
draw; the first-fit packing equals a direct scan; the fast list reading equals list_lines; a
later start takes the manifest without building a path per file."""
import os

import numpy as np
import pytest

import DatasetLoader as DL
import speakernet.data.sampler
import speakernet.core.train_list
from DatasetLoader import CropRequest, SpeakerBalancedSampler, first_fit_slots, read_train_list
from speakernet.core import audio, audio_check


# ---------------------------------------------------------------------------- the reference plan

def reference_plan(labels, size, views, cap, epoch, seed=10, group_by_utterance=False,
                   view_frames=None, planner=None, subset=None, speeds=(1.0,), num_speakers=0,
                   world_size=1, max_frames=200):
    """The epoch plan as a loop per speaker, per group and per batch draws it."""
    rng = np.random.default_rng([seed, epoch])
    candidates = np.arange(len(labels)) if subset is None else np.sort(subset)
    groups, keys = [], []
    if group_by_utterance:
        order = rng.permutation(candidates)
        groups, keys = [(int(i),) * views for i in order], order.tolist()
    else:
        by_speaker = candidates[np.argsort(labels[candidates], kind="stable")]
        speakers, starts = np.unique(labels[by_speaker], return_index=True)
        for speaker, begin, end in zip(speakers, starts, list(starts[1:]) + [len(by_speaker)]):
            utterances = rng.permutation(by_speaker[begin:end])
            count = min(len(utterances), cap) // views * views
            for i in range(0, count, views):
                groups.append(tuple(int(u) for u in utterances[i:i + views]))
                keys.append(int(speaker))
        order = rng.permutation(len(groups))
        groups, keys = [groups[i] for i in order], [keys[i] for i in order]
    batches, last = [], {}
    for group, key in zip(groups, keys):
        slot = last.get(key, -1) + 1
        while slot < len(batches) and len(batches[slot]) == size:
            slot += 1
        if slot == len(batches):
            batches.append([])
        batches[slot].append(group)
        last[key] = slot
    batches = [b for b in batches if len(b) == size]
    batches = batches[:len(batches) // world_size * world_size]
    plan = []
    for batch in batches:
        frames = view_frames(epoch, rng) if view_frames else None
        frames = (max_frames,) * views if frames is None else tuple(int(f) for f in frames)
        speed_index = rng.integers(len(speeds), size=len(batch)) if len(speeds) > 1 else [0] * len(batch)
        requests = []
        for group, index in zip(batch, speed_index):
            starts = tuple(rng.random(views))
            augment = tuple(planner.draw(rng) for _ in group) if planner else ()
            label = int(labels[group[0]])
            label = label + int(index) * num_speakers if label >= 0 else label
            requests.append(CropRequest(group, frames, starts, label, augment, speeds[index]))
        plan.append(requests)
    return plan


class CountingPlanner:
    """Stands in for augment.AugmentPlanner: draws from the sampler's generator."""
    fraction = 1.0

    def draw(self, rng):
        return (float(rng.random()), int(rng.integers(7)))


def random_frames(epoch, rng):
    return rng.integers(50, 300, size=2)


CASES = {
    "plain": {},
    "speeds": dict(speeds=(1.0, 0.9, 1.1), num_speakers=9),
    "augment": dict(planner=CountingPlanner()),
    "view frames": dict(view_frames=random_frames),
    "two ranks": dict(world_size=2),
    "subset": dict(subset=np.arange(0, 300, 3)),
    "by utterance": dict(group_by_utterance=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_plan_equals_the_per_group_loop(case):
    options = dict(CASES[case])
    labels = np.random.default_rng(4).integers(0, 9, 300)    # 9 speakers: many deferred groups
    if options.get("group_by_utterance"):
        labels = np.full(300, -1)
    size, views, cap = 4, 2, 20
    subset = options.pop("subset", None)
    planner = options.pop("planner", None)
    sampler = SpeakerBalancedSampler(
        labels, size, views, cap, seed=3, augment_planner=planner,
        utterance_subset=None if subset is None else (lambda epoch, count: subset), **options)
    for epoch in (1, 2):
        expected = reference_plan(labels, size, views, cap, epoch, seed=3, subset=subset, planner=planner,
                                  **options)
        plan = sampler.plan(epoch)
        assert len(plan) == len(expected) > 0
        assert list(plan) == expected
        assert all(type(s) is float for batch in plan for r in batch for s in r.starts)


def test_plan_builds_no_request_before_its_batches_are_read(monkeypatch):
    built = []

    class Counted(CropRequest):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(speakernet.data.sampler, "CropRequest", Counted)
    sampler = SpeakerBalancedSampler(np.arange(20000) % 500, 50, 2, 500)
    plan = sampler.plan(1)
    assert built == [] and len(plan) > 0
    sampler.set_epoch(1)
    first = next(iter(sampler))
    assert len(built) == len(first) == 50


def test_plan_slices_are_plans_of_those_batches():
    plan = SpeakerBalancedSampler(np.arange(400) % 20, 4, 2, 500, seed=2).plan(1)
    batches = list(plan)
    assert list(plan[1::2][3:]) == batches[1::2][3:]
    assert plan[-1] == batches[-1] and plan == batches and batches == plan
    assert plan != batches[:-1]


@pytest.mark.parametrize("keys, size", [(8, 3), (2, 5), (50, 4), (1, 1)])
def test_first_fit_equals_a_direct_scan(keys, size):
    rng = np.random.default_rng(keys * 10 + size)
    sequence = rng.integers(0, keys, 2000).tolist()
    fill, last, expected = [], {}, []
    for key in sequence:
        slot = last.get(key, -1) + 1
        while slot < len(fill) and fill[slot] == size:
            slot += 1
        if slot == len(fill):
            fill.append(0)
        fill[slot] += 1
        expected.append(slot)
        last[key] = slot
    assert first_fit_slots(sequence, size) == expected


# ---------------------------------------------------------------------------- list reading

TEXT_PIECES = ["spk1", "a/b.wav", "x", " ", "  ", "\t", "\n", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c",
               "\x1f", "\xa0", "é", "\u2028", "\x85", "\ufeff", "\0"]


def test_list_columns_reads_what_list_lines_reads(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "list.txt"
    fast_reads = 0
    for trial in range(1500):
        if trial % 2:
            lines = [" ".join(["spk1", "a/b.wav", "c"][:rng.integers(1, 3)]) for _ in range(rng.integers(0, 5))]
            text = rng.choice(["", " ", "\t"]) + "\n".join(lines) + rng.choice(["", "\n", "\r\n", " \x0c"])
        else:
            text = "".join(rng.choice(TEXT_PIECES, size=rng.integers(0, 25)))
        path.write_bytes(text.encode("utf-8"))
        fast = audio.list_columns(path)
        try:
            slow = list(audio.list_lines(path))
        except audio.ListError:
            assert fast is None
            continue
        if fast is not None:
            fast_reads += 1
            columns, numbers = fast
            assert [(int(n), [c[i] for c in columns]) for i, n in enumerate(numbers)] == slow
        else:       # only lists of uneven lines, or with whitespace beyond ASCII, go line by line
            assert len({len(c) for _, c in slow}) != 1 or any(c in text for c in "\xa0\u2028\x85")
    assert fast_reads > 300


def test_read_train_list_takes_the_fast_path(corpus, monkeypatch):
    expected = read_train_list(str(corpus.train_list), str(corpus.root))
    monkeypatch.setattr(speakernet.core.train_list, "list_lines", lambda path: pytest.fail("read line by line"))
    fast = read_train_list(str(corpus.train_list), str(corpus.root))
    assert list(fast.files) == list(expected.files)
    assert fast.speakers == expected.speakers and np.array_equal(fast.labels, expected.labels)
    assert np.array_equal(fast.line_numbers, expected.line_numbers)
    assert fast.labels.dtype == np.int64


def test_fast_and_line_by_line_readings_agree(corpus, monkeypatch):
    text = "\n".join(f"  {s}\t{p} " for s, p in corpus.train_lines[::-1]) + "\n\n"
    corpus.train_list.write_text("\ufeff\n" + text, encoding="utf-8")
    fast = read_train_list(str(corpus.train_list), str(corpus.root))
    monkeypatch.setattr(speakernet.core.train_list, "list_columns", lambda path: None)
    slow = read_train_list(str(corpus.train_list), str(corpus.root))
    assert list(fast.files) == list(slow.files) and fast.speakers == slow.speakers
    assert np.array_equal(fast.labels, slow.labels) and np.array_equal(fast.line_numbers, slow.line_numbers)
    assert fast.line_numbers[0] == 2
    bare = corpus.root / "bare.txt"
    bare.write_text("".join(f"{p}\n" for _, p in corpus.train_lines))
    unlabelled = read_train_list(str(bare), str(corpus.root), need_labels=False)
    assert list(unlabelled.files) == list(slow.files)[::-1] and (unlabelled.labels == -1).all()


def test_speaker_indices_are_np_unique(corpus):
    names = [f"id{n:05d}" for n in np.random.default_rng(1).integers(0, 300, 5000)] + ["Zed", "éa", "a b"]
    speakers, labels = DL.speaker_indices(names)
    unique, inverse = np.unique(np.array(names), return_inverse=True)
    assert speakers == unique.tolist() and np.array_equal(labels, inverse)


def test_later_start_builds_no_path_per_file(corpus, monkeypatch):
    first = read_train_list(str(corpus.train_list), str(corpus.root))
    monkeypatch.setattr(audio, "full_paths", lambda *args, **kwargs: pytest.fail("paths built"))
    later = read_train_list(str(corpus.train_list), str(corpus.root))
    assert np.array_equal(first.lengths, later.lengths)


def test_manifest_of_another_root_spelling_is_checked_again(corpus, monkeypatch):
    """The same resolved root spelled otherwise: its folders are compared, as before."""
    read_train_list(str(corpus.train_list), str(corpus.root))
    checked, original = [], audio_check._check_each
    monkeypatch.setattr(audio_check, "_check_each", lambda *args: checked.append(args[1]) or original(*args))
    read_train_list(str(corpus.train_list), str(corpus.root))
    assert checked == []
    read_train_list(str(corpus.train_list), os.path.join(str(corpus.root), "."))
    assert len(checked) == 1 and len(checked[0]) == len(corpus.train_lines)


def test_entry_outside_the_root_is_refused_despite_a_manifest(corpus):
    outside = corpus.root.parent / "outside.wav"
    outside.write_bytes((corpus.root / corpus.train_lines[0][1]).read_bytes())
    lines = corpus.train_lines + [("spk99", "../outside.wav")]
    corpus.train_list.write_text("".join(f"{s} {p}\n" for s, p in lines))
    read_train_list(str(corpus.train_list), str(corpus.root), allow_outside=True)
    with pytest.raises(audio.ListError, match="points outside"):
        read_train_list(str(corpus.train_list), str(corpus.root))

