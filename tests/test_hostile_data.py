"""Damaged caches and packs, files changed after their headers were cached, and hostile list
bytes: each is rebuilt with a warning, read from the audio files instead, or stopped with one
line naming the input and the fix (exit status 2)."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import trainSpeakerNet
from conftest import REPO, tone, train_argv, write_wav
from DatasetLoader import SpeakerBalancedSampler, TrainDataset, read_train_list
from speakernet.core import audio
from speakernet.eval import eval_crops
from speakernet.data import packed_audio
from speakernet.eval.embeddings import check_writable, embed_files
from speakernet.core.errors import ChangedAudio, ListError, UserError, message_of
from speakernet.eval.trial_sets import read_trial_list


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def errors_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def shorten_in_place(path, samples):
    """Rewrite `path` through the same directory entry, as an editor saving in place does: its
    folder keeps its time, so the header manifest is taken as it is (without --recheck_audio)."""
    folder = os.stat(path.parent)
    write_wav(path, tone(np.random.default_rng(7), samples, 200))
    assert os.stat(path.parent).st_mtime_ns == folder.st_mtime_ns


def rewrite_npz(path, **changes):
    """Rewrite the .npz `path` with some arrays replaced (None drops one)."""
    with np.load(path) as saved:
        arrays = {key: saved[key] for key in saved.files}
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


# ------------------------------------------------------------------ the header manifest

def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage(kind):
    def lengths(path):
        with np.load(path) as saved:
            return saved["lengths"]
    return {
        "truncated": _truncate,
        "not a zip": lambda p: p.write_bytes(b"not a numpy file"),
        "short lengths": lambda p: rewrite_npz(p, lengths=lengths(p)[:-1]),
        "short sizes": lambda p: rewrite_npz(p, sizes=lengths(p)[:-2]),
        "float lengths": lambda p: rewrite_npz(p, lengths=lengths(p).astype(np.float64)),
        "2-D mtimes": lambda p: rewrite_npz(p, mtimes=np.stack([lengths(p)] * 2)),
        "no folders": lambda p: rewrite_npz(p, folders=None),
        "short folder times": lambda p: rewrite_npz(p, folder_mtimes=np.zeros(0, dtype=np.int64)),
        "zero length": lambda p: rewrite_npz(p, lengths=lengths(p) * 0),
        "bad signature": lambda p: rewrite_npz(p, signature=np.zeros(2, dtype=np.int64)),
    }[kind]


@pytest.mark.parametrize("kind", ["truncated", "not a zip", "short lengths", "short sizes", "float lengths",
                                  "2-D mtimes", "no folders", "short folder times", "zero length",
                                  "bad signature"])
def test_damaged_manifest_is_rebuilt_with_a_warning(corpus, caplog, kind):
    manifest = corpus.root / "train_list.txt.manifest.npz"
    first = read_train_list(corpus.train_list, corpus.root)
    _damage(kind)(manifest)
    with caplog.at_level(logging.WARNING):
        again = read_train_list(corpus.train_list, corpus.root, recheck=True)   # the sizes are used too
    assert np.array_equal(again.lengths, first.lengths)
    assert any(str(manifest) in m and "damaged" in m for m in warnings_of(caplog)), caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        read_train_list(corpus.train_list, corpus.root)
    assert warnings_of(caplog) == []                                     # rewritten whole


def test_manifest_of_another_list_is_replaced_silently(corpus, caplog):
    read_train_list(corpus.train_list, corpus.root)
    corpus.train_list.write_text(corpus.train_list.read_text() + "spk00 train/spk00/utt0.wav\n")
    with caplog.at_level(logging.WARNING):
        read_train_list(corpus.train_list, corpus.root)
    assert not any("damaged" in m for m in warnings_of(caplog))


# ------------------------------------------------------------------ files shortened in place

def test_shortened_training_file_names_file_line_and_recheck(corpus):
    train = read_train_list(corpus.train_list, corpus.root)
    index = 5
    shorten_in_place(corpus.root / corpus.train_lines[index][1], 1000)
    train = read_train_list(corpus.train_list, corpus.root)      # the stale cached length
    request = SpeakerBalancedSampler(train.labels, 1, 2, 100).plan(1)[0][0]
    request.files = (index, index)
    with pytest.raises(ChangedAudio) as err:
        TrainDataset(train).__getitems__([request])
    assert str(err.value).startswith(f"{corpus.train_list}:{index + 1}: {corpus.root / corpus.train_lines[index][1]}: ")
    assert "--recheck_audio" in str(err.value)
    fresh = read_train_list(corpus.train_list, corpus.root, recheck=True)     # the fix works
    assert fresh.lengths[index] == 1000
    TrainDataset(fresh).__getitems__([request])


def test_shortened_file_stops_training_in_a_worker_with_one_line(corpus, tmp_path, caplog):
    read_train_list(corpus.train_list, corpus.root)
    rel = corpus.train_lines[9][1]
    shorten_in_place(corpus.root / rel, 500)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = trainSpeakerNet.main([str(a) for a in train_argv(corpus, tmp_path / "exp", nDataLoaderThread=1,
                                                                 max_epoch=1)])
    errors = [r.getMessage() for r in caplog.records if r.name == "trainSpeakerNet" and r.levelno >= logging.ERROR]
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"{corpus.train_list}:10: ") and rel in errors[0]
    assert "--recheck_audio" in errors[0] and "\n" not in errors[0]


def test_short_branch_of_a_crop_checks_the_whole_read(tmp_path):
    path = write_wav(tmp_path / "a.wav", tone(np.random.default_rng(0), 800, 300))
    with pytest.raises(ChangedAudio, match="800 samples.* 2000"):
        audio.read_crop(str(path), 2000, 0, 3440)        # cached 2000 < crop: the whole file is read
    with pytest.raises(ChangedAudio, match="800 samples.* 500"):
        audio.read_crop(str(path), 500, 0, 3440)         # grew: padding to the crop would fail


@pytest.mark.parametrize("eval_frames", [0, 30])
def test_shortened_test_file_stops_evaluation_naming_its_trial_line(corpus, eval_frames):
    trials = read_trial_list(corpus.test_list, corpus.root)
    shorten_in_place(corpus.root / trials.files[3], 700)

    def extract(files, lengths, root):
        dataset = eval_crops.TestDataset(files, lengths, root, eval_frames, 2)
        return torch.stack([dataset[i][0][:1, :400].mean(1, keepdim=True) for i in range(len(files))])

    with pytest.raises(ChangedAudio) as err:
        embed_files(extract, trials.files, trials.lengths, str(corpus.root), origins=trials.origins)
    assert str(err.value).startswith(f"{trials.origins[3]}: {corpus.root / trials.files[3]}: ")
    assert "--recheck_audio" in str(err.value)


def test_worker_traceback_of_a_changed_file_reduces_to_its_line(corpus):
    trials = read_trial_list(corpus.test_list, corpus.root)
    shorten_in_place(corpus.root / trials.files[0], 700)
    loader = torch.utils.data.DataLoader(eval_crops.TestDataset(trials.files[:1], trials.lengths[:1], str(corpus.root), 0, 1),
                                         num_workers=1)
    with pytest.raises(ChangedAudio) as err:
        next(iter(loader))
    assert "Original Traceback" in str(err.value)                         # as workers re-raise it
    message = message_of(err.value)
    assert "\n" not in message and message.startswith(str(corpus.root / trials.files[0]))
    assert "--recheck_audio" in message


# ------------------------------------------------------------------ list bytes

def test_nul_byte_in_a_list_line_names_list_and_line(corpus):
    lines = corpus.train_list.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("utt", "ut\0t")
    corpus.train_list.write_text("".join(lines))
    with pytest.raises(ListError, match=f"^{corpus.train_list}:3: NUL byte"):
        read_train_list(corpus.train_list, corpus.root)
    corpus.test_list.write_text("1 a.wav b.wav\n0 \0 c.wav\n")
    with pytest.raises(ListError, match=f"^{corpus.test_list}:2: NUL byte"):
        read_trial_list(corpus.test_list, corpus.root)


# ------------------------------------------------------------------ --nPerSpeaker

def labels_from_counts(counts):
    return np.repeat(np.arange(len(counts)), counts)


def test_n_per_speaker_above_every_speaker_is_reported_as_such():
    counts = [4, 3, 4, 2, 4, 4]
    with pytest.raises(UserError) as err:
        SpeakerBalancedSampler(labels_from_counts(counts), 2, 100, 500)
    message = str(err.value)
    assert "--nPerSpeaker 100" in message and f"is {max(counts)}" in message
    assert "--batch_size" not in message


def test_n_per_speaker_leaving_too_few_speakers_names_both_options():
    counts = [5, 2, 5, 2, 2, 2]              # 6 speakers fill a batch of 4; 2 have 5 utterances
    with pytest.raises(UserError) as err:
        SpeakerBalancedSampler(labels_from_counts(counts), 4, 5, 500)
    message = str(err.value)
    assert message.startswith("only 2 of the 6 speakers") and "--nPerSpeaker" in message
    with pytest.raises(UserError, match="--batch_size 8 .* larger than"):            # too few speakers at all
        SpeakerBalancedSampler(labels_from_counts(counts), 8, 2, 500)


# ------------------------------------------------------------------ packs

def pack_list(corpus):
    assert packed_audio.main(["--list", str(corpus.train_list), "--root", str(corpus.root)]) == 0
    return corpus.root / "train_list.pack"


def loader_packs(corpus, train, spec="auto"):
    return packed_audio.loader_packs(spec, corpus.train_list, corpus.root, train.files, train.lengths)


def _garbage_index(prefix):
    (prefix.parent / (prefix.name + ".index.npz")).write_bytes(os.urandom(300))


def _swapped_offsets(prefix):
    index = prefix.parent / (prefix.name + ".index.npz")
    with np.load(index) as saved:
        rewrite_npz(index, offsets=saved["offsets"][::-1].copy())


def _truncated_pcm(prefix):
    pcm = prefix.parent / (prefix.name + ".pcm")
    with open(pcm, "r+b") as handle:
        handle.truncate(pcm.stat().st_size - 2 * 1000)


def _old_version(prefix):
    rewrite_npz(prefix.parent / (prefix.name + ".index.npz"), version=np.array(1), sizes=None, mtimes=None)


@pytest.mark.parametrize("damage", [_truncated_pcm, _garbage_index, _swapped_offsets, _old_version])
def test_damaged_pack_warns_and_reads_the_files(corpus, caplog, damage):
    prefix = pack_list(corpus)
    train = read_train_list(corpus.train_list, corpus.root)
    damage(prefix)
    with pytest.raises(UserError) as err:
        packed_audio.PackedAudio(prefix, corpus.root)              # where nothing can fall back
    assert str(prefix) in str(err.value) and "pack again" in str(err.value) and "\n" not in str(err.value)
    for spec in ("auto", str(prefix)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert loader_packs(corpus, train, spec) == []
        assert len(warnings_of(caplog)) == 1 and str(prefix) in warnings_of(caplog)[0]
    request = SpeakerBalancedSampler(train.labels, 2, 2, 100).plan(1)[0]
    TrainDataset(train, packs=loader_packs(corpus, train)).__getitems__(request)


def test_same_length_edit_of_a_packed_file_reads_the_file(corpus, caplog):
    prefix = pack_list(corpus)
    train = read_train_list(corpus.train_list, corpus.root)
    index = 3
    path = corpus.root / corpus.train_lines[index][1]
    stat = path.stat()
    write_wav(path, np.full(train.lengths[index], 0.25))               # exact in int16
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))    # coarse clocks
    assert read_train_list(corpus.train_list, corpus.root).lengths[index] == train.lengths[index]
    with caplog.at_level(logging.WARNING):
        packs = loader_packs(corpus, train)
    assert any("1 files changed" in m and str(prefix) in m for m in warnings_of(caplog)), caplog.text
    assert str(path) not in packs[0].lookup and len(packs[0].lookup) == len(train.files) - 1
    reader = packed_audio.PackReader(packs, audio.read_crop)
    assert np.all(reader(str(path), int(train.lengths[index]), 0, 400) == 0.25)


def test_packs_prefix_holding_none_of_the_files_warns(corpus, caplog):
    assert packed_audio.main(["--dir", str(corpus.root / "test")]) == 0     # the test files only
    prefix = corpus.root / "test.pack"
    train = read_train_list(corpus.train_list, corpus.root)
    with caplog.at_level(logging.WARNING):
        assert loader_packs(corpus, train, str(prefix)) == []
    assert any(f"--packs {prefix} holds none" in m for m in warnings_of(caplog)), caplog.text


# ------------------------------------------------------------------ python -m speakernet.data.packed_audio

def _missing_list(corpus, tmp_path):
    return ["--list", tmp_path / "nope.txt", "--root", corpus.root], "nope.txt"


def _latin1_list(corpus, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("spk00 caf\xe9.wav\n".encode("latin-1"))
    return ["--list", tmp_path / "latin1.txt", "--root", corpus.root], "UTF-8"


def _missing_dir(corpus, tmp_path):
    return ["--dir", tmp_path / "nowhere"], "no such folder"


def _empty_dir(corpus, tmp_path):
    (tmp_path / "empty").mkdir()
    return ["--dir", tmp_path / "empty"], "no .wav files"


def _out_under_a_file(corpus, tmp_path):
    (tmp_path / "blocker").write_text("a file")
    return (["--list", corpus.train_list, "--root", corpus.root, "--out", tmp_path / "blocker" / "sub" / "p"],
            f"{tmp_path / 'blocker'} is a file")


@pytest.mark.parametrize("case", [_missing_list, _latin1_list, _missing_dir, _empty_dir, _out_under_a_file])
def test_pack_command_bad_input_is_one_line_and_writes_nothing(corpus, tmp_path, caplog, case):
    argv, fragment = case(corpus, tmp_path)
    before = sorted(p for p in tmp_path.rglob("*") if "pack" in p.name)
    caplog.clear()
    assert packed_audio.main([str(a) for a in argv]) == 2
    assert len(errors_of(caplog)) == 1 and fragment in errors_of(caplog)[0], caplog.text
    assert sorted(p for p in tmp_path.rglob("*") if "pack" in p.name) == before


def test_pack_command_exit_status(tmp_path):
    result = subprocess.run([sys.executable, "-m", "speakernet.data.packed_audio", "--dir", str(tmp_path / "nowhere")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(tmp_path / "nowhere") in lines[0], result.stderr
    assert not list(tmp_path.iterdir())


def test_extract_under_a_file_names_it(tmp_path):
    (tmp_path / "blocker").write_text("a file")
    for folder in (tmp_path / "blocker", tmp_path / "blocker" / "sub"):
        with pytest.raises(UserError, match=f"{tmp_path / 'blocker'} is a file, not a folder"):
            check_writable(folder, f"--extract {folder / 'e.npz'}")
