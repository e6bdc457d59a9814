"""Use a trained model from Python: embed audio, score trials, verify with a calibration.

    from speakernet.embedder import Embedder
    embedder = Embedder.from_checkpoint("exps/demo/model/model000000004.calibrated.model")
    e = embedder.embed("a.wav")                       # D, or files x D for a list
    s = embedder.score("a.wav", "b.wav")              # the score --eval writes for that trial
    v = embedder.verify("a.wav", "b.wav")             # decision, LLR (needs a calibration)

The encoder is rebuilt from the options stored in the checkpoint (the run's resolved options),
so no config is needed. Embeddings follow the evaluation protocol of those options exactly
(speakernet.eval_crops.TestDataset and speakernet.embeddings.file_embeddings): --num_eval
evenly spaced crops of --eval_frames (files shorter than a crop wrapped around), or the whole file with
--eval_frames 0; a file's embedding is the mean of its unit crop embeddings, and a score is
the dot product of two of them (cosine scoring). Objectives that score by distance
(test_normalize False) keep the crops, and a score is minus the mean crop-pair distance.

Inputs: a path (any format libsndfile reads; other sample rates are resampled to 16 kHz and
several channels averaged, each with a warning), a 1-D numpy array or tensor of 16 kHz samples
(float, or int16 scaled by 2^-15), or a list of these.
"""
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
import torch.nn as nn
import torch.nn.functional as F

from models._padded import pad_waveforms, padded_batch, supports_padded_batches
from speakernet.eval_crops import MIN_WHOLE_FILE, eval_crop_starts
from speakernet import calibration as calibrating
from speakernet import checkpoint
from speakernet import plugins
from speakernet.audio import SAMPLE_RATE, crop_samples
from speakernet.errors import CheckpointError, UnknownComponentError, UserError

log = logging.getLogger("embedder")


class CalibrationMissing(UserError):
    """verify() on a checkpoint with neither a calibration nor a threshold."""


@dataclass(frozen=True)
class Verification:
    """The outcome of Embedder.verify."""
    score: float                # raw score, as --eval writes it
    llr: float                  # calibrated log-likelihood ratio (None without a calibration)
    accept: bool                # same speaker?
    threshold: float            # the LLR (or, without a calibration, score) threshold applied
    p_target: float             # prior of the decision (None with a score threshold)
    basis: str                  # 'calibration' or 'eer_threshold'

    def describe(self):
        decision = "same speaker (accept)" if self.accept else "different speakers (reject)"
        if self.basis == "calibration":
            return (f"score {self.score:.6f}, LLR {self.llr:.4f} (Bayes threshold {self.threshold:.4f} "
                    f"at p_target {self.p_target:g}): {decision}")
        return (f"score {self.score:.6f}, no calibration (no LLR); EER threshold {self.threshold:.6f}: "
                f"{decision}")


