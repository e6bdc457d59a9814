#!/usr/bin/env python3
"""Dataset preparation.

  --synthetic  write a small VoxCeleb-style demo corpus made by our own source-filter
               voice synthesizer, then report the mean-log-mel baseline EER on it;
  --baseline   report that baseline EER for any trial list.

Real VoxCeleb / MUSAN / RIR preparation steps are meant to join as further flags.
"""
import argparse
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
import wave

import numpy as np
import scipy.fft
import soundfile
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import uniform_filter1d
from scipy.signal import fftconvolve
from tqdm import tqdm

log = logging.getLogger("data_prep")

SR = 16000
N_FFT, HOP = 512, 256             # synthesis STFT: 32 ms frames, 16 ms control rate
FREQS = np.fft.rfftfreq(N_FFT, 1.0 / SR)
WIN = np.sin(np.pi * np.arange(N_FFT) / N_FFT).astype(np.float32)   # sqrt-Hann: exact overlap-add at hop N/2
F32 = np.float32                  # spectra in single precision: plenty for 16-bit output, twice as fast
SYNTH_VERSION = 1                 # bump when the synthesizer changes, so old corpora are refused
CONFIG_NAME = "synthetic_corpus.json"
LEVEL_DB = (-26, -20)               # utterance loudness range, dBFS RMS
CONTENT_CONC = 4.0
ALPHA_STD = 0.08
SIG_DB = 6.0

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
def draw_speaker(rng):
    """Per-speaker voice traits; the network has to learn these, channel and content aside."""
    female = rng.random() < 0.5
    lo, hi = (160, 270) if female else (85, 155)
    alpha = (1.17 if female else 1.0) * np.exp(rng.normal(0, ALPHA_STD))   # vocal-tract length
    octs = np.log2(np.maximum(FREQS, 20) / 1000)
    colour = sum(rng.normal(0, SIG_DB) * np.exp(-0.5 * ((octs - rng.uniform(0.5, 2.6)) / rng.uniform(0.2, 0.5)) ** 2)
                 for _ in range(2))
    return dict(
        f0=np.exp(rng.uniform(np.log(lo), np.log(hi))),
        f0_range=rng.uniform(0.8, 4.0),           # semitones of pitch accents
        declination=rng.uniform(-3.0, 0.5),       # semitones / s
        alpha=alpha,
        vowel_warp=np.exp(rng.normal(0, 0.06, VOWELS.shape)),   # idiolect of each vowel
        colour=colour,                            # fixed peaks/dips (sinuses, piriform fossae)
        high_formants=alpha * np.array([rng.uniform(3300, 3900), rng.uniform(4400, 5000)]),
        bw_scale=np.exp(rng.uniform(np.log(0.7), np.log(1.5))),
        open_quotient=rng.uniform(0.35, 0.8), skew=rng.uniform(0.55, 0.85),
        tilt=rng.uniform(1.5, 6.5),               # dB / octave above 500 Hz (radiation, vocal effort)
        breath=np.exp(rng.uniform(np.log(0.01), np.log(0.2))),
        jitter=rng.uniform(0.002, 0.02), shimmer=rng.uniform(0.02, 0.15),
        rate=rng.uniform(2.8, 6.0),               # syllables / s
        pause_prob=rng.uniform(0.02, 0.15),
        onset_prob=rng.uniform(0.5, 0.95), coda_prob=rng.uniform(0.1, 0.5),
    )


def phone_tracks(rng, spk, n_frames):
    """Random syllable sequence -> per-frame [F1..F3, voicing, frication, aspiration, fc, fw]."""
    fps = SR / HOP
    rate = spk["rate"] * np.exp(rng.normal(0, 0.08))
    vowel_p = rng.dirichlet(np.full(len(VOWELS), CONTENT_CONC))   # utterance-specific phone content
    cons_p = rng.dirichlet(np.full(len(CONSONANTS), CONTENT_CONC))
    silence = [NAN, NAN, NAN, 0, 0, 0, 0, 1]

    def cons_rows(c):
        row = CONSONANTS[c]
        dur = max(2, int(0.22 / rate * row[8] * fps * rng.lognormal(0, 0.25)))
        if row[9]:                                         # stop: closure, then short burst
            closure = [NAN, NAN, NAN, row[3], 0, 0, 0, 1]
            return [(closure, dur), (list(row[:3]) + [0] + list(row[4:8]), 2)]
        return [(list(row[:8]), dur)]

    segs = [(silence, int(rng.uniform(0.05, 0.2) * fps))]
    total = segs[0][1]
    while total < n_frames:
        if rng.random() < spk["pause_prob"]:
            segs.append((silence, int(rng.uniform(0.1, 0.4) * fps)))
        if rng.random() < spk["onset_prob"]:
            segs += cons_rows(rng.choice(len(CONSONANTS), p=cons_p))
        v = rng.choice(len(VOWELS), p=vowel_p)
        vdur = max(3, int(0.5 / rate * fps * rng.lognormal(0, 0.3)))
        segs.append((list(VOWELS[v] * spk["vowel_warp"][v]) + [rng.uniform(0.5, 1.0), 0, 0, 0, 1], vdur))
        if rng.random() < spk["coda_prob"]:
            segs += cons_rows(rng.choice(len(CONSONANTS), p=cons_p))
        total = sum(d for _, d in segs)
    rows = np.array([r for r, _ in segs], float)
    tracks = np.repeat(rows, [d for _, d in segs], axis=0)[:n_frames]
    idx = np.arange(n_frames)
    for k in range(3):                                     # consonants/pauses borrow vowel formants
        ok = ~np.isnan(tracks[:, k])
        tracks[:, k] = np.interp(idx, idx[ok], tracks[ok, k])
    tracks[:, :3] = uniform_filter1d(tracks[:, :3], int(0.06 * fps) | 1, axis=0) * spk["alpha"]   # coarticulation
    return tracks


