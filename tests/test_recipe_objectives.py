"""The field's current strongest recipes: sub-center AAM-softmax with the inter-top-k penalty
(loss/subcenter_aamsoftmax.py), the warm-up + exponential / cosine learning-rate schedule
(scheduler/warmup_exp.py), large-margin fine-tuning as a second stage
(configs/ResNet34_wespeaker_LM.yaml) and the recipe configs that use them.

Formulas are checked against loops written here from the papers' and toolkits' definitions
(math only): Deng et al. 2020 (sub-centres), Zhao et al. 2022 (inter-top-k), wespeaker's
ArcMarginProduct_intertopk_subcenter, MarginScheduler and ExponentialDecrease, and
3D-Speaker's WarmupCosineScheduler.
"""
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from conftest import make_corpus, to_argv  # noqa: E402
from speakernet.core import checkpoint  # noqa: E402
from speakernet.run import options, plugins
from scheduler import warmup_exp  # noqa: E402
import trainSpeakerNet  # noqa: E402


def build(name="subcenter_aamsoftmax", **kwargs):
    settings = dict(nOut=6, nClasses=7)
    settings.update(kwargs)
    return plugins.factory("loss", name)(**settings).double()


def batch(seed, n=5, views=2, dim=6, classes=7):
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.normal(size=(n, views, dim)))
    labels = torch.tensor(rng.permutation(classes)[:n])
    return x, labels


# ------------------------------------------------------------------ loop-based reference

def cosine(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))


def neg_log_softmax(logits, target):
    top = max(logits)
    return -(logits[target] - top - math.log(sum(math.exp(z - top) for z in logits)))


def loop_subcenter(x, labels, weight, classes, k, m, s, top_k, mp):
    """Per example: sub-centre max, ArcFace margin on the target (CosFace-like fallback past
    pi), cos(theta_j - mp) on the top_k hardest negatives, scale, cross-entropy; the mean."""
    x, labels, weight = x.numpy(), labels.numpy(), weight.detach().numpy()
    losses, fallbacks = [], []
    for n in range(x.shape[0]):
        for v in range(x.shape[1]):
            emb, y = x[n, v], int(labels[n])
            cos = [max(cosine(emb, weight[c * k + j]) for j in range(k)) for c in range(classes)]
            negatives = sorted((c for c in range(classes) if c != y), key=lambda c: -cos[c])
            hardest = set(negatives[:top_k])
            logits = []
            for c in range(classes):
                theta = math.acos(max(-1.0, min(1.0, cos[c])))
                if c == y:
                    if theta + m < math.pi:
                        logits.append(s * math.cos(theta + m))
                    else:
                        fallbacks.append(n)
                        logits.append(s * (cos[c] - m * math.sin(m)))
                elif c in hardest:
                    logits.append(s * math.cos(theta - mp))
                else:
                    logits.append(s * cos[c])
            losses.append(neg_log_softmax(logits, y))
    return sum(losses) / len(losses), fallbacks


@pytest.mark.parametrize("k, top_k, mp", [(3, 2, 0.1), (3, 0, 0.06), (1, 3, 0.06), (2, 6, 0.2)])
def test_subcenter_intertopk_matches_the_loop(k, top_k, mp):
    m, s = 0.3, 30.0
    loss_fn = build(subcenter_k=k, intertopk_k=top_k, intertopk_margin=mp, margin=m, scale=s)
    assert loss_fn.weight.shape == (7 * k, 6)
    x, labels = batch(1)
    expected, _ = loop_subcenter(x, labels, loss_fn.weight, 7, k, m, s, top_k, mp)
    assert loss_fn(x, labels)[0].item() == pytest.approx(expected, rel=1e-9)


