"""Self-supervised objectives (loss/cel.py, loss/moco.py, loss/dino.py), their curricula
(loss._ssl_curricula.py), scheduler/sgdr.py and the SSL / fine-tuning configs.

Formulas are checked against loops written here from the papers; training steps go through
the real Trainer with a tiny encoder, so everything runs in seconds on a shared CPU.
"""
import argparse
import logging
import math
import os
import random
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from speakernet.core import checkpoint
from speakernet.data import curriculum_data
from speakernet.run import options
from speakernet.run import plugins
import trainSpeakerNet
from conftest import make_corpus, train_argv
from DatasetLoader import SpeakerBalancedSampler, crop_samples, read_train_list
from loss.cel import uniformity_loss
from loss.dino import dino_loss
from loss._ssl_curricula import parse_schedule
from speakernet.run.options import OptionError
from scheduler import sgdr, steplr
from SpeakerNet import SpeakerNet, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SSL = ["cel", "moco", "dino"]
CPU = torch.device("cpu")


class TinyEncoder(nn.Module):
    """Waveform -> embedding in a few thousand parameters, with batch norm like the real ones."""

    def __init__(self, nOut=8):
        super().__init__()
        self.conv = nn.Conv1d(1, 6, kernel_size=160, stride=80)
        self.bn = nn.BatchNorm1d(6)
        self.fc = nn.Linear(12, nOut)

    def forward(self, wav):
        h = torch.relu(self.bn(self.conv(wav.unsqueeze(1))))
        return self.fc(torch.cat([h.mean(-1), h.std(-1)], dim=1))


def build_objective(name, **kwargs):
    settings = dict(nOut=8, max_epoch=10, seed=10, moco_queue_size=12, dino_out_dim=16,
                    dino_hidden_dim=12, dino_bottleneck_dim=6, dino_global_frames=20,
                    dino_local_frames=10)
    settings.update(kwargs)
    return plugins.factory("loss", name)(**settings)


def make_views(objective, n, seed):
    """Runs of equal-length views, as collate_views builds them: a list of N x V_run x samples."""
    frames = objective.view_frames(1, None) or (20,) * objective.needs.views
    gen = torch.Generator().manual_seed(seed)
    runs, begin = [], 0
    for end in range(1, len(frames) + 1):
        if end == len(frames) or frames[end] != frames[begin]:
            runs.append(0.1 * torch.randn(n, end - begin, crop_samples(frames[begin]), generator=gen))
            begin = end
    return runs


def trainer_for(model, lr=0.01):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler, unit = steplr.Scheduler(optimizer)
    return Trainer(model, optimizer, scheduler, unit, CPU)


def batches(objective, labels_per_batch, seed=0):
    out = []
    for i, labels in enumerate(labels_per_batch):
        views = make_views(objective, len(labels), seed + i)
        frames = objective.view_frames(1, None) or (20,) * objective.needs.views
        out.append((views, torch.as_tensor(labels), [None] * len(views), frames))
    return out


