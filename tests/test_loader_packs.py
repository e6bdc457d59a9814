"""The loader's fast paths: packs (--packs) give the same crops as the WAV files, only used
noise/RIR rows are sent, one-pass mixing equals an independent float64 computation, and the
preallocated collation equals stacking."""
import argparse
import logging

import numpy as np
import pytest
import torch

from speakernet.data import augment
from speakernet.data import packed_audio
from speakernet.run import plugins
import trainSpeakerNet
from conftest import SR, train_argv, write_wav
from DatasetLoader import SpeakerBalancedSampler, TrainDataset, collate_views, read_train_list
from speakernet.core.errors import UserError


@pytest.fixture
def data(tmp_path):
    """A list of 6 speakers x 3 utterances (some shorter than a crop) and MUSAN/RIR folders."""
    rng = np.random.default_rng(0)
    lines = []
    for s in range(6):
        for u in range(3):
            seconds = rng.uniform(0.1, 1.5)
            write_wav(tmp_path / "wav" / f"s{s}" / f"{u}.wav", 0.3 * rng.standard_normal(int(seconds * SR)))
            lines.append(f"s{s} s{s}/{u}.wav\n")
    (tmp_path / "train_list.txt").write_text("".join(lines))
    for kind in augment.NOISE_KINDS:
        for i in range(4):
            write_wav(tmp_path / "musan" / kind / f"{i}.wav",
                      rng.uniform(0.01, 0.3) * rng.standard_normal(int(rng.uniform(0.2, 2) * SR)))
    for i in range(3):
        write_wav(tmp_path / "rirs" / "room" / f"{i}.wav",
                  rng.standard_normal(2000) * np.exp(-np.arange(2000) / 300))
    return tmp_path


def options_for(root, packs="auto"):
    return argparse.Namespace(packs=packs, train_list=str(root / "train_list.txt"),
                              train_path=str(root / "wav"), musan_path=str(root / "musan"),
                              rir_path=str(root / "rirs"))


def pack_all(root):
    """Packs at the default places, as the command line writes them without --out."""
    packed_audio.main(["--list", str(root / "train_list.txt"), "--root", str(root / "wav")])
    packed_audio.main(["--dir", str(root / "musan")])
    packed_audio.main(["--dir", str(root / "rirs") + "/"])
    assert packed_audio.exists(root / "train_list.pack") and packed_audio.exists(root / "musan.pack")
    assert packed_audio.exists(root / "rirs.pack")


def plan(train, bank, speeds=(1.0,)):
    planner = augment.AugmentPlanner(bank, [0.2] * 5, {"noise": (0, 15), "speech": (13, 20), "music": (5, 15)},
                                     (3, 7))
    sampler = SpeakerBalancedSampler(train.labels, 3, 2, 500, seed=4, view_frames=lambda e, r: (40, 40),
                                     augment_planner=planner, speeds=speeds, num_speakers=6)
    return [b for epoch in (1, 2, 3) for b in sampler.plan(epoch)]


