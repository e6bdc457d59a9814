"""SpecAugment in the encoders' front ends: per-sample masks, bounded widths, train mode only,
wired into every encoder in models/, off by default."""
import numpy as np
import pytest
import torch

from speakernet.run import plugins
from speakernet.core.errors import UserError
from models._frontends import LogMelFrontend, LogSpectrogramFrontend
from models._specaugment import SpecAugment, attach_spec_augment, spec_augment_from_options
from models.ECAPA_TDNN import MFCCFrontend
from speakernet.run.options import parse_options

# Options each encoder needs beyond the defaults (ECAPA-TDNN only has attentive statistics).
ENCODER_OPTIONS = {"ECAPA_TDNN": dict(encoder_type="ASP"), "ResNetSE34V2": dict(encoder_type="ASP")}
SAMPLES = 11_201            # 0.7 s: long enough for VGG-M-40


def runs(row):
    """(start, length) of each run of True in a 1-D boolean array, found independently."""
    padded = np.concatenate([[False], np.asarray(row), [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]


def test_masks_differ_between_samples_of_a_batch():
    torch.manual_seed(0)
    freq, time = SpecAugment(max_time=20, max_freq=10, prob=1.0).draw_masks(64, 40, 200, "cpu")
    assert len({tuple(r.tolist()) for r in freq}) > 32
    assert len({tuple(r.tolist()) for r in time}) > 48


@pytest.mark.parametrize("max_time, max_freq, bins, frames", [(10, 8, 40, 200), (100, 27, 80, 60),
                                                              (5, 300, 257, 30)])
def test_one_mask_of_each_kind_is_one_band_within_bounds(max_time, max_freq, bins, frames):
    torch.manual_seed(1)
    freq, time = SpecAugment(max_time=max_time, max_freq=max_freq, prob=1.0).draw_masks(
        500, bins, frames, "cpu")
    for masks, limit, size in ((freq, max_freq, bins), (time, max_time, frames)):
        widths = []
        for row in masks.numpy():
            (start, width), = runs(row)            # exactly one band per sample
            assert 1 <= width <= min(limit, size) and start + width <= size
            widths.append(width)
        # Widths are spread over 1..limit, not stuck at one value.
        assert min(widths) == 1 and max(widths) == min(limit, size)


def test_several_masks_cover_at_most_their_total_width():
    torch.manual_seed(2)
    freq, time = SpecAugment(time_masks=3, freq_masks=2, max_time=7, max_freq=5,
                             prob=1.0).draw_masks(300, 40, 100, "cpu")
    assert (freq.sum(1) <= 10).all() and (freq.sum(1) >= 1).all()
    assert (time.sum(1) <= 21).all() and (time.sum(1) >= 1).all()
    assert (time.sum(1) > 7).any()                 # more than one mask does happen


def test_share_of_masked_samples_follows_prob():
    torch.manual_seed(3)
    freq, time = SpecAugment(prob=0.6).draw_masks(20000, 40, 200, "cpu")
    chosen = freq.any(1)
    assert torch.equal(chosen, time.any(1))        # a sample gets both kinds or neither
    assert abs(chosen.float().mean().item() - 0.6) < 0.02


@pytest.mark.parametrize("frontend", [lambda: LogMelFrontend(n_mels=40), lambda: LogSpectrogramFrontend(),
                                      lambda: MFCCFrontend(n_mfcc=30)])
def test_training_features_are_the_clean_ones_with_whole_rows_and_columns_zeroed(frontend):
    wav = 0.3 * torch.randn(8, SAMPLES, generator=torch.Generator().manual_seed(4))
    plain = frontend().train()
    clean = plain(wav)
    masked_frontend = frontend().train()
    masked_frontend.spec_augment = SpecAugment(max_time=15, max_freq=6, prob=1.0)
    torch.manual_seed(5)
    masked = masked_frontend(wav)
    zero = masked == 0
    assert torch.equal(masked[~zero], clean[~zero])
    for sample in zero:
        bins = sample.all(dim=1).numpy()           # masked frequency bands: whole rows
        frames = sample.all(dim=0).numpy()         # masked time spans: whole columns
        (_, f_width), = runs(bins)
        (_, t_width), = runs(frames)
        assert 1 <= f_width <= 6 and 1 <= t_width <= 15
        # Nothing else is zero.
        assert torch.equal(sample, torch.from_numpy(bins[:, None] | frames[None, :]))
    # Different samples of the batch got different masks.
    assert len({tuple(s.all(dim=1).tolist()) for s in zero}) > 1


def test_eval_mode_leaves_features_bit_identical():
    wav = 0.3 * torch.randn(4, SAMPLES, generator=torch.Generator().manual_seed(6))
    plain = LogMelFrontend().eval()
    augmented = LogMelFrontend()
    augmented.spec_augment = SpecAugment(prob=1.0)
    augmented.eval()                               # reaches the child module, as model.eval() does
    assert torch.equal(plain(wav), augmented(wav))


def model_options(name, argv=()):
    options = parse_options(["--model", name, "--trainfunc", "softmax", *argv])
    return {**vars(options), **ENCODER_OPTIONS.get(name, {})}


@pytest.mark.parametrize("name", sorted(plugins.available("models")))
def test_every_encoder_is_wired_and_off_by_default(name):
    wav = 0.3 * torch.randn(3, SAMPLES, generator=torch.Generator().manual_seed(7))
    factory = plugins.factory("models", name)
    torch.manual_seed(0)
    off = factory(**model_options(name))
    torch.manual_seed(0)
    with_masks = model_options(name, ["--specaugment", "--specaug_prob", "1", "--specaug_max_freq", "4"])
    on = factory(**with_masks)
    assert on.features.spec_augment is None           # no MainModel handles it: the trainer does
    on = attach_spec_augment(on, **with_masks)
    assert attach_spec_augment(off, **model_options(name)).features.spec_augment is None
    assert isinstance(on.features.spec_augment, SpecAugment) and on.features.spec_augment.max_freq == 4
    assert on.state_dict().keys() == off.state_dict().keys()
    # Training mode: the option off gives the plain features, on masks them.
    off.features.train()
    on.features.train()
    assert torch.equal(off.features(wav), off.features.eval()(wav))
    assert (on.features(wav) == 0).any() and not torch.equal(on.features(wav), off.features(wav))
    # Evaluation: the whole encoder gives bit-identical embeddings with the option on or off.
    assert torch.equal(on.eval()(wav), off.eval()(wav))


def test_an_encoder_without_a_front_end_of_ours_refuses_specaugment():
    class Plain(torch.nn.Module):               # e.g. a voxceleb_trainer model file's encoder
        def forward(self, wav):
            return wav[:, :4]
    plain = Plain()
    assert attach_spec_augment(plain, specaugment=False) is plain
    with pytest.raises(UserError, match="--specaugment .* Plain does not use; drop --specaugment"):
        attach_spec_augment(plain, specaugment=True)


def test_bad_option_values_are_user_errors():
    with pytest.raises(UserError, match="--specaug_max_time"):
        spec_augment_from_options(specaugment=True, specaug_max_time=-1)
    with pytest.raises(UserError, match="--specaug_prob"):
        spec_augment_from_options(specaugment=True, specaug_prob=1.5)
    assert spec_augment_from_options(specaugment=False, specaug_prob=1.5) is None
