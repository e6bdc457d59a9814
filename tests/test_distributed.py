"""Two gloo processes on the CPU: disjoint data, identical parameters after every step, and
the same result as one process stepping on the same global batches; objective state
(MoCo's queue, DINO's centre) identical on both ranks and built from both ranks' batches;
distributed evaluation scoring as one process does.

One process reproduces DistributedDataParallel by running each rank's half of the global
batch through its own forward pass (BatchNorm normalises per half, as on the ranks) and
averaging the two losses, which is the gradient DDP's all-reduce averages.

Tolerances, single process vs two ranks: parameters after training and evaluation scores
agree to TOLERANCE (1e-5 absolute; float32 sums in another order, and batches of another
size in the evaluation's forward passes); MoCo keys and DINO centres recomputed here in one
process agree to 1e-6; between the two ranks, parameters, MoCo queues and DINO centres must
be bitwise equal.
"""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import REPO, make_corpus, train_argv

WORLD = 2
TOLERANCE = 1e-5         # single process vs two ranks: float32 sums in another order


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(corpus_root, rank, world):
    from speakernet.run import options
    from DatasetLoader import SpeakerBalancedSampler, TrainDataset, read_train_list
    from trainSpeakerNet import build_model
    argv = ["--model", "ResNetSE34L", "--trainfunc", "softmax", "--nClasses", "6", "--nOut", "16",
            "--batch_size", "2", "--max_frames", "20", "--device", "cpu", "--log_input", "--seed", "3"]
    opts = options.parse_options(argv)
    torch.manual_seed(0)
    model = build_model(opts)
    train = read_train_list(f"{corpus_root}/train_list.txt", corpus_root)
    sampler = SpeakerBalancedSampler(train.labels, 2, 1, 500, seed=3, view_frames=lambda e, r: (20,),
                                     rank=rank, world_size=world)
    return model, sampler, TrainDataset(train)


def _checksum(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).double().sum().item()


