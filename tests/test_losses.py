"""Tests for the objectives in loss/, scheduler/plateau.py and the paper configs.

Each objective's value is checked against a loop over samples and classes written here
from the paper's formula (math/numpy only), its gradients, that it lowers its own loss on a
tiny problem, its curriculum at the stated epochs, and its views requirement.
"""
import argparse
import glob
import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from speakernet.run import options  # noqa: E402
from speakernet.run import plugins  # noqa: E402
import trainSpeakerNet  # noqa: E402
from scheduler.plateau import Scheduler as PlateauScheduler  # noqa: E402

METRIC_OBJECTIVES = ["triplet", "proto", "ge2e", "softmaxproto", "acont"]
CLASSIFIER_OBJECTIVES = ["amsoftmax", "aamsoftmax", "adacos", "circle"]
ALL_OBJECTIVES = CLASSIFIER_OBJECTIVES + METRIC_OBJECTIVES
TWO_VIEW_ONLY = {"triplet", "acont"}


def build(name, **kwargs):
    settings = dict(nOut=6, nClasses=7, nPerSpeaker=2)
    settings.update(kwargs)
    return plugins.factory("loss", name)(**settings).double()


def batch(seed, n=5, views=2, dim=6, classes=7):
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.normal(size=(n, views, dim)))
    labels = torch.tensor(rng.permutation(classes)[:n])
    return x, labels


# ------------------------------------------------------------------ loop-based references

def unit(v):
    v = np.asarray(v, dtype=float)
    return v / math.sqrt(float(v @ v))


def cosine(a, b):
    return float(unit(a) @ unit(b))


def sq_dist(a, b):
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return float(d @ d)


def neg_log_softmax(logits, target):
    top = max(logits)
    return -(logits[target] - top - math.log(sum(math.exp(z - top) for z in logits)))


def rows_of(x, labels):
    """Flatten views: every view of group n is one example labelled labels[n]."""
    x, labels = x.numpy(), labels.numpy()
    return [(x[n, v], int(labels[n])) for n in range(x.shape[0]) for v in range(x.shape[1])]


def loop_cosine_classifier(x, labels, weight_rows, target_logit, other_logit):
    losses = []
    for emb, y in rows_of(x, labels):
        logits = []
        for j, w in enumerate(weight_rows):
            c = cosine(emb, w)
            logits.append(target_logit(c) if j == y else other_logit(c))
        losses.append(neg_log_softmax(logits, y))
    return sum(losses) / len(losses)


def loop_angleproto(x, w, b):
    x = x.numpy()
    n, m = x.shape[:2]
    losses = []
    for j in range(n):
        query = x[j, m - 1]
        logits = [w * cosine(query, x[k, :m - 1].mean(axis=0)) + b for k in range(n)]
        losses.append(neg_log_softmax(logits, j))
    return sum(losses) / n


# ------------------------------------------------------------------ values vs the papers

def test_amsoftmax_matches_eq3():
    x, labels = batch(0)
    loss_fn = build("amsoftmax", margin=0.2, scale=30.0)
    weight_rows = loss_fn.W.detach().numpy().T
    expected = loop_cosine_classifier(x, labels, weight_rows, lambda c: 30.0 * (c - 0.2),
                                      lambda c: 30.0 * c)
    assert loss_fn(x, labels)[0].item() == pytest.approx(expected, rel=1e-9)


def test_aamsoftmax_matches_eq4_with_fallback_past_pi():
    x, labels = batch(1)
    m, s = 0.3, 30.0
    loss_fn = build("aamsoftmax", margin=m, scale=s)
    weight_rows = loss_fn.weight.detach().numpy()
    # One view points almost opposite its class weight: theta + m > pi takes the fallback.
    x[0, 0] = -torch.tensor(weight_rows[labels[0]]) + 0.01
    used_fallback = []

    def target_logit(c):
        theta = math.acos(c)
        if theta + m < math.pi:
            return s * math.cos(theta + m)
        used_fallback.append(c)
        return s * (c - m * math.sin(m))

    expected = loop_cosine_classifier(x, labels, weight_rows, target_logit, lambda c: s * c)
    assert used_fallback
    assert loss_fn(x, labels)[0].item() == pytest.approx(expected, rel=1e-6)