def test_packed_loader_gives_bit_identical_batches(data, caplog):
    pack_all(data)
    train = read_train_list(data / "train_list.txt", data / "wav")
    bank = augment.AugmentBank(data / "musan", data / "rirs")
    with caplog.at_level(logging.INFO):
        packs = packed_audio.packs_from_options(options_for(data), train, bank)
    assert len(packs) == 3
    assert "18 of 18 files read from" in caplog.text
    files, packed = TrainDataset(train, bank), TrainDataset(train, bank, packs)
    dtypes = set()
    for speeds in ((1.0,), (1.0, 0.9, 1.1)):
        batches = plan(train, bank, speeds=speeds)
        kinds = {spec.kind for b in batches for r in b for spec in r.augment}
        assert kinds == set(range(len(augment.KINDS)))       # every kind was exercised
        for batch in batches:
            a = files.__getitems__(batch)
            b = packed.__getitems__(batch)
            dtypes |= {x.dtype for x in b[0]}
            # Packed crops may travel as int16: converted, they are the WAV reads bit for bit.
            assert all(x.dtype == torch.float32 for x in a[0])
            assert all(torch.equal(x, packed_audio.to_float(y)) for x, y in zip(a[0], b[0]))
            assert torch.equal(a[1], b[1])
            for ea, eb in zip(a[2], b[2]):
                for key in ea:
                    assert (ea[key] is None and eb[key] is None) or torch.equal(ea[key], eb[key]), key
            # The collation converts them, so the augmentation and the encoders see float32 only.
            converted = collate_views(b)[0]
            assert all(x.dtype == torch.float32 for x in converted)
            mixed_a, mixed_b = augment.Augmenter()(a[0], a[2]), augment.Augmenter()(converted, b[2])
            assert all(torch.equal(x, y) for x, y in zip(mixed_a, mixed_b))
    # Unperturbed packed batches are int16; a perturbed crop in a run makes it float32.
    assert dtypes == {torch.int16, torch.float32}


def _cat_views(parts):
    """Groups read alone, joined: a run is int16 only when every group's is (else float32)."""
    if len({p.dtype for p in parts}) > 1:
        parts = [packed_audio.to_float(p) for p in parts]
    return torch.cat(parts)


