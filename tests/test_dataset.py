"""Lists, crops, partial reads, test crops and collation (DatasetLoader)."""
import math

import numpy as np
import pytest
import soundfile
import torch

import DatasetLoader as DL
from speakernet.eval import eval_crops, trial_sets
from conftest import group_views, read_all, write_wav

MAX_FRAMES = 20


def crop_len(frames):
    """A 25 ms window every 10 ms: `frames` windows of 400 samples, hop 160."""
    return (frames - 1) * 160 + 400


@pytest.fixture
def long_wav(tmp_path):
    rng = np.random.default_rng(0)
    return write_wav(tmp_path / "long.wav", rng.uniform(-0.8, 0.8, 12345))


@pytest.fixture
def short_wav(tmp_path):
    rng = np.random.default_rng(1)
    return write_wav(tmp_path / "short.wav", rng.uniform(-0.8, 0.8, 1000))


@pytest.fixture
def read_spy(monkeypatch):
    """Record (position, samples requested) of every SoundFile.read, the call soundfile.read
    makes after seeking to `start`; a whole-file read shows up as position 0 and all frames."""
    calls = []
    original = soundfile.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        position = self.tell()
        wanted = self.frames - position if frames < 0 else frames
        calls.append((self.name, position, wanted))
        return original(self, frames, *args, **kwargs)
    monkeypatch.setattr(soundfile.SoundFile, "read", spy)
    return calls


# ------------------------------------------------------------------ crop length and read_crop

@pytest.mark.parametrize("frames", [1, 20, 200, 300])
def test_crop_samples(frames):
    assert DL.crop_samples(frames) == crop_len(frames)


@pytest.mark.parametrize("start", [0, 1, 4321, 12345 - crop_len(MAX_FRAMES)])
def test_read_crop_is_the_slice(long_wav, start):
    full = read_all(long_wav)
    length = crop_len(MAX_FRAMES)
    crop = DL.read_crop(str(long_wav), len(full), start, length)
    assert crop.shape == (length,)
    np.testing.assert_array_equal(crop, full[start:start + length])


def test_read_crop_reads_only_the_crop(long_wav, read_spy):
    length = crop_len(MAX_FRAMES)
    DL.read_crop(str(long_wav), 12345, 777, length)
    assert read_spy, "read_crop did not read through soundfile"
    assert all(wanted <= length for _, _, wanted in read_spy), read_spy
    assert [(pos, wanted) for _, pos, wanted in read_spy] == [(777, length)]


def test_read_crop_soundfile_read_arguments(long_wav, monkeypatch):
    """The same, seen at soundfile.read: a bounded read starting at the crop."""
    import inspect
    calls = []
    original = soundfile.read

    def spy(*args, **kwargs):
        bound = inspect.signature(original).bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(bound.arguments)
        return original(*args, **kwargs)
    monkeypatch.setattr(soundfile, "read", spy)
    length = crop_len(MAX_FRAMES)
    DL.read_crop(str(long_wav), 12345, 2000, length)
    assert len(calls) == 1
    args = calls[0]
    stop = args["stop"] if args["stop"] is not None else args["start"] + args["frames"]
    assert (args["start"], stop) == (2000, 2000 + length)


@pytest.mark.parametrize("length", [1500, 3440, 5040])
def test_short_file_wraps(short_wav, length):
    full = read_all(short_wav)
    crop = DL.read_crop(str(short_wav), len(full), 0, length)
    repeats = math.ceil(length / len(full))
    np.testing.assert_array_equal(crop, np.tile(full, repeats)[:length])


def test_header_overstating_length_names_the_file(short_wav):
    # A manifest length larger than the file (file truncated after validation): padding it
    # would train on samples the file no longer has.
    with pytest.raises(DL.ChangedAudio, match=f"{short_wav}: .*--recheck_audio"):
        DL.read_crop(str(short_wav), 5000, 500, 900)


# ------------------------------------------------------------------ lists