def pitch_track(rng, spk, n_frames):
    """f0 per frame: speaker median, utterance shift, declination, pitch accents, jitter."""
    t = np.arange(n_frames) * HOP / SR
    semis = rng.normal(0, 0.8) + spk["declination"] * (t - t.mean())
    for c in rng.uniform(0, t[-1], max(1, int(t[-1] * spk["rate"] / 3))):
        semis += spk["f0_range"] * rng.normal(0.7, 0.5) * np.exp(-0.5 * ((t - c) / rng.uniform(0.08, 0.2)) ** 2)
    semis += uniform_filter1d(rng.normal(0, 1.5, n_frames), int(0.2 * SR / HOP))  # slow drift
    return spk["f0"] * 2 ** (semis / 12) * (1 + spk["jitter"] * rng.normal(0, 1, n_frames))


def glottal_source(rng, spk, f0_frames, n):
    """Rosenberg-style glottal flow derivative plus breath noise pulsed with the open phase."""
    size = 2048                                           # one period, tabulated: lookups beat cos()
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


def stft(x, n_frames):
    pad = np.zeros(N_FFT - HOP + n_frames * HOP, F32)
    pad[N_FFT - HOP:N_FFT - HOP + len(x)] = x
    return scipy.fft.rfft(sliding_window_view(pad, N_FFT)[::HOP][:n_frames] * WIN, axis=1)


def white(rng, shape):
    """Unit-variance uniform noise from raw random bytes: several times cheaper than Gaussian
    draws, and the filtering that follows makes it Gaussian anyway."""
    raw = np.frombuffer(rng.bytes(2 * int(np.prod(shape))), np.int16).reshape(shape)
    return raw.astype(F32) * F32(np.sqrt(12) / 65536)


def white_spec(rng, n_frames):
    """Random complex frames standing for the STFT of white noise (frame overlap ignored)."""
    return white(rng, (n_frames, 2 * len(FREQS))).view(np.complex64) * F32(np.sqrt(N_FFT / 4))


def power(spec):
    return float(np.mean(spec.real ** 2 + spec.imag ** 2))


