"""MUSAN noise and RIR reverberation: planned with the epoch, read by workers, mixed on the device.

The recipe is voxceleb_trainer's, as the papers use it: each training crop gets one of
{none, reverberation, music, babble speech, noise}; additive noise at an SNR drawn from the
category's range (noise 0-15 dB from 1 file, speech 13-20 dB from 3-7 files summed, music
5-15 dB from 1 file), measured on the crops actually mixed; reverberation by convolving with
a random RIR scaled to unit energy, truncated to the crop length.

Split of work: `AugmentPlanner` draws every choice in the sampler (so a seed fixes them and
views of one utterance get independent draws), `read_augmentation` runs in the loader
workers and only reads noise and RIR crops (partial reads), and `Augmenter` mixes whole
batches on the training device with torchaudio.functional.
"""
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from speakernet.core.audio import ListError
from speakernet.core.audio_check import check_audio_files
from speakernet.core.errors import OptionError, UserError

log = logging.getLogger(__name__)

KINDS = ("none", "reverb", "music", "speech", "noise")
NONE, REVERB = 0, 1
NOISE_KINDS = ("music", "speech", "noise")
MAX_RIR_SAMPLES = 16000          # 1 s: simulated RIRs decay well within it


def add_arguments(parser):
    g = parser.add_argument_group("augmentation (--augment)")
    g.add_argument("--aug_probs", type=float, nargs=5, default=[0.2] * 5,
                   metavar=("NONE", "REVERB", "MUSIC", "SPEECH", "NOISE"),
                   help="probabilities of each augmentation type per crop (voxceleb_trainer: equal)")
    g.add_argument("--aug_snr_noise", type=float, nargs=2, default=[0.0, 15.0], help="SNR range, dB")
    g.add_argument("--aug_snr_speech", type=float, nargs=2, default=[13.0, 20.0], help="SNR range, dB")
    g.add_argument("--aug_snr_music", type=float, nargs=2, default=[5.0, 15.0], help="SNR range, dB")
    g.add_argument("--aug_babble", type=int, nargs=2, default=[3, 7],
                   help="how many speech files are summed for babble (inclusive range)")
    g.add_argument("--aug_fraction", type=float, default=1.0,
                   help="share of training crops that are augmented at all (the rest stay clean)")


# Speech files summed into one babble crop, each read from disk (voxceleb_trainer: 3 to 7).
MAX_BABBLE = 100


def check_options(options):
    """--aug_* values (add_arguments), before the noise files are even scanned."""
    probs = [float(p) for p in options.aug_probs]
    for p in probs:
        if p < 0:
            raise OptionError(f"--aug_probs: {p:g} is negative (weights must be 0 or more)")
    if options.augment and sum(probs) <= 0:
        raise OptionError(f"--aug_probs {' '.join(f'{p:g}' for p in probs)}: every probability is 0, "
                          f"so nothing is augmented (give at least one positive weight, or drop "
                          f"--augment)")
    if not 0 <= options.aug_fraction <= 1:
        raise OptionError(f"--aug_fraction must lie in [0, 1] (a share of the crops), "
                          f"got {options.aug_fraction:g}")
    for name in ("aug_snr_noise", "aug_snr_speech", "aug_snr_music", "aug_babble"):
        low, high = getattr(options, name)
        if low > high:
            raise OptionError(f"--{name} {low:g} {high:g}: the first value is the low end of the "
                              f"range (give LOW HIGH, e.g. {high:g} {low:g})")
    if options.aug_babble[0] < 1:
        raise OptionError(f"--aug_babble {options.aug_babble[0]} {options.aug_babble[1]}: babble "
                          f"sums at least 1 speech file (voxceleb_trainer: 3 7)")
    if options.aug_babble[1] > MAX_BABBLE:
        raise OptionError(f"--aug_babble {options.aug_babble[0]} {options.aug_babble[1]}: babble sums "
                          f"at most {MAX_BABBLE} speech files, each read per crop (voxceleb_trainer: 3 7)")


@dataclass(frozen=True)
class AugmentSpec:
    """The augmentation of one crop: kind index, files (into the kind's list), offsets, SNR."""
    kind: int
    files: tuple = ()
    starts: tuple = ()
    snr: float = 0.0


def scan_audio(root, what, recheck=False):
    """Sorted audio files under `root`, validated (16 kHz mono) through the manifest cache
    (every header read again with `recheck`, --recheck_audio)."""
    root = Path(root)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                   if p.suffix.lower() in (".wav", ".flac"))
    if not files:
        raise ListError(f"{root}: no .wav or .flac files for {what}; prepare them with "
                        f"data_prep.py (or set the path option)")
    lengths = check_audio_files(str(root), root, files, list(range(1, len(files) + 1)), recheck=recheck)
    return [str(root / f) for f in files], lengths


