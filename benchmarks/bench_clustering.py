#! /usr/bin/python
# -*- encoding: utf-8 -*-
"""Time speakernet.data.clustering.spherical_kmeans on synthetic speaker-like embeddings.

Usage:
    python benchmarks/bench_clustering.py [--n 1000000] [--dim 192] [--k 6000] [--seed 0]
                                          [--spread 0.8] [--batch_size N] [--iterations N]

N points are drawn from K clusters on the unit sphere: random unit centres, cluster sizes
from a log-normal (as utterances per speaker vary), and Gaussian noise of norm about `spread`
times the centre's, so that two utterances of one cluster have a cosine near 1 / (1 + spread^2)
(0.6 by default: overlapping, not trivially separable). Prints the time of the k-means++ init,
the iterations and the final assignment pass, the peak resident memory, purity and NMI against
the generating labels, and the same two for the oracle that assigns each point to its nearest
generating centre (the best any clustering can do on this data).
"""

import argparse
import logging
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from speakernet.data import clustering  # noqa: E402

log = logging.getLogger("bench_clustering")


def make_clusters(n, dim, k, spread, seed):
    """(N x D unit rows, N generating labels, K x D unit centres)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, dim, generator=generator), dim=1)
    weights = torch.randn(k, generator=generator).mul_(0.5).exp_()
    labels = torch.multinomial(weights, n, replacement=True, generator=generator)
    points = torch.randn(n, dim, generator=generator).mul_(spread / dim ** 0.5)
    points.add_(centres[labels])
    return torch.nn.functional.normalize(points, dim=1, out=points), labels, centres


def cpu_model():
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no lscpu)"
    return next((line.split(":", 1)[1].strip() for line in lines.splitlines()
                 if line.startswith("Model name")), "unknown")


def peak_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # ru_maxrss is in KiB


def scores(assignment, labels):
    return (clustering.purity(assignment, labels),
            clustering.normalized_mutual_info(assignment, labels))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--k", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spread", type=float, default=0.8,
                        help="noise norm relative to the unit centre")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="mini-batch size (default: the library's choice by N)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="Lloyd iterations or mini-batch steps (default: the library's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    print(f"CPU: {cpu_model()}, torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    start = time.perf_counter()
    points, labels, centres = make_clusters(args.n, args.dim, args.k, args.spread, args.seed)
    sizes = torch.bincount(labels, minlength=args.k)
    print(f"data: {args.n} x {args.dim}, {args.k} clusters of {int(sizes.min())}.."
          f"{int(sizes.max())} points, spread {args.spread}, "
          f"made in {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    found = clustering.spherical_kmeans(points, args.k, seed=args.seed,
                                        iterations=args.iterations, batch_size=args.batch_size)
    total = time.perf_counter() - start
    seconds = found.seconds
    print(f"spherical_kmeans: {total:.1f} s in all (init {seconds['init']:.1f} s, iterations "
          f"{seconds['iterations']:.1f} s, final assignment {seconds['assignment']:.1f} s)")
    print(f"peak memory (ru_maxrss): {peak_gib():.2f} GiB")
    used = len(torch.unique(found.assignment))
    print(f"clusters used: {used} of {args.k}, mean cosine to own centroid "
          f"{float(found.similarity.mean()):.3f}")
    print("k-means: purity %.4f, NMI %.4f" % scores(found.assignment.numpy(), labels.numpy()))
    oracle = clustering.assign(points, centres)[0]
    print("oracle (nearest generating centre): purity %.4f, NMI %.4f"
          % scores(oracle.numpy(), labels.numpy()))


if __name__ == "__main__":
    main()
