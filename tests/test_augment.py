"""Augmentation: achieved SNR, reverberation against numpy, type shares, independent views."""
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speakernet.data import augment  # noqa: E402
from DatasetLoader import (SpeakerBalancedSampler, TrainDataset, TrainList, collate_views,  # noqa: E402
                           read_crop)

SR = 16000


@pytest.fixture()
def bank(tmp_path):
    rng = np.random.default_rng(1)
    for kind in augment.NOISE_KINDS:
        (tmp_path / "musan" / kind).mkdir(parents=True)
        for i in range(8):
            audio = rng.standard_normal(SR * 2) * rng.uniform(0.01, 0.5)
            soundfile.write(tmp_path / "musan" / kind / f"{i}.wav", audio.astype(np.float32), SR)
    (tmp_path / "rir" / "room").mkdir(parents=True)
    for i in range(4):
        decay = np.exp(-np.arange(3000) / 400.0)
        soundfile.write(tmp_path / "rir" / "room" / f"{i}.wav",
                        (rng.standard_normal(3000) * decay).astype(np.float32), SR)
    return augment.AugmentBank(tmp_path / "musan", tmp_path / "rir")


def snr_db(clean, mixed):
    noise = mixed - clean
    return 10 * np.log10((clean ** 2).sum() / (noise ** 2).sum())


def test_achieved_snr_matches_requested():
    rng = np.random.default_rng(0)
    n, length = 64, 8000
    clean = torch.from_numpy(rng.standard_normal((n, length)).astype(np.float32))
    noise = torch.from_numpy((rng.standard_normal((n, length)) * rng.uniform(0.01, 3, (n, 1))).astype(np.float32))
    snr = torch.from_numpy(rng.uniform(0, 20, n).astype(np.float32))
    extra = {"noise": noise, "rir": None, "snr": snr, "noisy": torch.ones(n, dtype=torch.bool),
             "reverb": torch.zeros(n, dtype=torch.bool)}
    mixed = augment.Augmenter()([clean.view(n, 1, length)], [extra])[0].view(n, length)
    for i in range(n):
        assert abs(snr_db(clean[i].numpy().astype(np.float64), mixed[i].numpy().astype(np.float64))
                   - snr[i].item()) < 0.5


def test_reverberation_equals_numpy_convolution():
    rng = np.random.default_rng(2)
    clean = rng.standard_normal((3, 4000)).astype(np.float32)
    rirs = [rng.standard_normal(k).astype(np.float32) for k in (300, 1000, 50)]
    padded = np.zeros((3, 1000), dtype=np.float32)
    for i, r in enumerate(rirs):
        padded[i, :len(r)] = r
    extra = {"noise": None, "rir": torch.from_numpy(padded), "snr": torch.zeros(3),
             "noisy": torch.zeros(3, dtype=torch.bool), "reverb": torch.ones(3, dtype=torch.bool)}
    out = augment.Augmenter()([torch.from_numpy(clean).view(3, 1, 4000)], [extra])[0].view(3, 4000)
    for i, r in enumerate(rirs):
        expected = np.convolve(clean[i], r / np.sqrt((r.astype(np.float64) ** 2).sum()))[:4000]
        np.testing.assert_allclose(out[i].numpy(), expected, atol=1e-4)


def test_type_distribution_follows_options(bank):
    probs = [0.1, 0.4, 0.2, 0.1, 0.2]
    planner = augment.AugmentPlanner(bank, probs, {"noise": (0, 15), "speech": (13, 20), "music": (5, 15)},
                                     (3, 7))
    rng = np.random.default_rng(3)
    draws = [planner.draw(rng) for _ in range(20000)]
    shares = np.bincount([d.kind for d in draws], minlength=5) / len(draws)
    np.testing.assert_allclose(shares, probs, atol=0.015)
    for d in draws:
        name = augment.KINDS[d.kind]
        if name == "speech":
            assert 3 <= len(d.files) <= 7 and 13 <= d.snr <= 20
        elif name == "noise":
            assert len(d.files) == 1 and 0 <= d.snr <= 15
        elif name == "music":
            assert 5 <= d.snr <= 15


def test_fraction_leaves_the_rest_clean(bank):
    planner = augment.AugmentPlanner(bank, [0, 0, 0, 0, 1], {"noise": (0, 15)}, (3, 7), fraction=0.3)
    rng = np.random.default_rng(4)
    kinds = np.array([planner.draw(rng).kind for _ in range(10000)])
    assert abs((kinds != augment.NONE).mean() - 0.3) < 0.02


def test_views_of_one_utterance_are_augmented_independently(bank, tmp_path):
    audio = np.random.default_rng(5).standard_normal(SR * 3).astype(np.float32) * 0.1
    soundfile.write(tmp_path / "utt.wav", audio, SR)
    train = TrainList(files=[str(tmp_path / "utt.wav")] * 4, lengths=np.array([SR * 3] * 4),
                      labels=np.array([-1] * 4))
    planner = augment.AugmentPlanner(bank, [0, 0.25, 0.25, 0.25, 0.25],
                                     {"noise": (0, 15), "speech": (13, 20), "music": (5, 15)}, (3, 7))
    sampler = SpeakerBalancedSampler(train.labels, 2, 2, 500, seed=1, group_by_utterance=True,
                                     view_frames=lambda e, r: (100, 100), augment_planner=planner)
    dataset = TrainDataset(train, bank)
    batch = next(iter(sampler))
    views, labels, extras, _ = dataset.__getitems__(batch)
    mixed = augment.Augmenter()(views, extras)[0]
    for group, request in zip(mixed, batch):
        assert request.augment[0] != request.augment[1]
        assert not torch.allclose(group[0], group[1])


def test_silent_input_and_silent_noise_give_no_nan():
    n, length = 4, 2000
    clean = torch.zeros(n, 1, length)
    clean[2:] = torch.randn(2, 1, length)
    noise = torch.randn(n, length)
    noise[1] = 0
    noise[3] = 0
    extra = {"noise": noise, "rir": torch.zeros(n, 100), "snr": torch.full((n,), 5.0),
             "noisy": torch.ones(n, dtype=torch.bool), "reverb": torch.zeros(n, dtype=torch.bool)}
    out = augment.Augmenter()([clean], [extra])[0]
    assert torch.isfinite(out).all()
    reverb = dict(extra, noisy=torch.zeros(n, dtype=torch.bool), reverb=torch.ones(n, dtype=torch.bool))
    out = augment.Augmenter()([clean], [reverb])[0]
    assert torch.isfinite(out).all()


def test_noise_is_read_partially(bank, monkeypatch):
    calls = []
    real = soundfile.read

    def recording(path, *args, **kwargs):
        calls.append(kwargs.get("frames", -1))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(soundfile, "read", recording)
    spec = augment.AugmentSpec(augment.KINDS.index("speech"), files=(0, 1, 2), starts=(0.1, 0.5, 0.9), snr=15)
    noise, rir = augment.read_augmentation(bank, spec, 4000, read_crop)
    assert rir is None and noise.shape == (4000,)
    assert calls == [4000, 4000, 4000]


def test_fast_fft_size_is_the_next_5_smooth_number():
    def smooth(n):
        for p in (2, 3, 5):
            while n % p == 0:
                n //= p
        return n == 1

    for n in (1, 7, 97, 1000, 16001, 48239):
        size = augment.fast_fft_size(n)
        assert size >= n and smooth(size)
        assert not any(smooth(m) for m in range(n, size))