def test_read_train_list(corpus):
    train = DL.read_train_list(str(corpus.train_list), str(corpus.root))
    speakers = sorted({s for s, _ in corpus.train_lines})
    assert train.speakers == speakers
    assert len(train.files) == len(corpus.train_lines)
    for (speaker, rel), path, label, length in zip(corpus.train_lines, train.files, train.labels,
                                                    train.lengths):
        assert str(path) == str(corpus.root / rel)
        assert speakers[label] == speaker
        assert length == soundfile.info(str(corpus.root / rel)).frames


def test_read_trial_list(corpus):
    trials = trial_sets.read_trial_list(str(corpus.test_list), str(corpus.root))
    assert trials.files == list(dict.fromkeys(f for _, a, b in corpus.trials for f in (a, b)))
    assert len(trials.pairs) == len(corpus.trials)
    for (label, a, b), pair, got in zip(corpus.trials, trials.pairs, trials.labels):
        assert (trials.files[pair[0]], trials.files[pair[1]]) == (a, b)
        assert got == label
    for name, length in zip(trials.files, trials.lengths):
        assert length == soundfile.info(str(corpus.root / name)).frames


def test_unlabelled_trials(tmp_path, corpus):
    lst = tmp_path / "unlabelled.txt"
    a, b = corpus.test_files[:2]
    lst.write_text(f"{a} {b}\n")
    trials = trial_sets.read_trial_list(str(lst), str(corpus.root))
    assert trials.labels.tolist() == [-1]


# ------------------------------------------------------------------ TrainDataset

def test_train_dataset_crops(corpus, read_spy):
    train = DL.read_train_list(str(corpus.train_list), str(corpus.root))
    dataset = DL.TrainDataset(train)
    request = DL.CropRequest(files=(0, 1, 2), frames=(MAX_FRAMES, MAX_FRAMES, 10),
                             starts=(0.0, 0.5, 0.999), label=int(train.labels[0]))
    batch = dataset[request]                # a batch of this one group
    reads = list(read_spy)                  # before the test's own whole-file reads below
    views, label = group_views(batch), int(batch[1][0])
    assert label == request.label
    assert len(views) == 3
    for view, index, frames, start in zip(views, request.files, request.frames, request.starts):
        full = read_all(train.files[index])
        n = crop_len(frames)
        offset = math.floor(start * (len(full) - n))
        assert view.shape == (n,)
        np.testing.assert_array_equal(view, full[offset:offset + n])
    # Only the crops were read, never a whole training file.
    assert len(reads) == 3
    for (name, position, wanted), index, frames, start in zip(reads, request.files, request.frames,
                                                             request.starts):
        assert name == str(train.files[index])
        assert wanted == crop_len(frames) < train.lengths[index]
        assert position == math.floor(start * (train.lengths[index] - crop_len(frames)))


def test_train_dataset_short_file_wraps(tmp_path, short_wav):
    train = DL.TrainList(files=[str(short_wav)], lengths=np.array([1000]), labels=np.array([0]),
                         speakers=["s"])
    request = DL.CropRequest(files=(0,), frames=(MAX_FRAMES,), starts=(0.7,), label=0)
    view = group_views(DL.TrainDataset(train)[request])[0]
    full = read_all(short_wav)
    n = crop_len(MAX_FRAMES)
    np.testing.assert_array_equal(view, np.tile(full, math.ceil(n / len(full)))[:n])


# ------------------------------------------------------------------ TestDataset

@pytest.mark.parametrize("total, eval_frames, num_eval", [
    (12345, 30, 10), (12345, 30, 2), (12345, 30, 1), (5040, 30, 4), (9999, 50, 3)])
def test_test_dataset_crops(tmp_path, total, eval_frames, num_eval):
    rng = np.random.default_rng(total)
    write_wav(tmp_path / "a.wav", rng.uniform(-0.8, 0.8, total))
    full = read_all(tmp_path / "a.wav")
    dataset = eval_crops.TestDataset(["a.wav"], np.array([total]), str(tmp_path), eval_frames, num_eval)
    crops, index = dataset[0]
    n = crop_len(eval_frames)
    starts = np.linspace(0, total - n, num_eval).astype(np.int64)
    assert tuple(crops.shape) == (num_eval, n)
    assert int(index) == 0
    for crop, start in zip(crops.numpy(), starts):
        np.testing.assert_array_equal(crop, full[start:start + n])
    # The crops span the file: the first starts at 0, the last (if several) ends at the end.
    assert starts[0] == 0
    if num_eval > 1:
        assert starts[-1] + n == total


