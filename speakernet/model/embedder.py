"""Use a trained model from Python: embed audio, score trials, verify with a calibration.

    from speakernet.model.embedder import Embedder
    embedder = Embedder.from_checkpoint("exps/demo/model/model000000004.calibrated.model")
    e = embedder.embed("a.wav")                       # D, or files x D for a list
    s = embedder.score("a.wav", "b.wav")              # the score --eval writes for that trial
    v = embedder.verify("a.wav", "b.wav")             # decision, LLR (needs a calibration)

The encoder is rebuilt from the options stored in the checkpoint (the run's resolved options),
so no config is needed. Embeddings follow the evaluation protocol of those options exactly
(speakernet.eval.eval_crops.TestDataset and speakernet.eval.embeddings.file_embeddings): --num_eval
evenly spaced crops of --eval_frames (files shorter than a crop wrapped around), or the whole file with
--eval_frames 0; a file's embedding is the mean of its unit crop embeddings, and a score is
the dot product of two of them (cosine scoring). Objectives that score by distance
(test_normalize False) keep the crops, and a score is minus the mean crop-pair distance.

Inputs: a path (any format libsndfile reads; other sample rates are resampled to 16 kHz and
several channels averaged, each with a warning), a 1-D numpy array or tensor of samples, or a
list of these. Float samples are taken as they are (libsndfile's range, [-1, 1]); integer PCM
is scaled by its dtype's range as libsndfile reads it (int16 by 2^-15, int32 by 2^-31, int8 by
2^-7, uint8 as (x - 128) / 128); other dtypes are refused. Arrays are taken as 16 kHz unless the
call gives `sample_rate=`: another rate is resampled to 16 kHz (torchaudio, as files are). One
channel given as 2-D (1 x N or N x 1) is accepted; several channels are refused (down-mix them,
or pass the file). Anything that cannot be embedded is one UserError line.
"""
import logging
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
import torch.nn as nn
import torch.nn.functional as F

from speakernet.eval.eval_crops import MIN_WHOLE_FILE, cut_crops
from speakernet.eval.extractor import Extractor, default_files_per_pass
from speakernet.eval import calibration as calibrating
from speakernet.core import checkpoint
from speakernet.run import plugins
from speakernet.model import public_models
from speakernet.core.audio import INT16_SCALE, SAMPLE_RATE, crop_samples
from speakernet.core.errors import CheckpointError, OptionError, UnknownComponentError, UserError
from speakernet.run.options import component_values, stored_options

log = logging.getLogger("embedder")

DEVICE_NAME = re.compile(r"cpu|cuda(:\d+)?")
# Integer PCM as libsndfile reads it: (x - zero) * scale, for (dtype kind, bytes) -> (zero, scale).
PCM_SCALES = {("i", 1): (0, np.float32(2.0 ** -7)), ("i", 2): (0, INT16_SCALE),
              ("i", 4): (0, np.float32(2.0 ** -31)), ("u", 1): (128, np.float32(2.0 ** -7))}
