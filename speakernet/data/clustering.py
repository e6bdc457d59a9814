"""Clustering of utterance embeddings into pseudo-speakers, on the unit sphere (cosine).

- `spherical_kmeans`: k-means with unit centroids and assignment by maximum cosine. Seeded by
  k-means++ (Arthur & Vassilvitskii 2007, "k-means++: the advantages of careful seeding") on a
  subsample; full-batch Lloyd iterations for small N, mini-batch k-means with a per-centroid
  learning rate 1/count (Sculley 2010, "Web-scale k-means clustering") for large N, then one
  chunked full assignment pass. Empty clusters are re-seeded from the worst-served points.
- `choose_k`: the candidate K with the highest mean silhouette (Rousseeuw 1987, "Silhouettes: a
  graphical aid to the interpretation and validation of cluster analysis") under cosine distance.
- `keep_confident`: the label-noise guard, keeping the members of each cluster with the largest
  margin between their own centroid and the next best one.
- `purity`, `normalized_mutual_info`, `relabel_by_size`: label bookkeeping in numpy.

Similarities are computed in row chunks, so no N x K matrix is held for large N.
"""
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from speakernet.core.errors import OptionError

log = logging.getLogger(__name__)

FULL_BATCH_LIMIT = 100_000  # above this many points, mini-batch k-means
LLOYD_ITERATIONS = 50
MINIBATCH_SIZE = 8192
MINIBATCH_EPOCHS = 3  # default passes over the data of the mini-batch path
INIT_POINTS_PER_CLUSTER = 3  # as sklearn's MiniBatchKMeans init_size
INIT_SAMPLE_MIN = 10_000
CHUNK_ELEMENTS = 1 << 24  # entries of one similarity block (64 MB in float32)
SAME_POINT = 1 - 1e-6  # cosine above which two unit vectors count as one point


@dataclass
class Clusters:
    centroids: torch.Tensor  # K x D float32, unit rows
    assignment: torch.Tensor  # N int64
    similarity: torch.Tensor  # N float32: cosine to the own centroid
    margin: torch.Tensor  # N float32: own cosine minus the best other centroid's cosine
    seconds: dict = field(default_factory=dict)  # wall time of init / iterations / assignment


def unit_rows(x):
    """`x` (tensor or array, N x D) as float32 CPU rows of norm 1; bad values raise OptionError."""
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().cpu().float()
    if x.ndim != 2 or len(x) == 0:
        raise OptionError(f"no embeddings to cluster (got an array of shape {tuple(x.shape)}); "
                          f"check that the training list is not empty")
    bad = (~torch.isfinite(x).all(dim=1)).nonzero().flatten()
    if len(bad):
        raise OptionError(f"{len(bad)} of {len(x)} embeddings have NaN or Inf values (first row "
                          f"{int(bad[0])}): the model that produced them diverged; use an earlier "
                          f"checkpoint")
    zero = int((x.norm(dim=1) == 0).sum())
    if zero:
        log.warning("%d of %d embeddings are all zeros; they join clusters at random", zero, len(x))
    return F.normalize(x, dim=1)


