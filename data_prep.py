#!/usr/bin/env python3
"""Dataset preparation.

Demo data, made here:
  --synthetic   write a small VoxCeleb-style corpus made by our own source-filter voice
                synthesizer, plus MUSAN-style noise / babble / music chunks and simulated room
                impulse responses for --augment, then report the mean-log-mel baseline EER on it;
  --baseline    report that baseline EER for any trial list.

Real data, voxceleb_trainer's steps (combine them; they run in this order):
  python3 data_prep.py --save_path data --download --download_list LIST [--user U --password P]
  python3 data_prep.py --save_path data --concatenate --extract --convert
  python3 data_prep.py --save_path data --download --download_list augment.txt --augment
  python3 data_prep.py --make_list data/voxceleb2 --list_out data/train_list.txt
  python3 data_prep.py --check data/voxceleb1 --list data/veri_test2.txt
Every step shows progress, resumes after an interrupt and never rewrites a finished file.
"""
import argparse
import concurrent.futures
import glob
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import wave
import zipfile
import zlib

import numpy as np
import scipy.fft
import soundfile
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import uniform_filter1d
from scipy.signal import fftconvolve
from tqdm import tqdm

from audio_manifest import _read_header       # one place decides what a usable audio file is

log = logging.getLogger("data_prep")

SR = 16000
N_FFT, HOP = 512, 256             # synthesis STFT: 32 ms frames, 16 ms control rate
FREQS = np.fft.rfftfreq(N_FFT, 1.0 / SR)
OCTS = np.log2(np.maximum(FREQS, 20) / 1000)                    # bin frequencies in octaves re 1 kHz
WIN = np.sin(np.pi * np.arange(N_FFT) / N_FFT).astype(np.float32)   # sqrt-Hann: exact overlap-add at hop N/2
F32 = np.float32                  # single precision: plenty for 16-bit output, and twice as fast
SYNTH_VERSION = 2                 # bump when the synthesizer changes, so old corpora are refused
CONFIG_NAME = "synthetic_corpus.json"

# Vowel targets F1-F3 (Hz) of an adult male voice (classic Peterson-Barney averages).
VOWELS = np.array([[270, 2290, 3010], [390, 1990, 2550], [530, 1840, 2480], [660, 1720, 2410],
                   [730, 1090, 2440], [570, 840, 2410], [440, 1020, 2240], [300, 870, 2240],
                   [640, 1190, 2390], [490, 1350, 1690]], float)
# Consonants: F1-F3 (nan = take the neighbouring vowel's), voicing, frication, aspiration,
# frication centre (Hz) and width (octaves), relative duration, is-stop (closure + burst).
NAN = np.nan
CONSONANTS = np.array([
    [250, 1000, 2200, .35, 0, 0, 0, 1, 1.0, 0],            # m
    [250, 1500, 2400, .35, 0, 0, 0, 1, 0.9, 0],            # n
    [360, 1100, 2700, .60, 0, 0, 0, 1, 0.8, 0],            # l
    [NAN, NAN, NAN, 0, .50, 0, 6000, .30, 1.2, 0],         # s
    [NAN, NAN, NAN, 0, .50, 0, 3000, .40, 1.2, 0],         # sh
    [NAN, NAN, NAN, 0, .15, 0, 4500, 1.2, 1.0, 0],         # f
    [NAN, NAN, NAN, 0, 0, .50, 0, 1, 0.8, 0],              # h
    [NAN, NAN, NAN, .30, .35, 0, 6000, .30, 1.0, 0],       # z
    [NAN, NAN, NAN, 0, .60, 0, 1000, 1.0, 1.0, 1],         # p
    [NAN, NAN, NAN, 0, .60, 0, 4000, .80, 1.0, 1],         # t
    [NAN, NAN, NAN, 0, .60, 0, 2500, .80, 1.0, 1],         # k
    [NAN, NAN, NAN, .08, .40, 0, 2500, .80, 0.8, 1],       # g (voiced closure)
])
ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


# ----------------------------------------------------------------------------- voices
def bump(centre, width):
    """Gaussian bump over log frequency (centre in octaves re 1 kHz, width in octaves)."""
    return np.exp(-0.5 * ((OCTS - centre) / width) ** 2)


def draw_speaker(rng):
    """Per-speaker voice traits: what the network must learn, behind channel and content."""
    female = rng.random() < 0.5
    lo, hi = (160, 270) if female else (85, 155)
    alpha = (1.17 if female else 1.0) * np.exp(rng.normal(0, 0.08))   # vocal-tract length scaling
    return dict(
        f0=np.exp(rng.uniform(np.log(lo), np.log(hi))), alpha=alpha,
        f0_range=rng.uniform(0.8, 4.0), declination=rng.uniform(-3.0, 0.5),   # semitones, semitones / s
        vowel_warp=np.exp(rng.normal(0, 0.06, VOWELS.shape)),   # idiolect of each vowel
        # fixed peaks and dips above 1.4 kHz (sinuses, piriform fossae): static timbre
        colour=sum(rng.normal(0, 8.0) * bump(rng.uniform(0.5, 2.6), rng.uniform(0.2, 0.5)) for _ in range(3)),
        high_formants=alpha * np.array([rng.uniform(3300, 3900), rng.uniform(4400, 5000)]),
        bw_scale=np.exp(rng.uniform(np.log(0.7), np.log(1.5))),
        open_quotient=rng.uniform(0.35, 0.8), skew=rng.uniform(0.55, 0.85),   # glottal pulse shape
        tilt=rng.uniform(1.5, 6.5),                # dB / octave above 500 Hz (radiation, vocal effort)
        breath=np.exp(rng.uniform(np.log(0.01), np.log(0.2))),
        jitter=rng.uniform(0.002, 0.02), shimmer=rng.uniform(0.02, 0.15),
        rate=rng.uniform(2.8, 6.0), pause_prob=rng.uniform(0.02, 0.15),       # syllables / s, per syllable
        onset_prob=rng.uniform(0.5, 0.95), coda_prob=rng.uniform(0.1, 0.5),
    )


def phone_tracks(rng, spk, n_frames):
    """Random syllables -> per-frame [F1..F3, voicing, frication, aspiration, fric. centre, width]."""
    fps = SR / HOP
    rate = spk["rate"] * np.exp(rng.normal(0, 0.08))
    vowel_p = rng.dirichlet(np.full(len(VOWELS), 4.0))      # each utterance favours other phones
    cons_p = rng.dirichlet(np.full(len(CONSONANTS), 4.0))
    silence = [NAN, NAN, NAN, 0, 0, 0, 0, 1]

    def consonant():
        row = CONSONANTS[rng.choice(len(CONSONANTS), p=cons_p)]
        dur = max(2, int(0.22 / rate * row[8] * fps * rng.lognormal(0, 0.25)))
        if row[9]:                                          # stop: closure, then a short burst
            return [([NAN, NAN, NAN, row[3], 0, 0, 0, 1], dur), ([NAN, NAN, NAN, 0, *row[4:8]], 2)]
        return [(list(row[:8]), dur)]

    segs, total = [(silence, int(rng.uniform(0.05, 0.2) * fps))], 0
    while total < n_frames:
        if rng.random() < spk["pause_prob"]:
            segs.append((silence, int(rng.uniform(0.1, 0.4) * fps)))
        if rng.random() < spk["onset_prob"]:
            segs += consonant()
        v = rng.choice(len(VOWELS), p=vowel_p)
        segs.append(([*(VOWELS[v] * spk["vowel_warp"][v]), rng.uniform(0.5, 1.0), 0, 0, 0, 1],
                     max(3, int(0.5 / rate * fps * rng.lognormal(0, 0.3)))))
        if rng.random() < spk["coda_prob"]:
            segs += consonant()
        total = sum(d for _, d in segs)
    tracks = np.repeat(np.array([r for r, _ in segs], float), [d for _, d in segs], axis=0)[:n_frames]
    idx = np.arange(n_frames)
    for k in range(3):                                      # consonants and pauses borrow vowel formants
        ok = ~np.isnan(tracks[:, k])
        tracks[:, k] = np.interp(idx, idx[ok], tracks[ok, k])
    # coarticulation: formants glide between targets over about 60 ms
    tracks[:, :3] = uniform_filter1d(tracks[:, :3], int(0.06 * fps) | 1, axis=0) * spk["alpha"]
    return tracks


def pitch_track(rng, spk, n_frames):
    """f0 per frame: speaker median, utterance shift, declination, pitch accents, drift, jitter."""
    t = np.arange(n_frames) * HOP / SR
    semis = rng.normal(0, 0.8) + spk["declination"] * (t - t.mean())
    for c in rng.uniform(0, t[-1], max(1, int(t[-1] * spk["rate"] / 3))):
        height = spk["f0_range"] * rng.normal(0.7, 0.5)
        semis += height * np.exp(-0.5 * ((t - c) / rng.uniform(0.08, 0.2)) ** 2)
    semis += uniform_filter1d(rng.normal(0, 1.5, n_frames), int(0.2 * SR / HOP))
    return spk["f0"] * 2 ** (semis / 12) * (1 + spk["jitter"] * rng.normal(0, 1, n_frames))


