"""Two gloo processes on the CPU: disjoint data, identical parameters after every step, and
the same result as one process stepping on the same global batches.

One process reproduces DistributedDataParallel by running each rank's half of the global
batch through its own forward pass (BatchNorm normalises per half, as on the ranks) and
averaging the two losses, which is the gradient DDP's all-reduce averages.
"""
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import REPO, make_corpus, train_argv

WORLD = 2
TOLERANCE = 1e-5         # float32 sums in a different order: identical up to rounding


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(corpus_root, rank, world):
    import options
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
            views, labels, _ = collate_views([dataset[r] for r in plan[step * WORLD + rank]])
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


def test_torchrun_trains_an_epoch_end_to_end(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    argv = train_argv(corpus, tmp_path / "exp", trainfunc="softmax", nPerSpeaker=1, nClasses=6,
                      batch_size=2, max_epoch=1, flags=("distributed", "log_input"))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(_free_port()), str(REPO / "trainSpeakerNet.py"), *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "exp" / "model" / "model000000001.model").exists()
    assert "EER" in done.stderr