def test_triplet_hardest_negative_matches_eq5():
    x, _ = batch(2, n=6)
    margin = 0.3
    loss_fn = build("triplet", margin=margin, hard_rank=1, hard_prob=1.0)
    anchors = [unit(v) for v in x[:, 0].numpy()]
    positives = [unit(v) for v in x[:, 1].numpy()]
    losses = []
    for j, anchor in enumerate(anchors):
        hardest = min((k for k in range(len(anchors)) if k != j),
                      key=lambda k: sq_dist(anchor, positives[k]))
        losses.append(max(0.0, sq_dist(anchor, positives[j]) - sq_dist(anchor, positives[hardest]) + margin))
    assert loss_fn(x)[0].item() == pytest.approx(sum(losses) / len(losses), rel=1e-9, abs=1e-12)


def test_proto_matches_eqs_6_to_8_with_negative_distances():
    x, _ = batch(3, n=5, views=3)
    loss_fn = build("proto")
    xs = x.numpy()
    losses = []
    for j in range(5):
        query = xs[j, -1]
        logits = [-sq_dist(query, xs[k, :-1].mean(axis=0)) for k in range(5)]
        losses.append(neg_log_softmax(logits, j))
    assert loss_fn(x)[0].item() == pytest.approx(sum(losses) / 5, rel=1e-9)
    assert loss_fn.test_normalize is False


@pytest.mark.parametrize("views", [2, 3, 4])
def test_ge2e_matches_eqs_9_to_12(views):
    x, _ = batch(4, n=4, views=views)
    loss_fn = build("ge2e")
    with torch.no_grad():
        loss_fn.w.fill_(7.3)
        loss_fn.b.fill_(-2.1)
    xs = x.numpy()
    n, m = xs.shape[:2]
    losses = []
    for j in range(n):
        for i in range(m):
            logits = []
            for k in range(n):
                if k == j:   # the own centroid leaves the utterance out (eq. 10 as intended)
                    centroid = sum(xs[j, t] for t in range(m) if t != i) / (m - 1)
                else:
                    centroid = xs[k].mean(axis=0)
                logits.append(7.3 * cosine(xs[j, i], centroid) - 2.1)
            losses.append(neg_log_softmax(logits, j))
    # Mean over all N*M utterances (eq. 12 prints 1/N; see loss/ge2e.py).
    assert loss_fn(x)[0].item() == pytest.approx(sum(losses) / (n * m), rel=1e-9)


def test_softmaxproto_is_softmax_plus_angular_prototypical():
    x, labels = batch(5, n=4, views=3)
    loss_fn = build("softmaxproto")
    weight = loss_fn.softmax.fc.weight.detach().numpy()
    bias = loss_fn.softmax.fc.bias.detach().numpy()
    softmax_losses = [neg_log_softmax([float(weight[c] @ emb + bias[c]) for c in range(7)], y)
                      for emb, y in rows_of(x, labels)]
    expected = sum(softmax_losses) / len(softmax_losses) + loop_angleproto(x, 10.0, -5.0)
    assert loss_fn(x, labels)[0].item() == pytest.approx(expected, rel=1e-9)


def test_acont_matches_symmetric_eq6():
    x, _ = batch(6, n=5)
    loss_fn = build("acont")
    with torch.no_grad():
        loss_fn.w.fill_(6.0)
        loss_fn.b.fill_(-1.5)
    first, second = x[:, 0].numpy(), x[:, 1].numpy()
    k = len(first)

    def sim(i, j):
        return 6.0 * cosine(first[i], second[j]) - 1.5

    rows = [neg_log_softmax([sim(i, j) for j in range(k)], i) for i in range(k)]
    columns = [neg_log_softmax([sim(j, i) for j in range(k)], i) for i in range(k)]
    expected = sum(rows) / (2 * k) + sum(columns) / (2 * k)
    assert loss_fn(x)[0].item() == pytest.approx(expected, rel=1e-9)


