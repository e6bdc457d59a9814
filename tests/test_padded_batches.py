"""Whole files of different lengths embedded in one padded batch (models/_padded.py) give the
embedding each file gets alone: per-file front ends, zeroed padding before every convolution,
masked averages and pooling. Checked for every encoder that declares padded_batches."""
import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SR, write_wav
from models._padded import length_buckets, pad_waveforms, padded_batch, supports_padded_batches
from SpeakerNet import SpeakerNet, Trainer
from loss.angleproto import LossFunction as AngularPrototypical

SECONDS = (1.0, 3.3, 8.01, 20.0)


def encoder(name, **options):
    torch.manual_seed(0)
    model = importlib.import_module(f"models.{name}").MainModel(**options).eval()
    for module in model.modules():          # batch norm that is not the identity
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def waveforms(seed=0):
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.uniform(-0.3, 0.3, int(s * SR) + 37 * k).astype(np.float32))
            for k, s in enumerate(SECONDS)]


@pytest.mark.parametrize("name, options", [
    ("ResNetSE34L", {"nOut": 64}),
    ("ResNetSE34L", {"nOut": 64, "encoder_type": "ASP"}),
    ("ResNetSE34", {"nOut": 64}),
    ("ResNetSE34V2", {"nOut": 64}),
    ("ResNet", {"nOut": 64, "resnet_channels": 8}),
])
def test_a_padded_batch_embeds_each_file_as_alone(name, options):
    model, waves = encoder(name, **options), waveforms()
    assert supports_padded_batches(model)
    batch, lengths, index = pad_waveforms([(w[None], i) for i, w in enumerate(waves)])
    assert batch.shape == (len(waves), max(len(w) for w in waves)) and index.tolist() == [0, 1, 2, 3]
    with torch.no_grad():
        alone = torch.stack([model(w[None])[0] for w in waves])
        with padded_batch(model, lengths):
            together = model(batch)
        unmasked = model(batch)              # the same batch without the masks: visibly off
    assert F.cosine_similarity(alone, together).min() >= 0.9999
    assert (alone - together).abs().max() < 1e-4 * alone.abs().max()
    assert F.cosine_similarity(alone, unmasked).min() < 0.9995
    # The hooks are gone afterwards: the next forward is the plain one.
    assert model.features.sample_lengths is None and model.pool.frame_lengths is None


def test_encoders_without_support_are_refused_and_extract_one_at_a_time(tmp_path):
    ecapa = encoder("ECAPA_TDNN", nOut=32, C=64)
    assert not supports_padded_batches(ecapa)
    with pytest.raises(ValueError, match="padded_batches"):
        with padded_batch(ecapa, torch.tensor([16000])):
            pass


@pytest.mark.parametrize("name, options", [("ResNetSE34L", {"nOut": 32}), ("ECAPA_TDNN", {"nOut": 32, "C": 64})])
def test_whole_file_extraction_batches_and_agrees(tmp_path, name, options):
    waves = waveforms(1) + waveforms(2)[:2]
    files = [write_wav(tmp_path / f"{i}.wav", w.numpy()).name for i, w in enumerate(waves)]
    lengths = np.array([len(w) for w in waves])
    model = SpeakerNet(encoder(name, **options), AngularPrototypical())
    trainer = Trainer(model, None, None, None, torch.device("cpu"))
    batched = trainer.extract(files, lengths, str(tmp_path), 0, 1, 0, batch_files=4)
    alone = trainer.extract(files, lengths, str(tmp_path), 0, 1, 0, batch_files=1)
    assert batched.shape == (len(files), 1, 32)
    assert F.cosine_similarity(batched[:, 0], alone[:, 0]).min() >= 0.9999


@pytest.mark.parametrize("max_files, min_fill", [(1, 0.8), (3, 0.8), (8, 0.5), (8, 0.99)])
def test_length_buckets(max_files, min_fill):
    lengths = np.random.default_rng(4).integers(16000, 320000, size=41)
    batches = length_buckets(lengths, max_files, min_fill)
    assert sorted(i for b in batches for i in b) == list(range(41))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= max_files and all(lengths[i] >= min_fill * longest for i in batch)
    # In order of length: no file of a later batch is longer than any of an earlier one.
    for earlier, later in zip(batches, batches[1:]):
        assert min(lengths[i] for i in earlier) >= max(lengths[i] for i in later)