class Embedder:
    """An encoder in eval mode with its evaluation protocol, calibration and decision rule."""

    def __init__(self, encoder, eval_frames, num_eval, normalize=True, calibration=None,
                 eer_threshold=None, device="cpu", source=""):
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.eval_frames = int(eval_frames)
        self.num_eval = int(num_eval)
        self.normalize = bool(normalize)
        self.calibration = calibration
        self.eer_threshold = eer_threshold
        self.source = str(source)

    @classmethod
    def from_checkpoint(cls, path, device="cpu"):
        """The model of a checkpoint written by trainSpeakerNet.py (its 'options' name the model
        and the evaluation protocol), with the calibration it holds, if any."""
        stored = checkpoint.load_file(path)
        options = stored.get("options") if isinstance(stored, dict) else None
        if not isinstance(options, dict) or not options.get("model"):
            raise CheckpointError(f"{path} holds no run options naming the model (a bare state dict "
                                  f"or voxceleb_trainer checkpoint); use a checkpoint written by "
                                  f"trainSpeakerNet.py")
        name = str(options["model"])
        try:
            factory = plugins.factory("models", name)
        except UnknownComponentError as err:
            raise CheckpointError(f"{path} was trained with model '{name}', which this copy of the "
                                  f"project lacks ({err})") from None
        encoder = factory(**options)
        holder = nn.ModuleDict({"encoder": encoder})    # the trainer's parameter names
        state = checkpoint.model_state(stored, holder, path)
        # The objective's tensors (classifier weights) are not needed to embed.
        checkpoint.load_weights(holder, {k: v for k, v in state.items() if k.startswith("encoder.")}, path)
        calibration = calibrating.from_checkpoint(stored, path)
        threshold = stored.get("eer_threshold")
        if threshold is None and calibration is not None:
            threshold = calibration.eer_threshold
        return cls(encoder, options.get("eval_frames", 300), options.get("num_eval", 10),
                   normalize=_test_normalize(options.get("trainfunc")), calibration=calibration,
                   eer_threshold=threshold, device=device, source=path)

    # ------------------------------------------------------------------------ audio

    def load(self, item):
        """One input -> float32 numpy waveform at 16 kHz (see the module docstring)."""
        if isinstance(item, (str, Path)):
            return read_audio(item)
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu().numpy()
        if isinstance(item, np.ndarray):
            if item.ndim != 1:
                raise UserError(f"a waveform array must be 1-D (samples at 16 kHz), got shape "
                                f"{item.shape}; down-mix it, or pass the file path")
            if item.dtype == np.int16:
                audio = item.astype(np.float32) * np.float32(1 / 32768)
            elif item.dtype.kind in "fiu":
                audio = item.astype(np.float32)
            else:
                raise UserError(f"a waveform array must hold numbers, got dtype {item.dtype}")
            if not np.isfinite(audio).all():
                raise UserError("the waveform holds NaN or Inf samples")
            if audio.size == 0:
                raise UserError("the waveform is empty")
            return audio
        raise UserError(f"cannot embed a {type(item).__name__}: give a file path, a 1-D numpy "
                        f"array or tensor of 16 kHz samples, or a list of these")

    def crops(self, audio):
        """crops x samples tensor of one waveform, as speakernet.eval_crops.TestDataset cuts them."""
        if self.eval_frames == 0:
            if len(audio) < MIN_WHOLE_FILE:
                audio = np.pad(audio, (0, MIN_WHOLE_FILE - len(audio)), mode="wrap")
            return torch.from_numpy(np.ascontiguousarray(audio)).unsqueeze(0)
        length = crop_samples(self.eval_frames)
        if len(audio) < length:
            audio = np.pad(audio, (0, length - len(audio)), mode="wrap")
        starts = eval_crop_starts(len(audio), length, self.num_eval)
        return torch.from_numpy(np.stack([audio[s:s + length] for s in starts]))

    # ------------------------------------------------------------------------ embeddings

    @torch.no_grad()
    def crop_embeddings(self, item):
        """crops x D embeddings of one input, on the CPU."""
        crops = self.crops(self.load(item)).to(self.device)
        return self.encoder(crops).float().cpu()

    def embed(self, x):
        """The file embedding (D: the mean of the unit crop embeddings; the plain crop mean
        for distance-scored objectives) of one input, or files x D for a list of inputs, a few
        per forward pass (2 on a CPU, 20 on a GPU, as Trainer.extract)."""
        if not isinstance(x, (list, tuple)):
            return self._embed_together([x])[0]
        if not x:
            raise UserError("embed() got an empty list")
        per_pass = 20 if self.device.type == "cuda" else 2
        return torch.cat([self._embed_together(x[i:i + per_pass]) for i in range(0, len(x), per_pass)])

    @torch.no_grad()
    def _embed_together(self, items):
        """len(items) x D in one forward pass: crops of one length stacked, whole files (eval_frames
        0) zero-padded in a padded batch (models/_padded.py), or one at a time without support."""
        crops = [self.crops(self.load(item)) for item in items]
        if self.eval_frames:
            emb = self.encoder(torch.cat(crops).to(self.device)).float().cpu().unflatten(0, (len(items), -1))
        elif len(items) > 1 and supports_padded_batches(self.encoder):
            wavs, lengths, _ = pad_waveforms([(c, n) for n, c in enumerate(crops)])
            with padded_batch(self.encoder, lengths.to(self.device)):
                emb = self.encoder(wavs.to(self.device)).float().cpu().unsqueeze(1)
        else:
            emb = torch.stack([self.encoder(c.to(self.device)).float().cpu() for c in crops])
        return (F.normalize(emb, dim=-1) if self.normalize else emb).mean(dim=1)

    def score(self, a, b):
        """The score --eval gives the trial (a, b): cosine of the mean unit crop embeddings
        (= mean crop-pair cosine), or minus the mean crop-pair distance."""
        if self.normalize:
            return float(torch.dot(self.embed(a), self.embed(b)))
        return float(-torch.cdist(self.crop_embeddings(a), self.crop_embeddings(b)).mean())

    def llr(self, a, b):
        """The calibrated log-likelihood ratio of the trial (needs a calibration)."""
        if self.calibration is None:
            raise CalibrationMissing(self._no_calibration())
        return float(self.calibration.llr(self.score(a, b)))

    def verify(self, a, b, p_target=None, c_miss=None, c_fa=None):
        """Decide whether a and b are one speaker -> Verification.

        With a calibration: accept iff LLR >= log(c_fa (1 - p) / (c_miss p)), the Bayes decision
        at p_target (default: the calibration's prior) and the costs (default: those of the
        calibrating run). Without one: accept iff score >= the stored EER threshold. Neither:
        CalibrationMissing."""
        score = self.score(a, b)
        if self.calibration is not None:
            cal = self.calibration
            p = cal.prior if p_target is None else float(p_target)
            if not 0 < p < 1:
                raise UserError(f"p_target must lie in (0, 1), got {p_target}")
            threshold = calibrating.bayes_threshold(p, cal.c_miss if c_miss is None else c_miss,
                                                    cal.c_fa if c_fa is None else c_fa)
            llr = float(cal.llr(score))
            return Verification(score, llr, llr >= threshold, threshold, p, "calibration")
        if self.eer_threshold is not None and math.isfinite(self.eer_threshold):
            return Verification(score, None, score >= self.eer_threshold, float(self.eer_threshold),
                                None, "eer_threshold")
        raise CalibrationMissing(self._no_calibration())

    def _no_calibration(self):
        return (f"{self.source or 'this model'} has no calibration (and no stored threshold), so it "
                f"cannot give an LLR or a decision; run trainSpeakerNet.py --eval --calibrate "
                f"DEV_TRIALS --initial_model {self.source or 'CKPT'} and use the "
                f".calibrated.model it writes")