def tiny_model(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    encoder = TinyEncoder(kwargs.get("nOut", 8))
    return SpeakerNet(encoder, build_objective(name, **kwargs))


# ------------------------------------------------------------------ no labels

@pytest.mark.parametrize("name", SSL)
def test_labels_never_reach_the_objective_and_change_nothing(name):
    def run(labels_per_batch):
        model = tiny_model(name)
        seen = []
        original = model.objective.forward

        def spy(x, label=None, **kwargs):
            seen.append(label)
            return original(x, label, **kwargs)

        model.objective.forward = spy
        trainer_for(model).train_epoch(batches(model.objective, labels_per_batch), epoch=1)
        return seen, model.state_dict()

    seen_a, state_a = run([[0, 1, 2, 3], [4, 5, 6, 7]])
    seen_b, state_b = run([[7, 7, 2, 0], [1, 3, 3, 5]])          # shuffled, repeated speakers
    assert seen_a == [None, None] and seen_b == [None, None]
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_ssl_objectives_declare_unlabelled_multi_view_training():
    for name in SSL:
        objective = build_objective(name)
        assert objective.needs.labels is False
        assert trainSpeakerNet.views_per_group(options.parse_options(
            ["--model", "ResNetSE34L", "--trainfunc", name]), objective) == objective.needs.views
    assert build_objective("dino").view_frames(3, None) == (20, 20, 10, 10, 10, 10, 10)


def test_sampler_groups_views_of_one_utterance_for_unlabelled_lists():
    labels = np.full(10, -1)                                      # a list of bare paths
    objective = build_objective("dino")
    sampler = SpeakerBalancedSampler(labels, 3, objective.needs.views, 500, group_by_utterance=True,
                                     view_frames=objective.view_frames)
    plan = sampler.plan(1)
    assert len(plan) == 3
    for batch in plan:
        for request in batch:
            assert len(set(request.files)) == 1 and len(request.files) == 7
            assert request.frames == (20, 20, 10, 10, 10, 10, 10)
        assert len({r.files[0] for r in batch}) == 3


# ------------------------------------------------------------------ CEL

def test_cel_uniformity_equals_a_loop_over_pairs():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(6, 5))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    t = 2.0
    potentials = [math.exp(-t * float(((z[i] - z[j]) ** 2).sum()))
                  for i in range(6) for j in range(6) if i != j]
    expected = math.log(sum(potentials) / len(potentials))
    assert uniformity_loss(torch.tensor(z), t).item() == pytest.approx(expected, rel=1e-9)
    # The literal reading of eq. 3 (ordered-pair sum over C(K,2)) only adds log 2.
    literal = math.log(sum(potentials) / math.comb(6, 2))
    assert literal - expected == pytest.approx(math.log(2))


@pytest.mark.parametrize("similarity", ["ap", "acont"])
def test_cel_total_is_lambda_uniformity_plus_eq4_or_eq6(similarity):
    objective = build_objective("cel", cel_similarity=similarity, cel_lambda=0.7, cel_t=2.0).double()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 2, 4))
    z = x / np.linalg.norm(x, axis=-1, keepdims=True)
    w, b = 10.0, -5.0

    def uniform(v):
        pots = [math.exp(-2.0 * float(((z[i, v] - z[j, v]) ** 2).sum()))
                for i in range(5) for j in range(5) if i != j]
        return math.log(sum(pots) / len(pots))

    S = [[w * float(z[i, 0] @ z[j, 1]) + b for j in range(5)] for i in range(5)]
    rows = -sum(S[i][i] - math.log(sum(math.exp(s) for s in S[i])) for i in range(5)) / 5   # eq. 4
    cols = -sum(S[i][i] - math.log(sum(math.exp(S[j][i]) for j in range(5))) for i in range(5)) / 5
    similarity_loss = rows if similarity == "ap" else (rows + cols) / 2                     # eq. 6
    expected = 0.7 * 0.5 * (uniform(0) + uniform(1)) + similarity_loss
    loss, metric = objective(torch.tensor(x))
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert 0 <= float(metric) <= 100


def test_cel_rejects_other_view_counts_and_bad_options():
    with pytest.raises(ValueError, match="cel needs 2"):
        build_objective("cel")(torch.randn(4, 3, 8))
    with pytest.raises(OptionError):
        build_objective("cel", cel_t=0)
    with pytest.raises(OptionError):
        build_objective("cel", cel_similarity="triplet")


# ------------------------------------------------------------------ MoCo

def test_moco_queue_is_fifo_with_the_configured_size():
    objective = build_objective("moco", moco_queue_size=5, nOut=3)
    assert objective.queue.shape == (5, 3)
    assert len(objective.negatives()) == 0                    # empty until keys arrive
    keys = torch.arange(20 * 3, dtype=torch.float32).view(20, 3)
    objective.enqueue(keys[:3])
    assert torch.equal(objective.negatives(), keys[:3])
    objective.enqueue(keys[3:7])                              # wraps: the oldest key leaves
    assert torch.equal(objective.negatives(), keys[2:7])
    objective.enqueue(keys[7:8])
    assert torch.equal(objective.negatives(), keys[3:8])
    objective.enqueue(keys[8:20])                             # more than fits: the newest 5
    assert torch.equal(objective.negatives(), keys[15:20])
    assert int(objective.queue_filled) == 5