# torchaudio's resampling kernel has (rate / g) x (16000 / g) taps for g = gcd(rate, 16000):
# a rate sharing no large factor with 16 kHz (44101 Hz: 7e8) takes minutes and gigabytes.
# Every common rate (8, 11.025, 22.05, 44.1, 48, 96 kHz ...) needs under 3e5.
MAX_RESAMPLING_TAPS = 50_000_000
RESAMPLE_HINT = "e.g. ffmpeg -i in -ar 16000 -ac 1 out.wav"


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
        self.device = resolve_device(device)
        self.encoder = encoder.to(self.device).eval()
        self.eval_frames = int(eval_frames)
        self.num_eval = int(num_eval)
        self.normalize = bool(normalize)
        self.calibration = calibration
        self.eer_threshold = eer_threshold
        self.source = str(source)
        self.extractor = Extractor(self.encoder, self.device)

    @classmethod
    def from_checkpoint(cls, path, device="cpu"):
        """The model of a checkpoint written by trainSpeakerNet.py (its 'options' name the model
        and the evaluation protocol), with the calibration it holds, if any, or of a wespeaker
        model folder (speakernet/model/public_models.py; whole files, no calibration). `device`: auto,
        cpu, cuda or cuda:N, checked as --device is."""
        device = resolve_device(device)          # before the checkpoint is read
        if not isinstance(path, (str, os.PathLike)):
            raise CheckpointError(f"from_checkpoint() takes the path of a checkpoint file, got a "
                                  f"{type(path).__name__}")
        if public_models.is_public_model(path):           # a wespeaker model folder
            public = public_models.load(path)
            return cls(public.encoder, public.options.eval_frames, public.options.num_eval, device=device,
                       source=path)
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
        options = vars(stored_options(options, path))
        encoder = factory(**component_values("models", name, options))
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

    def load(self, item, sample_rate=None):
        """One input -> float32 numpy waveform at 16 kHz (see the module docstring); an array's
        rate is `sample_rate` (16 kHz when None), a file's its own."""
        if isinstance(item, (str, os.PathLike)):
            return read_audio(item)
        if isinstance(item, (np.ndarray, torch.Tensor)):
            return array_waveform(item, sample_rate)
        hint = (" (a list or tuple is several inputs: pass one waveform as a numpy array)"
                if isinstance(item, numbers.Number) else "")
        raise UserError(f"cannot embed a {type(item).__name__}: give a file path, a 1-D numpy "
                        f"array or tensor of samples, or a list of these{hint}")

    def crops(self, audio, name="the waveform"):
        """crops x samples tensor of one waveform, as the evaluation cuts them (eval_crops.cut_crops)."""
        if len(audio) < MIN_WHOLE_FILE:
            # Evaluation warns of such files too: a score of a few wrapped samples means little.
            whole = self.eval_frames == 0
            log.warning("%s has %d samples, fewer than %d (one 25 ms window); %s wraps it around "
                        "to %d samples", name, len(audio), MIN_WHOLE_FILE,
                        "whole-file scoring" if whole else "a crop",
                        MIN_WHOLE_FILE if whole else crop_samples(self.eval_frames))
        return cut_crops(audio, self.eval_frames, self.num_eval)

    def _input_crops(self, item, sample_rate):
        name = str(item) if isinstance(item, (str, os.PathLike)) else "the waveform"
        return self.crops(self.load(item, sample_rate), name)

    # ------------------------------------------------------------------------ embeddings

    @torch.no_grad()
    def crop_embeddings(self, item, sample_rate=None):
        """crops x D embeddings of one input, on the CPU."""
        return self.extractor.embed_batch((self._input_crops(item, sample_rate).unsqueeze(0),))[0]

    def embed(self, x, sample_rate=None):
        """The file embedding (D: the mean of the unit crop embeddings; the plain crop mean
        for distance-scored objectives) of one input, or files x D for a list of inputs, a few
        per forward pass (2 on a CPU, 20 on a GPU, as Trainer.extract). `sample_rate`: that of
        the array and tensor inputs (16 kHz when None); files carry their own."""
        if not isinstance(x, (list, tuple)):
            return self._embed_together([x], sample_rate)[0]
        if not x:
            raise UserError("embed() got an empty list")
        per_pass = default_files_per_pass(self.device)
        return torch.cat([self._embed_together(x[i:i + per_pass], sample_rate)
                          for i in range(0, len(x), per_pass)])

    def _embed_together(self, items, sample_rate):
        """len(items) x D in one forward pass (Extractor.embed_waveforms)."""
        crops = [self._input_crops(item, sample_rate) for item in items]
        emb = self.extractor.embed_waveforms(crops, whole_files=self.eval_frames == 0)
        return (F.normalize(emb, dim=-1) if self.normalize else emb).mean(dim=1)

    def score(self, a, b, sample_rate=None):
        """The score --eval gives the trial (a, b): cosine of the mean unit crop embeddings
        (= mean crop-pair cosine), or minus the mean crop-pair distance."""
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            raise UserError("score() takes two inputs, not lists (embed() takes a list, and "
                            "E @ E.T scores all pairs)")
        if self.normalize:
            return float(torch.dot(self.embed(a, sample_rate), self.embed(b, sample_rate)))
        return float(-torch.cdist(self.crop_embeddings(a, sample_rate),
                                  self.crop_embeddings(b, sample_rate)).mean())

    def llr(self, a, b, sample_rate=None):
        """The calibrated log-likelihood ratio of the trial (needs a calibration)."""
        if self.calibration is None:
            raise CalibrationMissing(self.no_decision())
        return float(self.calibration.llr(self.score(a, b, sample_rate)))

    @property
    def decides(self):
        """Whether verify() can decide: a calibration, or a finite stored score threshold."""
        return self.calibration is not None or (self.eer_threshold is not None
                                                and math.isfinite(self.eer_threshold))

    def verify(self, a, b, p_target=None, c_miss=None, c_fa=None, sample_rate=None):
        """Decide whether a and b are one speaker -> Verification.

        With a calibration: accept iff LLR >= log(c_fa (1 - p) / (c_miss p)), the Bayes decision
        at p_target (default: the calibration's prior) and the costs (default: those of the
        calibrating run); a prior outside (0, 1) or a cost that is not positive is a UserError.
        Without one: accept iff score >= the stored EER threshold (p_target and the costs do
        not apply; a warning says so). Neither: CalibrationMissing."""
        if not self.decides:
            raise CalibrationMissing(self.no_decision())
        cal = self.calibration
        if cal is None:
            if (p_target, c_miss, c_fa) != (None, None, None):
                log.warning("%s has no calibration: p_target and the costs do not apply; deciding "
                            "at its EER score threshold", self.source or "this model")
            score = self.score(a, b, sample_rate)
            return Verification(score, None, score >= self.eer_threshold, float(self.eer_threshold),
                                None, "eer_threshold")
        p, c_miss, c_fa = calibrating.check_decision(cal.prior if p_target is None else p_target,
                                                     cal.c_miss if c_miss is None else c_miss,
                                                     cal.c_fa if c_fa is None else c_fa)
        threshold = calibrating.bayes_threshold(p, c_miss, c_fa)
        score = self.score(a, b, sample_rate)
        llr = float(cal.llr(score))
        return Verification(score, llr, llr >= threshold, threshold, p, "calibration")

    def no_decision(self):
        """Why this model gives no LLR or decision, and what does, in one line."""
        source = self.source or "CKPT"
        return (f"{self.source or 'this model'} has no calibration and no stored threshold, so it "
                f"gives a score but no LLR or decision; verify with the run's best.model (it keeps "
                f"its EER threshold) or a calibrated checkpoint (trainSpeakerNet.py --eval --calibrate "
                f"DEV_TRIALS --initial_model {source} writes {calibrating.calibrated_path(source)})")


