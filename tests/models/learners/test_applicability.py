"""The applicability-domain score: exact kNN (scikit-learn as the reference) and its percentile scale."""

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from models.learners import ApplicabilityDomain


@pytest.fixture(scope="module")
def training():
    rng = np.random.default_rng(0)
    # two clusters with different feature scales, as descriptor columns have
    a = rng.normal(0.0, 1.0, size=(700, 12)) * np.linspace(0.5, 20.0, 12)
    b = rng.normal(3.0, 1.0, size=(600, 12)) * np.linspace(0.5, 20.0, 12)
    return np.vstack([a, b])


def test_knn_distances_match_sklearn(training):
    ad = ApplicabilityDomain.fit(training, k=5, sample=400, seed=1)
    z = (training - ad.mean_) / ad.scale_
    queries = np.random.default_rng(2).normal(1.0, 2.0, size=(300, 12)) * np.linspace(0.5, 20.0, 12)
    ref_d, _ = NearestNeighbors(n_neighbors=5).fit(z).kneighbors((queries - ad.mean_) / ad.scale_)
    np.testing.assert_allclose(ad.distances(queries), ref_d.mean(axis=1), rtol=1e-4, atol=1e-4)
    # the reference scores are leave-one-out: the point itself is not its own neighbour
    pick = np.random.default_rng(1).choice(len(z), size=400, replace=False)
    loo, _ = NearestNeighbors(n_neighbors=6).fit(z).kneighbors(z[pick])
    np.testing.assert_allclose(ad.reference_, np.sort(loo[:, 1:].mean(axis=1)), rtol=1e-4, atol=1e-4)


def test_percentiles_order_near_and_far_inputs(training):
    ad = ApplicabilityDomain.fit(training, k=5, sample=1000)
    inside = ad.score(training[:200])
    far = ad.score(training[:20] + 50.0 * training.std(axis=0))
    assert np.median(inside) < 60  # training points sit in the bulk of their own distribution
    assert (far == 100.0).all()
    assert ((inside >= 0) & (inside <= 100)).all()


def test_too_few_training_rows_is_an_error():
    with pytest.raises(ValueError, match="at least 6 training rows"):
        ApplicabilityDomain.fit(np.zeros((3, 4)), k=5)