def chunk_rows(k):
    return max(1, CHUNK_ELEMENTS // max(k, 1))


def assign(x, centroids, progress=False):
    """Nearest of K >= 2 centroids by cosine for unit rows `x`: (assignment, similarity, margin)."""
    n, k = len(x), len(centroids)
    assignment = torch.empty(n, dtype=torch.int64)
    similarity, margin = torch.empty(n), torch.empty(n)
    step = chunk_rows(k)
    for start in tqdm(range(0, n, step), desc="assigning", unit="chunk", leave=False,
                      disable=None if progress else True):
        best, index = (x[start:start + step] @ centroids.T).topk(2, dim=1)
        assignment[start:start + step] = index[:, 0]
        similarity[start:start + step] = best[:, 0]
        margin[start:start + step] = best[:, 0] - best[:, 1]
    return assignment, similarity, margin


@contextmanager
def one_thread():
    """One thread for a loop of small tensor steps: on busy cores the threads' sync costs more
    than it saves (k-means++ for K=6000: 156 s on 2 busy cores, 22 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def kmeans_plus_plus(x, k, generator):
    """Greedy k-means++ seeds from a random subsample of unit rows `x`: each step draws
    2 + ln k candidates with weight 1 - cos to the nearest seed so far (half the squared chord,
    the Euclidean k-means++ weight on the sphere) and keeps the one that lowers the total most."""
    size = min(len(x), max(INIT_POINTS_PER_CLUSTER * k, INIT_SAMPLE_MIN))
    sample = x[torch.randperm(len(x), generator=generator)[:size]]
    tries = 2 + int(math.log(k))
    chosen = torch.empty(k, dtype=torch.int64)
    chosen[0] = torch.randint(size, (1,), generator=generator)
    distance = 1 - sample @ sample[chosen[0]]
    with one_thread():
        for i in tqdm(range(1, k), desc="k-means++", unit="seed", leave=False, disable=None):
            cumulative = torch.where(distance < 1 - SAME_POINT, 0.0, distance).cumsum(0)
            if cumulative[-1] > 0:
                draws = torch.rand(tries, generator=generator) * cumulative[-1]
                candidates = torch.searchsorted(cumulative, draws).clamp_(max=size - 1)
            else:  # fewer distinct points than seeds: any point will do
                candidates = torch.randint(size, (tries,), generator=generator)
            updated = torch.minimum(distance[:, None], 1 - sample @ sample[candidates].T)
            best = int(updated.sum(dim=0).argmin())
            chosen[i], distance = candidates[best], updated[:, best].contiguous()
    return sample[chosen].clone()


def reseed_empty(centroids, empty, points, similarity):
    """Move the `empty` centroids onto the distinct `points` served worst (lowest `similarity`)."""
    if len(empty) == 0:
        return
    worst = points[torch.argsort(similarity, stable=True)[:4 * len(empty) + 16]]
    gram, blocked, picks = worst @ worst.T, torch.zeros(len(worst), dtype=torch.bool), []
    for i in range(len(worst)):
        if not blocked[i]:
            picks.append(i)
            blocked |= gram[i] > SAME_POINT
            if len(picks) == len(empty):
                break
    picks += picks[:1] * (len(empty) - len(picks))  # fewer distinct points than empty clusters
    centroids[empty] = worst[picks]


def lloyd(x, centroids, iterations=LLOYD_ITERATIONS):
    """Full-batch spherical Lloyd iterations from `centroids` until assignments stop changing."""
    k, previous = len(centroids), None
    for _ in tqdm(range(iterations), desc="k-means", unit="iteration", leave=False, disable=None):
        assignment, similarity, margin = assign(x, centroids)
        if previous is not None and torch.equal(assignment, previous):
            return centroids, (assignment, similarity, margin)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        counts = torch.bincount(assignment, minlength=k)
        centroids = F.normalize(sums, dim=1)
        reseed_empty(centroids, (counts == 0).nonzero().flatten(), x, similarity)
        previous = assignment
    return centroids, assign(x, centroids)


def minibatch(x, centroids, batch_size, steps, generator):
    """Mini-batch spherical k-means (Sculley 2010): each centroid is the running mean of the
    points it has won so far (learning rate 1/count), renormalised; centroids that won nothing
    in a whole pass over the data are re-seeded from that batch's worst-served points."""
    k, n = len(centroids), len(x)
    counts = torch.zeros(k)
    order, position = torch.randperm(n, generator=generator), 0
    for _ in tqdm(range(steps), desc="mini-batch k-means", unit="batch", leave=False, disable=None):
        if position + batch_size > n:
            reseed_empty(centroids, (counts == 0).nonzero().flatten(), batch, best)
            order, position = torch.randperm(n, generator=generator), 0
        batch = x[order[position:position + batch_size]]
        position += batch_size
        best, assignment = (batch @ centroids.T).max(dim=1)
        won = torch.bincount(assignment, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, assignment, batch)
        counts += won
        centroids.add_((sums - won[:, None] * centroids) / counts.clamp(min=1)[:, None])
        centroids.copy_(F.normalize(centroids, dim=1))
    return centroids


def final_assignment(x, centroids, rounds=3):
    """Full assignment pass; clusters left empty are re-seeded and the points near the moved
    centroids assigned again."""
    assignment, similarity, margin = assign(x, centroids, progress=True)
    for attempt in range(rounds + 1):
        empty = (torch.bincount(assignment, minlength=len(centroids)) == 0).nonzero().flatten()
        if len(empty) == 0 or attempt == rounds:
            break
        log.info("k-means: re-seeding %d empty clusters", len(empty))
        before = centroids[empty].clone()
        reseed_empty(centroids, empty, x, similarity)
        # only a point with a moved centroid (old or new place) as best or runner-up can change
        runner_up, step = similarity - margin, chunk_rows(2 * len(empty))
        near = torch.cat([(x[start:start + step] @ torch.cat([before, centroids[empty]]).T)
                          .max(dim=1).values for start in range(0, len(x), step)])
        rows = (near >= runner_up - 1e-6).nonzero().flatten()
        assignment[rows], similarity[rows], margin[rows] = assign(x[rows], centroids)
    if len(empty):
        log.warning("k-means: %d clusters stay empty (fewer distinct points than clusters?)",
                    len(empty))
    return assignment, similarity, margin


def spherical_kmeans(x, k, seed=0, iterations=None, batch_size=None):
    """Cluster the rows of `x` (N x D, tensor or array) into `k` clusters by cosine.

    Full-batch Lloyd iterations (at most `iterations`, default 50) when N <= 100,000 and
    `batch_size` is None; otherwise mini-batch k-means with `batch_size` points per step
    (default 8192) for `iterations` steps (default: 3 passes over the data)."""
    x = unit_rows(x)
    n = len(x)
    if k < 2:
        raise OptionError(f"K={k}: clustering needs at least 2 clusters; raise --pseudo_clusters")
    if k > n:
        raise OptionError(f"K={k} is larger than the {n} utterances to cluster; lower "
                          f"--pseudo_clusters")
    if batch_size is not None and batch_size < 1:
        raise OptionError(f"k-means batch size {batch_size}: must be at least 1")
    generator = torch.Generator().manual_seed(seed)
    seconds, start = {}, time.perf_counter()
    centroids = kmeans_plus_plus(x, k, generator)
    seconds["init"], start = time.perf_counter() - start, time.perf_counter()
    full_batch = n <= FULL_BATCH_LIMIT if batch_size is None else batch_size >= n
    if full_batch:
        centroids, result = lloyd(x, centroids, iterations or LLOYD_ITERATIONS)
        seconds["iterations"] = time.perf_counter() - start
        seconds["assignment"] = 0.0  # the last Lloyd iteration assigned every point
    else:
        batch_size = batch_size or MINIBATCH_SIZE
        steps = iterations or math.ceil(MINIBATCH_EPOCHS * n / batch_size)
        centroids = minibatch(x, centroids, batch_size, steps, generator)
        seconds["iterations"], start = time.perf_counter() - start, time.perf_counter()
        result = final_assignment(x, centroids)
        seconds["assignment"] = time.perf_counter() - start
    log.info("k-means: %d points into %d clusters in %.1f s", n, k, sum(seconds.values()))
    return Clusters(centroids, *result, seconds=seconds)


def clusters_of(x, assignment, k, seconds=None):
    """Clusters for a given `assignment` of unit rows `x` (from another method): centroids are
    the clusters' unit means; similarity and margin are taken to them, the assignment kept."""
    centroids = F.normalize(torch.zeros(k, x.shape[1]).index_add_(0, assignment, x), dim=1)
    similarity, margin = torch.empty(len(x)), torch.empty(len(x))
    step = chunk_rows(k)
    for start in range(0, len(x), step):
        block = x[start:start + step] @ centroids.T
        own = assignment[start:start + step, None]
        similarity[start:start + step] = block.gather(1, own)[:, 0]
        block.scatter_(1, own, -float("inf"))
        margin[start:start + step] = similarity[start:start + step] - block.max(dim=1).values
    return Clusters(centroids, assignment, similarity, margin, seconds=seconds or {})


def silhouette(x, assignment):
    """Mean silhouette coefficient of `assignment` under cosine distance (0 for singletons)."""
    x, labels = unit_rows(x), torch.as_tensor(np.asarray(assignment)).long()
    k, n = int(labels.max()) + 1, len(x)
    sizes = torch.bincount(labels, minlength=k).double()
    scores = torch.empty(n, dtype=torch.float64)
    step = chunk_rows(n)
    for start in range(0, n, step):
        rows = torch.arange(start, min(start + step, n))
        distance = (1 - x[rows] @ x.T).clamp_(min=0)
        distance[torch.arange(len(rows)), rows] = 0  # own distance exactly 0, as sklearn's
        sums = torch.zeros(len(rows), k, dtype=torch.float64)
        sums.index_add_(1, labels, distance.double())
        own = labels[rows]
        within = sums[torch.arange(len(rows)), own] / (sizes[own] - 1).clamp(min=1)
        means = sums / sizes
        means[torch.arange(len(rows)), own] = math.inf
        means[:, sizes == 0] = math.inf
        nearest = means.min(dim=1).values
        score = (nearest - within) / torch.maximum(within, nearest)
        scores[rows] = torch.where(sizes[own] > 1, score.nan_to_num(0.0), 0.0)
    return float(scores.mean())


def choose_k(x, candidates, seed=0, sample=10_000):
    """(best K, {K: mean silhouette}) over `candidates`, each clustered on one random subsample
    of at most `sample` points; candidates larger than the subsample are skipped."""
    x = unit_rows(x)
    picked = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:sample]
    subsample = x[picked.sort().values]
    usable = sorted({int(k) for k in candidates if int(k) <= len(subsample)})
    skipped = sorted({int(k) for k in candidates} - set(usable))
    if skipped:
        log.warning("choose_k: skipping K=%s, more than the %d points scored",
                    ",".join(map(str, skipped)), len(subsample))
    if not usable:
        raise OptionError(f"no candidate number of clusters fits the {len(subsample)} points "
                          f"(candidates {sorted(candidates)}); give candidates up to "
                          f"{len(subsample)}")
    scores = {}
    for k in usable:
        scores[k] = silhouette(subsample, spherical_kmeans(subsample, k, seed).assignment)
        log.info("choose_k: K=%d silhouette %.4f", k, scores[k])
    return max(usable, key=lambda k: (scores[k], -k)), scores