def test_adacos_dynamic_scale_and_loss():
    x, labels = batch(7, n=5, views=1, classes=7)
    x = x[:, 0]
    loss_fn = build("adacos")
    weight_rows = loss_fn.weight.detach().numpy()
    previous = math.sqrt(2) * math.log(7 - 1)
    assert loss_fn.scale.item() == pytest.approx(previous)
    for step in range(2):
        b_sum, angles = 0.0, []
        for emb, y in zip(x.numpy(), labels.numpy()):
            for j, w in enumerate(weight_rows):
                if j == y:
                    angles.append(math.acos(cosine(emb, w)))
                else:
                    b_sum += math.exp(previous * cosine(emb, w))
        scale = math.log(b_sum / len(angles)) / math.cos(min(math.pi / 4, float(np.median(angles))))
        expected = loop_cosine_classifier(x[:, None], labels, weight_rows, lambda c: scale * c,
                                          lambda c: scale * c)
        assert loss_fn(x, labels)[0].item() == pytest.approx(expected, rel=1e-9)
        assert loss_fn.scale.item() == pytest.approx(scale, rel=1e-9)
        previous = scale
        x = x + 0.3     # the next batch differs; the update starts from the stored scale
    stored = loss_fn.scale.item()
    loss_fn.eval()
    loss_fn(x, labels)
    assert loss_fn.scale.item() == stored, "evaluation must not move the scale"


def loop_circle(x, labels, weight_rows, s, margin_of_row):
    losses = []
    for r, (emb, y) in enumerate(rows_of(x, labels)):
        m = margin_of_row(r)
        logits = []
        for j, w in enumerate(weight_rows):
            c = cosine(emb, w)
            if j == y:
                logits.append(s * max(0.0, 1 + m - c) * (c - (1 - m)))
            else:
                logits.append(s * max(0.0, c + m) * (c - m))
        losses.append(neg_log_softmax(logits, y))
    return sum(losses) / len(losses)


def test_circle_matches_class_level_circle_loss():
    x, labels = batch(8, n=5, views=2)
    loss_fn = build("circle", margin=0.4, scale=60.0)
    weight_rows = loss_fn.weight.detach().numpy()
    expected = loop_circle(x, labels, weight_rows, 60.0, lambda r: 0.4)
    assert loss_fn(x, labels)[0].item() == pytest.approx(expected, rel=1e-9)


def test_circle_chunk_margin_per_view_follows_eq8():
    x, labels = batch(9, n=4, views=2)
    loss_fn = build("circle", margin=0.4, scale=60.0, circle_chunk_intervals=["200-400"],
                    circle_chunk_lambda=0.2)
    loss_fn.on_batch_start((250, 350))
    weight_rows = loss_fn.weight.detach().numpy()

    def margin_of_row(r):     # row n*V + v is view v
        length = (250, 350)[r % 2]
        return (1 - 0.2 * (length - 200) / (400 - 200)) * 0.4

    expected = loop_circle(x, labels, weight_rows, 60.0, margin_of_row)
    assert loss_fn(x, labels)[0].item() == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------ gradients and learning

def objective_kwargs(name):
    return {"circle": dict(margin=0.4, scale=60.0), "aamsoftmax": dict(margin=0.2, scale=30.0),
            "amsoftmax": dict(margin=0.2, scale=30.0)}.get(name, {})