def _worker(rank, corpus_root, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from torch.utils.data import DataLoader

    from DatasetLoader import collate_views
    from SpeakerNet import Trainer
    model, sampler, dataset = _setup(corpus_root, rank, WORLD)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)
    checks = []
    model.objective.on_step_end = lambda step: checks.append(_checksum(model))
    trainer = Trainer(model, optimizer, scheduler, "epoch", torch.device("cpu"), ddp_model=ddp,
                      is_main=False)
    sampler.set_epoch(1)
    files = [i for batch in sampler for request in batch for i in request.files]
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_views)
    trainer.train_epoch(loader, 1)
    torch.save({"checks": checks, "files": files,
                "params": [p.detach().clone() for p in model.parameters()]}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def _single_process_reference(corpus_root):
    from DatasetLoader import collate_views
    model, sampler, dataset = _setup(corpus_root, 0, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    plan = sampler.plan(1)
    plan = plan[:len(plan) // WORLD * WORLD]
    for step in range(len(plan) // WORLD):
        losses = []
        for rank in range(WORLD):
            views, labels, _, _ = dataset.__getitems__(plan[step * WORLD + rank])
            losses.append(model(views, labels)[0])
        optimizer.zero_grad()
        (sum(losses) / WORLD).backward()
        optimizer.step()
    return [p.detach() for p in model.parameters()], len(plan) // WORLD


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    corpus = make_corpus(root / "corpus", train_speakers=6, train_utts=4)
    mp.spawn(_worker, args=(str(corpus.root), _free_port(), str(root)), nprocs=WORLD, join=True)
    return corpus, [torch.load(root / f"rank{r}.pt") for r in range(WORLD)]


def test_ranks_see_disjoint_data(ranks):
    _, results = ranks
    assert results[0]["files"] and results[1]["files"]
    assert not set(results[0]["files"]) & set(results[1]["files"])
    assert len(results[0]["files"]) == len(results[1]["files"])


def test_parameters_identical_after_every_step(ranks):
    _, results = ranks
    assert len(results[0]["checks"]) == len(results[1]["checks"]) > 0
    assert results[0]["checks"] == results[1]["checks"]
    for a, b in zip(results[0]["params"], results[1]["params"]):
        assert torch.equal(a, b)


def test_matches_single_process_on_the_same_global_batches(ranks):
    corpus, results = ranks
    expected, steps = _single_process_reference(str(corpus.root))
    assert steps == len(results[0]["checks"])
    for got, want in zip(results[0]["params"], expected):
        assert torch.allclose(got, want, atol=TOLERANCE, rtol=0), (got - want).abs().max()


def _read_scores(path):
    return np.array([float(line.split()[0]) for line in path.read_text().splitlines()])


def test_torchrun_trains_an_epoch_end_to_end(tmp_path):
    """torchrun, two ranks: train, then evaluate with both ranks embedding half the files;
    the scores rank 0 writes equal a single-process --eval of the checkpoint it saved (which
    needs the ranks' BatchNorm statistics made equal before embedding); --extract on two
    ranks writes what one process writes."""
    corpus = make_corpus(tmp_path / "corpus", test_utts=3)
    argv = train_argv(corpus, tmp_path / "exp", trainfunc="softmax", nPerSpeaker=1, nClasses=6,
                      batch_size=2, max_epoch=1, flags=("distributed", "log_input"))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(_free_port()), str(REPO / "trainSpeakerNet.py"), *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "terminate called" not in done.stderr
    checkpoint_file = tmp_path / "exp" / "model" / "model000000001.model"
    assert checkpoint_file.exists()
    assert "EER" in done.stderr
    single = train_argv(corpus, tmp_path / "single", trainfunc="softmax", nPerSpeaker=1,
                        nClasses=6, batch_size=2, initial_model=checkpoint_file,
                        flags=("eval", "log_input"))
    done = subprocess.run([sys.executable, str(REPO / "trainSpeakerNet.py"), *single], cwd=REPO,
                          capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    distributed_scores = _read_scores(next((tmp_path / "exp" / "result").glob("scores_epoch0001_*.txt")))
    single_scores = _read_scores(next((tmp_path / "single" / "result").glob("scores_eval_*.txt")))
    assert len(distributed_scores) == len(corpus.trials) == len(single_scores)
    # The score files hold 6 decimals.
    np.testing.assert_allclose(distributed_scores, single_scores, atol=TOLERANCE + 1e-6, rtol=0)

    # --extract with two ranks (each embeds half, rank 0 writes) equals one process's.
    outputs = {}
    for name, launcher in (("two", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                                    "2", "--master_port", str(_free_port())]),
                           ("one", [sys.executable])):
        outputs[name] = tmp_path / f"{name}.npz"
        flags = ("distributed", "log_input") if name == "two" else ("log_input",)
        argv = train_argv(corpus, tmp_path / "exp", trainfunc="softmax", nPerSpeaker=1, nClasses=6,
                          initial_model=checkpoint_file, extract=outputs[name], flags=flags)
        done = subprocess.run([*launcher, str(REPO / "trainSpeakerNet.py"), *argv], cwd=REPO,
                              capture_output=True, text=True, timeout=240, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "terminate called" not in done.stderr         # every rank tore its group down
    two, one = np.load(outputs["two"]), np.load(outputs["one"])
    assert list(two["names"]) == list(one["names"]) and len(one["names"]) == len(corpus.test_files)
    np.testing.assert_allclose(two["embeddings"], one["embeddings"], atol=TOLERANCE, rtol=0)


# ---------------------------------------------------------------------------- objective state

class TinyEncoder(torch.nn.Module):
    """Waveform (B x samples, any length) -> B x 8: a linear map of 16-sample frames, averaged."""

    def __init__(self):
        super().__init__()
        self.frame = torch.nn.Linear(16, 8)

    def forward(self, wav):
        return self.frame(wav.unfold(-1, 16, 16)).mean(dim=1)


def _moco(queue_size=64):
    from loss.moco import LossFunction
    from SpeakerNet import SpeakerNet
    torch.manual_seed(0)
    return SpeakerNet(TinyEncoder(), LossFunction(nOut=8, moco_queue_size=queue_size))


def _dino():
    from loss.dino import LossFunction
    from SpeakerNet import SpeakerNet
    torch.manual_seed(0)
    return SpeakerNet(TinyEncoder(), LossFunction(nOut=8, dino_out_dim=16, dino_hidden_dim=12,
                                                  dino_bottleneck_dim=4, dino_global_views=2,
                                                  dino_local_views=1))


def _rank_batches(rank, steps=2):
    """Each rank's own batches (3 groups): MoCo 2 views of 64 samples; DINO 2 global views
    of 64 samples and 1 local view of 32."""
    generator = torch.Generator().manual_seed(100 + rank)
    moco = [[torch.randn(3, 2, 64, generator=generator)] for _ in range(steps)]
    dino = [[torch.randn(3, 2, 64, generator=generator), torch.randn(3, 1, 32, generator=generator)]
            for _ in range(steps)]
    return moco, dino


def _record_eval_shares(corpus_root, rank):
    """Distributed evaluation of the test corpus's trial list with a seeded Fast ResNet-34;
    -> (files this rank embedded, rank 0's raw scores or None)."""
    from speakernet.eval import evaluation
    from speakernet.run import options
    from SpeakerNet import Trainer
    from trainSpeakerNet import build_model
    opts = options.parse_options(["--model", "ResNetSE34L", "--trainfunc", "softmax", "--nClasses", "6",
                                  "--nOut", "16", "--log_input", "--device", "cpu"])
    torch.manual_seed(0)
    trainer = Trainer(build_model(opts), None, None, None, torch.device("cpu"), is_main=False)
    embedded = []

    def extract(files, lengths, root):
        embedded.extend(files)
        return trainer.extract(files, lengths, root, 30, 2, 0)

    evaluator = evaluation.Evaluation(f"{corpus_root}/test_list.txt", corpus_root, evaluation.EvalSettings())
    report = evaluator.run(evaluation.shared_extract(extract), score=rank == 0)
    scores = None if report is None else report.primary.scores["raw"]
    return embedded, scores


def _objective_worker(rank, corpus_root, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    moco_batches, dino_batches = _rank_batches(rank)
    moco = _moco()
    for step, views in enumerate(moco_batches, start=1):
        moco(views)
        moco.objective.on_step_end(step)
    dino = _dino()
    centres = []
    for step, views in enumerate(dino_batches, start=1):
        dino(views)
        dino.objective.on_step_end(step)
        centres.append(dino.objective.center.clone())
    embedded, scores = _record_eval_shares(corpus_root, rank)
    torch.save({"queue": moco.objective.queue.clone(), "filled": int(moco.objective.queue_filled),
                "centres": centres, "embedded": embedded,
                "scores": None if scores is None else torch.as_tensor(scores)},
               f"{out_dir}/objective{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def objective_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("objectives")
    # 3 speakers x 3 files: 9 evaluation files, an uneven split over two ranks.
    corpus = make_corpus(root / "corpus", test_speakers=3, test_utts=3)
    mp.spawn(_objective_worker, args=(str(corpus.root), _free_port(), str(root)), nprocs=WORLD, join=True)
    return corpus, [torch.load(root / f"objective{r}.pt") for r in range(WORLD)]


def test_moco_queues_identical_and_hold_keys_of_both_ranks(objective_ranks):
    _, results = objective_ranks
    assert torch.equal(results[0]["queue"], results[1]["queue"])
    assert results[0]["filled"] == results[1]["filled"] == 2 * WORLD * 3
    # Independently: the key of each group is the unit embedding of its second view by the
    # (untrained, so still equal) key encoder; MoCo enqueues rank 0's keys, then rank 1's.
    model = _moco()
    expected = []
    batches = [_rank_batches(rank)[0] for rank in range(WORLD)]
    for step in range(2):
        for rank in range(WORLD):
            second_views = batches[rank][step][0][:, 1]
            expected.append(F.normalize(model.encoder(second_views), dim=-1))
    expected = torch.cat(expected).detach()
    assert torch.allclose(results[0]["queue"][:len(expected)], expected, atol=1e-6, rtol=0)


def test_dino_centre_identical_and_the_global_batch_mean(objective_ranks):
    _, results = objective_ranks
    for a, b in zip(results[0]["centres"], results[1]["centres"]):
        assert torch.equal(a, b)
    # c <- m c + (1 - m) mean over both ranks' global views of the teacher's outputs; the
    # untrained teacher equals the student network.
    model = _dino()
    objective = model.objective
    momentum = objective.center_momentum
    batches = [_rank_batches(rank)[1] for rank in range(WORLD)]
    centre = torch.zeros(1, 16)
    for step in range(2):
        global_views = torch.cat([batches[rank][step][0] for rank in range(WORLD)])   # 6 x 2 x S
        with torch.no_grad():
            outputs = objective.student_head(model.encoder(global_views.flatten(0, 1)))
        centre = momentum * centre + (1 - momentum) * outputs.mean(dim=0, keepdim=True)
        assert torch.allclose(results[0]["centres"][step], centre, atol=1e-6, rtol=0)
    # One rank's batch alone would give another centre: the test can tell.
    with torch.no_grad():
        alone = objective.student_head(model.encoder(batches[0][0][0].flatten(0, 1)))
    assert not torch.allclose((1 - momentum) * alone.mean(0, keepdim=True), results[0]["centres"][0],
                              atol=1e-6, rtol=0)


def test_distributed_evaluation_splits_files_and_scores_as_one_process(objective_ranks):
    corpus, results = objective_ranks
    shares = [set(r["embedded"]) for r in results]
    assert shares[0] and shares[1] and not shares[0] & shares[1]
    assert shares[0] | shares[1] == set(corpus.test_files)
    assert results[1]["scores"] is None             # only rank 0 scores
    _, single = _record_eval_shares(str(corpus.root), 0)   # no process group here: one process
    assert len(single) == len(corpus.trials)
    np.testing.assert_allclose(results[0]["scores"].numpy(), single, atol=TOLERANCE, rtol=0)
