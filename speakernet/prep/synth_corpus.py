"""The synthetic demo corpus: a source-filter voice synthesizer, per-session recording channels,
and the VoxCeleb-style corpus (speaker/video/utt.wav, train list, trial list) written with them."""
import itertools
import json
import os
import shutil
import time

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import uniform_filter1d
from scipy.signal import fftconvolve
from tqdm import tqdm

from speakernet.prep.common import F32, SR, generated_config, log, refuse_other_outputs, run_jobs, write_atomic, write_wav

N_FFT, HOP = 512, 256             # synthesis STFT: 32 ms frames, 16 ms control rate
FREQS = np.fft.rfftfreq(N_FFT, 1.0 / SR)
OCTS = np.log2(np.maximum(FREQS, 20) / 1000)                    # bin frequencies in octaves re 1 kHz
WIN = np.sin(np.pi * np.arange(N_FFT) / N_FFT).astype(np.float32)   # sqrt-Hann: exact overlap-add at hop N/2
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
        write_wav(path, wav)
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


def generate_synthetic(args):
    """Write the corpus into args.save_path (skipped when an identical one is already there)."""
    keys = ("seed", "num_train_speakers", "num_test_speakers", "utts_per_speaker", "test_utts_per_speaker",
            "min_dur", "max_dur", "num_trials", "channel_strength", "noise_snr_range", "reverb_prob")
    root = args.save_path
    cfg_path = os.path.join(root, CONFIG_NAME)
    config, old = generated_config(args, keys, SYNTH_VERSION, cfg_path)
    lists = [os.path.join(root, f) for f in ("train_list.txt", "test_list.txt")]
    if old == config and all(map(os.path.exists, lists)):
        log.info("%s already holds this corpus; not generating it again", root)
        return
    refuse_other_outputs(args, old, config, lists,
                         "%s already holds a different corpus (%s); pass --overwrite to replace it",
                         "replacing the corpus in %s")
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
        for n in run_jobs(write_speaker, jobs, args.workers):
            bar.update(n)
    train = ["%s %s" % (spk_id, rel) for role, _, spk_id, items in plan if role == 0 for _, _, rel in items]
    test = [rel for role, _, _, items in plan if role == 1 for _, _, rel in items]
    write_atomic(lists[0], train)
    trials = make_trials(np.random.default_rng([args.seed, 5]), test, args.num_trials)
    write_atomic(lists[1], trials)
    log.info("synthesised %d utterances in %.1f s", len(train) + len(test), time.time() - t0)
    print("Synthetic corpus in %s: %d training utterances of %d speakers, %d trials over %d test utterances"
          " of %d other speakers" % (root, len(train), args.num_train_speakers, len(trials), len(test),
                                     args.num_test_speakers))