def resolve_device(name, local_rank=0):
    """torch.device of a --device value (auto, cpu, cuda, cuda:N) or of a torch.device; auto is
    cuda:<local_rank> when CUDA is available. OptionError (one line, naming --device, whose values
    Embedder's `device` takes) for another name or a CUDA device this machine lacks, before
    anything is moved there."""
    text = str(name)
    if text == "auto":
        text = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if not DEVICE_NAME.fullmatch(text):
        raise OptionError(f"--device '{text}': use auto, cpu, cuda or cuda:N")
    device = torch.device(text)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise OptionError(f"--device {text}: CUDA is not available on this machine; use --device cpu")
        if (device.index or 0) >= count:
            raise OptionError(f"--device {text}: this machine has {count} CUDA device(s), cuda:0 to "
                              f"cuda:{count - 1}")
    return device


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


# ---------------------------------------------------------------------------- waveforms

def array_waveform(array, sample_rate=None):
    """A numpy array or tensor of samples at `sample_rate` (16 kHz when None) -> float32 samples
    at 16 kHz (module docstring); UserError (one line) for what is not one channel of audio."""
    rate = _checked_rate(sample_rate)
    samples = _one_channel(_as_numpy(array))
    if samples.size == 0:
        raise UserError("the waveform is empty (0 samples)")
    audio = _pcm_to_float(samples)
    finite = np.isfinite(audio)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise UserError(f"the waveform holds {len(bad)} NaN or Inf samples, the first at sample "
                        f"{int(bad[0])}; replace them (e.g. np.nan_to_num) before embedding")
    return resample_to_16k(audio, rate, "the waveform")


