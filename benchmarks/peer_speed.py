#!/usr/bin/env python3
"""Training speed of our encoders against their authors' implementations of the same networks.

    python3 benchmarks/peer_speed.py --pair resnet --wespeaker WESPEAKER_CLONE
    python3 benchmarks/peer_speed.py --pair ecapa                       # speechbrain, installed
    python3 benchmarks/peer_speed.py --pair campplus --speakerlab CLONE_3D_SPEAKER

The peers' code is not part of this repository: wespeaker and 3D-Speaker are read from clones
given on the command line (the folders holding `wespeaker/` and `speakerlab/`), speechbrain from
its installed package. One process, --threads torch threads, fp32; each step is forward, a
linear classifier's cross-entropy, backward and an SGD step on a batch of --batch 2 s crops.
Ours take the waveform and compute their features; the peers get precomputed 80-bin fbank
frames, which favours them. Implementations run interleaved, --rounds rounds of --steps steps;
the medians and the range of the per-round ratio ours / peer are printed.
"""
import argparse
import logging
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("peer_speed")
SAMPLES, FRAMES, CLASSES = 32240, 200, 1000


def implementations(pair, args):
    """{name: (build, input kind, embedding size)}: ours first, then the peers."""
    if pair == "resnet":
        for name in ("umap", "hdbscan"):          # wespeaker/__init__ pulls in its diarisation tools
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.path.insert(0, str(Path(args.wespeaker).resolve()))
        from wespeaker.models.resnet import ResNet34
        from models.ResNet import MainModel
        return {"ours": (MainModel, "wav", 256),
                "wespeaker": (lambda: ResNet34(feat_dim=80, embed_dim=256, pooling_func="TSTP",
                                               two_emb_layer=False), "fbank", 256)}
    if pair == "ecapa":
        from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
        from models.ECAPA_TDNN import MainModel
        return {"ours": (lambda: MainModel(nOut=192, channels=512, encoder_type="ASP"), "wav", 192),
                "speechbrain": (lambda: ECAPA_TDNN(80, lin_neurons=192, channels=[512, 512, 512, 512, 1536]),
                                "fbank", 192)}
    sys.path.insert(0, str(Path(args.speakerlab).resolve()))
    from speakerlab.models.campplus.DTDNN import CAMPPlus
    from models.CAMPPlus import MainModel
    return {"ours": (lambda: MainModel(nOut=192), "wav", 192),
            "3D-Speaker (checkpointed, as its recipes)": (
                lambda: CAMPPlus(feat_dim=80, embedding_size=192, memory_efficient=True), "fbank", 192),
            "3D-Speaker": (lambda: CAMPPlus(feat_dim=80, embedding_size=192, memory_efficient=False), "fbank", 192)}


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", choices=("resnet", "ecapa", "campplus"), required=True)
    p.add_argument("--wespeaker", help="a clone of github.com/wenet-e2e/wespeaker (--pair resnet)")
    p.add_argument("--speakerlab", help="a clone of github.com/modelscope/3D-Speaker (--pair campplus)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    needed = {"resnet": "wespeaker", "campplus": "speakerlab"}.get(args.pair)
    if needed and not getattr(args, needed):
        p.error(f"--pair {args.pair} needs --{needed} CLONE (the peer's code is not in this repository)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    inputs = {"wav": torch.randn(args.batch, SAMPLES), "fbank": torch.randn(args.batch, FRAMES, 80)}
    labels = torch.randint(0, CLASSES, (args.batch,))
    runs = {}
    for name, (build, kind, dim) in implementations(args.pair, args).items():
        model, head = build().train(), nn.Linear(dim, CLASSES)
        optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.01, momentum=0.9)
        runs[name] = (model, head, optimizer, inputs[kind])
        log.info("%s: %d parameters", name, sum(q.numel() for q in model.parameters()))

    def step(model, head, optimizer, x):
        out = model(x)
        embedding = (out[-1] if isinstance(out, tuple) else out).reshape(args.batch, -1)
        loss = F.cross_entropy(head(embedding), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for run in runs.values():           # oneDNN builds its primitives on the first steps
        step(*run), step(*run)
    rates = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step(*run)
            rates[name].append(args.batch * args.steps / (time.perf_counter() - start))
    for name, values in rates.items():
        log.info("%-42s %6.2f segments/s (median; %.2f-%.2f)", name, statistics.median(values), min(values), max(values))
    for name in list(rates)[1:]:
        ratios = [a / b for a, b in zip(rates["ours"], rates[name])]
        log.info("ours / %-35s %.2f (per round %.2f-%.2f)", name, statistics.median(ratios), min(ratios), max(ratios))


if __name__ == "__main__":
    main()
