"""The training dataset: loader workers read the crops the sampler planned (and their noise and
RIRs), by partial reads or from int16 packs (speakernet/data/packed_audio.py), into preallocated
N x V x samples arrays; the collation hands the trainer float32 views only."""
import numpy as np
import torch
from torch.utils.data import Dataset

from speakernet.core.audio import ChangedAudio, NonFiniteAudio, crop_samples, pack_exists, pack_prefix, read_crop, to_float
from speakernet.data.augment import Augmenter, read_batch_augmentation, speed_change, speed_read_length


def training_packs(options, train_list, bank=None):
    """The int16 packs --packs names (speakernet/data/packed_audio.py), or [] without looking
    further when there are none: 'none', or 'auto' with no pack at its default places."""
    spec = str(getattr(options, "packs", "none") or "none").strip()
    roots = [options.train_list] + ([options.musan_path, options.rir_path] if bank is not None else [])
    if spec == "none" or (spec == "auto" and not any(pack_exists(pack_prefix(r)) for r in roots if r)):
        return []
    from speakernet.data.packed_audio import packs_from_options
    return packs_from_options(options, train_list, bank)


class FileReader:
    """Crops read from their audio files (TrainDataset's reader when no pack holds them)."""

    def __call__(self, path, total, start, length):
        return read_crop(path, total, start, length)

    def holds(self, path):
        return False

    def read_into(self, path, total, start, length, out):
        out[:] = read_crop(path, total, start, length)


class TrainDataset(Dataset):
    """Reads the batches the sampler plans (and their noise and RIRs); nothing random here.

    The DataLoader calls `__getitems__` with a planned batch of CropRequest, which reads every
    crop and noise crop straight into its place in the batch. `dataset[request]` is the batch
    of that one group."""

    def __init__(self, train_list, augment_bank=None, packs=()):
        self.train_list = train_list
        self.files = train_list.files
        self.lengths = train_list.lengths
        self.augment_bank = augment_bank
        if packs:        # they serve the files they hold from a memory map, the rest from files
            from speakernet.data.packed_audio import PackReader
            self.read_crop = PackReader(packs, read_crop)
        else:
            self.read_crop = FileReader()

    def __len__(self):
        return len(self.files)

    def __getitem__(self, request):
        return self.__getitems__([request])

    def __getitems__(self, requests):
        """-> (views, labels, extras, frames): views is a list of N x V_run x samples tensors,
        one per run of equal-length views (int16 when every crop of the run comes from a pack as
        int16, converted by collate_views; else float32); extras holds each
        run's batched noise and RIRs (None when clean); frames is every view's crop length."""
        try:
            return self._read_batch(requests)
        except (NonFiniteAudio, ChangedAudio) as err:
            raise self._located(err) from None

    def _located(self, err):
        """`err` with the list line of its file (noise and RIR files are named by path alone)."""
        try:
            return type(err)(f"{self.train_list.origin(self.files.index(err.path))}: {err}", err.path)
        except ValueError:
            return err

    def _read_batch(self, requests):
        frames = tuple(requests[0].frames)
        lengths = [crop_samples(f) for f in frames]           # the one frames -> samples step
        labels = torch.tensor([r.label for r in requests], dtype=torch.long)
        augmented = bool(requests[0].augment)
        tensors, extras, begin = [], [], 0
        for end in range(1, len(lengths) + 1):
            if end < len(lengths) and lengths[end] == lengths[begin]:
                continue
            length = lengths[begin]
            as_int16 = all(r.speed == 1.0 and all(self.read_crop.holds(self.files[i]) for i in r.files[begin:end])
                           for r in requests)
            run = np.empty((len(requests), end - begin, length), dtype=np.int16 if as_int16 else np.float32)
            for group, request in zip(run, requests):
                for row, v in zip(group, range(begin, end)):
                    self._read_view(request, v, length, row)
            tensors.append(torch.from_numpy(run))
            extras.append(read_batch_augmentation(self.augment_bank, [r.augment[v] for r in requests
                                                                      for v in range(begin, end)],
                                                  length, self.read_crop) if augmented else None)
            begin = end
        return tensors, labels, extras, frames

    def _read_view(self, request, v, length, row):
        index, start = request.files[v], request.starts[v]
        path, total = self.files[index], int(self.lengths[index])
        if request.speed == 1.0:
            self.read_crop.read_into(path, total, int(start * max(total - length, 0)), length, row)
            return
        # A proportionally longer (slower) or shorter (faster) crop, resampled to `length`.
        needed = speed_read_length(length, request.speed)
        audio = self.read_crop(path, total, int(start * max(total - needed, 0)), needed)
        row[:] = speed_change(audio, length, request.speed)


def collate_views(batch):
    """The DataLoader's collate_fn: TrainDataset.__getitems__ has assembled the batch; views
    read as int16 from packs become float32 here, the one place, so neither the augmentation
    nor any encoder sees the pack format."""
    views, *rest = batch
    return ([to_float(v) if v.dtype == torch.int16 else v for v in views], *rest)


class CollateAndMix:
    """The batch, with the augmentation mixed in inside the loader workers.

    For training on a CPU with worker processes: the mixing then runs in the workers beside the
    model instead of in front of it in the training process, and only mixed crops cross the
    process boundary, not the noise and RIR rows. On a GPU the mixing stays on the device
    (Trainer's augment), where it is cheap. The sampler's plan fixes every random choice, so
    a batch is bit-identical wherever it is mixed.
    """

    def __init__(self):
        self.mix = Augmenter()

    def __call__(self, batch):
        views, labels, extras, frames = collate_views(batch)       # packed int16 -> float32 first
        if any(extra is not None for extra in extras):
            views, extras = self.mix(views, extras), [None] * len(views)
        return views, labels, extras, frames
