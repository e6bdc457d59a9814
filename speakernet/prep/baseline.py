"""The mean-log-mel baseline: EER of cosine scoring between utterance-mean log-mel vectors over a trial list."""
import os

import numpy as np
import scipy.fft
import soundfile
from numpy.lib.stride_tricks import sliding_window_view
from tqdm import tqdm

from speakernet.prep.common import F32, SR


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