def glottal_source(rng, spk, f0_frames, n):
    """Rosenberg-style glottal flow derivative plus breath noise pulsed with the open phase."""
    size = 2048                                             # one period, tabulated: lookups beat cos()
    pos = np.cumsum(np.interp(np.arange(n), np.arange(len(f0_frames)) * HOP, f0_frames) * (size / SR))
    pos = pos.astype(np.int64) & (size - 1)
    grid, oq = np.arange(size) / size, spk["open_quotient"]
    tp, tn = oq * spk["skew"], oq * (1 - spk["skew"])
    flow = np.where(grid < tp, 0.5 - 0.5 * np.cos(np.pi * grid / tp),
                    np.where(grid < oq, np.cos(0.5 * np.pi * (grid - tp) / tn), 0.0)).astype(F32)
    src = np.diff(flow[pos], prepend=F32(0))
    src /= src[::5].std() + 1e-9
    gate = np.where(grid < oq, 1.0, 0.3).astype(F32) * F32(spk["breath"])
    return src + white(rng, n) * gate[pos]


def white(rng, shape):
    """Unit-variance uniform noise from raw random bytes: several times cheaper than Gaussian
    draws, and the filtering that follows makes it Gaussian anyway."""
    raw = np.frombuffer(rng.bytes(2 * int(np.prod(shape))), np.int16).reshape(shape)
    return raw * F32(np.sqrt(12) / 65536)


def white_spec(rng, n_frames):
    """Random complex frames standing for the STFT of white noise (frame overlap ignored)."""
    return white(rng, (n_frames, 2 * len(FREQS))).view(np.complex64) * F32(np.sqrt(N_FFT / 4))


def stft(x, n_frames):
    pad = np.zeros(N_FFT - HOP + n_frames * HOP, F32)
    pad[N_FFT - HOP:N_FFT - HOP + len(x)] = x
    return scipy.fft.rfft(sliding_window_view(pad, N_FFT)[::HOP][:n_frames] * WIN, axis=1)


