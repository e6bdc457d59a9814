"""The mean-log-mel baseline: EER of cosine scoring between utterance-mean log-mel vectors over a trial list."""
import os

import numpy as np
import scipy.fft
import soundfile
from numpy.lib.stride_tricks import sliding_window_view
from tqdm import tqdm

from speakernet.core.audio import check_finite
from speakernet.core.audio_check import _raise_first, _read_header
from speakernet.core.errors import ListError
from speakernet.prep.common import F32, SR
from speakernet.eval.trial_sets import parse_trial_lines


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
    x = check_finite(x.mean(1) if x.ndim > 1 else x, path)
    fbank = mel_filterbank(sr=sr) if fbank is None else fbank
    win, hop = int(0.025 * sr), int(0.010 * sr)
    x = np.pad(x, (0, max(0, win - len(x))))              # at least one frame
    frames = sliding_window_view(x, win)[::hop] * np.hamming(win).astype(F32)
    spec = scipy.fft.rfft(frames, 512, axis=1)
    return np.log((spec.real ** 2 + spec.imag ** 2) @ fbank.T.astype(F32) + 1e-6).mean(0, dtype=np.float64)


def labelled_trials(test_list):
    """[(label, a, b)] of the labelled trials and {file: the line it first appears on}; a list
    without both targets and non-targets has no EER."""
    labels, ends, lines = parse_trial_lines(test_list)
    trials = [(label, a, b) for label, (a, b) in zip(labels, ends) if label >= 0]
    if {label for label, _, _ in trials} != {0, 1}:
        raise ListError(f"{test_list}: the baseline needs labelled target (1) and non-target (0) trials "
                        f"('label file1 file2' lines)")
    first_line = {}
    for number, label, pair in zip(lines, labels, ends):
        for name in pair if label >= 0 else ():
            first_line.setdefault(name, number)
    return trials, first_line


def checked_paths(test_list, test_path, first_line):
    """{file: path} once every file's header passed the trainer's check (16 kHz mono audio);
    else ListError naming the list line of the first bad file (the next few are logged)."""
    files = sorted(first_line)
    paths = {f: os.path.join(test_path, f) for f in files}
    problems = [(i, "%s: %s" % (paths[f], problem)) for i, f in enumerate(files)
                for problem in [_read_header(paths[f])[3]] if problem]
    if problems:
        _raise_first(test_list, [first_line[f] for f in files], problems)
    return paths


def baseline_eer(test_list, test_path):
    """EER (%) of cosine scoring between utterance-mean log-mel vectors over a trial list."""
    from speakernet.eval.metrics import tuneThresholdfromScore
    trials, first_line = labelled_trials(test_list)
    paths = checked_paths(test_list, test_path, first_line)
    fbank, feats = mel_filterbank(), {}
    for f, path in tqdm(paths.items(), desc="baseline", unit="file", leave=False):
        where = "%s:%d" % (test_list, first_line[f])
        try:
            v = mean_log_mel(path, fbank)
        except ListError as err:                       # NaN/Inf samples
            raise ListError("%s: %s" % (where, err)) from None
        except RuntimeError as err:                    # a header that reads, data that does not
            raise ListError("%s: %s: unreadable audio (%s); re-encode it as 16 kHz mono WAV"
                            % (where, path, str(err).strip())) from None
        feats[f] = v / np.linalg.norm(v)
    scores = [float(feats[a] @ feats[b]) for _, a, b in trials]
    return float(tuneThresholdfromScore(scores, [label for label, _, _ in trials], [1, 0.1])[1])
