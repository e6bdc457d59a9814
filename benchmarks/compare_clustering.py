"""Purity and NMI of the pseudo-label clusterings on one model's embeddings of a labelled list.

Usage:
    python3 benchmarks/compare_clustering.py --model CHECKPOINT [--config configs/demo_unsupervised.yaml]
        [--train_list data/demo/train_list.txt] [--train_path data/demo/wav] [--clusters 200]
        [--keep 0.8] [--seed 11]

Embeds every utterance of the list as a pseudo-label round does (--pseudo_frames,
--pseudo_crops of the config), clusters the embeddings into K pseudo-speakers with each
--pseudo_method, applies the --keep filter, and prints, per method, purity and NMI against
the list's speaker column (all utterances and the kept ones) and the clustering's seconds.
The speaker column is read for the scores only, as in the rounds' diagnostics.
"""
import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from speakernet.core.train_list import read_train_list  # noqa: E402
from speakernet.data import pseudo_labels  # noqa: E402
from speakernet.run.options import parse_options  # noqa: E402
from speakernet.tools.pseudo_rounds import embed_with, read_list_columns  # noqa: E402

METHODS = ("kmeans", "spectral")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a checkpoint written by trainSpeakerNet.py")
    p.add_argument("--config", default="configs/demo_unsupervised.yaml")
    p.add_argument("--train_list", default="data/demo/train_list.txt", help="a list with its speaker column")
    p.add_argument("--train_path", default="data/demo/wav")
    p.add_argument("--clusters", type=int, default=200)
    p.add_argument("--keep", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=11, help="the clustering's seed (a round's is --seed + round)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    options = parse_options(["--config", args.config, "--train_list", args.train_list,
                             "--train_path", args.train_path])
    _, truth = read_list_columns(args.train_list)
    if truth is None:
        sys.exit(f"{args.train_list} has no speaker column to score the clusters against")
    train_list = read_train_list(args.train_list, args.train_path, need_labels=False)
    start = time.perf_counter()
    embeddings = embed_with(args.model, train_list, options)
    print(f"{len(embeddings)} utterances embedded in {time.perf_counter() - start:.1f} s "
          f"({options.pseudo_crops} crops of {options.pseudo_frames} frames); K = {args.clusters}, "
          f"keep {args.keep}")
    print(f"{'method':10s} {'purity':>8s} {'NMI':>8s} {'purity kept':>12s} {'NMI kept':>9s} {'seconds':>8s}")
    for method in METHODS:
        start = time.perf_counter()
        labels, clusters = pseudo_labels.pseudo_labels(embeddings, args.clusters, args.keep, args.seed, method)
        seconds = time.perf_counter() - start
        scores = pseudo_labels.diagnostics(labels, clusters, truth)
        print(f"{method:10s} {scores['purity_all']:8.3f} {scores['nmi_all']:8.3f} "
              f"{scores['purity_kept']:12.3f} {scores['nmi_kept']:9.3f} {seconds:8.1f}")


if __name__ == "__main__":
    main()