class AugmentBank:
    """The noise and RIR files available, grouped by kind."""

    def __init__(self, musan_path, rir_path, recheck=False):
        self.files, self.lengths = {}, {}
        for kind in NOISE_KINDS:
            self.files[kind], self.lengths[kind] = scan_audio(Path(musan_path) / kind, f"MUSAN {kind}", recheck)
        self.files["reverb"], self.lengths["reverb"] = scan_audio(rir_path, "room impulse responses", recheck)
        log.info("augmentation: %s", ", ".join(f"{len(v)} {k}" for k, v in self.files.items()))


class AugmentPlanner:
    """Draws AugmentSpecs from a numpy Generator, in the sampler."""

    def __init__(self, bank, probs, snr_ranges, babble, fraction=1.0):
        shown = " ".join(f"{float(p):g}" for p in np.ravel(probs))      # plain floats, no numpy reprs
        probs = np.asarray(probs, dtype=float)
        if probs.shape != (5,) or not np.isfinite(probs).all() or (probs < 0).any() or probs.sum() <= 0:
            raise UserError(f"--aug_probs {shown}: give 5 weights of 0 or more, at least one "
                            f"positive (none, reverb, music, speech, noise; e.g. 0.2 0.2 0.2 0.2 0.2)")
        self.bank = bank
        self.probs = probs / probs.sum()
        self.snr_ranges = snr_ranges
        self.babble = babble
        self.fraction = fraction

    def draw(self, rng):
        if rng.random() >= self.fraction:
            return AugmentSpec(NONE)
        kind = int(rng.choice(len(KINDS), p=self.probs))
        name = KINDS[kind]
        if kind == NONE:
            return AugmentSpec(NONE)
        count = int(rng.integers(self.babble[0], self.babble[1] + 1)) if name == "speech" else 1
        files = tuple(int(i) for i in rng.integers(0, len(self.bank.files[name]), size=count))
        snr = float(rng.uniform(*self.snr_ranges[name])) if name in self.snr_ranges else 0.0
        return AugmentSpec(kind, files, tuple(rng.random(count)), snr)


def planner_from_options(options):
    """An AugmentPlanner for --augment, or None without it."""
    if not options.augment:
        return None
    bank = AugmentBank(options.musan_path, options.rir_path, getattr(options, "recheck_audio", False))
    snr = {"noise": options.aug_snr_noise, "speech": options.aug_snr_speech, "music": options.aug_snr_music}
    return AugmentPlanner(bank, options.aug_probs, snr, options.aug_babble, options.aug_fraction)


# ---------------------------------------------------------------------------- speed perturbation

SPEED_MARGIN = 32        # input samples read beyond each end, so the resampling filter has context


def speed_ratio(factor):
    """(orig, new) integer rates with new / orig = 1 / factor: 1.1 -> (11, 10), 0.9 -> (9, 10)."""
    ratio = Fraction(factor).limit_denominator(100)
    return ratio.numerator, ratio.denominator