def test_moco_step_uses_infonce_enqueues_its_keys_and_moves_the_key_encoder():
    model = tiny_model("moco", moco_queue_size=6, moco_temperature=0.07, moco_momentum=0.9)
    objective = model.objective
    trainer = trainer_for(model)
    trainer.train_epoch(batches(objective, [[0] * 4]), epoch=1)          # fills 4 of 6 slots
    queue = objective.negatives().clone()
    key_before = {k: v.clone() for k, v in objective.key_encoder.module.state_dict().items()}
    views = make_views(objective, 3, seed=9)
    model.train()
    with torch.no_grad():
        q = model.embed(views)[:, 0]                        # both crops in one batch, as trained
        k = F.normalize(objective.key_encoder.module(views[0][:, 1]), dim=-1)
        # The key encoder saw this batch in training mode: restore its batch-norm statistics.
        objective.key_encoder.module.load_state_dict(key_before)
        loss, _ = model(views)
    qn = F.normalize(q, dim=-1)
    expected = 0.0
    for i in range(3):
        logits = [float(qn[i] @ k[i]) / 0.07] + [float(qn[i] @ n) / 0.07 for n in queue]
        expected += -logits[0] + math.log(sum(math.exp(v) for v in logits))
    assert loss.item() == pytest.approx(expected / 3, rel=1e-5)
    # After the optimizer step: theta_k <- m theta_k + (1 - m) theta_q, then the keys enqueue.
    objective.on_step_end(2)
    student = dict(model.encoder.named_parameters())
    for name, p in objective.key_encoder.module.named_parameters():
        assert torch.allclose(p, 0.9 * key_before[name] + 0.1 * student[name], atol=1e-7)
    assert torch.allclose(objective.negatives()[-3:], k, atol=1e-6)
    assert torch.allclose(objective.negatives()[:3], queue[-3:])          # FIFO: 2 oldest dropped


@pytest.mark.parametrize("pretext", ["ap", "p"])
def test_moco_pretext_logits(pretext):
    objective = build_objective("moco", moco_pretext=pretext, nOut=4)
    q, k, queue = torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 4)
    logits = objective.logits(q, objective.store(k), objective.store(queue))
    if pretext == "ap":
        cos = F.normalize(q, dim=-1) @ F.normalize(torch.cat([k[:1], queue]), dim=-1).T
        assert torch.allclose(logits[0], 10.0 * cos[0] - 5.0, atol=1e-5)
    else:
        assert torch.allclose(logits[0], -((q[0] - torch.cat([k[:1], queue])) ** 2).sum(-1), atol=1e-4)


def test_moco_state_survives_a_checkpoint_round_trip():
    model = tiny_model("moco", moco_queue_size=10)
    trainer_for(model).train_epoch(batches(model.objective, [[0] * 4] * 3), epoch=1)
    state = model.state_dict()
    assert int(state["objective.queue_filled"]) == 10 and bool(state["objective.key_encoder.synced"])
    fresh = tiny_model("moco", seed=5, moco_queue_size=10)
    checkpoint.load_weights(fresh, state, "test")
    fresh.objective.on_epoch_start(2)           # a resumed epoch must not re-copy the key encoder
    restored = fresh.state_dict()
    assert all(torch.equal(state[k], restored[k]) for k in state)
    assert torch.equal(fresh.objective.negatives(), model.objective.negatives())


def test_key_encoder_starts_from_the_loaded_encoder_when_the_checkpoint_has_no_objective():
    source = tiny_model("cel", seed=3)
    encoder_only = {k: v for k, v in source.state_dict().items() if k.startswith("encoder.")}
    for name in ("moco", "dino"):
        model = tiny_model(name, seed=4)
        checkpoint.load_weights(model, encoder_only, "supervised.model")
        copy = model.objective.key_encoder if name == "moco" else model.objective.teacher_encoder
        model.objective.on_epoch_start(1)
        for key, value in copy.module.state_dict().items():
            assert torch.equal(value, encoder_only["encoder." + key]), (name, key)


# ------------------------------------------------------------------ DINO

