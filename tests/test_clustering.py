"""speakernet.clustering: spherical k-means, choice of K, confident members, label scores."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score, silhouette_score

from speakernet.data import clustering
from speakernet.core.errors import OptionError


def separated_clusters(clusters=20, per_cluster=30, dim=32, noise=0.02, seed=0):
    """Points around orthonormal centres: (points, labels) that any good clustering recovers."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, clusters)))[0].T
    labels = np.repeat(np.arange(clusters), per_cluster)
    return centres[labels] + noise * rng.normal(size=(len(labels), dim)), labels


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("batch_size", [None, 64], ids=["full-batch", "mini-batch"])
def test_separated_clusters_are_recovered(batch_size):
    points, labels = separated_clusters()
    found = clustering.spherical_kmeans(points, 20, seed=0, batch_size=batch_size)
    assert clustering.purity(found.assignment.numpy(), labels) == 1.0
    assert clustering.normalized_mutual_info(found.assignment.numpy(), labels) == pytest.approx(1.0)
    assert torch.allclose(found.centroids.norm(dim=1), torch.ones(20))


def test_numpy_and_tensor_inputs_agree():
    points, _ = separated_clusters()
    from_array = clustering.spherical_kmeans(points.astype(np.float32), 20, seed=1)
    from_tensor = clustering.spherical_kmeans(torch.from_numpy(points), 20, seed=1)
    assert torch.equal(from_array.assignment, from_tensor.assignment)


@pytest.mark.parametrize("batch_size", [None, 64], ids=["full-batch", "mini-batch"])
def test_same_seed_gives_same_clusters(batch_size):
    points, _ = separated_clusters(noise=0.3)
    first = clustering.spherical_kmeans(points, 20, seed=3, batch_size=batch_size)
    second = clustering.spherical_kmeans(points, 20, seed=3, batch_size=batch_size)
    assert torch.equal(first.assignment, second.assignment)
    assert torch.equal(first.centroids, second.centroids)


def test_similarity_and_margin_are_the_cosines_to_the_centroids():
    points, _ = separated_clusters(noise=0.3)
    found = clustering.spherical_kmeans(points, 20, seed=0)
    cosines = unit(points) @ found.centroids.numpy().T.astype(np.float64)
    ranked = np.sort(cosines, axis=1)
    assert np.array_equal(found.assignment.numpy(), cosines.argmax(axis=1))
    assert np.allclose(found.similarity.numpy(), ranked[:, -1], atol=1e-5)
    assert np.allclose(found.margin.numpy(), ranked[:, -1] - ranked[:, -2], atol=1e-5)
    # Lloyd stopped at a fixed point: each centroid is the normalised mean of its members
    means = np.stack([unit(points)[found.assignment.numpy() == c].mean(axis=0) for c in range(20)])
    assert np.allclose(found.centroids.numpy(), unit(means), atol=1e-5)


def test_lloyd_reseeds_empty_clusters():
    points = clustering.unit_rows(separated_clusters(clusters=5, per_cluster=4)[0])
    # one centroid twice (one copy wins nothing) and one pointing away from every point
    start = torch.cat([points[[0, 0, 4, 8]], -points[:1]])
    centroids, (assignment, similarity, margin) = clustering.lloyd(points, start)
    assert torch.isfinite(centroids).all() and torch.isfinite(margin).all()
    assert sorted(set(assignment.tolist())) == list(range(5))


def test_minibatch_reseeds_empty_clusters():
    points = clustering.unit_rows(separated_clusters(clusters=5, per_cluster=40)[0])
    # a centroid twice (one copy wins nothing) and one opposite to every point
    start = torch.cat([points[[0, 0, 40, 80]], -points.mean(dim=0, keepdim=True)])
    centroids = clustering.minibatch(points, start, 16, 40, torch.Generator().manual_seed(0))
    assert torch.isfinite(centroids).all()
    assert sorted(set(clustering.assign(points, centroids)[0].tolist())) == list(range(5))


