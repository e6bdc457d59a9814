"""scoring.score_trials against direct per-pair loops."""
import math

import numpy as np
import pytest
import torch

from speakernet.eval.scoring import score_trials

FILES, CROPS, DIM = 6, 10, 16


def cosine(u, v):
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def euclid(u, v):
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))


def loop_scores(crops, pairs, pair_score):
    """Mean of pair_score over all crop pairs of each trial, as a double Python loop."""
    emb = crops.double().tolist()
    out = []
    for a, b in pairs:
        total = 0.0
        for u in emb[a]:
            for v in emb[b]:
                total += pair_score(u, v)
        out.append(total / (len(emb[a]) * len(emb[b])))
    return np.array(out)


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    # Different scales per crop make normalisation matter.
    crops = torch.randn(FILES, CROPS, DIM, generator=gen) * torch.rand(FILES, CROPS, 1, generator=gen) * 5
    pairs = np.array([(a, b) for a in range(FILES) for b in range(FILES)])
    return crops, pairs


def test_normalized_is_mean_cosine_over_crop_pairs(data):
    crops, pairs = data
    got = score_trials(crops, pairs, normalize=True)
    assert got.shape == (len(pairs),)
    np.testing.assert_allclose(got.numpy(), loop_scores(crops, pairs, cosine), rtol=1e-5, atol=1e-6)


def test_unnormalized_is_minus_mean_euclidean_distance(data):
    crops, pairs = data
    got = score_trials(crops, pairs, normalize=False)
    assert got.shape == (len(pairs),)
    np.testing.assert_allclose(got.numpy(), -loop_scores(crops, pairs, euclid), rtol=1e-5, atol=1e-5)


def test_unnormalized_chunking_changes_nothing(data):
    crops, pairs = data
    reference = -loop_scores(crops, pairs, euclid)
    for chunk in (1, 7, 36, 1000):
        got = score_trials(crops, pairs, normalize=False, chunk=chunk).numpy()
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)


def test_single_crop_and_pair_order(data):
    crops, _ = data
    one = crops[:, :1]
    pairs = np.array([[3, 1], [1, 3], [2, 2]])
    got = score_trials(one, pairs).numpy()
    expected = [cosine(one[a, 0].tolist(), one[b, 0].tolist()) for a, b in pairs]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert got[0] == pytest.approx(got[1])
    assert got[2] == pytest.approx(1.0, abs=1e-6)


def test_half_precision_input_is_scored_in_float(data):
    crops, pairs = data
    got = score_trials(crops.half(), pairs)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), loop_scores(crops.half().float(), pairs, cosine),
                               rtol=1e-4, atol=1e-5)