def _test_normalize(trainfunc):
    """Whether the objective scores by cosine (its test_normalize; True when unknown)."""
    if not trainfunc:
        return True
    try:
        module = plugins.load_module("loss", str(trainfunc))
    except UnknownComponentError:
        log.warning("objective '%s' of the checkpoint is not in loss/; scoring by cosine", trainfunc)
        return True
    return bool(getattr(module.LossFunction, "test_normalize", True))


def read_audio(path):
    """A file libsndfile reads -> float32 mono samples at 16 kHz (resampled and down-mixed,
    each with a warning); UserError naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"audio file {path}: {'a folder' if path.is_dir() else 'not found'} "
                        f"(give the path of a sound file)")
    try:
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, TypeError, ValueError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"audio file {path} cannot be read ({detail}); give a format libsndfile "
                        f"reads (WAV, FLAC, OGG, ...)") from None
    if audio.shape[0] == 0:
        raise UserError(f"audio file {path} holds no samples")
    if not np.isfinite(audio).all():
        raise UserError(f"audio file {path} holds NaN or Inf samples")
    if audio.shape[1] > 1:
        log.warning("%s has %d channels: averaging them to one", path, audio.shape[1])
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        import torchaudio.functional as AF

        log.warning("%s is sampled at %d Hz: resampling to %d Hz", path, rate, SAMPLE_RATE)
        audio = AF.resample(torch.from_numpy(np.ascontiguousarray(audio)), rate, SAMPLE_RATE).numpy()
    return np.ascontiguousarray(audio, dtype=np.float32)