def test_dino_teacher_is_an_exact_ema_of_the_student_with_the_cosine_momentum():
    model = tiny_model("dino", max_epoch=10)
    objective = model.objective
    assert objective.teacher_momentum(0.0) == pytest.approx(0.996)
    assert objective.teacher_momentum(0.5) == pytest.approx(0.998)           # halfway
    assert objective.teacher_momentum(1.0) == pytest.approx(1.0)
    trainer = trainer_for(model, lr=0.05)
    trainer.start_run(max_epoch=10)
    trainer.train_epoch(batches(objective, [[0] * 3]), epoch=1)
    for epoch in (2, 4):
        teacher_before = {k: v.clone() for k, v in objective.teacher_encoder.module.named_parameters()}
        head_before = {k: v.clone() for k, v in objective.teacher_head.module.named_parameters()}
        trainer.train_epoch(batches(objective, [[0] * 3], seed=epoch), epoch=epoch)
        # One step per epoch: after it, epoch/10 of the run is done.
        m = 1 - (1 - 0.996) * (1 + math.cos(math.pi * epoch / 10)) / 2
        for live, copy, before in ((model.encoder, objective.teacher_encoder, teacher_before),
                                   (objective.student_head, objective.teacher_head, head_before)):
            student = dict(live.named_parameters())
            for name, p in copy.module.named_parameters():
                assert torch.allclose(p, m * before[name] + (1 - m) * student[name], rtol=0, atol=1e-7)
                assert not p.requires_grad


def test_dino_teacher_momentum_moves_every_iteration_and_resumes_mid_epoch():
    def momenta(epoch, steps, resume_batch=0):
        model = tiny_model("dino", max_epoch=4)
        seen = []
        model.objective.teacher_momentum = lambda p, original=model.objective.teacher_momentum: (
            seen.append(p) or original(p))
        trainer = trainer_for(model)
        trainer.start_run(max_epoch=4)
        resume = None
        if resume_batch:
            resume = {"batch": resume_batch, "totals": {"batch": resume_batch}, "rng": checkpoint.capture_rng()}
        trainer.train_epoch(batches(model.objective, [[0] * 3] * steps), epoch=epoch, resume=resume)
        return seen

    # Epoch 2 of 4, three steps: progress (1 + k/3) / 4 after step k.
    assert momenta(2, 3) == pytest.approx([(1 + k / 3) / 4 for k in (1, 2, 3)])
    # Resumed after its first batch, the two remaining steps get the values they had.
    assert momenta(2, 2, resume_batch=1) == pytest.approx([(1 + k / 3) / 4 for k in (2, 3)])


def test_dino_clips_each_gradient_to_the_set_norm_before_the_step():
    def gradient_norms(clip):
        model = tiny_model("dino", dino_clip_grad=clip)
        trainer = trainer_for(model, lr=10.0)
        norms = []
        step = trainer.optimizer.step
        trainer.optimizer.step = lambda *a, **k: (norms.append(
            [float(p.grad.norm()) for p in model.parameters() if p.grad is not None]), step(*a, **k))[1]
        trainer.train_epoch(batches(model.objective, [[0] * 3]), epoch=2)
        return norms[0]

    free = gradient_norms(0.0)
    limit = 0.5 * max(free)
    clipped = gradient_norms(limit)
    assert max(free) > limit                       # the limit binds on some parameter
    for before, after in zip(free, clipped):
        assert after == pytest.approx(min(before, limit * before / (before + 1e-6)), rel=1e-4)


def test_dino_teacher_temperature_warms_up_linearly_then_stays():
    objective = build_objective("dino", dino_teacher_temp=0.07, dino_warmup_teacher_temp=0.04,
                                dino_warmup_teacher_temp_epochs=4)
    temps = [objective.teacher_temperature(e) for e in range(1, 7)]
    assert temps == pytest.approx([0.04, 0.05, 0.06, 0.07, 0.07, 0.07])
    assert build_objective("dino").teacher_temperature(1) == pytest.approx(0.04)


def test_dino_diagnostics_match_direct_computations():
    model = tiny_model("dino")
    objective = model.objective
    trainer = trainer_for(model)
    trainer.start_run(max_epoch=10)
    captured = []
    loss_of = objective.forward

    def spy(x, label=None, views=None):
        out = loss_of(x, label, views=views)
        captured.append((objective.student_head(x.flatten(0, 1)).unflatten(0, x.shape[:2]).detach(),
                         objective.teacher_outputs(views), objective.center.clone(), x.detach()))
        return out
    objective.forward = spy
    stats = trainer.train_epoch(batches(objective, [[0] * 4]), epoch=1)
    student, teacher, center, emb = captured[0]
    # The centre was updated after the step; the diagnostics used the one before (zeros).
    p_t = F.softmax(teacher / 0.04, dim=-1)
    entropy = float(-(p_t * p_t.log()).sum(-1).mean())
    log_s = F.log_softmax(student[:, :2] / 0.1, dim=-1)
    kl = float((p_t * (p_t.log() - log_s)).sum(-1).mean())
    singular = np.linalg.svd((emb.flatten(0, 1) - emb.flatten(0, 1).mean(0)).numpy(), compute_uv=False)
    shares = singular / singular.sum()
    assert stats["dino_teacher_entropy"] == pytest.approx(entropy, rel=1e-4)
    assert stats["dino_kl_teacher_student"] == pytest.approx(kl, rel=1e-3, abs=1e-6)
    assert stats["dino_embedding_rank"] == pytest.approx(float(np.exp(-(shares * np.log(shares)).sum())), rel=1e-4)
    assert stats["dino_uniform_entropy"] == pytest.approx(math.log(16))