def istft(spec, n):
    frames = scipy.fft.irfft(spec, N_FFT, axis=1) * WIN
    out = np.zeros((len(frames) + N_FFT // HOP - 1) * HOP, F32)
    for k in range(N_FFT // HOP):                          # overlap-add, vectorised per hop-sized slice
        out[k * HOP:k * HOP + len(frames) * HOP] += frames[:, k * HOP:(k + 1) * HOP].ravel()
    return out[N_FFT - HOP:N_FFT - HOP + n]


def tract_gain(formants, bws):
    """|H| of a cascade of unity-DC-gain two-pole resonators, for every frame and bin.

    cos(w -+ theta) is expanded so the big (frames x bins) arrays need no trigonometry.
    """
    cw, sw = np.cos(2 * np.pi * FREQS / SR).astype(F32), np.sin(2 * np.pi * FREQS / SR).astype(F32)
    gain = np.ones((len(formants), len(FREQS)), F32)
    for k in range(formants.shape[1]):
        theta = (2 * np.pi * formants[:, k:k + 1] / SR).astype(F32)
        r = np.exp(-np.pi * bws[:, k:k + 1] / SR).astype(F32)
        a, b, c = 1 + r * r, 2 * r * np.cos(theta), 2 * r * np.sin(theta)
        x, y = a - b * cw, c * sw                          # den = (x - y)(x + y)
        gain *= (a - b) / np.sqrt(x * x - y * y)
    return gain


# ----------------------------------------------------------------------------- channels
def draw_channel(rng, strength, snr_range, reverb_prob):
    """One recording session: microphone/room EQ (dB per bin), band limits, noise colour, reverb."""
    octs = np.log2(np.maximum(FREQS, 20) / 1000)
    eq = strength * rng.normal(0, 2.0) * octs                                     # spectral slope
    for _ in range(3):                                                             # broad bumps
        eq += strength * rng.normal(0, 3.0) * np.exp(-0.5 * ((octs - rng.uniform(-2.5, 2.5)) / rng.uniform(0.3, 1.0)) ** 2)
    hp, lp = rng.uniform(40, 40 + 200 * strength), rng.uniform(8000 - 3000 * min(strength, 1.5), 8000)
    eq -= 10 * np.log10(1 + (hp / np.maximum(FREQS, 1)) ** 4) + 10 * np.log10(1 + (FREQS / lp) ** 8)
    noise_db = rng.normal(-4.0, 3.0) * octs + rng.normal(0, 4.0) * np.exp(-0.5 * ((octs - rng.uniform(-2, 2)) / 0.7) ** 2)
    return dict(eq=eq, noise_db=noise_db, snr=rng.uniform(*snr_range),
                rt60=rng.uniform(0.15, 0.7) if rng.random() < reverb_prob else 0.0)


def synth_utterance(rng, spk, chan, duration):
    """One utterance as int16 samples: voice through the tract, the session channel and noise."""
    n = int(duration * SR)
    n_frames = n // HOP + N_FFT // HOP
    tracks = phone_tracks(rng, spk, n_frames)
    formants = np.minimum(tracks[:, :3], 0.45 * SR)
    env = tract_gain(formants, spk["bw_scale"] * (np.array([50, 70, 110]) + 0.03 * formants))
    high = spk["high_formants"][None]                     # F4, F5 and tilt do not move: one row
    static = tract_gain(high, spk["bw_scale"] * (np.array([160, 220]) + 0.03 * high))[0] \
        * 10 ** ((spk["tilt"] * np.log2(np.maximum(FREQS, 100) / 500) + spk["colour"]) / 20)
    tracks = tracks.astype(F32)
    fric = np.zeros_like(env)                             # frication spectra, only where there is any
    on = tracks[:, 4] > 0
    fric[on] = tracks[on, 4:5] * np.exp(-0.5 * ((np.log2(np.maximum(FREQS, 50)).astype(F32)
                                               - np.log2(tracks[on, 6:7] * spk["alpha"])) / tracks[on, 7:8]) ** 2)
    src = glottal_source(rng, spk, pitch_track(rng, spk, n_frames), n)
    env *= static.astype(F32)
    shimmer = 1 + spk["shimmer"] * rng.standard_normal((n_frames, 1), F32)   # per frame, not per cycle
    speech = stft(src, n_frames) * (tracks[:, 3:4] * shimmer * env) \
        + white_spec(rng, n_frames) * (tracks[:, 5:6] * env + fric)
    # Background noise is added before the microphone EQ and the room, as in a real recording.
    noise = white_spec(rng, n_frames) * (10 ** (chan["noise_db"] / 20)).astype(F32)
    snr_gain = np.sqrt(power(speech) / power(noise) * 10 ** (-(chan["snr"] + rng.normal(0, 2.0)) / 10))
    eq_db = chan["eq"] + rng.normal(0, 0.7) * np.log2(np.maximum(FREQS, 20) / 1000)   # small per-take drift
    x = istft((speech + F32(snr_gain) * noise) * (10 ** (eq_db / 20)).astype(F32), n)
    if chan["rt60"] > 0:                                   # exponentially decaying noise as room response
        t = np.arange(int(chan["rt60"] * SR)) / SR
        rir = rng.normal(0, 1, len(t)) * np.exp(-6.9 * t / chan["rt60"])
        rir[0] = 1.0 / np.sqrt(chan["rt60"] * 10)
        x = fftconvolve(x, rir.astype(F32))[:n]
    x *= 10 ** (rng.uniform(*LEVEL_DB) / 20) / (np.sqrt(np.mean(x ** 2)) + 1e-9)   # loudness
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
            counts, items = {}, []
            for u, ses in enumerate(sess):
                counts[ses] = counts.get(ses, 0) + 1
                items.append((u, int(ses), "%s/%s/%05d.wav" % (spk_id, vids[ses], counts[ses])))
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
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(SR)
            f.writeframes(wav.astype("<i2").tobytes())
    return len(items)


def make_trials(rng, test_files, num_trials):
    """About half same-speaker pairs, half random different-speaker pairs, no duplicates."""
    spk = np.array([f.split("/")[0] for f in test_files])
    same = [(i, j) for i in range(len(spk)) for j in range(i + 1, len(spk)) if spk[i] == spk[j]]
    n_tar = min(len(same), num_trials // 2)
    pairs = {same[k]: 1 for k in rng.choice(len(same), n_tar, replace=False)}
    n_all = len(spk) * (len(spk) - 1) // 2
    while len(pairs) < min(num_trials, n_all):
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
    cfg_path, lists = os.path.join(root, CONFIG_NAME), [os.path.join(root, f) for f in ("train_list.txt", "test_list.txt")]
    old = json.load(open(cfg_path)) if os.path.exists(cfg_path) else None
    if old == config and all(map(os.path.exists, lists)):
        log.info("%s already holds this corpus; nothing to do", root)
        return
    if (old not in (None, config) or (old is None and any(map(os.path.exists, lists)))) and not args.overwrite:
        sys.exit("error: %s already holds a different corpus; pass --overwrite to replace it" % root)
    for f in lists:                                        # lists mark a finished corpus: drop them first
        if os.path.exists(f):
            os.remove(f)
    if old != config and os.path.isdir(os.path.join(root, "wav")):
        shutil.rmtree(os.path.join(root, "wav"))
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
    write_atomic(lists[1], make_trials(np.random.default_rng([args.seed, 5]), test, args.num_trials))
    log.info("wrote %d train and %d test utterances in %.1f s", len(train), len(test), time.time() - t0)


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
    fbank = mel_filterbank(sr=sr) if fbank is None else fbank
    win, hop = int(0.025 * sr), int(0.010 * sr)
    frames = sliding_window_view(np.pad(x, (0, max(0, win - len(x)))), win)[::hop] * np.hamming(win)
    power = np.abs(np.fft.rfft(frames, 512, axis=1)) ** 2
    return np.log(power @ fbank.T + 1e-6).mean(0)


def baseline_eer(test_list, test_path):
    """EER (%) of cosine scoring between utterance-mean log-mel vectors over a trial list."""
    from tuneThreshold import tuneThresholdfromScore
    trials = [line.split() for line in open(test_list) if line.strip()]
    fbank, feats = mel_filterbank(), {}
    for _, a, b in tqdm(trials, desc="baseline", unit="trial", leave=False):
        for f in (a, b):
            if f not in feats:
                v = mean_log_mel(os.path.join(test_path, f), fbank)
                feats[f] = v / np.linalg.norm(v)
    scores = [float(feats[a] @ feats[b]) for _, a, b in trials]
    return float(tuneThresholdfromScore(scores, [int(t[0]) for t in trials], [1, 0.1])[1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic", action="store_true", help="write the synthetic demo corpus")
    p.add_argument("--baseline", action="store_true", help="only report the mean-log-mel baseline EER")
    p.add_argument("--save_path", help="output folder of --synthetic")
    p.add_argument("--test_list", help="trial list for --baseline")
    p.add_argument("--test_path", help="folder the trial list's paths are relative to")
    p.add_argument("--overwrite", action="store_true", help="replace a different corpus in --save_path")
    g = p.add_argument_group("synthetic corpus")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--num_train_speakers", type=int, default=200)
    g.add_argument("--num_test_speakers", type=int, default=40)
    g.add_argument("--utts_per_speaker", type=int, default=24, help="per training speaker")
    g.add_argument("--test_utts_per_speaker", type=int, default=12)
    g.add_argument("--min_dur", type=float, default=2.0, help="seconds")
    g.add_argument("--max_dur", type=float, default=6.0, help="seconds")
    g.add_argument("--num_trials", type=int, default=4000)
    g.add_argument("--channel_strength", type=float, default=1.0, help="scales session EQ and band limits")
    g.add_argument("--noise_snr_range", type=float, nargs=2, default=[15.0, 35.0], metavar=("LO", "HI"),
                   help="session background-noise SNR range, dB")
    g.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (output does not depend on it)")
    g.add_argument("--reverb_prob", type=float, default=0.3, help="share of sessions with a reverberant room")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.synthetic == args.baseline:
        p.error("give exactly one of --synthetic or --baseline")
    if args.synthetic:
        if not args.save_path:
            p.error("--synthetic needs --save_path")
        generate_synthetic(args)
        args.test_list = os.path.join(args.save_path, "test_list.txt")
        args.test_path = os.path.join(args.save_path, "wav")
    elif not (args.test_list and args.test_path):
        p.error("--baseline needs --test_list and --test_path")
    eer = baseline_eer(args.test_list, args.test_path)
    log.info("baseline (mean log-mel, cosine) EER %.2f%%", eer)
    print("Baseline EER (mean log-mel, cosine): %.2f%% on %s" % (eer, args.test_list))


if __name__ == "__main__":
    main()
