"""Synthetic augmentation sets: stand-ins for MUSAN (noise, babble speech, music; ~5 s chunks as
voxceleb_trainer's musan_split) and for simulated room impulse responses, so that `--augment`
runs on the demo corpus."""
import json
import os
import shutil

import numpy as np
from scipy.ndimage import uniform_filter1d
from tqdm import tqdm

from speakernet.prep.common import SR, generated_config, log, refuse_other_outputs, run_jobs, write_atomic, write_wav_atomic
from speakernet.prep.synth_corpus import draw_channel, draw_speaker, synth_utterance

NOISE_CONFIG = "synthetic_noise.json"
NOISE_VERSION = 1                 # bump when any generator below changes
CHUNK_SECONDS = 5.0
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


def noise_floor(rng, n):
    """Unit-RMS noise of a random spectral slope with two random resonances."""
    slope = rng.uniform(-6.0, 1.0)                           # dB / octave: brown ... slightly blue
    centres, peaks = rng.uniform(100, 6000, 2), rng.normal(0, 6, 2)   # two resonances, dB

    def colour(f):
        octs = np.log2(np.maximum(f, 30) / 1000)
        db = slope * octs + sum(p * np.exp(-0.5 * ((octs - np.log2(c / 1000)) / 0.5) ** 2)
                                for c, p in zip(centres, peaks))
        return 10 ** (db / 20)
    return shaped_noise(rng, n, colour)


# Stationary noises: f(rng, floor, t) -> the chunk, the floor included.

def coloured(rng, floor, t):                                 # wind, rumble, air conditioning, hiss
    return floor * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t + rng.uniform(0, 6.3)))


def hum(rng, floor, t):                                      # mains hum with harmonics, over hiss
    mains = rng.choice([50.0, 60.0])
    tones = sum(rng.uniform(0.1, 1) / k * np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 6.3))
                for k in range(1, 12))
    return tones / tones.std() + rng.uniform(0.05, 0.5) * floor


def fan(rng, floor, t):                                      # broadband whoosh plus blade-pass tones
    blade = rng.uniform(80, 400) * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(0.1, 1) * t))
    phase = 2 * np.pi * np.cumsum(blade) / SR
    tones = sum(rng.uniform(0.1, 1) / k * np.sin(k * phase) for k in range(1, 6))
    return floor + rng.uniform(0.2, 1.0) * tones / tones.std()


def crackle(rng, floor, t):                                  # rain, fire, vinyl: dense random clicks
    n = len(t)
    clicks = np.zeros(n)
    where = rng.integers(0, n, int(rng.uniform(50, 800) * n / SR))
    clicks[where] = rng.standard_normal(len(where)) * rng.pareto(3.0, len(where))
    hp = rng.uniform(500, 3000)
    clicks = np.fft.irfft(np.fft.rfft(clicks) * (1 / (1 + (hp / np.maximum(np.fft.rfftfreq(n, 1 / SR), 1)) ** 2)), n)
    return clicks / (clicks.std() + 1e-12) + rng.uniform(0.05, 0.5) * floor


# Transient noises: f(rng, out, t) adds events to `out`, a quiet floor, in place.

def typing(rng, out, t):                                     # key clicks: short bright bursts
    n, pos = len(t), 0
    while pos < n:
        pos += int(rng.exponential(rng.uniform(0.08, 0.3)) * SR) + 400
        m = min(int(rng.uniform(0.005, 0.02) * SR), n - pos)
        if m > 0:
            burst = shaped_noise(rng, m, lambda f: (np.maximum(f, 500) / 1000) ** 0.5)
            out[pos:pos + m] += rng.uniform(0.3, 1.0) * burst * decaying(rng, m, rng.uniform(0.002, 0.006))


