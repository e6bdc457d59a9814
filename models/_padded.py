"""Files of different lengths through an encoder in one pass, each with the embedding it gets
alone.

The files are zero-padded to the longest, and inside `padded_batch(encoder, sample_lengths)`:
- the front end computes each file's features from its own samples (its own instance norm),
  zero beyond its last frame;
- before every convolution and max-pool, the time steps past each file's end are set to zero,
  which is the zero padding that layer gives the file alone; each layer's output lengths follow
  from its kernel, stride, padding and dilation;
- an adaptive average pool (squeeze-excitation) averages over the real time steps only;
- the temporal pooling (models/_pooling.TimePooling) weighs and counts real frames only.
Convolution, batch norm in eval mode, ReLU and residual sums act on each time step, so every
real time step sees exactly what it sees alone and the embeddings agree up to the float
rounding of batched kernels (tests/test_padded_batches.py: cosine > 0.9999 for 1-20 s files).

An encoder opts in with `padded_batches = True` when its layers are of those kinds; the others
(ECAPA-TDNN's means over time, CAM++'s segment pooling) embed whole files one at a time.
"""
from contextlib import contextmanager

import torch
import torch.nn as nn

from models._pooling import TimePooling

TIME_LAYERS = (nn.Conv1d, nn.Conv2d, nn.MaxPool1d, nn.MaxPool2d)
AVERAGES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)


def supports_padded_batches(encoder):
    return bool(getattr(encoder, "padded_batches", False))


def _last(value):
    return value[-1] if isinstance(value, (tuple, list)) else value


def output_lengths(layer, lengths):
    """Time steps `layer` outputs for inputs of `lengths` steps (its last axis is time)."""
    if getattr(layer, "padding_mode", "zeros") != "zeros":
        raise NotImplementedError(f"{layer}: {layer.padding_mode} padding in a padded batch")
    padding = layer.padding
    if isinstance(padding, str):                        # 'same' (stride 1) or 'valid'
        padding = 0 if padding == "valid" else None
    kernel, stride, dilation = _last(layer.kernel_size), _last(layer.stride), _last(layer.dilation)
    if padding is None:
        return lengths
    if getattr(layer, "ceil_mode", False):
        raise NotImplementedError(f"{layer}: ceil_mode in a padded batch")
    return torch.div(lengths + 2 * _last(padding) - dilation * (kernel - 1) - 1, stride,
                     rounding_mode="floor") + 1


def _mask(lengths, steps, dims):
    """B x 1 ... x steps mask of real time steps, for a tensor of `dims` dimensions."""
    valid = torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]
    return valid.reshape(valid.shape[0], *([1] * (dims - 2)), steps)


class _LengthTracker:
    """Real time steps of every row, by the time size of the tensor they belong to."""

    def __init__(self):
        self.by_steps = {}

    def record(self, steps, lengths):
        known = self.by_steps.setdefault(steps, lengths)
        if not torch.equal(known, lengths):
            raise NotImplementedError(f"two layouts with {steps} time steps in one padded batch")

    def lengths(self, steps):
        return self.by_steps[steps]

    def zero_padding(self, module, args):
        x = args[0]
        return (x * _mask(self.lengths(x.shape[-1]), x.shape[-1], x.dim()).to(x.dtype),) + args[1:]

    def follow(self, module, args, output):
        self.record(output.shape[-1], output_lengths(module, self.lengths(args[0].shape[-1])))

    def rescale_average(self, module, args, output):
        steps = args[0].shape[-1]
        if output.shape[-1] != 1:
            raise NotImplementedError(f"{module}: only global averages in a padded batch")
        scale = steps / self.lengths(steps).to(output.dtype)
        return output * scale.reshape(-1, *([1] * (output.dim() - 1)))

    def set_pooling_lengths(self, module, args):
        module.frame_lengths = self.lengths(args[0].shape[module.time_dim])


@contextmanager
def padded_batch(encoder, sample_lengths):
    """Within it, encoder(B x samples zero-padded waveforms) gives each row the embedding its first
    sample_lengths[i] samples give alone."""
    if not supports_padded_batches(encoder):
        raise ValueError(f"{type(encoder).__name__} does not declare padded_batches")
    tracker = _LengthTracker()
    frontend = encoder.features
    frames = frontend.frame_counts(sample_lengths)
    handles = [frontend.register_forward_hook(lambda m, a, out: tracker.record(out.shape[-1], frames))]
    poolings = []
    for module in encoder.modules():
        if isinstance(module, TIME_LAYERS):
            handles += [module.register_forward_pre_hook(tracker.zero_padding),
                        module.register_forward_hook(tracker.follow)]
        elif isinstance(module, AVERAGES):
            handles += [module.register_forward_pre_hook(tracker.zero_padding),
                        module.register_forward_hook(tracker.rescale_average)]
        elif isinstance(module, TimePooling):
            poolings.append(module)
            handles.append(module.register_forward_pre_hook(tracker.set_pooling_lengths))
    frontend.sample_lengths = sample_lengths
    try:
        yield
    finally:
        frontend.sample_lengths = None
        for module in poolings:
            module.frame_lengths = None
        for handle in handles:
            handle.remove()


def length_buckets(lengths, max_files, min_fill=0.8):
    """Batches of file indices in order of length: at most `max_files` each, and every file at
    least `min_fill` of its batch's longest, so padding stays a small share of the work."""
    order = sorted(range(len(lengths)), key=lambda i: int(lengths[i]))
    batches, current = [], []
    for i in reversed(order):                      # longest first: the first file sets the width
        if current and (len(current) == max_files or lengths[i] < min_fill * lengths[current[0]]):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad_waveforms(items):
    """[(1 x samples waveform, index)] -> (B x longest zero-padded, B lengths, B indices)."""
    lengths = torch.tensor([w.shape[-1] for w, _ in items])
    batch = torch.zeros(len(items), int(lengths.max()), dtype=items[0][0].dtype)
    for row, (wav, _) in zip(batch, items):
        row[:wav.shape[-1]] = wav.reshape(-1)
    return batch, lengths, torch.tensor([int(i) for _, i in items])