def speed_read_length(length, factor):
    """Input samples to read for `length` output samples at `factor`, margins included."""
    orig, new = speed_ratio(factor)
    margin = orig * -(-SPEED_MARGIN // orig)
    return -(-length * orig // new) + 2 * margin


def speed_change(audio, length, factor):
    """`length` samples of `audio` (read with speed_read_length) played `factor` times faster:
    resampled by new/orig = 1/factor at an unchanged 16 kHz, so pitch rises and duration
    shrinks by `factor` (sox's `speed`, without sox). The margins are resampled and dropped."""
    orig, new = speed_ratio(factor)
    margin = orig * -(-SPEED_MARGIN // orig)
    if orig == new:
        return audio[margin:margin + length]
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(audio)), orig, new)
    first = margin * new // orig
    return out[first:first + length].numpy()


def read_augmentation(bank, spec, length, read_crop):
    """(noise crop or None, RIR or None) for one crop of `length` samples; worker side."""
    if spec.kind == NONE:
        return None, None
    name = KINDS[spec.kind]
    lengths = bank.lengths[name]
    if spec.kind == REVERB:
        index = spec.files[0]
        total = int(lengths[index])
        return None, read_crop(bank.files[name][index], total, 0, min(total, MAX_RIR_SAMPLES))
    noise = None
    for index, start in zip(spec.files, spec.starts):
        total = int(lengths[index])
        crop = read_crop(bank.files[name][index], total, int(start * max(total - length, 0)), length)
        if noise is None:
            noise = crop                 # a fresh array: babble sums into it in place
        else:
            noise += crop
    return noise, None


def collate_augmentation(items):
    """Per-crop (noise, rir, snr) of one run of views -> batched tensors for `Augmenter`.

    `noise` and `rir` hold only the rows flagged in `noisy` and `reverb` (in order), so clean
    crops cost no transfer to the device; `snr` has one entry per crop.
    """
    noises = [n for n, _, _ in items if n is not None]
    rirs = [r for _, r, _ in items if r is not None]
    noise = torch.from_numpy(np.stack(noises)) if noises else None
    rir = None
    if rirs:
        padded = np.zeros((len(rirs), max(len(r) for r in rirs)), dtype=np.float32)
        for row, r in zip(padded, rirs):
            row[:len(r)] = r
        rir = torch.from_numpy(padded)
    return {"noise": noise, "rir": rir,
            "snr": torch.tensor([s for _, _, s in items], dtype=torch.float32),
            "noisy": torch.tensor([n is not None for n, _, _ in items], dtype=torch.bool),
            "reverb": torch.tensor([r is not None for _, r, _ in items], dtype=torch.bool)}


def read_batch_augmentation(bank, specs, length, read_crop):
    """collate_augmentation's result for the crops `specs` of one run of a batch, every noise
    crop read (or summed, for babble) in place into its row; worker side."""
    noisy = [s for s in specs if s.kind not in (NONE, REVERB)]
    noise = np.empty((len(noisy), length), dtype=np.float32) if noisy else None
    for row, spec in zip(noise if noisy else (), noisy):
        name = KINDS[spec.kind]
        for n, (index, start) in enumerate(zip(spec.files, spec.starts)):
            total = int(bank.lengths[name][index])
            offset = int(start * max(total - length, 0))
            if n == 0:
                read_crop.read_into(bank.files[name][index], total, offset, length, row)
            else:
                row += read_crop(bank.files[name][index], total, offset, length)
    rirs = [read_augmentation(bank, s, length, read_crop)[1] for s in specs if s.kind == REVERB]
    extra = collate_augmentation([(None, r, 0.0) for r in rirs]) if rirs else {"rir": None}
    return {"noise": torch.from_numpy(noise) if noisy else None, "rir": extra["rir"],
            "snr": torch.tensor([s.snr for s in specs], dtype=torch.float32),
            "noisy": torch.tensor([s.kind not in (NONE, REVERB) for s in specs], dtype=torch.bool),
            "reverb": torch.tensor([s.kind == REVERB for s in specs], dtype=torch.bool)}


def fast_fft_size(n):
    """The smallest 2^a 3^b 5^c >= n (sizes the FFT handles fastest)."""
    best = 1 << (n - 1).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            size = power35
            while size < n:
                size *= 2
            best = min(best, size)
            power35 *= 3
        power5 *= 5
    return best


class Augmenter:
    """Mixes a batch on its device: `views` (list of N x V x S) with their collated extras.

    `noise` / `rir` may hold only the flagged rows (as collate_augmentation sends them) or one
    row per crop. Noise is added at the requested SNR in one pass over the batch: scale =
    sqrt(E_clean / E_noise) * 10^(-snr / 20) per row (torchaudio's add_noise), 0 for rows
    without noise or with silent noise, without gathering the clean rows first.
    """

    def __call__(self, views, extras):
        out = []
        for clean, extra in zip(views, extras):
            if extra is None:
                out.append(clean)
                continue
            shape = clean.shape
            # One copy, then in-place row updates (out-of-place index_add is several times slower).
            audio = clean.reshape(-1, shape[-1]).clone()
            rows = extra["reverb"].nonzero().squeeze(1)
            if len(rows):
                rir = _flagged(extra["rir"], extra["reverb"], rows)
                rir = rir / rir.norm(dim=-1, keepdim=True).clamp(min=1e-8)
                # Zero-padding the crop to a 5-smooth FFT size leaves the first samples as they
                # are and makes the transform several times faster than at an awkward size.
                pad = fast_fft_size(shape[-1] + rir.shape[-1] - 1) - (shape[-1] + rir.shape[-1] - 1)
                padded = torch.nn.functional.pad(audio.index_select(0, rows), (0, pad))
                audio.index_copy_(0, rows, AF.fftconvolve(padded, rir)[..., :shape[-1]])
            rows = extra["noisy"].nonzero().squeeze(1)
            if len(rows):
                noise = _flagged(extra["noise"], extra["noisy"], rows)
                clean_energy = torch.linalg.vector_norm(audio, dim=-1).square().index_select(0, rows)
                noise_energy = torch.linalg.vector_norm(noise, dim=-1).square()
                # Silent noise has no level to set: leave those crops clean rather than NaN.
                scale = torch.where(noise_energy > 1e-10,
                                    (clean_energy / noise_energy.clamp(min=1e-10)).sqrt()
                                    * torch.pow(10.0, -extra["snr"].index_select(0, rows) / 20),
                                    torch.zeros((), device=noise.device))
                audio.index_add_(0, rows, noise * scale.unsqueeze(1))
            out.append(audio.reshape(shape))
        return out


def _flagged(rows_or_all, flags, rows):
    """The rows of a tensor that holds either only the flagged rows or one row per crop."""
    return rows_or_all.index_select(0, rows) if len(rows_or_all) == len(flags) != len(rows) else rows_or_all