def istft(spec, n):
    frames = scipy.fft.irfft(spec, N_FFT, axis=1) * WIN
    out = np.zeros((len(frames) + N_FFT // HOP - 1) * HOP, F32)
    for k in range(N_FFT // HOP):                           # overlap-add, one hop-sized slice at a time
        out[k * HOP:k * HOP + len(frames) * HOP] += frames[:, k * HOP:(k + 1) * HOP].ravel()
    return out[N_FFT - HOP:N_FFT - HOP + n]


def tract_gain(formants, bws):
    """|H| of a cascade of unity-DC-gain two-pole resonators, for every frame and bin.
    cos(w -+ theta) is expanded so that the big (frames x bins) arrays need no trigonometry."""
    cw, sw = np.cos(2 * np.pi * FREQS / SR).astype(F32), np.sin(2 * np.pi * FREQS / SR).astype(F32)
    gain = np.ones((len(formants), len(FREQS)), F32)
    for k in range(formants.shape[1]):
        theta = (2 * np.pi * formants[:, k:k + 1] / SR).astype(F32)
        r = np.exp(-np.pi * bws[:, k:k + 1] / SR).astype(F32)
        a, b, c = 1 + r * r, 2 * r * np.cos(theta), 2 * r * np.sin(theta)
        x, y = a - b * cw, c * sw                           # denominator = (x - y)(x + y)
        gain *= (a - b) / np.sqrt(x * x - y * y)
    return gain


# ----------------------------------------------------------------------------- channels
def draw_channel(rng, strength, snr_range, reverb_prob):
    """One recording session ("video"): microphone/room EQ in dB per bin, band limits,
    background-noise colour and level, and maybe a reverberant room."""
    eq = strength * (rng.normal(0, 2.0) * OCTS + sum(
        rng.normal(0, 3.0) * bump(rng.uniform(-2.5, 2.5), rng.uniform(0.3, 1.0)) for _ in range(3)))
    hp, lp = rng.uniform(40, 40 + 200 * strength), rng.uniform(8000 - 3000 * min(strength, 1.5), 8000)
    eq -= 10 * np.log10(1 + (hp / np.maximum(FREQS, 1)) ** 4) + 10 * np.log10(1 + (FREQS / lp) ** 8)
    noise_db = (strength * rng.normal(0, 3.0) - 4.0) * OCTS     # pink-ish on average
    noise_db = noise_db + strength * rng.normal(0, 4.0) * bump(rng.uniform(-2, 2), 0.7)
    return dict(eq=eq, noise_db=noise_db, snr=rng.uniform(*snr_range), drr=rng.uniform(-3, 10),
                rt60=rng.uniform(0.15, 0.7) if rng.random() < reverb_prob else 0.0)


def synth_utterance(rng, spk, chan, duration):
    """One utterance as int16 samples: voice through the tract, then noise, the session's
    microphone and room, and a random loudness."""
    n = int(duration * SR)
    n_frames = n // HOP + N_FFT // HOP
    tracks = phone_tracks(rng, spk, n_frames)
    formants = np.minimum(tracks[:, :3], 0.45 * SR)
    env = tract_gain(formants, spk["bw_scale"] * (np.array([50, 70, 110]) + 0.03 * formants))
    high = spk["high_formants"][None]                       # F4, F5, tilt and colour do not move
    env *= (tract_gain(high, spk["bw_scale"] * (np.array([160, 220]) + 0.03 * high))[0]
            * 10 ** ((spk["tilt"] * np.log2(np.maximum(FREQS, 100) / 500) + spk["colour"]) / 20)).astype(F32)
    tracks = tracks.astype(F32)
    fric = np.zeros_like(env)                               # frication spectra, only where there is any
    on = tracks[:, 4] > 0
    dist = np.log2(np.maximum(FREQS, 50)).astype(F32) - np.log2(tracks[on, 6:7] * spk["alpha"])
    fric[on] = tracks[on, 4:5] * np.exp(-0.5 * (dist / tracks[on, 7:8]) ** 2)
    src = glottal_source(rng, spk, pitch_track(rng, spk, n_frames), n)
    shimmer = 1 + spk["shimmer"] * rng.standard_normal((n_frames, 1), F32)   # per frame, not per cycle
    speech = stft(src, n_frames) * (tracks[:, 3:4] * shimmer * env) \
        + white_spec(rng, n_frames) * (tracks[:, 5:6] * env + fric)
    # Background noise enters before the microphone and the room, as in a real recording.
    noise = white_spec(rng, n_frames) * (10 ** (chan["noise_db"] / 20)).astype(F32)
    snr = chan["snr"] + rng.normal(0, 2.0)
    gain = np.sqrt(np.mean(np.abs(speech) ** 2) / np.mean(np.abs(noise) ** 2) * 10 ** (-snr / 10))
    eq_db = chan["eq"] + rng.normal(0, 0.7) * OCTS          # small per-take drift of the session EQ
    x = istft((speech + F32(gain) * noise) * (10 ** (eq_db / 20)).astype(F32), n)
    if chan["rt60"] > 0:                                    # direct path plus a decaying noise tail
        t = np.arange(1, int(chan["rt60"] * SR)) / SR
        tail = rng.normal(0, 1, len(t)) * np.exp(-6.9 * t / chan["rt60"])
        tail *= 10 ** (-chan["drr"] / 20) / np.sqrt(np.sum(tail ** 2))
        x = fftconvolve(x, np.r_[1.0, tail].astype(F32))[:n]
    x *= 10 ** (rng.uniform(-26, -20) / 20) / (np.sqrt(np.mean(x ** 2)) + 1e-9)
    x /= max(1.0, np.abs(x).max() / 0.99)
    return np.round(x * 32767).astype(np.int16)


# ----------------------------------------------------------------------------- corpus
def corpus_plan(args):
    """Per speaker: (role, index, id, [(utterance index, session index, relative path)])."""
    plan = []
    for role, n_spk, n_utt, first in ((0, args.num_train_speakers, args.utts_per_speaker, 1),
                                      (1, args.num_test_speakers, args.test_utts_per_speaker, 10001)):
        for s in range(n_spk):
            rng = np.random.default_rng([args.seed, role, s, 1])
            spk_id = "id%05d" % (first + s)
            n_sess = min(n_utt, int(rng.integers(2, 6)))     # several "videos", each its own channel
            sess = np.sort(rng.integers(0, n_sess, n_utt))
            vids = ["".join(rng.choice(ALPHABET, 11)) for _ in range(n_sess)]
            items = [(u, int(ses), "%s/%s/%05d.wav" % (spk_id, vids[ses], 1 + u - np.searchsorted(sess, ses)))
                     for u, ses in enumerate(sess)]          # numbered from 00001 within each video
            plan.append((role, s, spk_id, items))
    return plan


def write_speaker(job):
    """Synthesise and write one speaker's utterances; every draw is seeded by its own indices,
    so the bytes do not depend on the number of worker processes or their order."""
    args, root, (role, s, spk_id, items) = job
    spk = draw_speaker(np.random.default_rng([args.seed, role, s, 2]))
    channels = {}
    for u, ses, rel in items:
        if ses not in channels:
            channels[ses] = draw_channel(np.random.default_rng([args.seed, role, s, 3, ses]),
                                         args.channel_strength, args.noise_snr_range, args.reverb_prob)
        rng = np.random.default_rng([args.seed, role, s, 4, u])
        wav = synth_utterance(rng, spk, channels[ses], rng.uniform(args.min_dur, args.max_dur))
        path = os.path.join(root, "wav", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with wave.open(path, "wb") as f:                  # plain 16-bit PCM; stdlib is faster here
            f.setparams((1, 2, SR, len(wav), "NONE", "not compressed"))
            f.writeframes(wav.astype("<i2").tobytes())
    return len(items)


def make_trials(rng, test_files, num_trials):
    """Balanced trials: up to num_trials/2 same-speaker pairs and as many random
    different-speaker pairs (random pairing brings hard ones too, e.g. similar pitch)."""
    spk = np.array([f.split("/")[0] for f in test_files])
    same = [pair for s in np.unique(spk)
            for pair in itertools.combinations(np.flatnonzero(spk == s).tolist(), 2)]
    n_tar = min(len(same), num_trials // 2)
    pairs = {same[k]: 1 for k in rng.choice(len(same), n_tar, replace=False)}
    n_diff = len(spk) * (len(spk) - 1) // 2 - len(same)
    while len(pairs) < n_tar + min(n_diff, n_tar):
        i, j = sorted(rng.choice(len(spk), 2, replace=False))
        if spk[i] != spk[j]:
            pairs[(int(i), int(j))] = 0
    keys = list(pairs)
    return ["%d %s %s" % (pairs[keys[k]], test_files[keys[k][0]], test_files[keys[k][1]])
            for k in rng.permutation(len(keys))]


def write_atomic(path, lines):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def generate_synthetic(args):
    """Write the corpus into args.save_path (skipped when an identical one is already there)."""
    keys = ("seed", "num_train_speakers", "num_test_speakers", "utts_per_speaker", "test_utts_per_speaker",
            "min_dur", "max_dur", "num_trials", "channel_strength", "noise_snr_range", "reverb_prob")
    config = dict({k: getattr(args, k) for k in keys}, version=SYNTH_VERSION)
    root = args.save_path
    cfg_path = os.path.join(root, CONFIG_NAME)
    lists = [os.path.join(root, f) for f in ("train_list.txt", "test_list.txt")]
    old = json.loads(open(cfg_path).read() or "{}") if os.path.exists(cfg_path) else None
    if old == config and all(map(os.path.exists, lists)):
        log.info("%s already holds this corpus; not generating it again", root)
        return
    if old is None and any(map(os.path.exists, lists)) or old not in (None, config):
        differ = sorted(k for k in config if old is not None and old.get(k) != config[k])
        differ = differ or ["not made by --synthetic"]
        if not args.overwrite:
            sys.exit("error: %s already holds a different corpus (%s); pass --overwrite to replace it"
                     % (root, ", ".join(differ)))
        log.warning("replacing the corpus in %s", root)
    for f in lists:                                        # lists mark a finished corpus: drop them first
        if os.path.exists(f):
            os.remove(f)
    if old is not None and old != config:                  # only ever delete audio that we synthesised
        shutil.rmtree(os.path.join(root, "wav"), ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    write_atomic(cfg_path, [json.dumps(config, sort_keys=True)])

    plan, t0 = corpus_plan(args), time.time()
    jobs = [(args, root, p) for p in plan]
    with tqdm(total=sum(len(p[3]) for p in plan), desc="synthesising", unit="utt") as bar:
        if args.workers > 1:
            with multiprocessing.Pool(args.workers) as pool:
                for n in pool.imap_unordered(write_speaker, jobs):
                    bar.update(n)
        else:
            for job in jobs:
                bar.update(write_speaker(job))
    train = ["%s %s" % (spk_id, rel) for role, _, spk_id, items in plan if role == 0 for _, _, rel in items]
    test = [rel for role, _, _, items in plan if role == 1 for _, _, rel in items]
    write_atomic(lists[0], train)
    trials = make_trials(np.random.default_rng([args.seed, 5]), test, args.num_trials)
    write_atomic(lists[1], trials)
    log.info("synthesised %d utterances in %.1f s", len(train) + len(test), time.time() - t0)
    print("Synthetic corpus in %s: %d training utterances of %d speakers, %d trials over %d test utterances"
          " of %d other speakers" % (root, len(train), args.num_train_speakers, len(trials), len(test),
                                     args.num_test_speakers))


# ----------------------------------------------------------------------------- augmentation sets
# Stand-ins for MUSAN (noise, babble speech, music; ~5 s chunks as voxceleb_trainer's musan_split)
# and for simulated room impulse responses, so that `--augment` runs on the demo corpus.
NOISE_CONFIG = "synthetic_noise.json"
NOISE_VERSION = 1                 # bump when any generator below changes
CHUNK_SECONDS = 5.0
STATIONARY_NOISES = ("coloured", "hum", "fan", "crackle")
TRANSIENT_NOISES = ("typing", "knocks", "beeps", "swells")
BABBLE_PER_SPEAKER = 3            # speech chunks per "noise speaker" (role 2: neither train nor test)


def loudness(x, rng):
    """Scale to -26..-20 dBFS RMS without clipping (the SNR is set at training time anyway)."""
    x = x * (10 ** (rng.uniform(-26, -20) / 20) / (np.sqrt(np.mean(x ** 2)) + 1e-9))
    return x / max(1.0, np.abs(x).max() / 0.99)


def shaped_noise(rng, n, gain_of_freq):
    """White noise coloured by |H(f)| = gain_of_freq(frequencies in Hz), unit RMS."""
    freqs = np.fft.rfftfreq(n, 1.0 / SR)
    x = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * gain_of_freq(freqs), n)
    return x / (x.std() + 1e-12)


def decaying(rng, n, tau):
    return np.exp(-np.arange(n) / (tau * SR))


def synth_noise(rng, kind, n):
    """One noise chunk: a stationary type, or transient events over a quiet stationary floor."""
    t = np.arange(n) / SR
    slope = rng.uniform(-6.0, 1.0)                           # dB / octave: brown ... slightly blue
    centres, peaks = rng.uniform(100, 6000, 2), rng.normal(0, 6, 2)   # two resonances, dB

    def colour(f):
        octs = np.log2(np.maximum(f, 30) / 1000)
        db = slope * octs + sum(p * np.exp(-0.5 * ((octs - np.log2(c / 1000)) / 0.5) ** 2)
                                for c, p in zip(centres, peaks))
        return 10 ** (db / 20)
    floor = shaped_noise(rng, n, colour)
    if kind == "coloured":                                   # wind, rumble, air conditioning, hiss
        return floor * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t + rng.uniform(0, 6.3)))
    if kind == "hum":                                        # mains hum with harmonics, over hiss
        mains = rng.choice([50.0, 60.0])
        hum = sum(rng.uniform(0.1, 1) / k * np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 6.3))
                  for k in range(1, 12))
        return hum / hum.std() + rng.uniform(0.05, 0.5) * floor
    if kind == "fan":                                        # broadband whoosh plus blade-pass tones
        blade = rng.uniform(80, 400) * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(0.1, 1) * t))
        phase = 2 * np.pi * np.cumsum(blade) / SR
        tones = sum(rng.uniform(0.1, 1) / k * np.sin(k * phase) for k in range(1, 6))
        return floor + rng.uniform(0.2, 1.0) * tones / tones.std()
    if kind == "crackle":                                    # rain, fire, vinyl: dense random clicks
        clicks = np.zeros(n)
        where = rng.integers(0, n, int(rng.uniform(50, 800) * n / SR))
        clicks[where] = rng.standard_normal(len(where)) * rng.pareto(3.0, len(where))
        hp = rng.uniform(500, 3000)
        clicks = np.fft.irfft(np.fft.rfft(clicks) * (1 / (1 + (hp / np.maximum(np.fft.rfftfreq(n, 1 / SR), 1)) ** 2)), n)
        return clicks / (clicks.std() + 1e-12) + rng.uniform(0.05, 0.5) * floor
    out = rng.uniform(0.01, 0.08) * floor                   # transient events over a quiet floor
    if kind == "typing":                                     # key clicks: short bright bursts
        pos = 0
        while pos < n:
            pos += int(rng.exponential(rng.uniform(0.08, 0.3)) * SR) + 400
            m = min(int(rng.uniform(0.005, 0.02) * SR), n - pos)
            if m > 0:
                burst = shaped_noise(rng, m, lambda f: (np.maximum(f, 500) / 1000) ** 0.5)
                out[pos:pos + m] += rng.uniform(0.3, 1.0) * burst * decaying(rng, m, rng.uniform(0.002, 0.006))
    elif kind == "knocks":                                   # doors, footsteps, objects: damped resonances
        for start in rng.uniform(0, n / SR - 0.2, int(rng.integers(2, 10))):
            m = int(0.4 * SR)
            s, tt = int(start * SR), np.arange(m) / SR
            ring = sum(rng.uniform(0.2, 1) * np.sin(2 * np.pi * f * tt) * np.exp(-tt / rng.uniform(0.02, 0.12))
                       for f in rng.uniform(60, 900, 3))
            ring[:80] += rng.standard_normal(80) * np.linspace(1, 0, 80)   # the impact itself
            out[s:s + m] += rng.uniform(0.3, 1.0) * ring[:n - s]
    elif kind == "beeps":                                    # phones, alarms, machines: tone pips
        freq, period = rng.uniform(400, 3500), rng.uniform(0.3, 1.5)
        length = period * rng.uniform(0.15, 0.6)
        on = (t % period) < length
        ramp = uniform_filter1d(on.astype(float), 80)
        out += ramp * (np.sin(2 * np.pi * freq * t) + rng.uniform(0, 0.5) * np.sin(4 * np.pi * freq * t))
    elif kind == "swells":                                   # passing cars, aircraft: slow loud swells
        for centre in rng.uniform(0, n / SR, int(rng.integers(1, 4))):
            width = rng.uniform(0.3, 1.5)
            corner = rng.uniform(200, 1500)
            out += np.exp(-0.5 * ((t - centre) / width) ** 2) * shaped_noise(
                rng, n, lambda f: 1 / (1 + (f / corner) ** 2))
    return out