def test_reseeding_takes_distinct_worst_served_points():
    points = clustering.unit_rows(torch.eye(4)[[0, 0, 0, 1, 2, 3]])
    centroids = torch.zeros(3, 4)
    similarity = torch.tensor([0.1, 0.1, 0.1, 0.2, 0.3, 0.9])
    clustering.reseed_empty(centroids, torch.tensor([0, 2]), points, similarity)
    expected = torch.zeros(3, 4)
    expected[[0, 2]] = torch.eye(4)[[0, 1]]  # the worst-served point, then the next distinct one
    assert torch.equal(centroids, expected)


def test_final_pass_after_reseeding_equals_a_fresh_assignment():
    points = clustering.unit_rows(separated_clusters(clusters=6, per_cluster=30, noise=0.3)[0])
    # a centroid twice (the copy wins nothing, yet is its twin's members' runner-up) and one
    # pointing away from every point
    centroids = torch.cat([points[[0, 0, 30, 60, 90]], -points[:1]])
    assignment, similarity, margin = clustering.final_assignment(points, centroids)
    fresh = clustering.assign(points, centroids)
    assert len(torch.unique(assignment)) == 6
    assert torch.equal(assignment, fresh[0])
    assert torch.allclose(similarity, fresh[1], atol=1e-6)
    assert torch.allclose(margin, fresh[2], atol=1e-6)


def test_duplicate_points_use_every_cluster():
    distinct, _ = separated_clusters(clusters=8, per_cluster=1)
    points = np.repeat(distinct, 25, axis=0)  # 8 distinct points, 25 copies each
    for batch_size in (None, 16):
        found = clustering.spherical_kmeans(points, 8, seed=0, batch_size=batch_size)
        assert torch.isfinite(found.centroids).all()
        assert len(torch.unique(found.assignment)) == 8


def test_silhouette_matches_sklearn():
    rng = np.random.default_rng(0)
    points, _ = separated_clusters(clusters=6, per_cluster=20, noise=0.4)
    labels = rng.integers(0, 7, size=len(points))
    labels[0] = 7  # a singleton scores 0
    ours = clustering.silhouette(points, labels)
    assert ours == pytest.approx(silhouette_score(points, labels, metric="cosine"), abs=1e-5)


def test_choose_k_picks_the_generating_number():
    points, _ = separated_clusters(clusters=10, per_cluster=30, noise=0.05)
    best, scores = clustering.choose_k(points, [5, 10, 20, 40], seed=0)
    assert best == 10
    assert sorted(scores) == [5, 10, 20, 40]


def test_choose_k_skips_candidates_above_the_sample(caplog):
    points, _ = separated_clusters(clusters=4, per_cluster=10)
    best, scores = clustering.choose_k(points, [4, 30, 50], sample=25)
    assert (best, sorted(scores)) == (4, [4])
    assert "K=30,50" in caplog.text


def confident_by_loop(assignment, margin, keep_fraction, min_size):
    keep = np.zeros(len(assignment), dtype=bool)
    for cluster in set(assignment.tolist()):
        members = [i for i in range(len(assignment)) if assignment[i] == cluster]
        members.sort(key=lambda i: (-margin[i], i))
        quota = math.ceil(round(keep_fraction * len(members), 9))
        if min(quota, len(members)) >= min_size:
            keep[members[:quota]] = True
    return keep


@pytest.mark.parametrize("keep_fraction", [0.7, 0.55, 1.0, 0.01])  # 0.55 * 100 > 55 in floats
def test_keep_confident_matches_a_loop(keep_fraction):
    rng = np.random.default_rng(1)
    assignment = np.repeat(np.arange(7), [10, 1, 3, 20, 2, 7, 100])
    margin = rng.integers(0, 4, size=len(assignment)).astype(np.float32) / 4  # many ties
    clusters = clustering.Clusters(torch.zeros(7, 2), torch.from_numpy(assignment),
                                   torch.zeros(len(assignment)), torch.from_numpy(margin))
    kept = clustering.keep_confident(clusters, keep_fraction, min_size=2)
    assert np.array_equal(kept, confident_by_loop(assignment, margin, keep_fraction, 2))


