"""Audio constants of the whole project, and the one conversion between frames and samples.

Crops are counted in 10 ms frames of a 25 ms window, as voxceleb_trainer does: a crop of F
frames holds F * 160 + 240 samples at 16 kHz.
"""
import numpy as np
import torch

SAMPLE_RATE = 16000
HOP = 160                      # samples per 10 ms frame
WINDOW_EXTRA = 240             # a 25 ms window is 400 samples: 240 more than one hop


def crop_samples(frames):
    """Samples in a crop of `frames` frames."""
    return frames * HOP + WINDOW_EXTRA


INT16_SCALE = np.float32(1 / 32768)    # what libsndfile uses for PCM_16 -> float


def to_float(audio):
    """Waveform tensor as float32: int16 samples (packed crops sent as they are stored, half the
    bytes of float32 between processes and to the device) are scaled by 2^-15 exactly as
    libsndfile does, so the result equals a float read of the file."""
    if audio.dtype == torch.int16:
        # Convert, then scale in place: an int16 x float product (type promotion) is several
        # times slower on the CPU than the two passes.
        return audio.float().mul_(float(INT16_SCALE))
    return audio.float()