def test_subcenter_target_falls_back_past_pi():
    m, s = 0.3, 30.0
    loss_fn = build(subcenter_k=2, intertopk_k=2, intertopk_margin=0.06, margin=m, scale=s)
    x, labels = batch(2)
    y = int(labels[0])
    with torch.no_grad():       # both sub-centres of the first label point away from x[0, 0]
        loss_fn.weight[2 * y] = -x[0, 0]
        loss_fn.weight[2 * y + 1] = -x[0, 0] + 0.01
    expected, fallbacks = loop_subcenter(x, labels, loss_fn.weight, 7, 2, m, s, 2, 0.06)
    assert fallbacks
    assert loss_fn(x, labels)[0].item() == pytest.approx(expected, rel=1e-9)


def test_one_subcentre_without_penalty_is_aamsoftmax_on_the_same_weights():
    x, labels = batch(3)
    kwargs = dict(margin=0.25, scale=32.0, aam_initial_margin=0.0, aam_curriculum_epochs=2,
                  aam_ramp_epochs=4)
    ours = build(subcenter_k=1, intertopk_k=0, **kwargs)
    reference = build("aamsoftmax", **kwargs)
    ours.load_state_dict(reference.state_dict())      # same name and shape: 'weight' [7, 6]
    for epoch in (1, 3, 5, 9):
        ours.on_epoch_start(epoch)
        reference.on_epoch_start(epoch)
        assert ours.margin == pytest.approx(reference.margin)
        assert ours(x, labels)[0].item() == pytest.approx(reference(x, labels)[0].item(), rel=1e-12)
    # A zero inter-top-k margin is also "no penalty", whatever k.
    silent = build(subcenter_k=1, intertopk_k=5, intertopk_margin=0.0, **kwargs)
    silent.load_state_dict(reference.state_dict())
    silent.on_epoch_start(9)
    assert silent(x, labels)[0].item() == pytest.approx(reference(x, labels)[0].item(), rel=1e-12)


def test_gradients_are_finite_and_reach_the_weights():
    loss_fn = build()
    x, labels = batch(4)
    x.requires_grad_(True)
    loss, metric = loss_fn(x, labels)
    loss.backward()
    assert math.isfinite(loss.item()) and 0 <= float(metric) <= 100
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.isfinite(loss_fn.weight.grad).all() and loss_fn.weight.grad.abs().sum() > 0


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    loss_fn = build(nOut=8, nClasses=6).float()
    embeddings = nn.Parameter(torch.randn(6, 1, 8))
    labels = torch.arange(6)
    optimizer = torch.optim.Adam([embeddings, *loss_fn.parameters()], lr=0.05)
    first = loss_fn(embeddings, labels)[0].item()
    for _ in range(40):
        loss = loss_fn(embeddings, labels)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss_fn(embeddings, labels)[0].item() < 0.5 * first