MAJOR, MINOR, PENTA = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10), (0, 2, 4, 7, 9)


def synth_music(rng, n):
    """Tonal, rhythmic music: melody, bass, chords and drums in one key and tempo, additive synthesis."""
    out = np.zeros(n)
    beat = 60.0 / rng.uniform(70, 160)
    scale = np.array([MAJOR, MINOR, PENTA][int(rng.integers(3))])
    root = int(rng.integers(45, 58))                         # MIDI note of the key
    midi_hz = lambda m: 440.0 * 2 ** ((m - 69) / 12)

    def note(pitch, start, dur, level, brightness, pluck):
        s, m = int(start * SR), int(dur * SR)
        m = min(m, n - s)
        if m <= 8:
            return
        tt = np.arange(m) / SR
        f0 = midi_hz(pitch) * (1 + 0.003 * np.sin(2 * np.pi * 5.5 * tt))    # a little vibrato
        k = np.arange(1, max(2, min(16, int(7000 / midi_hz(pitch)))))
        table = (k ** -brightness) @ np.sin(2 * np.pi * k[:, None] * np.arange(1024) / 1024)   # one period
        wave_ = table[(np.cumsum(f0) * (1024 / SR)).astype(np.int64) & 1023]
        env = np.exp(-tt / (pluck * dur)) if pluck else np.minimum(1, tt / 0.03) * np.minimum(1, (m - np.arange(m)) / 800)
        env = env * np.minimum(1, np.arange(m) / 40.0)     # no click at the onset
        out[s:s + m] += level * env * wave_

    steps = lambda degree: root + 12 * (degree // len(scale)) + scale[degree % len(scale)]
    layers = rng.random(4) < [0.95, 0.7, 0.6, 0.6]          # melody, bass, chords, drums
    timbres = [(rng.uniform(0.7, 2.0), rng.choice([0, rng.uniform(0.2, 0.8)])) for _ in range(3)]
    bars = int(np.ceil(n / SR / (4 * beat)))
    if layers[1] or layers[2]:
        for bar in range(bars):
            degree = int(rng.choice([0, 3, 4, 5]))
            if layers[1]:
                for b in range(4):
                    note(steps(degree) - 12, (bar * 4 + b) * beat, beat * 0.9, 0.5, *timbres[1])
            if layers[2]:
                for d in (0, 2, 4):
                    note(steps(degree + d) + 12, bar * 4 * beat, 4 * beat, 0.15, *timbres[2])
    if layers[0] or not layers.any():
        pos, degree = 0.0, int(rng.integers(len(scale), 2 * len(scale)))
        while pos < n / SR:
            dur = beat * rng.choice([0.5, 1, 1, 2])
            degree = int(np.clip(degree + rng.integers(-2, 3), 0, 3 * len(scale) - 1))
            if rng.random() < 0.9:
                note(steps(degree) + 12, pos, dur, 0.4, *timbres[0])
            pos += dur
    if layers[3]:
        for half in range(int(n / SR / (beat / 2)) + 1):
            s = int(half * beat / 2 * SR)
            m = min(int(0.25 * SR), n - s)
            if m <= 0:
                break
            tt = np.arange(m) / SR
            if half % 4 == 0:                                # kick: falling sine
                out[s:s + m] += 0.8 * np.sin(2 * np.pi * np.cumsum(50 + 100 * np.exp(-tt / 0.03)) / SR) * np.exp(-tt / 0.08)
            if half % 4 == 2:                                # snare: noise burst
                out[s:s + m] += 0.3 * rng.standard_normal(m) * np.exp(-tt / 0.05)
            hat = np.diff(rng.standard_normal(m + 1))        # hi-hat: bright, short
            out[s:s + m] += 0.08 * hat * np.exp(-tt / 0.015)
    return out


def synth_rir(rng, rt60):
    """A room impulse response: direct path, sparse early reflections, then an exponentially
    decaying diffuse tail whose decay is faster at high frequencies (air and wall absorption)."""
    n = int(np.clip(rt60 + 0.1, 0.5, 1.0) * SR)
    h = np.zeros(n)
    direct = int(rng.uniform(0.001, 0.008) * SR)             # source 0.3 - 2.7 m away
    h[direct] = 1.0
    for delay in rng.uniform(0.002, 0.05, int(rng.integers(6, 16))):   # first-order images and a few more
        k = direct + int(delay * SR)
        h[k] += rng.uniform(0.3, 0.9) * rng.choice([1, 1, 1, -1]) * direct / k    # 1 / path length
    start = direct + int(rng.uniform(0.01, 0.03) * SR)       # mixing time: the tail takes over
    m = n - start
    tt = np.arange(m) / SR
    freqs = np.fft.rfftfreq(m, 1.0 / SR)
    spec = np.fft.rfft(rng.standard_normal(m))
    tail = np.zeros(m)
    edges = (0, 500, 2000, 4000, SR / 2 + 1)
    for lo, hi, scale in zip(edges[:-1], edges[1:], (1.2, 1.0, 0.8, 0.55)):
        band = np.fft.irfft(np.where((freqs >= lo) & (freqs < hi), spec, 0), m)
        tail += band * np.exp(-6.9 * tt / (rt60 * scale))
    tail *= np.minimum(1, tt / 0.01)                          # smooth build-up of the diffuse field
    drr = rng.uniform(-2, 8) - 8 * (rt60 - 0.5)               # livelier rooms: more reverberant energy
    early = np.sum(h ** 2) - 1
    tail *= np.sqrt(max(10 ** (-drr / 10) - early, 0.05) / (np.sum(tail ** 2) + 1e-12))
    h[start:] += tail
    return h / np.abs(h).max() * 0.99


def noise_plan(args):
    """(kind, index, relative path) of every file; kind 'speech' files of speaker i // 3."""
    plan = []
    for i in range(args.num_noise):
        kinds = STATIONARY_NOISES + TRANSIENT_NOISES
        plan.append(("noise", i, "musan/noise/%s/noise-%04d.wav" % (kinds[i % len(kinds)], i)))
    for i in range(args.num_babble):
        plan.append(("speech", i, "musan/speech/ns%04d/%05d.wav" % (1 + i // BABBLE_PER_SPEAKER,
                                                                    1 + i % BABBLE_PER_SPEAKER)))
    for i in range(args.num_music):
        plan.append(("music", i, "musan/music/music-%04d.wav" % i))
    for i in range(args.num_rirs):
        plan.append(("rir", i, "rirs/room%03d/rir-%d.wav" % (i // 3, i % 3)))
    return plan


def synth_augmentation_file(args, kind, i):
    """int16 samples of one file; every draw is seeded by (seed, kind, index) alone."""
    n = int(CHUNK_SECONDS * SR)
    if kind == "speech":                                     # role 2: "noise speakers", never in the lists
        s = i // BABBLE_PER_SPEAKER
        spk = draw_speaker(np.random.default_rng([args.seed, 2, s, 2]))
        chan = draw_channel(np.random.default_rng([args.seed, 2, s, 3]), args.channel_strength,
                            args.noise_snr_range, args.reverb_prob)
        return synth_utterance(np.random.default_rng([args.seed, 2, s, 4, i]), spk, chan, CHUNK_SECONDS)
    if kind == "rir":
        rt60 = np.random.default_rng([args.seed, 13, i // 3]).uniform(0.2, 0.8)    # one per room
        x = synth_rir(np.random.default_rng([args.seed, 14, i]), rt60)
    else:
        rng = np.random.default_rng([args.seed, 11 if kind == "noise" else 12, i])
        if kind == "noise":
            kinds = STATIONARY_NOISES + TRANSIENT_NOISES
            x = synth_noise(rng, kinds[i % len(kinds)], n)
        else:
            x = synth_music(rng, n)
        x = loudness(x, rng)
    return np.round(x * 32767).astype(np.int16)


def write_wav_atomic(path, samples):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with wave.open(tmp, "wb") as f:
        f.setparams((1, 2, SR, len(samples), "NONE", "not compressed"))
        f.writeframes(samples.astype("<i2").tobytes())
    os.replace(tmp, path)


def write_augmentation_file(job):
    args, root, (kind, i, rel) = job
    path = os.path.join(root, rel)
    if not os.path.exists(path):                             # written atomically: present means complete
        write_wav_atomic(path, synth_augmentation_file(args, kind, i))
    return kind


def generate_noise_sets(args):
    """Write DIR/musan/{noise,speech,music} and DIR/rirs (skipped when already complete)."""
    keys = ("seed", "num_noise", "num_babble", "num_music", "num_rirs", "channel_strength",
            "noise_snr_range", "reverb_prob")
    config = dict({k: getattr(args, k) for k in keys}, version=NOISE_VERSION)
    root = args.save_path
    cfg_path = os.path.join(root, NOISE_CONFIG)
    folders = [os.path.join(root, d) for d in ("musan", "rirs")]
    old = json.loads(open(cfg_path).read() or "{}") if os.path.exists(cfg_path) else None
    done = old is not None and old.pop("complete", False)
    if old == config and done:
        log.info("%s already holds these augmentation sets; not generating them again", root)
    else:
        if old is None and any(map(os.path.exists, folders)) or old not in (None, config):
            differ = sorted(k for k in config if old is not None and old.get(k) != config[k])
            differ = differ or ["not made by --synthetic"]
            if not args.overwrite:
                sys.exit("error: %s already holds different musan/ or rirs/ sets (%s); pass --overwrite "
                         "to replace them" % (root, ", ".join(differ)))
            log.warning("replacing the augmentation sets in %s", root)
        if old is not None and old != config:                # only ever delete what we synthesised
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(root, exist_ok=True)
        write_atomic(cfg_path, [json.dumps(dict(config, complete=False), sort_keys=True)])
        plan = noise_plan(args)
        jobs = [(args, root, p) for p in plan]
        with tqdm(total=len(jobs), desc="noise, babble, music, RIRs", unit="file") as bar:
            if args.workers > 1:
                with multiprocessing.Pool(args.workers) as pool:
                    for _ in pool.imap_unordered(write_augmentation_file, jobs, chunksize=4):
                        bar.update()
            else:
                for job in jobs:
                    write_augmentation_file(job)
                    bar.update()
        write_atomic(cfg_path, [json.dumps(dict(config, complete=True), sort_keys=True)])
    print("Augmentation sets in %s: %d noise, %d babble speech (%d speakers of their own), %d music "
          "chunks of %g s, %d room impulse responses; train with:\n  --augment --musan_path %s --rir_path %s"
          % (root, args.num_noise, args.num_babble, -(-args.num_babble // BABBLE_PER_SPEAKER), args.num_music,
             CHUNK_SECONDS, args.num_rirs, os.path.join(root, "musan"), os.path.join(root, "rirs")))


# ----------------------------------------------------------------------------- real data
# voxceleb_trainer's steps, each resumable: finished outputs are never rewritten, and every
# output is written under a temporary name and renamed when complete.
class PrepError(Exception):
    """A preparation step cannot go on; the message names the input and the fix."""


# Published checksums (VoxCeleb's and OpenSLR's lists) of the archives voxceleb_trainer uses;
# a --md5_list or the download list's own MD5 column takes precedence.
KNOWN_MD5 = {
    "vox1_dev_wav_partaa": "e395d020928bc15670b570a21695ed96",
    "vox1_dev_wav_partab": "bbfaaccefab65d82b21903e81a8a8020",
    "vox1_dev_wav_partac": "017d579a2a96a077f40042ec33e51512",
    "vox1_dev_wav_partad": "7bb1e9f70fddc7a678fa998ea8b3ba19",
    "vox2_dev_aac_partaa": "da070494c573e5c0564b1d11c3b20577",
    "vox2_dev_aac_partab": "17fe6dab2b32b48abaf1676429cdd06f",
    "vox2_dev_aac_partac": "1de58e086c5edf63625af1cb6d831528",
    "vox2_dev_aac_partad": "5a043eb03e15c5a918ee6a52aad477f9",
    "vox2_dev_aac_partae": "cea401b624983e2d0b2a87fb5d59aa60",
    "vox2_dev_aac_partaf": "fc886d9ba90ab88e7880ee98effd6ae9",
    "vox2_dev_aac_partag": "d160ecc3f6ee3eed54d55349531cb42e",
    "vox2_dev_aac_partah": "6b84a81b9af72a9d9eecbb3b1f602e65",
    "vox1_test_wav.zip": "185fdc63c3c739954633d50379a3d102",
    "vox2_test_aac.zip": "0d2b3ea430a821c33263b5ea37ede312",
    "vox1_dev_wav.zip": "ae63e55b951748cc486645f532ba230b",
    "vox2_aac.zip": "bbc063c46078a602ca71605645c2a402",
    "vox2_dev_aac.zip": "bbc063c46078a602ca71605645c2a402",
    "rirs_noises.zip": "e6f48e257286e05de56413b4779d8ffb",
    "musan.tar.gz": "0c472d4fc0c5141eca47ad1ffeb2a7df",
}
# voxceleb_trainer's lists/files.txt: split parts -> archive (its MD5 comes from KNOWN_MD5)
CONCATENATE = (("vox1_dev_wav_parta*", "vox1_dev_wav.zip"), ("vox2_dev_aac_parta*", "vox2_aac.zip"))
# archive -> folder under --save_path (voxceleb_trainer's voxceleb1 = VoxCeleb1 dev + test, the
# trial lists' test_path; VoxCeleb2 dev alone in voxceleb2, so a list made from it is the usual one)
VOX_ARCHIVES = (("vox1_dev_wav.zip", "voxceleb1"), ("vox1_test_wav.zip", "voxceleb1"),
                ("vox2_aac.zip", "voxceleb2"), ("vox2_dev_aac.zip", "voxceleb2"),
                ("vox2_test_aac.zip", "voxceleb2_test"))
RIR_ROOMS = ("RIRS_NOISES/simulated_rirs/mediumroom/", "RIRS_NOISES/simulated_rirs/smallroom/")
MD5_RE = re.compile(r"^[0-9a-fA-F]{32}$")
CHUNK = 1 << 20
SHOW = 5                          # names shown per problem kind


def byte_bar(total, desc, initial=0):
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)


def md5_of(path, desc=None, cache=True):
    """MD5 of a file, cached beside it (.NAME.md5: digest, size, mtime) so reruns skip the read."""
    stat = os.stat(path)
    sidecar = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".md5")
    try:
        digest, size, mtime = open(sidecar).read().split()
        if int(size) == stat.st_size and int(mtime) == stat.st_mtime_ns:
            return digest
    except (OSError, ValueError):
        pass
    h = hashlib.md5()
    with open(path, "rb") as f, byte_bar(stat.st_size, desc or "md5 " + os.path.basename(path)) as bar:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
            bar.update(len(block))
    if cache:
        remember_md5(path, h.hexdigest())
    return h.hexdigest()


def remember_md5(path, digest):
    stat = os.stat(path)
    cache = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".md5")
    try:
        write_atomic(cache, ["%s %d %d" % (digest, stat.st_size, stat.st_mtime_ns)])
    except OSError:
        pass


def read_checksum_list(path):
    """[(URL or file name, MD5 or None)] from 'URL MD5', 'MD5 filename' (md5sum) or 'URL' lines."""
    entries = []
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as err:
        raise PrepError("cannot read the list %s (%s)" % (path, err.strerror))
    for number, line in enumerate(lines, 1):
        cols = line.split()
        if not cols or cols[0].startswith("#"):
            continue
        sums = [c for c in cols if MD5_RE.match(c)]
        names = [c.lstrip("*") for c in cols if not MD5_RE.match(c)]   # md5sum marks binary mode with *
        if len(names) != 1 or len(sums) > 1:
            raise PrepError("%s:%d: expected 'URL MD5', 'MD5 filename' or 'URL', got %r" % (path, number, line))
        entries.append((names[0], sums[0].lower() if sums else None))
    return entries


def url_name(url):
    name = urllib.parse.unquote(os.path.basename(urllib.parse.urlsplit(url).path))
    if not name or name in (".", ".."):
        raise PrepError("cannot tell a file name from the URL %s; give a URL that ends in one" % url)
    return name


def checksums(args):
    """File name -> expected MD5: the published ones, then --md5_list, then the download list."""
    known = dict(KNOWN_MD5)
    for source in filter(None, (args.md5_list, args.download_list)):
        for name, digest in read_checksum_list(source):
            if digest:
                known[url_name(name) if "/" in name else name] = digest
    return known


def verify(path, expected, what):
    """Raise PrepError unless the MD5 of `path` is `expected` (None: nothing to check)."""
    if expected is None:
        return
    got = md5_of(path)
    if got != expected:
        raise PrepError("%s: MD5 %s, expected %s (%s)" % (path, got, expected, what))


# ---- download
def download(args):
    """Fetch every file of --download_list into --save_path, resuming .part files with HTTP Range."""
    if not args.download_list:
        raise PrepError("--download needs --download_list FILE: lines of 'URL MD5' (VoxCeleb's list with "
                        "the links you were sent, or voxceleb_trainer's lists/augment.txt)")
    known = checksums(args)
    entries = read_checksum_list(args.download_list)
    os.makedirs(args.save_path, exist_ok=True)
    for name, digest in entries:
        url = name
        if "://" not in url:
            if not args.base_url:
                raise PrepError("%s: '%s' is a file name, not a URL; pass --base_url (where the files are)"
                                % (args.download_list, name))
            url = args.base_url.rstrip("/") + "/" + urllib.parse.quote(name)
        fetch(url, os.path.join(args.save_path, url_name(url)), digest or known.get(url_name(url)), args)


def fetch(url, dest, expected, args):
    name = os.path.basename(dest)
    if os.path.exists(dest):
        verify(dest, expected, "a finished download is never overwritten: delete it and run again")
        log.info("%s is already downloaded%s", name, " and verified" if expected else "")
        return
    part = dest + ".part"
    handlers = []
    if args.user:                    # answered only to this URL's own challenge, as wget does
        passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        passwords.add_password(None, url, args.user, args.password or "")
        handlers.append(urllib.request.HTTPBasicAuthHandler(passwords))
    opener = urllib.request.build_opener(*handlers)
    for attempt in range(1, args.retries + 1):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        headers = {"User-Agent": "speakernet-data_prep", **({"Range": "bytes=%d-" % have} if have else {})}
        try:
            with opener.open(urllib.request.Request(url, headers=headers), timeout=args.timeout) as response:
                if have and response.status != 206:          # the server ignored Range: start again
                    log.warning("%s: the server does not resume downloads; starting %s again", url, name)
                    have = 0
                size = response.headers.get("Content-Length")
                total = have + int(size) if size is not None else None
                h = hashlib.md5()
                if have:                                     # hash what is already there, then go on
                    with open(part, "rb") as f:
                        for block in iter(lambda: f.read(CHUNK), b""):
                            h.update(block)
                with open(part, "ab" if have else "wb") as out, byte_bar(total, name, have) as bar:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        out.write(block)
                        h.update(block)
                        bar.update(len(block))
                if total is not None and os.path.getsize(part) < total:
                    raise ConnectionError("connection closed early")
                digest = h.hexdigest()
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:                     # nothing left to fetch: the part is complete
                digest = md5_of(part, cache=False)
            elif err.code in (401, 403):
                raise PrepError("%s: HTTP %d %s; check --user/--password (or the key in the URL)"
                                % (url, err.code, err.reason))
            else:
                raise PrepError("%s: HTTP %d %s; check the URL in %s" % (url, err.code, err.reason,
                                                                         args.download_list))
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", None) or err
            if attempt == args.retries:
                raise PrepError("%s: download interrupted (%s); run the same command again to resume %s"
                                % (url, reason, part))
            log.warning("%s: %s; resuming (attempt %d of %d)", name, reason, attempt + 1, args.retries)
            time.sleep(min(30, 2 ** (attempt - 1)))
            continue
        if expected and digest != expected:
            os.replace(part, dest + ".bad")
            raise PrepError("%s: MD5 %s, expected %s; kept as %s.bad for inspection, run again to download "
                            "it afresh (if it fails again the list or the server's file is wrong)"
                            % (name, digest, expected, dest))
        os.replace(part, dest)
        remember_md5(dest, digest)
        print("Downloaded %s%s" % (name, " (MD5 verified)" if expected else " (no MD5 known to verify)"))
        return


# ---- concatenate
def concatenate(args):
    """Join VoxCeleb's split archives: vox1_dev_wav_parta* -> vox1_dev_wav.zip and so on."""
    known = checksums(args)
    if args.concat_list:                                     # voxceleb_trainer's lists/files.txt
        jobs = []
        for number, line in enumerate(open(args.concat_list, encoding="utf-8"), 1):
            cols = line.split()
            if cols and not cols[0].startswith("#"):
                if len(cols) not in (2, 3) or len(cols) == 3 and not MD5_RE.match(cols[2]):
                    raise PrepError("%s:%d: expected 'PARTS_PATTERN OUTPUT [MD5]', got %r"
                                    % (args.concat_list, number, line.strip()))
                jobs.append((cols[0], cols[1], cols[2].lower() if len(cols) == 3 else known.get(cols[1])))
    else:
        jobs = [(pattern, out, known.get(out)) for pattern, out in CONCATENATE]
    found = 0
    for pattern, out_name, expected in jobs:
        out = os.path.join(args.save_path, out_name)
        parts = sorted(p for p in glob.glob(os.path.join(args.save_path, pattern))
                       if not p.endswith((".part", ".bad", ".tmp")))
        if os.path.exists(out):
            verify(out, expected, "a finished archive is never overwritten: delete it and run again")
            log.info("%s is already complete", out_name)
            found += 1
            continue
        if not parts:
            log.info("no %s in %s: skipping %s", pattern, args.save_path, out_name)
            continue
        found += 1
        prefix = pattern.rstrip("*")
        expected_parts = sorted(k for k in known if k.startswith(prefix) and "*" in pattern)
        missing = [k for k in expected_parts if not os.path.exists(os.path.join(args.save_path, k))]
        if missing:
            raise PrepError("%s: missing %s in %s; download them first (--download)"
                            % (out_name, ", ".join(missing), args.save_path))
        tmp, h = out + ".tmp", hashlib.md5()
        with open(tmp, "wb") as dst, byte_bar(sum(map(os.path.getsize, parts)), out_name) as bar:
            for part in parts:
                with open(part, "rb") as src:
                    for block in iter(lambda: src.read(CHUNK), b""):
                        dst.write(block)
                        h.update(block)
                        bar.update(len(block))
        if expected and h.hexdigest() != expected:
            os.remove(tmp)
            bad = [os.path.basename(p) for p in parts
                   if known.get(os.path.basename(p)) and md5_of(p) != known[os.path.basename(p)]]
            raise PrepError("%s: MD5 of the joined parts is %s, expected %s; %s" % (
                out_name, h.hexdigest(), expected,
                "bad parts: %s (delete and download them again)" % ", ".join(bad) if bad else
                "check that all of %s are complete (%d found)" % (pattern, len(parts))))
        os.replace(tmp, out)
        remember_md5(out, h.hexdigest())
        print("Joined %d parts into %s%s (the parts can be deleted)"
              % (len(parts), out_name, " (MD5 verified)" if expected else ""))
    if not found:
        raise PrepError("no %s in %s; download them first (--download)"
                        % (" or ".join(p for p, _, _ in jobs), args.save_path))


# ---- extract
def safe_member_path(dest, name, archive):
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts:
        raise PrepError("%s: refusing the member %r, which points outside the output folder" % (archive, name))
    return os.path.join(dest, *parts)


def strip_to_speaker(name):
    """'wav/id10001/x/00001.wav', 'dev/aac/id00012/...' -> 'id10001/x/00001.wav' (VoxCeleb zips)."""
    parts = name.split("/")
    for i, part in enumerate(parts):
        if re.match(r"^id\d+$", part):
            return "/".join(parts[i:])
    return name


def extract_archive(archive, dest, select=lambda name: name, desc=None):
    """Extract the members `select` maps to a path (None = skip) into `dest`; members already
    there with their full size are skipped, each file is written under .tmp and renamed, and a
    marker records a finished archive so a rerun costs nothing."""
    stat = os.stat(archive)
    marker = os.path.join(dest, ".extracted-" + os.path.basename(archive))
    stamp = "%d %d" % (stat.st_size, stat.st_mtime_ns)
    if os.path.exists(marker) and open(marker).read().strip() == stamp:
        log.info("%s is already extracted into %s", os.path.basename(archive), dest)
        return 0
    os.makedirs(dest, exist_ok=True)
    written = 0
    desc = desc or os.path.basename(archive)

    def put(name, size, open_member, count=True):
        nonlocal written
        target = select(name)
        if target is None:
            return
        path = safe_member_path(dest, target, archive)
        if os.path.exists(path) and os.path.getsize(path) == size:
            bar.update(size if count else 0)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open_member() as src, open(path + ".tmp", "wb") as dst:
            for block in iter(lambda: src.read(CHUNK), b""):
                dst.write(block)
                bar.update(len(block) if count else 0)
        os.replace(path + ".tmp", path)
        written += 1

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = [m for m in zf.infolist() if not m.is_dir() and select(m.filename) is not None]
                with byte_bar(sum(m.file_size for m in members), desc) as bar:
                    for m in members:
                        put(m.filename, m.file_size, lambda m=m: zf.open(m))
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf, byte_bar(stat.st_size, desc) as bar:
                raw = getattr(tf.fileobj, "fileobj", tf.fileobj)   # under gzip: the compressed file
                for m in tf:                                 # streamed: no second pass over a .tar.gz
                    if m.isfile():
                        put(m.name, m.size, lambda m=m: tf.extractfile(m), count=False)
                    try:
                        bar.update(max(0, min(raw.tell(), stat.st_size) - bar.n))   # compressed bytes read
                    except (AttributeError, OSError):
                        pass
        else:
            raise PrepError("%s is neither a zip nor a tar archive; download it again" % archive)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as err:
        raise PrepError("%s is damaged (%s); check its MD5 and download it again" % (archive, err))
    write_atomic(marker, [stamp])
    return written


def extract(args):
    """Unzip the VoxCeleb archives in --save_path into voxceleb1/, voxceleb2/, voxceleb2_test/."""
    todo = [(a, d) for a, d in VOX_ARCHIVES if os.path.exists(os.path.join(args.save_path, a))]
    if not todo:
        raise PrepError("no %s in %s; run --download and --concatenate first"
                        % (", ".join(a for a, _ in VOX_ARCHIVES), args.save_path))
    for archive, folder in todo:
        n = extract_archive(os.path.join(args.save_path, archive), os.path.join(args.save_path, folder),
                            select=lambda name: strip_to_speaker(name))
        print("Extracted %s into %s (%d files written)" % (archive, os.path.join(args.save_path, folder), n))


# ---- convert
def wav_complete(path):
    """A readable 16 kHz mono WAV whose RIFF size matches the file (an interrupted write does not)."""
    if _read_header(path)[1] is not None:
        return False
    with open(path, "rb") as f:
        head = f.read(8)
    return head[:4] != b"RIFF" or struct.unpack("<I", head[4:8])[0] + 8 == os.path.getsize(path)


def convert_one(job):
    ffmpeg, src, dst = job
    tmp = dst[:-4] + ".tmp.wav"
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", src,
           "-ac", "1", "-vn", "-acodec", "pcm_s16le", "-ar", str(SR), "-f", "wav", tmp]
    try:
        res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return src, "ffmpeg took over 10 minutes"
    if res.returncode != 0 or not os.path.exists(tmp) or not wav_complete(tmp):
        if os.path.exists(tmp):
            os.remove(tmp)
        lines = res.stderr.strip().splitlines()
        return src, (lines[-1] if lines else "ffmpeg exited with %d" % res.returncode)
    os.replace(tmp, dst)
    return src, None


def convert(args):
    """VoxCeleb2 .m4a -> 16 kHz mono 16-bit .wav beside each file, several ffmpeg processes at once."""
    roots = [os.path.join(args.save_path, d) for d in ("voxceleb2", "voxceleb2_test")]
    files = sorted(f for r in roots for f in glob.glob(os.path.join(r, "**", "*.m4a"), recursive=True))
    if not files:
        raise PrepError("no .m4a files under %s; run --extract first" % " or ".join(roots))
    jobs = [(f, f[:-4] + ".wav") for f in files]
    todo = [(s, d) for s, d in tqdm(jobs, desc="checking converted files", unit="file", leave=False)
            if not (os.path.exists(d) and wav_complete(d))]
    log.info("%d of %d .m4a files are already converted", len(jobs) - len(todo), len(jobs))
    if todo:
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            raise PrepError("ffmpeg not found on PATH, needed to convert %d .m4a files: install ffmpeg "
                            "(apt install ffmpeg)" % len(todo))
        failed = []
        # The work is in the ffmpeg processes; the pool's threads only start them and wait.
        with concurrent.futures.ThreadPoolExecutor(max(1, args.workers)) as pool, \
                tqdm(total=len(todo), desc="converting m4a to wav", unit="file") as bar:
            for src, problem in pool.map(convert_one, [(ffmpeg, s, d) for s, d in todo]):
                if problem:
                    failed.append((src, problem))
                bar.update()
        if failed:
            raise PrepError("ffmpeg failed on %d of %d files, e.g. %s; check those files (download again "
                            "if damaged) and rerun, finished files are kept" % (
                                len(failed), len(todo), "; ".join("%s: %s" % f for f in failed[:SHOW])))
    print("Converted %d files (%d were already done) under %s" % (len(todo), len(jobs) - len(todo),
                                                                   " and ".join(roots)))


# ---- augmentation data
def split_recording(job):
    """One MUSAN recording -> 5 s chunks every 3 s in musan_split (voxceleb_trainer's split)."""
    src, out_dir = job
    if os.path.isdir(out_dir):
        return 0
    audio, sr = soundfile.read(src, dtype="int16", always_2d=True)
    audio = audio[:, 0]
    if sr != SR:
        raise PrepError("%s: sample rate %d Hz, expected %d; MUSAN is 16 kHz, is the archive right?"
                        % (src, sr, SR))
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    length, stride = 5 * SR, 3 * SR
    for start in range(0, len(audio) - length, stride):     # as voxceleb_trainer: files <= 5 s give none
        with wave.open(os.path.join(tmp, "%05d.wav" % (start // SR)), "wb") as f:
            f.setparams((1, 2, SR, length, "NONE", "not compressed"))
            f.writeframes(audio[start:start + length].astype("<i2").tobytes())
    os.replace(tmp, out_dir)
    return 1


def prepare_augment(args):
    """MUSAN -> musan_split/{music,speech,noise} in 5 s chunks; RIRS_NOISES' simulated rooms kept in place."""
    root = args.save_path
    musan_tar = os.path.join(root, "musan.tar.gz")
    if os.path.exists(musan_tar):
        verify(musan_tar, checksums(args).get("musan.tar.gz"), "download it again")
        extract_archive(musan_tar, root)
    sources = sorted(glob.glob(os.path.join(root, "musan", "*", "*", "*.wav")))
    if not sources:
        raise PrepError("no musan/*/*/*.wav in %s and no musan.tar.gz to extract; download it first "
                        "(--download --download_list with the MUSAN URL)" % root)
    jobs = [(s, os.path.splitext(s.replace(os.path.join(root, "musan", ""),
                                           os.path.join(root, "musan_split", ""), 1))[0]) for s in sources]
    with concurrent.futures.ThreadPoolExecutor(max(1, args.workers)) as pool:
        done = sum(tqdm(pool.map(split_recording, jobs), total=len(jobs), desc="splitting MUSAN", unit="file"))
    rir_zip = os.path.join(root, "rirs_noises.zip")
    rir_dir = os.path.join(root, "RIRS_NOISES", "simulated_rirs")
    if os.path.exists(rir_zip):
        verify(rir_zip, checksums(args).get("rirs_noises.zip"), "download it again")
        extract_archive(rir_zip, root, select=lambda n: n if n.startswith(RIR_ROOMS) else None)
    if not glob.glob(os.path.join(rir_dir, "**", "*.wav"), recursive=True):
        raise PrepError("no RIRs in %s and no rirs_noises.zip in %s; download it first" % (rir_dir, root))
    print("MUSAN split (%d new recordings, %d in all); train with:\n  --augment --musan_path %s --rir_path %s"
          % (done, len(jobs), os.path.join(root, "musan_split"), rir_dir))


# ---- lists
def make_list(args):
    """train_list lines 'speaker speaker/video/utt.wav' for every speaker/video/utt.wav under DIR."""
    root = args.make_list
    if not os.path.isdir(root):
        raise PrepError("--make_list %s: no such folder" % root)
    lines, stray = [], 0
    speakers = sorted(e.name for e in os.scandir(root) if e.is_dir())
    for spk in tqdm(speakers, desc="listing", unit="speaker"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, spk)):
            dirnames.sort()
            depth = os.path.relpath(dirpath, root).count(os.sep)
            for name in sorted(filenames):
                if name.lower().endswith(".wav"):
                    if depth == 1:
                        lines.append("%s %s/%s" % (spk, os.path.relpath(dirpath, root).replace(os.sep, "/"), name))
                    else:
                        stray += 1
    if stray:
        log.warning("%d .wav files under %s are not at speaker/video/utt.wav and were left out", stray, root)
    if not lines:
        raise PrepError("no speaker/video/utt.wav files under %s; run --extract (and --convert for "
                        "VoxCeleb2) first" % root)
    text = "".join(line + "\n" for line in lines)
    if os.path.exists(args.list_out):
        if open(args.list_out, encoding="utf-8").read() == text:
            print("%s is already up to date (%d utterances)" % (args.list_out, len(lines)))
            return
        if not args.overwrite:
            raise PrepError("%s already exists with other contents; pass --overwrite to replace it"
                            % args.list_out)
    os.makedirs(os.path.dirname(os.path.abspath(args.list_out)), exist_ok=True)
    write_atomic(args.list_out, lines)
    print("Wrote %s: %d utterances of %d speakers (train_path %s)"
          % (args.list_out, len(lines), len({line.split()[0] for line in lines}), root))


# ---- check
PROBLEMS = ("malformed line", "missing", "unreadable", "empty", "wrong sample rate", "multi-channel", "other")


def classify(problem):
    for key, kind in (("unreadable", "unreadable"), ("empty", "empty"), ("sample rate", "wrong sample rate"),
                      ("channels", "multi-channel")):
        if key in problem:
            return kind
    return "other"


def list_entries(path, fmt):
    """[(line, name)] of the audio files a train ('spk path') or trial ('label a b', 'a b') list names."""
    entries, malformed = [], []
    with open(path, encoding="utf-8") as f:
        rows = [(n, line.split()) for n, line in enumerate(f, 1) if line.strip()]
    if fmt == "auto":
        first = rows[0][1] if rows else []
        trial = len(first) == 3 or len(first) == 2 and first[0].lower().endswith((".wav", ".flac", ".m4a"))
        fmt = "trial" if trial else "train"
    for number, cols in rows:
        if fmt == "train" and len(cols) == 2:
            entries.append((number, cols[1]))
        elif fmt == "trial" and (len(cols) == 3 and cols[0] in ("0", "1") or len(cols) == 2):
            entries += [(number, c) for c in cols[-2:]]
        else:
            malformed.append((number, " ".join(cols)))
    return fmt, entries, malformed


def check(args):
    """Report missing, unreadable, empty, wrong-rate and multi-channel files of a dataset (or list)."""
    root = args.check
    if not os.path.isdir(root):
        raise PrepError("--check %s: no such folder" % root)
    problems = {k: [] for k in PROBLEMS}
    if args.list:
        fmt, entries, malformed = list_entries(args.list, args.list_format)
        problems["malformed line"] = ["%s:%d: %s" % (args.list, n, text) for n, text in malformed]
        seen, todo = set(), []
        for number, name in entries:
            if name not in seen:
                seen.add(name)
                todo.append(("%s (line %d)" % (name, number), os.path.join(root, name)))
        what = "%s (%s list)" % (args.list, fmt)
    else:
        todo = [(os.path.relpath(p, root), p) for p in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True))
                if p.lower().endswith((".wav", ".flac"))]
        what = root
    lengths = []

    def header(item):
        label, path = item
        if not os.path.exists(path):
            return label, 0, "missing"
        frames, problem = _read_header(path)
        return label, frames, problem

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for label, frames, problem in tqdm(pool.map(header, todo), total=len(todo), desc="checking", unit="file"):
            if problem:
                problems["missing" if problem == "missing" else classify(problem)].append(
                    label if problem == "missing" else "%s: %s" % (label, problem))
            else:
                lengths.append(frames)
    bad = sum(len(v) for v in problems.values())
    hours = sum(lengths) / SR / 3600
    print("Checked %d files of %s under %s: %d usable (%.1f h), %d problems" % (len(todo), what, root,
                                                                             len(lengths), hours, bad))
    for kind in PROBLEMS:
        if problems[kind]:
            print("  %d %s, e.g.:" % (len(problems[kind]), kind))
            for item in problems[kind][:SHOW]:
                print("    " + item)
    if bad:
        raise PrepError("%d problems in %s (see above); fix or remove those files, or regenerate the list "
                        "with --make_list" % (bad, what))


# ----------------------------------------------------------------------------- baseline
def mel_filterbank(n_mels=40, n_fft=512, sr=SR):
    """Triangular filters equally spaced on the HTK mel scale from 0 Hz to Nyquist."""
    mel = lambda f: 2595 * np.log10(1 + f / 700.0)
    edges = 700 * (10 ** (np.linspace(0, mel(sr / 2), n_mels + 2) / 2595) - 1)
    f = np.fft.rfftfreq(n_fft, 1.0 / sr)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.maximum(0, np.minimum((f - lo) / (mid - lo), (hi - f) / (hi - mid)))


def mean_log_mel(path, fbank=None):
    """Utterance mean of 40 log-mel energies (25 ms Hamming window, 10 ms hop, 512-point FFT)."""
    x, sr = soundfile.read(path, dtype="float32")
    x = x.mean(1) if x.ndim > 1 else x
    fbank = mel_filterbank(sr=sr) if fbank is None else fbank
    win, hop = int(0.025 * sr), int(0.010 * sr)
    x = np.pad(x, (0, max(0, win - len(x))))              # at least one frame
    frames = sliding_window_view(x, win)[::hop] * np.hamming(win).astype(F32)
    spec = scipy.fft.rfft(frames, 512, axis=1)
    return np.log((spec.real ** 2 + spec.imag ** 2) @ fbank.T.astype(F32) + 1e-6).mean(0, dtype=np.float64)


def baseline_eer(test_list, test_path):
    """EER (%) of cosine scoring between utterance-mean log-mel vectors over a trial list."""
    from tuneThreshold import tuneThresholdfromScore
    trials = [t for t in (line.split() for line in open(test_list)) if len(t) == 3]   # labelled only
    fbank, feats = mel_filterbank(), {}
    for f in tqdm(sorted({f for t in trials for f in t[1:]}), desc="baseline", unit="file", leave=False):
        v = mean_log_mel(os.path.join(test_path, f), fbank)
        feats[f] = v / np.linalg.norm(v)
    scores = [float(feats[a] @ feats[b]) for _, a, b in trials]
    return float(tuneThresholdfromScore(scores, [int(t[0]) for t in trials], [1, 0.1])[1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=type(
        "Fmt", (argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter), {}))
    p.add_argument("--synthetic", action="store_true", help="write the synthetic demo corpus and noise sets")
    p.add_argument("--baseline", action="store_true", help="only report the mean-log-mel baseline EER")
    p.add_argument("--save_path", help="output folder of --synthetic; data folder of the real-data steps "
                                       "(default there: data)")
    p.add_argument("--test_list", help="trial list for --baseline")
    p.add_argument("--test_path", help="folder the trial list's paths are relative to")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different corpus or noise set in --save_path, or a different --list_out")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes (synthesis, ffmpeg, MUSAN split); the output does not depend on it")
    g = p.add_argument_group("synthetic corpus")
    g.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    g.add_argument("--num_train_speakers", type=int, default=200, help="speakers of train_list.txt")
    g.add_argument("--num_test_speakers", type=int, default=40, help="other speakers, for test_list.txt")
    g.add_argument("--utts_per_speaker", type=int, default=24, help="per training speaker")
    g.add_argument("--test_utts_per_speaker", type=int, default=12, help="per test speaker")
    g.add_argument("--min_dur", type=float, default=2.0, help="seconds")
    g.add_argument("--max_dur", type=float, default=6.0, help="seconds")
    g.add_argument("--num_trials", type=int, default=4000, help="at most; half of them targets")
    g.add_argument("--channel_strength", type=float, default=1.0,
                   help="scales the sessions' EQ, band limits and noise colour (0 = none)")
    g.add_argument("--noise_snr_range", type=float, nargs=2, default=[15.0, 35.0], metavar=("LO", "HI"),
                   help="session background-noise SNR range, dB")
    g.add_argument("--reverb_prob", type=float, default=0.3, help="share of sessions in a reverberant room")
    g.add_argument("--num_noise", type=int, default=40, help="synthetic MUSAN-style noise chunks (5 s)")
    g.add_argument("--num_babble", type=int, default=60,
                   help="speech chunks for babble, from speakers in neither list (%d each)" % BABBLE_PER_SPEAKER)
    g.add_argument("--num_music", type=int, default=40, help="music chunks (5 s)")
    g.add_argument("--num_rirs", type=int, default=60, help="simulated room impulse responses (3 per room)")
    r = p.add_argument_group("real data: voxceleb_trainer's steps (several run in this order); "
                             "each resumes where it stopped and never rewrites a finished file")
    r.add_argument("--download", action="store_true", help="fetch --download_list into --save_path")
    r.add_argument("--download_list", help="lines 'URL MD5', 'MD5 URL' or 'URL'; bare file names are "
                                           "joined to --base_url")
    r.add_argument("--base_url", help="where the file names of --download_list are")
    r.add_argument("--user", help="HTTP user name (VoxCeleb's download account)")
    r.add_argument("--password", help="HTTP password")
    r.add_argument("--md5_list", help="more checksums: 'MD5 filename' (md5sum output) or 'URL MD5' lines")
    r.add_argument("--retries", type=int, default=3, help="download attempts, each resuming the last")
    r.add_argument("--timeout", type=float, default=60, help="seconds without data before a retry")
    r.add_argument("--concatenate", action="store_true",
                   help="join vox1_dev_wav_parta* -> vox1_dev_wav.zip, vox2_dev_aac_parta* -> vox2_aac.zip")
    r.add_argument("--concat_list", help="'PATTERN OUTPUT [MD5]' lines instead (voxceleb_trainer's lists/files.txt)")
    r.add_argument("--extract", action="store_true",
                   help="unzip VoxCeleb into save_path/voxceleb1 (dev + test), voxceleb2, voxceleb2_test")
    r.add_argument("--convert", action="store_true", help="VoxCeleb2 m4a -> 16 kHz mono wav (ffmpeg)")
    r.add_argument("--augment", action="store_true",
                   help="musan.tar.gz -> musan_split (5 s chunks), rirs_noises.zip -> RIRS_NOISES/simulated_rirs")
    c = p.add_argument_group("lists and checks")
    c.add_argument("--make_list", metavar="DIR", help="write a train list of DIR/speaker/video/utt.wav")
    c.add_argument("--list_out", metavar="FILE", help="where --make_list writes")
    c.add_argument("--check", metavar="DIR", help="report missing or unusable audio under DIR (or in --list)")
    c.add_argument("--list", metavar="FILE", help="train or trial list for --check, paths relative to DIR")
    c.add_argument("--list_format", choices=("auto", "train", "trial"), default="auto", help="of --list")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    steps = [s for s in ("download", "concatenate", "extract", "convert", "augment") if getattr(args, s)]
    modes = [m for m, on in (("--synthetic", args.synthetic), ("--baseline", args.baseline),
                             ("the real-data steps", steps), ("--make_list", args.make_list),
                             ("--check", args.check)) if on]
    if len(modes) != 1:
        p.error("give one of --synthetic, --baseline, --make_list, --check or real-data steps (--download, "
                "--concatenate, --extract, --convert, --augment); got %s" % (", ".join(modes) or "none"))
    try:
        if steps:
            args.save_path = args.save_path or "data"
            for step in steps:
                {"download": download, "concatenate": concatenate, "extract": extract, "convert": convert,
                 "augment": prepare_augment}[step](args)
            return
        if args.make_list:
            if not args.list_out:
                p.error("--make_list needs --list_out FILE")
            return make_list(args)
        if args.check:
            return check(args)
    except PrepError as err:
        sys.exit("error: %s" % err)
    except OSError as err:            # a path that is not there or cannot be written: names it
        sys.exit("error: %s" % err)
    except KeyboardInterrupt:
        sys.exit("interrupted: finished files are kept; run the same command again to resume")
    if args.synthetic:
        if not args.save_path:
            p.error("--synthetic needs --save_path")
        if min(args.num_test_speakers, args.test_utts_per_speaker) < 2 \
                or not 0.5 <= args.min_dur <= args.max_dur:
            p.error("need 2+ test speakers with 2+ utterances each, and 0.5 <= min_dur <= max_dur")
        if min(args.num_noise, args.num_babble, args.num_music, args.num_rirs) < 1:
            p.error("--num_noise, --num_babble, --num_music and --num_rirs need 1 or more each")
        generate_synthetic(args)
        generate_noise_sets(args)
        args.test_list = os.path.join(args.save_path, "test_list.txt")
        args.test_path = os.path.join(args.save_path, "wav")
    elif not (args.test_list and args.test_path):
        p.error("--baseline needs --test_list and --test_path")
    eer = baseline_eer(args.test_list, args.test_path)
    print("Baseline EER (mean log-mel, cosine): %.2f%% on %s" % (eer, args.test_list))


if __name__ == "__main__":
    main()
