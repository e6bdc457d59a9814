"""The one embedding path: crops cut as the evaluation protocol cuts them
(speakernet.eval.eval_crops.cut_crops), embedded by the
encoder in batches. The evaluation during training, --eval, --extract, the pseudo-label
rounds (Extractor.extract_files) and the Python API and --verify (Extractor.embed_waveforms)
all run through it, so a file gets the same embedding whichever way it comes in.

A batch is B x crops x samples (crops of one length, several files per pass), or for whole
files (eval_frames 0) B zero-padded waveforms with their lengths when the encoder supports
padded batches (models/_padded.py), else one file per pass. Embeddings come back as
B x crops x D float32 on the CPU."""
import contextlib

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from models._padded import length_buckets, pad_waveforms, padded_batch, supports_padded_batches
from speakernet.eval.eval_crops import TestDataset, segment_lengths


def default_files_per_pass(device):
    """20 on a GPU, 2 on a CPU, where bigger batches run slower (their activations no longer
    fit the caches; benchmarks/bench_eval.py)."""
    return 20 if device.type == "cuda" else 2


class Extractor:
    """An encoder in eval mode on a device, with the autocast of the run (none by default)."""

    def __init__(self, encoder, device, autocast=None, show_progress=True):
        self.encoder = encoder
        self.device = device
        self.autocast = autocast or contextlib.nullcontext
        self.show_progress = show_progress

    @torch.no_grad()
    def embed_batch(self, batch):
        """B x crops x D on the CPU, from (B x crops x samples, ...) or a padded batch of whole
        files (B x samples, lengths, indices)."""
        self.encoder.eval()
        if len(batch) == 3:
            wavs, lengths, _ = batch
            with self.autocast(), padded_batch(self.encoder, lengths.to(self.device)):
                return self.encoder(wavs.to(self.device, non_blocking=True)).float().unsqueeze(1).cpu()
        crops = batch[0].to(self.device, non_blocking=True)
        with self.autocast():
            emb = self.encoder(crops.flatten(0, 1)).float()
        return emb.unflatten(0, crops.shape[:2]).cpu()

    def embed_waveforms(self, crops, whole_files):
        """len(crops) x crops x D for waveforms already cut (eval_crops.cut_crops), in one pass: crops of
        one length stacked; whole files padded together, or one at a time without support."""
        if not whole_files:
            return self.embed_batch((torch.stack(crops),))
        if len(crops) > 1 and supports_padded_batches(self.encoder):
            return self.embed_batch(pad_waveforms([(c, n) for n, c in enumerate(crops)]))
        return torch.cat([self.embed_batch((c.unsqueeze(0),)) for c in crops])

    def extract_files(self, files, lengths, root, eval_frames, num_eval, workers, files_per_pass=None,
                      segment=0):
        """Crop embeddings of every file: files x crops x D on the CPU; segment > 0 cuts each
        file to its middle `segment` samples first (short-utterance evaluation)."""
        files_per_pass = files_per_pass or default_files_per_pass(self.device)
        dataset = TestDataset(files, lengths, root, eval_frames, num_eval, segment)
        pin = self.device.type == "cuda"
        if eval_frames:                 # crops of one length batch across files
            loader = DataLoader(dataset, batch_size=files_per_pass, num_workers=workers, pin_memory=pin)
        elif supports_padded_batches(self.encoder):
            buckets = length_buckets(segment_lengths(lengths, segment), files_per_pass)
            loader = DataLoader(dataset, batch_sampler=buckets, collate_fn=pad_waveforms,
                                num_workers=workers, pin_memory=pin)
        else:
            loader = DataLoader(dataset, batch_size=1, num_workers=workers, pin_memory=pin)
        out = [None] * len(files)
        for batch in tqdm(loader, desc="embedding", unit="batch", disable=not self.show_progress,
                          dynamic_ncols=True, leave=False):
            for i, e in zip(batch[-1].tolist(), self.embed_batch(batch)):
                out[i] = e
        return torch.stack(out)
