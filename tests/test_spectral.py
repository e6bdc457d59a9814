"""speakernet.data.spectral: spectral clustering on a nearest-neighbour graph follows chains
of points that k-means cuts apart; its confidence figures are those of its own clusters."""
import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch

from speakernet.core.errors import OptionError
from speakernet.data import clustering, pseudo_labels, spectral


def two_arcs(points=300, gap=0.3, seed=0):
    """Two long parallel arcs on the unit sphere (latitude +-gap/2, longitude 0 to 1.5 pi),
    each one cluster: (points, labels). The arcs are far longer than the gap between them, so
    k-means with K = 2 splits them across, by longitude."""
    rng = np.random.default_rng(seed)
    longitude = np.tile(np.linspace(0, 1.5 * np.pi, points), 2) + rng.normal(0, 1e-3, 2 * points)
    latitude = np.repeat([gap / 2, -gap / 2], points)
    xyz = np.stack([np.cos(latitude) * np.cos(longitude), np.cos(latitude) * np.sin(longitude),
                    np.sin(latitude)], axis=1)
    return xyz, np.repeat([0, 1], points)


def test_spectral_follows_chains_that_kmeans_cuts():
    points, labels = two_arcs()
    found = spectral.spectral_clusters(points, 2, seed=0)
    assert clustering.purity(found.assignment.numpy(), labels) == 1.0
    kmeans = clustering.spherical_kmeans(points, 2, seed=0)
    assert clustering.normalized_mutual_info(kmeans.assignment.numpy(), labels) < 0.2


def test_the_graph_joins_each_point_to_its_nearest_and_is_symmetric():
    rng = np.random.default_rng(1)
    x = clustering.unit_rows(rng.normal(size=(40, 5)))
    graph = spectral.knn_graph(x, 3).toarray()
    assert np.array_equal(graph, graph.T) and np.all(np.diag(graph) == 0)
    cosines = (x @ x.T).numpy()
    np.fill_diagonal(cosines, -np.inf)
    for i in range(40):
        nearest = set(np.argsort(-cosines[i])[:3])
        expected = [(1.0 if j in nearest else 0.0) + (1.0 if i in set(np.argsort(-cosines[j])[:3]) else 0.0)
                    for j in range(40)]
        assert np.allclose(graph[i], np.array(expected) / 2)


def test_the_embedding_spans_the_leading_eigenvectors():
    rng = np.random.default_rng(2)
    graph = spectral.knn_graph(clustering.unit_rows(rng.normal(size=(60, 4))), 5)
    degree = np.asarray(graph.sum(axis=1)).ravel()
    affinity = graph.toarray() / np.sqrt(np.outer(degree, degree))
    values, vectors = np.linalg.eigh(affinity)
    leading = vectors[:, -4:]
    embedded = spectral.spectral_embedding(scipy.sparse.csr_matrix(graph), 4, seed=0).numpy()
    # each row is a unit-length rescaling of the same row of the leading eigenvectors' span
    rows = leading / np.linalg.norm(leading, axis=1, keepdims=True)
    projection = rows @ rows.T
    assert np.allclose(np.abs(np.linalg.norm(embedded, axis=1)), 1, atol=1e-5)
    assert np.allclose(np.abs(embedded @ embedded.T), np.abs(projection), atol=1e-4)


def test_similarity_and_margin_are_to_the_own_clusters_means():
    rng = np.random.default_rng(3)
    x = clustering.unit_rows(rng.normal(size=(50, 6)))
    assignment = torch.from_numpy(rng.integers(0, 4, 50))
    found = clustering.clusters_of(x, assignment, 4)
    xs = x.double().numpy()
    for i in range(50):
        means = [xs[assignment.numpy() == c].mean(axis=0) for c in range(4)]
        cos = [float(xs[i] @ m / np.linalg.norm(m)) for m in means]
        own = cos[int(assignment[i])]
        other = max(c for j, c in enumerate(cos) if j != int(assignment[i]))
        assert found.similarity[i].item() == pytest.approx(own, abs=1e-5)
        assert found.margin[i].item() == pytest.approx(own - other, abs=1e-5)
    assert torch.equal(found.assignment, assignment)


def test_pseudo_labels_use_the_chosen_method():
    points, labels = two_arcs()
    by_method = {m: pseudo_labels.pseudo_labels(points, 2, 1.0, seed=0, method=m)[0]
                 for m in ("kmeans", "spectral")}
    assert clustering.purity(by_method["spectral"], labels) == 1.0
    assert clustering.purity(by_method["kmeans"], labels) < 0.8


def test_too_many_utterances_or_clusters_are_refused(monkeypatch):
    points, _ = two_arcs(points=20)
    with pytest.raises(OptionError, match="K=39"):
        spectral.spectral_clusters(points, 39)
    monkeypatch.setattr(spectral, "SPECTRAL_LIMIT", 30)
    with pytest.raises(OptionError, match="up to 30 utterances .* use --pseudo_method kmeans"):
        spectral.spectral_clusters(points, 2)


def test_eigenvectors_that_do_not_converge_are_one_line(monkeypatch):
    def no_convergence(*args, **kwargs):
        raise scipy.sparse.linalg.ArpackNoConvergence("no convergence", None, None)
    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", no_convergence)
    points, _ = two_arcs(points=20)
    with pytest.raises(OptionError, match="did not converge; use --pseudo_method kmeans"):
        spectral.spectral_clusters(points, 2)