def knocks(rng, out, t):                                     # doors, footsteps, objects: damped resonances
    n = len(t)
    for start in rng.uniform(0, n / SR - 0.2, int(rng.integers(2, 10))):
        m = int(0.4 * SR)
        s, tt = int(start * SR), np.arange(m) / SR
        ring = sum(rng.uniform(0.2, 1) * np.sin(2 * np.pi * f * tt) * np.exp(-tt / rng.uniform(0.02, 0.12))
                   for f in rng.uniform(60, 900, 3))
        ring[:80] += rng.standard_normal(80) * np.linspace(1, 0, 80)   # the impact itself
        out[s:s + m] += rng.uniform(0.3, 1.0) * ring[:n - s]


def beeps(rng, out, t):                                      # phones, alarms, machines: tone pips
    freq, period = rng.uniform(400, 3500), rng.uniform(0.3, 1.5)
    length = period * rng.uniform(0.15, 0.6)
    on = (t % period) < length
    ramp = uniform_filter1d(on.astype(float), 80)
    out += ramp * (np.sin(2 * np.pi * freq * t) + rng.uniform(0, 0.5) * np.sin(4 * np.pi * freq * t))


def swells(rng, out, t):                                     # passing cars, aircraft: slow loud swells
    n = len(t)
    for centre in rng.uniform(0, n / SR, int(rng.integers(1, 4))):
        width = rng.uniform(0.3, 1.5)
        corner = rng.uniform(200, 1500)
        out += np.exp(-0.5 * ((t - centre) / width) ** 2) * shaped_noise(
            rng, n, lambda f: 1 / (1 + (f / corner) ** 2))


STATIONARY = {"coloured": coloured, "hum": hum, "fan": fan, "crackle": crackle}
TRANSIENT = {"typing": typing, "knocks": knocks, "beeps": beeps, "swells": swells}
STATIONARY_NOISES, TRANSIENT_NOISES = tuple(STATIONARY), tuple(TRANSIENT)


def synth_noise(rng, kind, n):
    """One noise chunk: a stationary type, or transient events over a quiet stationary floor."""
    t = np.arange(n) / SR
    floor = noise_floor(rng, n)
    if kind in STATIONARY:
        return STATIONARY[kind](rng, floor, t)
    out = rng.uniform(0.01, 0.08) * floor
    if kind in TRANSIENT:
        TRANSIENT[kind](rng, out, t)
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
    root = args.save_path
    cfg_path = os.path.join(root, NOISE_CONFIG)
    config, old = generated_config(args, keys, NOISE_VERSION, cfg_path)
    folders = [os.path.join(root, d) for d in ("musan", "rirs")]
    done = old is not None and old.pop("complete", False)
    if old == config and done:
        log.info("%s already holds these augmentation sets; not generating them again", root)
    else:
        refuse_other_outputs(args, old, config, folders, "%s already holds different musan/ or rirs/ "
                             "sets (%s); pass --overwrite to replace them", "replacing the augmentation sets in %s")
        if old is not None and old != config:                # only ever delete what we synthesised
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(root, exist_ok=True)
        write_atomic(cfg_path, [json.dumps(dict(config, complete=False), sort_keys=True)])
        plan = noise_plan(args)
        jobs = [(args, root, p) for p in plan]
        with tqdm(total=len(jobs), desc="noise, babble, music, RIRs", unit="file") as bar:
            for _ in run_jobs(write_augmentation_file, jobs, args.workers, chunksize=4):
                bar.update()
        write_atomic(cfg_path, [json.dumps(dict(config, complete=True), sort_keys=True)])
    print("Augmentation sets in %s: %d noise, %d babble speech (%d speakers of their own), %d music "
          "chunks of %g s, %d room impulse responses; train with:\n  --augment --musan_path %s --rir_path %s"
          % (root, args.num_noise, args.num_babble, -(-args.num_babble // BABBLE_PER_SPEAKER), args.num_music,
             CHUNK_SECONDS, args.num_rirs, os.path.join(root, "musan"), os.path.join(root, "rirs")))