def test_purity_by_hand():
    # clusters {0: a a b}, {1: b b}, {2: c a}: majorities 2 + 2 + 1 of 7
    assert clustering.purity([0, 0, 0, 1, 1, 2, 2], list("aabbbca")) == pytest.approx(5 / 7)


def test_purity_and_nmi_match_sklearn_on_string_labels():
    rng = np.random.default_rng(2)
    truth = np.array([f"id{i:05d}" for i in rng.integers(0, 30, size=500)])
    found = rng.integers(0, 25, size=500)
    found[:200] = np.unique(truth, return_inverse=True)[1][:200]
    ours = clustering.normalized_mutual_info(found, truth)
    assert ours == pytest.approx(normalized_mutual_info_score(truth, found), abs=1e-12)
    counts = np.zeros((25 + 30, 30))
    np.add.at(counts, (found, np.unique(truth, return_inverse=True)[1]), 1)
    assert clustering.purity(found, truth) == pytest.approx(counts.max(axis=1).sum() / 500)


@pytest.mark.parametrize("found,truth", [([0, 0, 0], [1, 1, 1]), ([0, 0, 0], [0, 1, 2]),
                                         ([0, 1, 2], [5, 5, 5]), ([0, 1, 1], [2, 3, 3])])
def test_nmi_edge_cases_match_sklearn(found, truth):
    expected = normalized_mutual_info_score(truth, found)
    assert clustering.normalized_mutual_info(found, truth) == pytest.approx(expected)


def test_relabel_by_size_puts_the_largest_first():
    relabelled = clustering.relabel_by_size(np.array([7, 3, 3, 9, 9, 9, 7, 5]))
    # sizes: 9 -> 3, then 3 and 7 (2 each, the smaller label first), then 5
    assert relabelled.tolist() == [2, 1, 1, 0, 0, 0, 2, 3]


@pytest.mark.parametrize("k,message", [(1, "at least 2"), (0, "at least 2"),
                                       (61, "K=61 is larger than the 60 utterances")])
def test_bad_number_of_clusters(k, message):
    points, _ = separated_clusters(clusters=2, per_cluster=30)
    with pytest.raises(OptionError, match=message) as caught:
        clustering.spherical_kmeans(points, k)
    assert "--pseudo_clusters" in str(caught.value)


def test_non_finite_embeddings_are_refused():
    points, _ = separated_clusters(clusters=2, per_cluster=30)
    points[[3, 17], 1] = [np.nan, np.inf]
    with pytest.raises(OptionError, match=r"2 of 60 embeddings .*first row 3.*diverged"):
        clustering.spherical_kmeans(points, 2)


@pytest.mark.parametrize("empty", [np.zeros((0, 8)), torch.zeros(0, 8), np.zeros(5)])
def test_no_embeddings_are_refused(empty):
    with pytest.raises(OptionError, match="no embeddings to cluster"):
        clustering.spherical_kmeans(empty, 2)


def test_choose_k_without_usable_candidates():
    points, _ = separated_clusters(clusters=2, per_cluster=10)
    with pytest.raises(OptionError, match="no candidate number of clusters fits the 20 points"):
        clustering.choose_k(points, [30, 40])


@pytest.mark.parametrize("keep_fraction", [0, -0.5, 1.5, float("nan")])
def test_keep_fraction_out_of_range(keep_fraction):
    clusters = clustering.spherical_kmeans(separated_clusters(clusters=2)[0], 2)
    with pytest.raises(OptionError, match=r"keep_fraction .* must lie in \(0, 1\]"):
        clustering.keep_confident(clusters, keep_fraction)


def test_bad_batch_size():
    with pytest.raises(OptionError, match="batch size 0"):
        clustering.spherical_kmeans(separated_clusters(clusters=2)[0], 2, batch_size=0)