@pytest.mark.parametrize("name", ALL_OBJECTIVES + ["circle_undetached"])
def test_gradients_are_finite_and_reach_every_parameter(name):
    kwargs = {}
    if name == "circle_undetached":
        name, kwargs = "circle", dict(circle_detach_weights=False)
    loss_fn = build(name, **objective_kwargs(name), **kwargs)
    x, labels = batch(10, n=5, views=2)
    x.requires_grad_(True)
    loss, metric = loss_fn(x, labels)
    loss.backward()
    assert math.isfinite(loss.item()) and math.isfinite(float(metric))
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, param in loss_fn.named_parameters():
        assert param.grad is not None, pname
        assert torch.isfinite(param.grad).all(), pname
        # A bias added to every logit cancels in the softmax: its gradient is exactly 0.
        if not pname.endswith("b"):
            assert param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ALL_OBJECTIVES)
def test_objective_lowers_its_loss_on_a_tiny_problem(name):
    torch.manual_seed(0)
    loss_fn = build(name, nOut=8, nClasses=6, **objective_kwargs(name)).float()
    views = 2 if name in TWO_VIEW_ONLY or name not in METRIC_OBJECTIVES else 3
    embeddings = nn.Parameter(torch.randn(6, views, 8))
    labels = torch.arange(6)
    optimizer = torch.optim.Adam([embeddings, *loss_fn.parameters()], lr=0.05)
    first = loss_fn(embeddings, labels)[0].item()
    for _ in range(40):
        loss = loss_fn(embeddings, labels)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    last = loss_fn(embeddings, labels)[0].item()
    assert last < 0.5 * first, (name, first, last)