def _checked_rate(sample_rate):
    if sample_rate is None:
        return SAMPLE_RATE
    if (isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real)
            or not math.isfinite(sample_rate) or sample_rate < 1 or sample_rate != int(sample_rate)):
        raise UserError(f"sample_rate must be a whole number of Hz (the rate of the array), got "
                        f"{sample_rate!r}")
    return int(sample_rate)


def _as_numpy(array):
    if isinstance(array, np.ndarray):
        return array
    tensor = array.detach()
    if tensor.is_floating_point():
        tensor = tensor.float()             # numpy has no bfloat16
    try:
        return tensor.to_dense().cpu().numpy()
    except (RuntimeError, TypeError, NotImplementedError) as err:
        raise UserError(f"cannot embed a tensor of dtype {tensor.dtype} ({str(err).splitlines()[0]}); "
                        f"give float samples or integer PCM") from None


def _one_channel(samples):
    """1-D samples of a 1-D array, or of a 2-D one holding a single channel (1 x N or N x 1)."""
    if samples.ndim == 2 and 1 in samples.shape:
        return samples.reshape(-1)
    if samples.ndim != 1:
        raise UserError(f"a waveform array must be 1-D (one channel of samples), got shape "
                        f"{samples.shape}; down-mix its channels (e.g. x.mean(axis=0) for channels "
                        f"x samples), or pass the file path (files are down-mixed)")
    return samples


def _pcm_to_float(samples):
    """float32 samples in libsndfile's range: floats as they are, integer PCM by PCM_SCALES."""
    kind, size = samples.dtype.kind, samples.dtype.itemsize
    if kind == "f":
        return samples.astype(np.float32)
    if (kind, size) not in PCM_SCALES:
        raise UserError(f"a waveform array of dtype {samples.dtype} is not audio samples: give float "
                        f"samples in [-1, 1], or int16, int32, int8 or uint8 PCM (e.g. "
                        f"x.astype(np.int16) for 16-bit values held in a wider type)")
    zero, scale = PCM_SCALES[kind, size]
    audio = samples.astype(np.float32)
    if zero:
        audio -= zero
    return audio * scale


def resample_to_16k(audio, rate, what):
    """float32 `audio` sampled at `rate` -> at 16 kHz (torchaudio); UserError naming `what` for a
    rate whose resampling kernel would be unreasonably large (MAX_RESAMPLING_TAPS)."""
    if rate == SAMPLE_RATE:
        return np.ascontiguousarray(audio, dtype=np.float32)
    common = math.gcd(rate, SAMPLE_RATE)
    if (rate // common) * (SAMPLE_RATE // common) > MAX_RESAMPLING_TAPS:
        raise UserError(f"{what}: sample rate {rate} Hz shares no large factor with {SAMPLE_RATE} Hz, "
                        f"so resampling it here would take minutes; resample it first, {RESAMPLE_HINT}")
    import torchaudio.functional as AF

    audio = AF.resample(torch.from_numpy(np.ascontiguousarray(audio)), rate, SAMPLE_RATE).numpy()
    return np.ascontiguousarray(audio, dtype=np.float32)


def read_audio(path):
    """A file libsndfile reads -> float32 mono samples at 16 kHz (resampled and down-mixed,
    each with a warning); UserError naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file" if path.exists() else "not found"
        raise UserError(f"audio file {path}: {what} (give the path of a sound file)")
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
    resampled = resample_to_16k(audio.mean(axis=1), rate, f"audio file {path}")
    if rate != SAMPLE_RATE:
        log.warning("%s is sampled at %d Hz: resampling to %d Hz", path, rate, SAMPLE_RATE)
    return resampled
