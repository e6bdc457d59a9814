"""What evaluation cuts from each file: --num_eval evenly spaced crops of --eval_frames, or the
whole file (eval_frames 0), read by a Dataset for the embedding loader."""
import logging

import numpy as np
import soundfile
import torch
from torch.utils.data import Dataset

from speakernet.core.audio import changed_audio, check_finite, crop_samples, resolve
from speakernet.core.errors import message_of

log = logging.getLogger(__name__)

# Whole files shorter than one 25 ms analysis window are wrapped around to it.
MIN_WHOLE_FILE = 400


def _join(root, name):
    # Entries were checked against the root when the list was validated.
    return str(resolve(root, name, allow_outside=True))


def eval_crop_starts(total, length, num_eval):
    """Evenly spaced crop offsets from the start to the end of the file."""
    return np.linspace(0, max(total - length, 0), num=num_eval).astype(np.int64)


def segment_lengths(lengths, segment):
    """Samples of each file once cut to its middle `segment` samples (0: not cut)."""
    lengths = np.asarray(lengths)
    return np.minimum(lengths, segment) if segment else lengths


def middle(audio, segment):
    """The middle `segment` samples of `audio` (all of it when shorter, or segment 0)."""
    if not segment or len(audio) <= segment:
        return audio
    start = (len(audio) - segment) // 2
    return audio[start:start + segment]


def cut_crops(audio, eval_frames, num_eval):
    """crops x samples tensor of one float waveform: num_eval evenly spaced crops of
    eval_frames, or (eval_frames 0) the whole file; shorter audio is wrapped around to the
    crop length, or to MIN_WHOLE_FILE samples (one analysis window) for whole files."""
    length = crop_samples(eval_frames) if eval_frames else MIN_WHOLE_FILE
    if len(audio) < length:
        audio = np.pad(audio, (0, length - len(audio)), mode="wrap")
    if not eval_frames:
        return torch.from_numpy(np.ascontiguousarray(audio)).unsqueeze(0)
    starts = eval_crop_starts(len(audio), length, num_eval)
    return torch.from_numpy(np.stack([audio[s:s + length] for s in starts]))


class TestDataset(Dataset):
    """num_eval evenly spaced crops of eval_frames per file; eval_frames 0 = the whole file.

    Files shorter than what is cut from them are wrapped around to that length: a crop of
    eval_frames, or MIN_WHOLE_FILE samples (one analysis window) for whole files. segment > 0
    (short-utterance evaluation) first cuts each file to its middle `segment` samples."""

    def __init__(self, files, lengths, test_path, eval_frames, num_eval, segment=0):
        self.paths = [_join(test_path, f) for f in files]
        self.lengths = lengths
        self.eval_frames = eval_frames
        self.num_eval = num_eval
        self.segment = segment
        short = int((np.asarray(lengths) < MIN_WHOLE_FILE).sum()) if eval_frames == 0 else 0
        if short:
            log.warning("%d files are shorter than %d samples (one 25 ms window); whole-file scoring "
                        "wraps them around to that length", short, MIN_WHOLE_FILE)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        audio, _ = soundfile.read(self.paths[index], dtype="float32", always_2d=False)
        if len(audio) != self.lengths[index]:        # whole-file batches are planned from it
            raise changed_audio(self.paths[index], f"{len(audio)} samples", int(self.lengths[index]))
        check_finite(audio, self.paths[index])
        return cut_crops(middle(audio, self.segment), self.eval_frames, self.num_eval), index


def locate_bad_audio(err, root, files, origins):
    """NonFiniteAudio or ChangedAudio `err` (possibly re-raised from a loader worker) with the
    list line of its file, found among `files` under `root` (as TestDataset reads them) with
    `origins`."""
    message = message_of(err)
    for name, origin in zip(files, origins or ()):
        path = _join(root, name)
        if message.startswith(f"{path}:"):
            return type(err)(f"{origin}: {message}", path)
    return type(err)(message, getattr(err, "path", None))