def test_dino_loss_centre_and_temperatures_match_the_formulas():
    model = tiny_model("dino", dino_student_temp=0.1, dino_teacher_temp=0.04,
                       dino_center_momentum=0.9)
    objective = model.objective
    objective.on_epoch_start(1)
    objective.center.copy_(0.3 * torch.randn(1, 16))
    centre = objective.center.clone()
    views = make_views(objective, 3, seed=4)
    model.train()
    teacher_inputs = []
    handle = objective.teacher_encoder.module.register_forward_hook(
        lambda module, args, out: teacher_inputs.append(args[0].shape))
    loss, _ = model(views)
    handle.remove()
    assert teacher_inputs == [(6, crop_samples(20))]          # only the 2 global views, N = 3
    student = objective.student_head(model.embed(views).flatten(0, 1)).view(3, 7, 16)
    teacher = objective.teacher_outputs(views)
    s, t, c = student.detach().double().numpy(), teacher.double().numpy(), centre.double().numpy()[0]
    expected, terms = 0.0, 0
    for g in range(2):
        for v in range(7):
            if v == g:
                continue
            for n in range(3):
                pt = np.exp((t[n, g] - c) / 0.04 - np.max((t[n, g] - c) / 0.04))
                pt /= pt.sum()
                ls = s[n, v] / 0.1
                log_ps = ls - (np.log(np.exp(ls - ls.max()).sum()) + ls.max())
                expected += -(pt * log_ps).sum() / 3
            terms += 1
    assert terms == 12
    assert loss.item() == pytest.approx(expected / terms, rel=1e-5)
    objective.on_step_end(1)
    assert torch.allclose(objective.center, 0.9 * centre + 0.1 * teacher.mean(dim=(0, 1)), atol=1e-6)


def test_dino_loss_function_uses_each_temperature():
    student, teacher, center = torch.randn(2, 3, 5), torch.randn(2, 2, 5), torch.zeros(1, 5)
    base = dino_loss(student, teacher, center, 0.1, 0.04)
    assert torch.allclose(dino_loss(2 * student, teacher, center, 0.2, 0.04), base)
    assert torch.allclose(dino_loss(student, 3 * teacher, center, 0.1, 0.12), base)
    assert torch.allclose(dino_loss(student, teacher + 1.0, center + 1.0, 0.1, 0.04), base)


def test_dino_freezes_the_last_layer_in_the_first_epoch_and_keeps_unit_norms():
    objective = tiny_model("dino").objective
    weight = objective.student_head.last_layer.parametrizations.weight
    objective.on_epoch_start(1)
    assert not weight.original1.requires_grad and not weight.original0.requires_grad
    objective.on_epoch_start(2)
    assert weight.original1.requires_grad and not weight.original0.requires_grad
    norms = objective.student_head.last_layer.weight.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_dino_metric_compares_the_student_with_the_centred_teacher_target():
    """A component shared by every teacher output (what the centre removes) must not count as
    agreement: the progress-bar metric compares the student with the targets' argmax, t - c."""
    n, k = 6, 10
    objective = build_objective("dino", dino_out_dim=k, dino_local_views=1)          # 2 global + 1 local
    own = F.one_hot((torch.arange(n) + 1) % k, k).float()                   # N x K, never prototype 0
    shared = 5.0 * F.one_hot(torch.tensor(0), k).float()                    # prototype 0 for all
    teacher = (shared + own).unsqueeze(1).repeat(1, 2, 1)                   # N x G x K
    objective.center.copy_(shared.unsqueeze(0))
    objective.sync_teacher = lambda: None
    objective.teacher_outputs = lambda views: teacher
    objective.student_head = nn.Identity()                                  # student outputs = x
    following = own.unsqueeze(1).repeat(1, 3, 1)                            # picks the targets' modes
    collapsed = shared.expand(n, 3, k) + 0.1 * torch.rand(n, 3, k)          # all on prototype 0
    assert objective(following, views=[])[1].item() == pytest.approx(100.0)
    assert objective(collapsed, views=[])[1].item() == pytest.approx(0.0)