def _cat_rows(parts):
    """Per-group extras joined as one batch's: noise/RIR rows only exist for flagged crops."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    if present[0].dim() == 2 and len({p.shape[1] for p in present}) > 1:       # RIRs padded to the longest
        width = max(p.shape[1] for p in present)
        present = [torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in present]
    return torch.cat(present)


@pytest.mark.parametrize("use_packs", [False, True])
@pytest.mark.parametrize("speeds", [(1.0,), (1.0, 0.9, 1.1)])
def test_batch_equals_its_groups_read_alone(data, use_packs, speeds):
    """__getitems__ reads a whole batch in place (noise summed into its rows): each group must be
    what that group read alone gives, bit for bit, for views of two lengths."""
    if use_packs:
        pack_all(data)
    train = read_train_list(data / "train_list.txt", data / "wav")
    bank = augment.AugmentBank(data / "musan", data / "rirs")
    packs = packed_audio.packs_from_options(options_for(data), train, bank) if use_packs else ()
    dataset = TrainDataset(train, bank, packs)
    planner = augment.AugmentPlanner(bank, [0.2] * 5, {"noise": (0, 15), "speech": (13, 20), "music": (5, 15)},
                                     (3, 7))
    sampler = SpeakerBalancedSampler(train.labels, 3, 1, 500, seed=5, group_by_utterance=False,
                                     view_frames=lambda e, r: (60,), augment_planner=planner,
                                     speeds=speeds, num_speakers=6)
    ssl = SpeakerBalancedSampler(np.full(len(train.files), -1), 3, 4, 500, seed=6, group_by_utterance=True,
                                 view_frames=lambda e, r: (60, 60, 25, 25), augment_planner=planner,
                                 speeds=speeds)
    for batch in [b for s in (sampler, ssl) for epoch in (1, 2) for b in s.plan(epoch)]:
        alone = [collate_views(dataset[r]) for r in batch]
        expected = ([_cat_views(runs) for runs in zip(*(a[0] for a in alone))], torch.cat([a[1] for a in alone]),
                    [None if ex[0] is None else {k: _cat_rows([e[k] for e in ex]) for k in ex[0]}
                     for ex in zip(*(a[2] for a in alone))])
        got = collate_views(dataset.__getitems__(batch))
        assert len(got[0]) == len(expected[0]) and torch.equal(got[1], expected[1])
        for x, y in zip(got[0], expected[0]):
            assert x.dtype == y.dtype and torch.equal(x, y)
        for ea, eb in zip(got[2], expected[2]):
            assert ea.keys() == eb.keys()
            for key in ea:
                assert (ea[key] is None and eb[key] is None) or torch.equal(ea[key], eb[key]), key


def test_packs_none_named_missing_and_stale(data, caplog):
    train = read_train_list(data / "train_list.txt", data / "wav")
    assert packed_audio.packs_from_options(options_for(data), train) == []         # auto, no packs yet
    pack_all(data)
    assert packed_audio.packs_from_options(options_for(data, "none"), train) == []
    named = packed_audio.packs_from_options(options_for(data, str(data / "train_list.pack")), train)
    assert len(named) == 1 and len(named[0].lookup) == 18
    with pytest.raises(UserError, match="--packs .*nothing"):
        packed_audio.packs_from_options(options_for(data, str(data / "nothing")), train)
    # A file that changed length after packing is read from its file, not from the pack.
    write_wav(data / "wav" / "s0" / "0.wav", np.zeros(SR // 2))
    train = read_train_list(data / "train_list.txt", data / "wav", recheck=True)   # rewritten in place
    with caplog.at_level(logging.WARNING):
        packs = packed_audio.packs_from_options(options_for(data), train)
    assert "1 files differ in length" in caplog.text
    assert str(data / "wav" / "s0" / "0.wav") not in packs[0].lookup and len(packs[0].lookup) == 17


def test_only_flagged_noise_and_rir_rows_are_sent():
    rng = np.random.default_rng(1)
    noise, rir = rng.standard_normal(100).astype(np.float32), rng.standard_normal(30).astype(np.float32)
    short_rir = rir[:10].copy()
    items = [(None, None, 0.0), (noise, None, 5.0), (None, rir, 0.0), (None, None, 0.0), (None, short_rir, 0.0)]
    extra = augment.collate_augmentation(items)
    assert extra["noise"].shape == (1, 100) and np.array_equal(extra["noise"][0].numpy(), noise)
    assert extra["rir"].shape == (2, 30) and np.array_equal(extra["rir"][1, :10].numpy(), short_rir)
    assert not extra["rir"][1, 10:].any()
    assert extra["noisy"].tolist() == [False, True, False, False, False]
    assert extra["reverb"].tolist() == [False, False, True, False, True]
    assert extra["snr"].tolist() == [0.0, 5.0, 0.0, 0.0, 0.0]


def test_mixing_equals_float64_reference_in_both_row_layouts():
    rng = np.random.default_rng(2)
    n, length = 12, 3000
    clean = rng.standard_normal((n, length)).astype(np.float32)
    noisy = np.zeros(n, dtype=bool)
    noisy[[1, 4, 5, 9]] = True
    reverb = np.zeros(n, dtype=bool)
    reverb[[2, 7]] = True
    noise = (rng.standard_normal((n, length)) * rng.uniform(0.01, 2, (n, 1))).astype(np.float32)
    noise[5] = 0                                    # silent noise: stays clean
    rir = (rng.standard_normal((n, 200)) * np.exp(-np.arange(200) / 40)).astype(np.float32)
    snr = rng.uniform(0, 20, n).astype(np.float32)
    expected = clean.astype(np.float64).copy()
    for i in np.flatnonzero(noisy):
        c, z = clean[i].astype(np.float64), noise[i].astype(np.float64)
        if (z ** 2).sum() > 1e-10:
            expected[i] = c + np.sqrt((c ** 2).sum() / (z ** 2).sum()) * 10 ** (-snr[i] / 20) * z
    for i in np.flatnonzero(reverb):
        r = rir[i].astype(np.float64)
        expected[i] = np.convolve(clean[i].astype(np.float64), r / np.sqrt((r ** 2).sum()))[:length]
    views = torch.from_numpy(clean.copy()).view(n // 2, 2, length)
    full = {"noise": torch.from_numpy(noise), "rir": torch.from_numpy(rir), "snr": torch.from_numpy(snr),
            "noisy": torch.from_numpy(noisy), "reverb": torch.from_numpy(reverb)}
    compact = dict(full, noise=full["noise"][full["noisy"]], rir=full["rir"][full["reverb"]])
    results = [augment.Augmenter()([views], [extra])[0].reshape(n, length) for extra in (full, compact)]
    assert torch.equal(results[0], results[1])
    np.testing.assert_allclose(results[0].numpy(), expected, atol=2e-4)
    assert torch.equal(views.reshape(n, length), torch.from_numpy(clean))         # input untouched


def test_collation_hands_float_views_only():
    """int16 runs from packs become float32 at collation, as libsndfile reads them (x 2^-15);
    float runs and the rest of the batch pass through untouched."""
    rng = np.random.default_rng(4)
    samples = torch.from_numpy(rng.integers(-32768, 32767, (2, 3, 800)).astype(np.int16))
    floats = torch.rand(2, 1, 400)
    labels, extras, frames = torch.tensor([0, 1]), [None, None], (3, 3, 3, 1)
    views, *rest = collate_views(([samples, floats], labels, extras, frames))
    assert views[0].dtype == torch.float32 and torch.equal(views[0], samples.double().div(32768).float())
    assert views[1] is floats and rest == [labels, extras, frames]


def test_training_reads_from_packs(corpus, tmp_path, caplog):
    packed_audio.main(["--list", str(corpus.train_list), "--root", str(corpus.root)])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = trainSpeakerNet.main([str(a) for a in train_argv(corpus, tmp_path / "exp", max_epoch=1)])
    assert code == 0
    assert f"24 of 24 files read from {corpus.root / 'train_list.pack.pcm'}" in caplog.text


def test_mixing_in_workers_equals_mixing_in_the_trainer(data):
    """On a CPU with workers, CollateAndMix mixes inside the worker processes: the batches must be
    bit-identical to collating there and mixing in the training process (the GPU/0-worker path),
    and no noise or RIR rows may be left to send."""
    from torch.utils.data import DataLoader
    from speakernet.data.train_data import CollateAndMix

    train = read_train_list(data / "train_list.txt", data / "wav")
    bank = augment.AugmentBank(data / "musan", data / "rirs")
    batches = plan(train, bank)
    dataset = TrainDataset(train, bank)
    in_workers = DataLoader(dataset, batch_sampler=batches, num_workers=2, collate_fn=CollateAndMix())
    in_trainer = DataLoader(dataset, batch_sampler=batches, num_workers=0, collate_fn=collate_views)
    mixed_rows = 0
    for (views_w, labels_w, extras_w, _), (views_t, labels_t, extras_t, _) in zip(in_workers, in_trainer):
        assert all(e is None for e in extras_w)
        expected = augment.Augmenter()(views_t, extras_t)
        assert torch.equal(labels_w, labels_t)
        assert all(torch.equal(x, y) for x, y in zip(views_w, expected))
        mixed_rows += sum(int(e["noisy"].sum() + e["reverb"].sum()) for e in extras_t if e is not None)
    assert mixed_rows > 0, "the plan augmented nothing: the test would prove nothing"


@pytest.mark.parametrize("packed", [False, True])
def test_augmented_training_is_the_same_with_and_without_workers(corpus, data, tmp_path, packed):
    """The same augmented epoch trained with the mixing in the training process (0 workers) and
    in two loader workers (CollateAndMix) ends with identical weights; from packs too, whose
    int16 crops the workers convert before they mix."""
    from speakernet.core import checkpoint
    if packed:
        packed_audio.main(["--list", str(corpus.train_list), "--root", str(corpus.root)])
    weights = []
    for workers in (0, 2):
        save_path = tmp_path / f"workers{workers}"
        argv = train_argv(corpus, save_path, flags=("augment",), musan_path=data / "musan",
                          rir_path=data / "rirs", nDataLoaderThread=workers, max_epoch=1)
        assert trainSpeakerNet.main(argv) == 0
        weights.append(checkpoint.load_file(checkpoint.checkpoint_path(save_path / "model", 1))["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