def keep_confident(clusters, keep_fraction, min_size=2):
    """Bool mask (N) keeping, per cluster, the ceil(keep_fraction * size) members of highest
    margin (ties: lower index first); clusters left with fewer than `min_size` are dropped."""
    if not 0 < keep_fraction <= 1:  # also refuses NaN
        raise OptionError(f"keep_fraction {keep_fraction} must lie in (0, 1] (the share of each "
                          f"cluster kept)")
    assignment = np.asarray(clusters.assignment)
    margin = np.asarray(clusters.margin, dtype=np.float64)
    order = np.lexsort((np.arange(len(assignment)), -margin, assignment))
    sizes = np.bincount(assignment)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(len(assignment), dtype=np.int64)
    rank[order] = np.arange(len(assignment)) - first[assignment[order]]
    quota = np.ceil(keep_fraction * sizes - 1e-9)  # 0.07 * 100 is 7.000000000000001
    keep = rank < quota[assignment]
    kept_sizes = np.bincount(assignment[keep], minlength=len(sizes))
    return keep & (kept_sizes[assignment] >= min_size)


def _codes(labels):
    return np.unique(np.asarray(labels), return_inverse=True)[1].reshape(-1)


def _contingency(assignment, truth):
    """Nonzero counts of (cluster, truth) pairs, and the two label codings."""
    a, t = _codes(assignment), _codes(truth)
    if len(a) != len(t) or len(a) == 0:
        raise ValueError(f"{len(a)} cluster labels for {len(t)} true labels")
    width = t.max() + 1
    pairs, counts = np.unique(a * width + t, return_counts=True)
    return pairs // width, pairs % width, counts, a, t


def purity(assignment, truth):
    """Share of points whose cluster's most frequent true label is their own."""
    clusters, _, counts, a, _ = _contingency(assignment, truth)
    best = np.zeros(a.max() + 1, dtype=np.int64)
    np.maximum.at(best, clusters, counts)
    return float(best.sum() / len(a))


def _entropy(codes):
    p = np.bincount(codes) / len(codes)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(assignment, truth):
    """Mutual information over the arithmetic mean of the two entropies (as sklearn's default)."""
    clusters, labels, counts, a, t = _contingency(assignment, truth)
    n = len(a)
    if a.max() == t.max() == 0:
        return 1.0  # one cluster and one class: identical partitions
    outer = np.bincount(a)[clusters].astype(np.float64) * np.bincount(t)[labels]
    mutual = max(float((counts / n * (np.log(counts * n) - np.log(outer))).sum()), 0.0)
    return float(mutual / max((_entropy(a) + _entropy(t)) / 2, np.finfo(np.float64).eps))


def relabel_by_size(assignment):
    """Labels 0, 1, ... ordered by cluster size, largest first (ties: the earlier label first)."""
    codes = _codes(assignment)
    order = np.argsort(-np.bincount(codes), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[codes]