def test_dino_head_bn_option_spreads_nearly_collinear_embeddings():
    """Random encoders give nearly collinear embeddings (cosine ~0.98 for Fast ResNet-34 on the
    demo corpus); without batch norm the head keeps them so and the centred teacher targets are
    almost uniform. --dino_head_bn 1 (wespeaker's use_bn) normalises the hidden layers."""
    plain, with_bn = build_objective("dino").student_head, build_objective("dino", dino_head_bn=1).student_head
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.modules())      # DINO's default
    assert sum(isinstance(m, nn.BatchNorm1d) for m in with_bn.modules()) == 2
    torch.manual_seed(0)
    common = torch.randn(1, 8)
    x = common + 0.05 * torch.randn(32, 8)                # pairwise cosine close to 1
    for head, spread in ((plain.train(), False), (with_bn.train(), True)):
        z = F.normalize(head.mlp(x), dim=-1)
        cos = (z @ z.T)[~torch.eye(32, dtype=torch.bool)].mean().item()
        assert (cos < 0.5) == spread, cos


# ------------------------------------------------------------------ curricula

def parse_config(name):
    return options.parse_options(["--config", os.path.join(ROOT, "configs", name)])


def test_curriculum_configs_follow_their_schedules():
    portions = {  # epoch -> portion of the list (CL_D2 from the text; D1, D3 our guesses)
        "DINO_ECAPA_Base.yaml": {1: 1.0, 80: 1.0},
        "DINO_ECAPA_CL_D1.yaml": {1: 0.75, 16: 0.75, 17: 1.0, 80: 1.0},
        "DINO_ECAPA_CL_D2.yaml": {1: 0.5, 16: 0.5, 17: 0.75, 32: 0.75, 33: 1.0, 80: 1.0},
        "DINO_ECAPA_CL_D3.yaml": {1: 0.25, 16: 0.25, 17: 0.5, 33: 0.75, 48: 0.75, 49: 1.0},
    }
    fractions = {
        "DINO_ECAPA_Base.yaml": {1: 1.0, 40: 1.0},
        "DINO_ECAPA_CL_A1.yaml": {1: 0.5, 17: 0.75, 32: 0.75, 33: 1.0},
        "DINO_ECAPA_CL_A2.yaml": {1: 0.25, 17: 0.5, 33: 0.75, 49: 1.0, 80: 1.0},
    }
    for table, method in ((portions, "portion"), (fractions, "augment_fraction")):
        for name, expected in table.items():
            parsed = parse_config(name)
            curricula = build_objective("dino", **{k: v for k, v in vars(parsed).items()
                                         if k.startswith("cl_") or k in ("aug_fraction", "augment")}).curricula
            got = {epoch: getattr(curricula, method)(epoch) for epoch in expected}
            assert got == pytest.approx(expected), name


def test_data_curriculum_subsets_are_seeded_nested_and_sized():
    objective = build_objective("cel", cl_data=["1:0.5", "17:0.75", "33:1"], seed=3)
    first, second = objective.utterance_subset(1, 1000), objective.utterance_subset(17, 1000)
    assert len(first) == 500 and len(second) == 750 and objective.utterance_subset(33, 1000) is None
    assert set(first) <= set(second) and len(set(second)) == 750
    assert np.array_equal(build_objective("cel", cl_data=["1:0.5", "17:0.75", "33:1"], seed=3).utterance_subset(5, 1000), first)
    assert not np.array_equal(build_objective("cel", cl_data=["1:0.5"], seed=4).utterance_subset(1, 1000), first)
    # The sampler plans only from the subset.
    sampler = SpeakerBalancedSampler(np.full(40, -1), 4, 2, 500, group_by_utterance=True,
                                     utterance_subset=build_objective("moco", cl_data=["1:0.5", "2:1"]).utterance_subset)
    used = {r.files[0] for batch in sampler.plan(1) for r in batch}
    assert len(used) == 20 and used == set(build_objective("moco", cl_data=["1:0.5"]).utterance_subset(1, 40).tolist())
    assert len({r.files[0] for batch in sampler.plan(2) for r in batch}) == 40