@pytest.mark.parametrize("name", ALL_OBJECTIVES)
def test_objective_runs_under_bf16_autocast(name):
    """The trainer's --mixedprec on a CPU: a finite float32 loss and finite gradients."""
    loss_fn = build(name, **objective_kwargs(name)).float()
    layer = nn.Linear(6, 6)
    x, labels = batch(12, n=5, views=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = loss_fn(layer(x.float()), labels)
    loss.backward()
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


# ------------------------------------------------------------------ curricula

def test_aam_curriculum_switches_after_100_epochs():
    loss_fn = build("aamsoftmax", margin=0.3, aam_initial_margin=0.1, aam_curriculum_epochs=100)
    for epoch, margin in [(1, 0.1), (100, 0.1), (101, 0.3), (500, 0.3)]:
        loss_fn.on_epoch_start(epoch)
        assert loss_fn.margin == pytest.approx(margin), epoch
    ramped = build("aamsoftmax", margin=0.3, aam_initial_margin=0.1, aam_curriculum_epochs=100,
                   aam_ramp_epochs=10)
    for epoch, margin in [(100, 0.1), (105, 0.2), (110, 0.3), (200, 0.3)]:
        assert ramped.margin_at(epoch) == pytest.approx(margin), epoch
    assert build("aamsoftmax", margin=0.2).margin_at(1) == pytest.approx(0.2)


def test_triplet_chnm_random_until_epoch_100_then_hardest_one_percent():
    loss_fn = build("triplet", triplet_mining="chnm", triplet_chnm_after=100,
                    triplet_chnm_fraction=0.01)
    assert loss_fn.mining_at(1)[0] == "random"
    assert loss_fn.mining_at(100)[0] == "random"
    assert loss_fn.mining_at(101) == ("hardest_fraction", 0.01, 1.0)
    torch.manual_seed(0)
    dist = torch.rand(50, 50)
    hardest = dist.masked_fill(torch.eye(50, dtype=torch.bool), math.inf).argmin(dim=1)
    loss_fn.on_epoch_start(101)       # 1% of 49 negatives rounds up to the single hardest
    assert torch.equal(loss_fn.mine_negatives(dist), hardest)
    loss_fn.on_epoch_start(100)
    picks = torch.stack([loss_fn.mine_negatives(dist) for _ in range(20)])
    assert (picks != hardest).float().mean() > 0.5


def test_triplet_mining_modes_pick_valid_negatives():
    torch.manual_seed(1)
    n = 12
    dist = torch.rand(n, n) * 2
    rows = torch.arange(n)
    order = dist.masked_fill(torch.eye(n, dtype=torch.bool), math.inf).argsort(dim=1)
    hard = build("triplet", hard_rank=3, hard_prob=1.0)
    for _ in range(20):
        picks = hard.mine_negatives(dist)
        assert all(int(p) in order[j, :3].tolist() for j, p in enumerate(picks))
    rand = build("triplet", triplet_mining="random")
    picks = torch.stack([rand.mine_negatives(dist) for _ in range(200)])
    assert (picks != rows).all()
    assert all(len(set(picks[:, j].tolist())) == n - 1 for j in range(n))
    semi = build("triplet", triplet_mining="semihard", margin=0.5)
    positive = dist.diagonal()[:, None]
    band = (dist > positive) & (dist < positive + 0.5) & ~torch.eye(n, dtype=torch.bool)
    for _ in range(20):
        picks = semi.mine_negatives(dist)
        for j, p in enumerate(picks):
            assert p != j
            if band[j].any():
                assert band[j, p]


def test_circle_stage_margins_and_chunk_intervals_by_epoch():
    loss_fn = build("circle", margin=0.4, circle_stage_epochs=[31, 46],
                    circle_stage_margins=[0.40, 0.35, 0.32],
                    circle_chunk_intervals=["200-400", "300-500", "400-600"], nPerSpeaker=2)
    for epoch, margin in [(1, 0.40), (30, 0.40), (31, 0.35), (45, 0.35), (46, 0.32), (500, 0.32)]:
        loss_fn.on_epoch_start(epoch)
        assert loss_fn.margin_for() == pytest.approx(margin), epoch
    for epoch, (low, high) in [(1, (200, 400)), (31, (300, 500)), (46, (400, 600))]:
        rng = np.random.default_rng(epoch)
        drawn = [loss_fn.view_frames(epoch, rng) for _ in range(400)]
        assert all(len(f) == 2 and f[0] == f[1] for f in drawn)
        lengths = [f[0] for f in drawn]
        assert min(lengths) >= low and max(lengths) <= high
        assert min(lengths) < low + 20 and max(lengths) > high - 20
    # Same generator state, same lengths: the sampler's plan stays reproducible.
    assert loss_fn.view_frames(5, np.random.default_rng(3)) == loss_fn.view_frames(5, np.random.default_rng(3))


def test_circle_chunk_margin_shrinks_with_crop_length():
    loss_fn = build("circle", margin=0.4, circle_stage_epochs=[31, 46],
                    circle_chunk_intervals=["200-400", "300-500", "400-600"], circle_chunk_lambda=0.2)
    loss_fn.on_epoch_start(1)
    assert loss_fn.margin_for(200) == pytest.approx(0.40)
    assert loss_fn.margin_for(300) == pytest.approx(0.36)
    assert loss_fn.margin_for(400) == pytest.approx(0.32)
    loss_fn.on_epoch_start(46)          # stage 3 measures L within [400, 600]
    assert loss_fn.margin_for(400) == pytest.approx(0.40)
    assert loss_fn.margin_for(600) == pytest.approx(0.32)


def test_circle_list_options_accept_comma_strings():
    loss_fn = build("circle", circle_stage_epochs="31,46", circle_stage_margins="0.40,0.35,0.32")
    assert loss_fn.stage_starts == [31, 46] and loss_fn.margins == [0.40, 0.35, 0.32]


def test_circle_without_intervals_uses_max_frames():
    from DatasetLoader import SpeakerBalancedSampler
    loss_fn = build("circle", nPerSpeaker=1)
    assert loss_fn.view_frames(1, np.random.default_rng(0)) is None      # the sampler's --max_frames
    sampler = SpeakerBalancedSampler(np.repeat(np.arange(4), 2), 2, 1, 500, view_frames=loss_fn.view_frames,
                                     max_frames=250)
    assert {r.frames for batch in sampler.plan(1) for r in batch} == {(250,)}


def test_curriculum_state_depends_only_on_the_epoch():
    """A resumed run calls on_epoch_start(epoch) once; it must match a run that went through."""
    make = lambda: build("circle", circle_stage_epochs=[3, 5], circle_stage_margins=[0.4, 0.35, 0.32])  # noqa: E731
    through, resumed = make(), make()
    for epoch in range(1, 7):
        through.on_epoch_start(epoch)
    resumed.on_epoch_start(6)
    assert through.margin_for() == resumed.margin_for()


@pytest.mark.parametrize("kwargs", [
    dict(circle_stage_epochs=[31, 46], circle_stage_margins=[0.4, 0.35]),
    dict(circle_stage_epochs=[46, 31]),
    dict(circle_chunk_lambda=0.2),
    dict(circle_chunk_intervals=["400-200"]),
    dict(circle_chunk_intervals=["200to400"]),
])
def test_circle_rejects_inconsistent_options(kwargs):
    with pytest.raises(options.OptionError):
        build("circle", **kwargs)


# ------------------------------------------------------------------ views requirement

@pytest.mark.parametrize("name", METRIC_OBJECTIVES)
def test_metric_objectives_need_two_views(name):
    loss_fn = build(name, nPerSpeaker=1)
    assert loss_fn.needs.min_views == 2
    settings = argparse.Namespace(nPerSpeaker=1, trainfunc=name)
    with pytest.raises(options.OptionError, match="--nPerSpeaker 2"):
        trainSpeakerNet.views_per_group(settings, loss_fn)
    x, labels = batch(11, n=4, views=1)
    with pytest.raises(ValueError, match="nPerSpeaker"):
        loss_fn(x[:, 0], labels)


@pytest.mark.parametrize("name", sorted(TWO_VIEW_ONLY))
def test_pair_objectives_reject_more_than_two_views(name):
    with pytest.raises(options.OptionError, match="--nPerSpeaker 2"):
        build(name, nPerSpeaker=3)


def test_helpers_are_not_selectable_objectives():
    names = plugins.available("loss")
    assert set(ALL_OBJECTIVES) <= set(names)
    assert not {"curriculum", "labelled_views", "accuracy"} & set(names)


def test_state_dicts_match_voxceleb_trainer_names():
    expected = {
        "aamsoftmax": {"weight": (5994, 512)},
        "amsoftmax": {"W": (512, 5994)},
        "softmaxproto": {"softmax.fc.weight": (5994, 512), "softmax.fc.bias": (5994,),
                         "angleproto.w": (), "angleproto.b": ()},
        "ge2e": {"w": (), "b": ()},
        "proto": {},
        "triplet": {},
    }
    for name, shapes in expected.items():
        state = build(name, nOut=512, nClasses=5994).state_dict()
        assert {k: tuple(v.shape) for k, v in state.items()} == shapes, name


# ------------------------------------------------------------------ scheduler and configs

def test_plateau_divides_lr_by_ten_when_the_loss_stops_improving():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    scheduler, unit_name = PlateauScheduler(optimizer, plateau_factor=0.1, plateau_patience=2)
    assert unit_name == "loss"
    lrs = []
    for loss in [1.0, 0.8, 0.8, 0.8, 0.8, 0.8]:
        scheduler.step(loss)
        lrs.append(optimizer.param_groups[0]["lr"])
    # best at epoch 2; epochs 3-4 are within patience, epoch 5 is the third without improvement
    assert lrs[:4] == pytest.approx([0.1] * 4)
    assert lrs[4] == pytest.approx(0.01)
    restored, _ = PlateauScheduler(optimizer)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.best == pytest.approx(0.8)


CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def parse_config(path):
    """The config alone must name and configure its components."""
    return options.parse_options(["--config", path])


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_parses_and_builds_its_objective(path):
    parsed = parse_config(path)
    objective = plugins.factory("loss", parsed.trainfunc)(**vars(parsed))
    views = trainSpeakerNet.views_per_group(parsed, objective)
    frames = objective.view_frames(1, np.random.default_rng(0))
    if frames is not None:
        assert len(frames) == views
