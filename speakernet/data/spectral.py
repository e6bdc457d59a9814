"""Spectral clustering of utterance embeddings (cosine), for lists of up to SPECTRAL_LIMIT
utterances.

Normalised spectral clustering as Ng, Jordan & Weiss 2001 ("On spectral clustering: analysis
and an algorithm") describe it, on a sparse graph (von Luxburg 2007, "A tutorial on spectral
clustering", sec. 2.2): each utterance is joined to its NEIGHBOURS most similar utterances by
cosine (edges of weight 1, made symmetric), the K leading eigenvectors of D^-1/2 A D^-1/2 are
computed (scipy's ARPACK), their rows scaled to unit length and clustered by spherical k-means.
A k-nearest-neighbour graph follows chains of same-speaker utterances that k-means, which wants
one round cluster per speaker, cuts apart: on the demo corpus, for the embeddings of an 8-epoch
CEL model, purity 0.60 against k-means' 0.49 (NMI 0.79 against 0.73) with K = 200.

The eigenvectors of an N-node graph cost O(N K) memory and many sparse products: at VoxCeleb2
scale (a million utterances, K = 6,000) use k-means (speakernet/data/clustering.py).
"""
import logging
import time

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F

from speakernet.core.errors import OptionError
from speakernet.data import clustering

log = logging.getLogger(__name__)

SPECTRAL_LIMIT = 100_000
# sklearn's default for its nearest-neighbour affinity; on the demo 5 and 10 gave purity 0.60,
# 20 gave 0.58 (von Luxburg 2007 advises k of the order of log N, about 8 here).
NEIGHBOURS = 10


def knn_graph(x, neighbours):
    """Symmetric sparse N x N graph joining each unit row of `x` to its `neighbours` nearest."""
    n = len(x)
    step = clustering.chunk_rows(n)
    columns = torch.empty(n, neighbours, dtype=torch.int64)
    for start in range(0, n, step):
        block = x[start:start + step] @ x.T
        block[torch.arange(len(block)), torch.arange(start, start + len(block))] = -2.0  # not itself
        columns[start:start + step] = block.topk(neighbours, dim=1).indices
    rows = np.repeat(np.arange(n), neighbours)
    graph = scipy.sparse.csr_matrix((np.ones(n * neighbours), (rows, columns.flatten().numpy())),
                                    shape=(n, n))
    return (graph + graph.T) / 2


def spectral_embedding(graph, k, seed):
    """Rows of the K leading eigenvectors of the normalised affinity, scaled to unit length."""
    degree = np.asarray(graph.sum(axis=1)).ravel()
    scale = scipy.sparse.diags(1.0 / np.sqrt(degree))
    affinity = scale @ graph @ scale
    start = np.random.default_rng(seed).standard_normal(graph.shape[0])
    try:
        _, vectors = scipy.sparse.linalg.eigsh(affinity, k=k, which="LA", v0=start)
    except scipy.sparse.linalg.ArpackNoConvergence:
        raise OptionError(f"spectral clustering: the {k} leading eigenvectors of the "
                          f"{graph.shape[0]}-utterance graph did not converge; use --pseudo_method "
                          f"kmeans") from None
    return F.normalize(torch.from_numpy(vectors).float(), dim=1)


def spectral_clusters(x, k, seed=0, neighbours=NEIGHBOURS):
    """Cluster the rows of `x` (N x D) into `k` clusters -> clustering.Clusters, whose centroids
    are the unit means of the clusters in embedding space (for the confidence filter)."""
    x = clustering.unit_rows(x)
    n = len(x)
    if n > SPECTRAL_LIMIT:
        raise OptionError(f"--pseudo_method spectral handles up to {SPECTRAL_LIMIT:,} utterances "
                          f"(the list has {n:,}); use --pseudo_method kmeans")
    if not 2 <= k < n - 1:
        raise OptionError(f"K={k}: spectral clustering of {n} utterances needs 2 <= K < {n - 1}; "
                          f"change --pseudo_clusters")
    start = time.perf_counter()
    graph = knn_graph(x, min(neighbours, n - 1))
    embedded = spectral_embedding(graph, k, seed)
    assignment = clustering.spherical_kmeans(embedded, k, seed=seed).assignment
    seconds = time.perf_counter() - start
    log.info("spectral clustering: %d points into %d clusters in %.1f s", n, k, seconds)
    return clustering.clusters_of(x, assignment, k, seconds={"spectral": seconds})