def test_augmentation_fraction_defaults_and_schedule_validation():
    assert build_objective("dino", aug_fraction=0.6).augment_fraction(9) == 0.6
    assert build_objective("dino", cl_aug="1:0.2,5:0.9").augment_fraction(5) == 0.9
    for bad in (["2:0.5"], ["1:0.5", "1:0.7"], ["1:1.5"], ["1-0.5"], ["1:0"]):
        with pytest.raises(OptionError):
            parse_schedule(bad, "cl_data", 0.0, 1.0, low_open=True)
    with pytest.raises(OptionError, match="quote each pair"):
        parse_schedule(["60.5"], "cl_data", 0.0, 1.0)          # what YAML makes of 1:0.5 unquoted
    with pytest.raises(OptionError, match="--cl_kmeans needs"):
        build_objective("dino", cl_kmeans=4)


def test_kmeans_curriculum_grows_by_whole_clusters(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", train_speakers=6, train_utts=4)
    common = dict(cl_data=["1:0.34", "2:0.67", "3:1"], cl_kmeans=3, cl_kmeans_frames=50)
    train = read_train_list(corpus.train_list, corpus.root, need_labels=False)
    settings = argparse.Namespace(save_path=str(tmp_path / "run"), nDataLoaderThread=0)

    def build(name, **kwargs):                 # as the trainer does: the data side answers
        objective = build_objective(name, **kwargs)
        objective.receive_data(curriculum_data.answer(objective.data_request(), train, settings))
        return objective

    objective = build("dino", **common)
    subsets = [objective.utterance_subset(e, 24) for e in (1, 2)]
    assert objective.utterance_subset(3, 24) is None
    clusters = objective.curricula.cluster_order(24)
    assert sorted(set(clusters)) == [0, 1, 2]
    for chosen, subset in zip((1, 2), subsets):
        assert np.array_equal(subset, np.flatnonzero(clusters < chosen))      # whole clusters
    assert set(subsets[0]) < set(subsets[1])
    assert (tmp_path / "run" / "cl_kmeans_features.npz").is_file()
    again = build("dino", **common)                                           # from the cache
    assert np.array_equal(again.utterance_subset(2, 24), subsets[1])
    # Given embeddings that separate the speakers, clusters are speakers: whole speakers join.
    speakers = np.repeat(np.arange(6), 4)
    embeddings = np.eye(6)[speakers] + 0.01 * np.random.default_rng(0).normal(size=(24, 6))
    np.savez(tmp_path / "emb.npz", embeddings=embeddings,
             names=np.array([path for _, path in corpus.train_lines]))
    by_speaker = build("dino", **dict(common, cl_kmeans=6, cl_kmeans_embeddings=str(tmp_path / "emb.npz"),
                                      cl_data=["1:0.5", "2:1"]))
    chosen = by_speaker.utterance_subset(1, 24)
    assert len(chosen) == 12 and len(set(speakers[chosen])) == 3


# ------------------------------------------------------------------ fine-tuning

@pytest.mark.parametrize("name", SSL)
def test_fine_tune_from_an_ssl_checkpoint_loads_the_encoder_only(name, caplog):
    if name == "dino":
        model_kwargs = dict(nOut=16, channels=16, input_features="mfcc", n_mels=20)
        model_name = "ECAPA_TDNN"
    else:
        model_kwargs = dict(nOut=16)
        model_name = "ResNetSE34L"
    make_encoder = plugins.factory("models", model_name)
    torch.manual_seed(1)
    ssl = SpeakerNet(make_encoder(**model_kwargs), build_objective(name, nOut=16, moco_pretext="ap"))
    ssl.objective.on_epoch_start(1)
    with torch.no_grad():
        for p in ssl.parameters():
            p.add_(0.01)                               # differ from any fresh initialisation
    state = ssl.state_dict()
    torch.manual_seed(2)
    supervised = SpeakerNet(make_encoder(**model_kwargs),
                            plugins.factory("loss", "softmax")(nOut=16, nClasses=5))
    objective_before = {k: v.clone() for k, v in supervised.objective.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="checkpoint"):
        checkpoint.load_weights(supervised, state, f"{name}.model")
    loaded = supervised.state_dict()
    for key, value in loaded.items():
        if key.startswith("encoder."):
            assert torch.equal(value, state[key]), key
    for key, value in supervised.objective.state_dict().items():
        assert torch.equal(value, objective_before[key]), key
    ignored = [k for k in state if k.startswith("objective.")]
    assert ignored and f"ignoring {len(ignored)} objective tensors" in caplog.text


# ------------------------------------------------------------------ SGDR

def test_sgdr_restarts_every_period_with_a_decaying_peak():
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=0.001)
    scheduler, unit = sgdr.Scheduler(optimizer, lr=0.001, sgdr_period=16, sgdr_decay=0.8)
    assert unit == "epoch"
    lrs = []
    for _ in range(80):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.001) and lrs[8] == pytest.approx(0.0005)
    for cycle in range(5):                                   # epochs 1, 17, 33, 49, 65
        assert lrs[16 * cycle] == pytest.approx(0.001 * 0.8 ** cycle)
    assert lrs[15] == pytest.approx(0.001 * (1 + math.cos(math.pi * 15 / 16)) / 2)
    restored, _ = sgdr.Scheduler(torch.optim.Adam([parameter], lr=0.001), sgdr_period=16, sgdr_decay=0.8)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.get_last_lr() == scheduler.get_last_lr()
    _, _ = sgdr.Scheduler(optimizer, lr=0.001, sgdr_period=4, sgdr_mult=2)
    assert sgdr.cycle_position(5, 4, 2) == (1, 1, 8) and sgdr.cycle_position(12, 4, 2) == (2, 0, 16)