def test_runs_under_bf16_autocast():
    loss_fn = build().float()
    layer = nn.Linear(6, 6)
    x, labels = batch(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = loss_fn(layer(x.float()), labels)
    loss.backward()
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


# ------------------------------------------------------------------ margin warm-up

def wespeaker_exp_margin(progress, initial, final):
    """wespeaker MarginScheduler.get_increase_margin, increase_type 'exp' (its 1e-6 dropped)."""
    return initial + (final - initial) * (1.0 - math.exp(progress * math.log(1e-3)))


def test_margin_warm_up_linear_and_exponential():
    linear = build(margin=0.2, aam_initial_margin=0.0, aam_curriculum_epochs=20, aam_ramp_epochs=20)
    exp = build(margin=0.2, aam_initial_margin=0.0, aam_curriculum_epochs=20, aam_ramp_epochs=20,
                aam_ramp_shape="exp")
    for epoch in (1, 20):
        assert linear.margin_at(epoch) == exp.margin_at(epoch) == 0.0
    for epoch in range(21, 40):
        progress = (epoch - 20) / 20
        assert linear.margin_at(epoch) == pytest.approx(0.2 * progress)
        assert exp.margin_at(epoch) == pytest.approx(wespeaker_exp_margin(progress, 0.0, 0.2))
        assert exp.margin_at(epoch) > linear.margin_at(epoch)      # exp rises early
    for epoch in (40, 41, 150):
        assert linear.margin_at(epoch) == exp.margin_at(epoch) == pytest.approx(0.2)


def test_intertopk_margin_follows_the_margin_like_wespeaker_update():
    loss_fn = build(margin=0.2, intertopk_margin=0.06, aam_initial_margin=0.0,
                    aam_curriculum_epochs=2, aam_ramp_epochs=2, aam_ramp_shape="exp")
    for epoch in (1, 2, 3, 4, 10):
        loss_fn.on_epoch_start(epoch)
        # wespeaker ArcMarginProduct_intertopk_subcenter.update: mp * margin / 0.2 (0 at margin 0)
        assert loss_fn.penalty == pytest.approx(0.06 * loss_fn.margin / 0.2)
    assert loss_fn.penalty == pytest.approx(0.06)
    loss_fn.on_epoch_start(1)
    assert loss_fn.penalty == 0.0


@pytest.mark.parametrize("kwargs", [dict(subcenter_k=0), dict(intertopk_k=-1),
                                    dict(intertopk_margin=-0.1), dict(aam_curriculum_epochs=3),
                                    dict(aam_ramp_shape="cubic")])
def test_rejects_bad_options(kwargs):
    with pytest.raises(options.OptionError):
        build(**kwargs)


def test_options_and_wespeaker_defaults():
    parsed = options.parse_options(["--model", "ResNetSE34L", "--trainfunc", "subcenter_aamsoftmax"])
    assert (parsed.margin, parsed.scale, parsed.subcenter_k, parsed.intertopk_k,
            parsed.intertopk_margin, parsed.aam_ramp_shape) == (0.2, 32.0, 3, 5, 0.06, "linear")
    assert parsed.aam_initial_margin is None and parsed.aam_curriculum_epochs == 0
    mine = options.parse_options(["--model", "ResNetSE34L", "--trainfunc", "subcenter_aamsoftmax",
                                  "--margin", "0.3",
                                  "--subcenter_k", "1", "--aam_ramp_shape", "exp"])
    assert (mine.margin, mine.subcenter_k, mine.aam_ramp_shape) == (0.3, 1, "exp")
    objective = plugins.factory("loss", "subcenter_aamsoftmax")(**vars(parsed))
    assert objective.needs.classifier and objective.weight.shape == (5994 * 3, 512)


# ------------------------------------------------------------------ scheduler

def wespeaker_exponential_decrease(t, initial_lr, final_lr, warm_iters, max_iter):
    """wespeaker ExponentialDecrease.get_current_lr with warm_from_zero and scale_ratio 1."""
    coeff = t / warm_iters if t < warm_iters else 1.0
    return coeff * initial_lr * math.exp((t / max_iter) * math.log(final_lr / initial_lr))


def threed_speaker_warmup_cosine(t, min_lr, max_lr, warm_iters, fix_iters):
    """3D-Speaker WarmupCosineScheduler.clr."""
    if t < warm_iters:
        return min_lr + (max_lr - min_lr) * t / warm_iters
    if t < fix_iters:
        return min_lr + 0.5 * (max_lr - min_lr) * (
            1 + math.cos(math.pi * (t - warm_iters) / (fix_iters - warm_iters)))
    return min_lr


def curve(steps, **settings):
    """The learning rate of each of `steps` optimizer steps, as the trainer steps it."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=settings["lr"], momentum=0.9)
    scheduler, unit = warmup_exp.Scheduler(optimizer, **settings)
    assert unit == "iteration"
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates, scheduler, optimizer


def test_exponential_curve_matches_wespeaker():
    lr, final, per_epoch, epochs = 0.1, 5e-5, 10, 15
    rates, _, _ = curve(per_epoch * epochs + 20, lr=lr, final_lr=final, warmup_epochs=2,
                        iters_per_epoch=per_epoch, max_epoch=epochs)
    total = per_epoch * epochs
    for t, rate in enumerate(rates):
        expected = wespeaker_exponential_decrease(min(t, total), lr, final, 2 * per_epoch, total)
        assert rate == pytest.approx(expected, rel=1e-9, abs=1e-15), t
    assert rates[0] == 0.0 and rates[total] == pytest.approx(final) and rates[-1] == pytest.approx(final)
    assert max(rates) < lr       # the decay has already started when the warm-up ends


def test_cosine_curve_matches_3d_speaker():
    lr, final, per_epoch, epochs = 0.1, 1e-4, 8, 12
    rates, _, _ = curve(per_epoch * epochs + 10, lr=lr, final_lr=final, warmup_epochs=5,
                        warmup_decay="cosine", iters_per_epoch=per_epoch, max_epoch=epochs)
    for t, rate in enumerate(rates):
        expected = threed_speaker_warmup_cosine(t, final, lr, 5 * per_epoch, epochs * per_epoch)
        assert rate == pytest.approx(expected, rel=1e-9), t
    assert rates[5 * per_epoch] == pytest.approx(lr)


def test_no_warm_up_starts_at_lr():
    rates, _, _ = curve(3, lr=0.1, final_lr=1e-3, warmup_epochs=0, iters_per_epoch=10, max_epoch=2)
    assert rates[0] == pytest.approx(0.1)
    assert rates[1] == pytest.approx(0.1 * (1e-3 / 0.1) ** (1 / 20))


def test_resumed_scheduler_continues_the_curve():
    settings = dict(lr=0.1, final_lr=1e-4, warmup_epochs=1, iters_per_epoch=10, max_epoch=4)
    through, _, _ = curve(40, **settings)
    _, scheduler, stopped = curve(17, **settings)
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    resumed, _ = warmup_exp.Scheduler(optimizer, **settings)
    # As Trainer.load_state_dict does: the optimizer (its current lr) first, then the scheduler.
    optimizer.load_state_dict(stopped.state_dict())
    resumed.load_state_dict(scheduler.state_dict())
    rates = []
    for _ in range(23):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        resumed.step()
    assert rates == pytest.approx(through[17:], rel=1e-12)


def test_iterations_per_epoch_are_the_planned_steps_or_the_option():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    planned, _ = warmup_exp.Scheduler(optimizer, lr=0.1, final_lr=1e-3, max_epoch=2, steps_per_epoch=11)
    given, _ = warmup_exp.Scheduler(optimizer, lr=0.1, final_lr=1e-3, max_epoch=2, steps_per_epoch=11,
                                    iters_per_epoch=7)
    assert (planned.iters_per_epoch, given.iters_per_epoch) == (11, 7)
    with pytest.raises(options.OptionError, match="--iters_per_epoch"):        # neither: no guessing
        warmup_exp.Scheduler(optimizer, lr=0.1, final_lr=1e-3, max_epoch=2, train_list="any.txt")


@pytest.mark.parametrize("kwargs", [dict(final_lr=0.0), dict(final_lr=0.2), dict(warmup_epochs=-1),
                                    dict(warmup_decay="step"),
                                    dict(iters_per_epoch=-2), dict(iters_per_epoch=0)])
def test_scheduler_rejects_bad_options(kwargs):
    settings = dict(lr=0.1, final_lr=1e-3, warmup_epochs=1, iters_per_epoch=10, max_epoch=4)
    settings.update(kwargs)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(options.OptionError):
        warmup_exp.Scheduler(optimizer, **settings)


def test_cosine_accepts_a_zero_floor():
    rates, _, _ = curve(30, lr=0.1, final_lr=0.0, warmup_epochs=0, warmup_decay="cosine",
                        iters_per_epoch=10, max_epoch=2)
    assert rates[0] == pytest.approx(0.1) and rates[-1] == 0.0


# ------------------------------------------------------------------ recipe configs

def config_values(name):
    return options.parse_options(["--config", os.path.join(ROOT, "configs", name)])


def test_recipe_configs_use_the_published_schedulers():
    resnet = config_values("ResNet34_wespeaker_AAM.yaml")
    assert (resnet.scheduler, resnet.warmup_decay, resnet.warmup_epochs, resnet.max_epoch) == \
        ("warmup_exp", "exp", 6.0, 150)
    # wespeaker's 0.1 -> 5e-5 per 64 utterances, for one process of 128
    assert (resnet.lr, resnet.final_lr) == pytest.approx((0.1 * 128 / 64, 5e-5 * 128 / 64))
    campplus = config_values("CAMPPlus_3dspeaker_AAM.yaml")
    assert (campplus.scheduler, campplus.warmup_decay, campplus.warmup_epochs, campplus.lr,
            campplus.final_lr, campplus.max_epoch) == ("warmup_exp", "cosine", 5.0, 0.1, 1e-4, 60)
    lm = config_values("ResNet34_wespeaker_LM.yaml")
    assert (lm.margin, lm.scale, lm.max_frames, lm.max_epoch, lm.test_interval, lm.batch_size) == \
        (0.5, 32.0, 600, 5, 1, 64)
    assert lm.aam_curriculum_epochs == 0 and lm.trainfunc == resnet.trainfunc
    assert (lm.lr, lm.final_lr, lm.warmup_epochs) == pytest.approx((1e-4, 2.5e-5, 1.0))
    for key in ("model", "resnet_depth", "resnet_channels", "encoder_type", "n_mels", "nOut",
                "nClasses", "speed_perturb", "aug_fraction"):
        assert getattr(lm, key) == getattr(resnet, key), key


# ------------------------------------------------------------------ large-margin fine-tuning

def encoder_parameters(path):
    state = checkpoint.load_file(path)["model"]
    return {k: v for k, v in state.items() if k.startswith("encoder.") and v.is_floating_point()
            and "running" not in k}


def test_lm_stage_starts_from_a_trained_checkpoint(tmp_path):
    """The LM config's documented command, on a tiny corpus: a first stage of one epoch with the
    ResNet-34 recipe config (a quarter of its width), then the LM stage from its best.model."""
    corpus = make_corpus(tmp_path / "corpus")
    tiny = dict(resnet_channels=8, nClasses=18, batch_size=3, max_frames=20, eval_frames=30,
                num_eval=2, nDataLoaderThread=0, device="cpu", max_epoch=1, test_interval=1,
                train_list=corpus.train_list, train_path=corpus.root, test_list=corpus.test_list,
                test_path=corpus.root)
    first, second = tmp_path / "exps" / "resnet34", tmp_path / "exps" / "resnet34_lm"
    argv = ["--config", os.path.join(ROOT, "configs", "ResNet34_wespeaker_AAM.yaml"),
            *to_argv(dict(tiny, save_path=first)), "--no-augment"]
    assert trainSpeakerNet.main(argv) == 0
    best = first / "model" / "best.model"
    assert best.exists()
    # The command of the LM config's header, plus the tiny corpus; 30-frame crops (> first stage).
    lm_argv = ["--config", os.path.join(ROOT, "configs", "ResNet34_wespeaker_LM.yaml"),
               "--initial_model", str(best), *to_argv(dict(tiny, save_path=second, max_frames=30)),
               "--no-augment"]
    assert trainSpeakerNet.main(lm_argv) == 0
    written = checkpoint.list_checkpoints(second / "model")
    assert [epoch for epoch, _ in written] == [1]
    saved = checkpoint.load_file(written[0][1])["options"]
    assert (saved["margin"], saved["initial_model"], saved["scheduler"]) == (0.5, str(best), "warmup_exp")
    # Started from the first stage: with lr <= 1e-4 (warming up from 0) the weights barely move,
    # far less than they differ from a fresh initialisation.
    before, after = encoder_parameters(best), encoder_parameters(written[0][1])
    moved = max((after[k] - before[k]).abs().max().item() for k in before)
    torch.manual_seed(123)
    fresh = trainSpeakerNet.build_model(options.parse_options(lm_argv)).state_dict()
    apart = max((fresh[k] - before[k]).abs().max().item() for k in before)
    assert moved < 1e-2 < apart
    assert (second / "metrics.jsonl").exists() and (second / "result" / "scores.txt").exists()
    assert Path(first / "model").exists()      # the first stage is left as it was
