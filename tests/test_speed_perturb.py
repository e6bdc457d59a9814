"""Speed perturbation (--speed_perturb): exact crop lengths, pitch and duration changed by the
factor, labels offset per speed, speeds drawn evenly, nClasses checked, SSL still unlabelled."""
import argparse
import logging

import numpy as np
import pytest
import torch
from scipy import signal

from speakernet.data import augment
import DatasetLoader as sampler
import trainSpeakerNet
from conftest import SR, group_views, train_argv, write_wav
from DatasetLoader import (SpeakerBalancedSampler, TrainDataset, TrainList, collate_views, crop_samples,
                           read_crop)
from speakernet.core.errors import UserError

SPEEDS = (1.0, 0.9, 1.1)


def peak_hz(audio):
    """Frequency of the strongest FFT bin, refined by parabolic interpolation."""
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1:k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / len(audio)


@pytest.fixture
def sine_file(tmp_path):
    t = np.arange(SR * 4) / SR
    return write_wav(tmp_path / "sine.wav", 0.5 * np.sin(2 * np.pi * 1000.0 * t)), SR * 4


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.0, 0.95, 1.05])
@pytest.mark.parametrize("frames", [20, 200, 301])
def test_output_length_is_exact(sine_file, factor, frames):
    path, total = sine_file
    length = crop_samples(frames)
    needed = augment.speed_read_length(length, factor)
    for start in (0, total - needed, (total - needed) // 2):
        audio = augment.speed_change(read_crop(str(path), total, start, needed), length, factor)
        assert audio.shape == (length,) and audio.dtype == np.float32
        if factor == 1.0:                          # no change: the crop between the margins
            margin = (needed - length) // 2
            assert np.array_equal(audio, read_crop(str(path), total, start + margin, length))


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_pitch_moves_by_the_factor(sine_file, factor):
    path, total = sine_file
    train = TrainList(files=[str(path)], lengths=np.array([total]), labels=np.array([0]))
    dataset = TrainDataset(train)
    sampler = SpeakerBalancedSampler(train.labels, 1, 1, 500, seed=3, view_frames=lambda e, r: (300,),
                                     speeds=(factor,), num_speakers=1)
    # One factor alone is never drawn (nothing to choose), so ask for it through the request.
    request = next(iter(sampler))[0]
    request.speed = factor
    audio = group_views(dataset[request])[0]
    assert len(audio) == crop_samples(300)
    assert peak_hz(audio) == pytest.approx(1000.0 * factor, abs=2.0)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_duration_changes_by_the_factor_against_scipy(tmp_path, factor):
    """A crop at `factor` holds length*factor input samples, squeezed into length samples: the
    same as scipy's polyphase resampling of the longer input span (an independent filter)."""
    rng = np.random.default_rng(0)
    speech_like = signal.lfilter([1.0], [1.0, -0.9], rng.standard_normal(SR * 3)) * 0.05
    path = write_wav(tmp_path / "noise.wav", speech_like)
    source = read_crop(str(path), SR * 3, 0, SR * 3)
    length = crop_samples(100)
    needed = augment.speed_read_length(length, factor)
    start = 4950        # a multiple of 9 and 11, so both resamplings share one output grid
    ours = augment.speed_change(read_crop(str(path), SR * 3, start, needed), length, factor)
    orig, new = augment.speed_ratio(factor)
    expected = signal.resample_poly(source.astype(np.float64), new, orig)
    # Output sample j sits at input position j * factor; our crop starts at input `start`.
    margin = (needed - int(np.ceil(length * orig / new))) // 2
    first = (start + margin) * new // orig
    reference = expected[first:first + length]
    inner = slice(50, length - 50)        # away from the ends of scipy's whole-file filter
    correlation = np.corrcoef(ours[inner], reference[inner])[0, 1]
    assert correlation > 0.995
    # And not the unperturbed crop: that is a different signal.
    plain = source[start + margin:start + margin + length]
    assert np.corrcoef(ours[inner], plain[inner])[0, 1] < 0.9


def make_sampler(labels, speeds=SPEEDS, views=2, by_utterance=False, batch=4, seed=1):
    num_speakers = 0 if by_utterance else int(np.max(labels)) + 1
    return SpeakerBalancedSampler(labels, batch, views, 500, seed=seed, group_by_utterance=by_utterance,
                                  view_frames=lambda e, r: (20,) * views, speeds=speeds,
                                  num_speakers=num_speakers)


def test_labels_are_offset_by_speed_index_times_speakers():
    labels = np.repeat(np.arange(10), 6)
    sampler = make_sampler(labels)
    seen = set()
    for epoch in range(1, 4):
        for batch in sampler.plan(epoch):
            for request in batch:
                base = labels[request.files[0]]
                assert all(labels[f] == base for f in request.files)
                assert request.label == base + SPEEDS.index(request.speed) * 10
                seen.add(request.label)
    assert seen == set(range(30))


def test_speeds_are_drawn_evenly_per_group():
    labels = np.repeat(np.arange(50), 40)
    sampler = make_sampler(labels, batch=10)
    speeds = [r.speed for epoch in range(1, 6) for b in sampler.plan(epoch) for r in b]
    shares = np.array([speeds.count(s) for s in SPEEDS]) / len(speeds)
    assert len(speeds) > 4000
    np.testing.assert_allclose(shares, 1 / 3, atol=0.025)


def test_without_perturbation_the_plan_is_unchanged():
    labels = np.repeat(np.arange(10), 6)
    plain = SpeakerBalancedSampler(labels, 4, 2, 500, seed=1, view_frames=lambda e, r: (20, 20))
    one_speed = make_sampler(labels, speeds=(1.0,))
    assert plain.plan(1) == one_speed.plan(1)
    assert all(r.speed == 1.0 and r.label == labels[r.files[0]] for b in plain.plan(1) for r in b)


def test_self_supervised_groups_share_one_speed_and_stay_unlabelled(tmp_path):
    rng = np.random.default_rng(2)
    files = [str(write_wav(tmp_path / f"{i}.wav", 0.1 * rng.standard_normal(SR))) for i in range(8)]
    train = TrainList(files=files, lengths=np.array([SR] * 8), labels=np.full(8, -1))
    sampler = make_sampler(train.labels, by_utterance=True, batch=4)
    dataset = TrainDataset(train)
    batches = sampler.plan(1)
    assert {r.label for b in batches for r in b} == {-1}
    assert len({r.speed for b in batches for r in b}) > 1
    views, labels, _, _ = dataset.__getitems__(batches[0])
    assert views[0].shape == (4, 2, crop_samples(20)) and (labels == -1).all()


def test_options_and_class_check():
    parser = argparse.ArgumentParser()
    sampler.add_arguments(parser)           # speed perturbation is the sampler's option
    options = parser.parse_args([])
    assert not options.speed_perturb and sampler.speed_factors(options) == (1.0,)
    options = parser.parse_args(["--speed_perturb"])
    assert sampler.speed_factors(options) == SPEEDS
    with pytest.raises(UserError, match="--speed_factors"):
        sampler.speed_factors(parser.parse_args(["--speed_perturb", "--speed_factors", "1.0", "3.0"]))
    with pytest.raises(UserError, match="set --nClasses 30"):
        sampler.check_speed_classes(10, 10, SPEEDS, "list.txt")
    sampler.check_speed_classes(30, 10, SPEEDS, "list.txt")
    sampler.check_speed_classes(10, 10, (1.0,), "list.txt")


def run(argv, caplog):
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = trainSpeakerNet.main([str(a) for a in argv])
    return code, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_classifier_without_enough_classes_stops_with_the_fix(corpus, tmp_path, caplog):
    argv = train_argv(corpus, tmp_path / "exp", flags=("speed_perturb",), trainfunc="softmax",
                      nPerSpeaker=1, nClasses=6)
    code, errors = run(argv, caplog)
    assert code == 2 and len(errors) == 1
    assert "--speed_perturb" in errors[0] and "set --nClasses 18" in errors[0]
    assert not (tmp_path / "exp").exists()


def test_metric_objectives_do_not_need_more_classes(corpus, tmp_path, caplog):
    from loss.angleproto import LossFunction as AngleProto
    from loss.aamsoftmax import LossFunction as AAM
    assert not AngleProto(nOut=8).needs.classifier
    assert AAM(nOut=8, nClasses=18).needs.classifier
    argv = train_argv(corpus, tmp_path / "exp", flags=("speed_perturb",), nClasses=6, max_epoch=1)
    code, errors = run(argv, caplog)                 # angleproto, 6 speakers, nClasses 6
    assert code == 0 and not errors


def test_classifier_trains_with_speed_perturbation(corpus, tmp_path, caplog):
    argv = train_argv(corpus, tmp_path / "exp", flags=("speed_perturb",), trainfunc="softmax",
                      nPerSpeaker=1, nClasses=18, max_epoch=1, batch_size=6)
    code, errors = run(argv, caplog)
    assert code == 0 and not errors


def test_self_supervised_training_with_speed_perturbation_and_specaugment(corpus, tmp_path, caplog):
    """DINO (global and local views, a teacher that embeds the views itself) never needs
    --nClasses and trains with both options on."""
    argv = train_argv(corpus, tmp_path / "exp", flags=("speed_perturb", "specaugment"), trainfunc="dino",
                      batch_size=3, max_epoch=1, nOut=16, dino_out_dim=32, dino_hidden_dim=16,
                      dino_bottleneck_dim=8, dino_global_frames=30, dino_local_frames=15, nClasses=1)
    code, errors = run(argv, caplog)
    assert code == 0 and not errors