def test_test_dataset_whole_file(tmp_path):
    rng = np.random.default_rng(3)
    write_wav(tmp_path / "a.wav", rng.uniform(-0.8, 0.8, 7777))
    full = read_all(tmp_path / "a.wav")
    crops, _ = eval_crops.TestDataset(["a.wav"], np.array([7777]), str(tmp_path), 0, 10)[0]
    assert tuple(crops.shape) == (1, 7777)
    np.testing.assert_array_equal(crops[0].numpy(), full)


def test_test_dataset_short_file(tmp_path, short_wav):
    crops, _ = eval_crops.TestDataset(["short.wav"], np.array([1000]), str(tmp_path), 30, 3)[0]
    full = read_all(short_wav)
    n = crop_len(30)
    expected = np.tile(full, math.ceil(n / len(full)))[:n]
    assert tuple(crops.shape) == (3, n)
    for crop in crops.numpy():
        np.testing.assert_array_equal(crop, expected)


@pytest.mark.parametrize("total, length, num", [(100, 40, 4), (1000, 1000, 3), (10, 20, 2), (97, 10, 7)])
def test_eval_crop_starts(total, length, num):
    starts = eval_crops.eval_crop_starts(total, length, num)
    free = max(total - length, 0)
    assert len(starts) == num
    assert starts[0] == 0 and starts[-1] == free
    for i, s in enumerate(starts):            # i * free / (num - 1), rounded down (+- float error)
        assert abs(s - i * free / (num - 1)) < 1
        assert 0 <= s <= free


# ------------------------------------------------------------------ batch assembly

@pytest.mark.parametrize("frames, runs", [
    ((50, 50, 50), [(0, 3)]),
    ((50, 50, 30), [(0, 2), (2, 3)]),
    ((80, 80, 30, 30, 30), [(0, 2), (2, 5)]),
    ((50, 30, 50), [(0, 1), (1, 2), (2, 3)]),
])
def test_batch_assembly(tmp_path, frames, runs):
    """__getitems__ puts view v of group n at [run][n, v - begin]: each row equals a direct read
    of its file at the planned offset, runs split where the view length changes."""
    rng = np.random.default_rng(0)
    audio = [rng.uniform(-0.5, 0.5, 20000 + 997 * i).astype(np.float32) for i in range(5)]
    names = [write_wav(tmp_path / f"{i}.wav", a).name for i, a in enumerate(audio)]
    lengths = np.array([len(a) for a in audio])
    train = DL.TrainList(files=DL.PathTable(names, prefix=f"{tmp_path}/"), lengths=lengths,
                         labels=np.zeros(5, dtype=np.int64))
    requests = [DL.CropRequest(files=tuple((g + v) % 5 for v in range(len(frames))), frames=frames,
                               starts=tuple(rng.random(len(frames))), label=label)
                for g, label in enumerate((4, 1, 7))]
    tensors, labels, extras, got_frames = DL.collate_views(DL.TrainDataset(train).__getitems__(requests))
    assert labels.dtype == torch.long and labels.tolist() == [4, 1, 7]
    assert got_frames == frames and extras == [None] * len(runs)    # the planned frames travel along
    assert len(tensors) == len(runs)
    for tensor, (begin, end) in zip(tensors, runs):
        length = (frames[begin] - 1) * 160 + 400
        assert tuple(tensor.shape) == (3, end - begin, length) and tensor.dtype == torch.float32
        for n, request in enumerate(requests):
            for v in range(begin, end):
                f = request.files[v]
                start = int(request.starts[v] * (len(audio[f]) - length))
                expected = read_all(tmp_path / names[f])[start:start + length]
                np.testing.assert_array_equal(tensor[n, v - begin].numpy(), expected)