# ------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    base = tmp_path_factory.mktemp("ssl")
    corpus = make_corpus(base / "corpus", train_speakers=4, train_utts=3, test_speakers=2, test_utts=2)
    plain = base / "corpus" / "paths_only.txt"
    plain.write_text("".join(f"{path}\n" for _, path in corpus.train_lines))
    corpus.train_list = plain
    return base, corpus


EXTRA = {"cel": {}, "moco": {"moco_queue_size": 8},
         "dino": {"dino_out_dim": 32, "dino_hidden_dim": 16, "dino_bottleneck_dim": 8,
                  "dino_global_frames": 30, "dino_local_frames": 15, "scheduler": "sgdr"}}


@pytest.mark.parametrize("name", SSL)
def test_training_from_a_list_without_speakers_and_resuming(name, unlabelled):
    base, corpus = unlabelled
    argv = lambda save: train_argv(corpus, save, trainfunc=name, batch_size=3, max_epoch=2, test_interval=1,
                                   nOut=16, **EXTRA[name])
    assert trainSpeakerNet.main(argv(base / f"{name}_straight")) == 0
    # The run stopped after epoch 1 (per-iteration schedules follow --max_epoch, so the same
    # run must be resumed, not a shorter one extended).
    (base / f"{name}_resumed" / "model").mkdir(parents=True)
    first = "model000000001.model"
    shutil.copy(base / f"{name}_straight" / "model" / first, base / f"{name}_resumed" / "model" / first)
    assert trainSpeakerNet.main(argv(base / f"{name}_resumed")) == 0       # resumes epoch 2
    straight = checkpoint.load_file(base / f"{name}_straight" / "model" / "model000000002.model")["model"]
    resumed = checkpoint.load_file(base / f"{name}_resumed" / "model" / "model000000002.model")["model"]
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.allclose(straight[key].float(), resumed[key].float(), atol=1e-5), key
    if name == "moco":
        assert int(straight["objective.queue_filled"]) == 8


def test_ssl_configs_parse_and_cite_their_source():
    import glob
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))):
        base = os.path.basename(path)
        if not base.startswith(("CEL_", "MoCoVox_", "DINO_")):
            continue
        text = open(path, encoding="utf-8").read()
        assert "Table" in text or "Sec. 6.3" in text, base
        parsed = options.parse_options(["--config", path])
        assert parsed.train_list.startswith("data/")
        assert parsed.test_list in ("data/test_list.txt", ["data/test_list.txt"])
        if parsed.trainfunc in SSL:
            assert parsed.augment


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
