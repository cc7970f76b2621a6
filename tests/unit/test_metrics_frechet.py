"""The Fréchet distance against closed forms and scipy, and the mean/covariance from running sums."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from dv.metrics.frechet import frechet_distance, mean_cov_from_sums, psd_sqrt


def _random_cov(d: int, seed: int, rank: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d) + (0 if rank else 0.1 * np.eye(d))


def _t(*arrays):
    return [torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in arrays]


def test_diagonal_covariances_match_closed_form():
    """||mu1 - mu2||^2 + sum(s1 + s2 - 2 sqrt(s1 s2)) for diagonal covariances."""
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 3.0]), np.array([1.0, 1.0, 0.5, -1.0])
    s1, s2 = np.array([1.0, 4.0, 0.25, 9.0]), np.array([2.0, 1.0, 0.25, 0.5])
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    got = frechet_distance(*_t(mu1, np.diag(s1), mu2, np.diag(s2)))
    assert got.dtype == torch.float64
    assert abs(got.item() - expected) < 1e-10


def test_full_covariances_match_scipy_sqrtm():
    """A non-diagonal case equals StyleGAN-V's formula with scipy.linalg.sqrtm."""
    d = 12
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_cov(d, 1), _random_cov(d, 2)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    expected = np.real(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    got = frechet_distance(*_t(mu1, s1, mu2, s2)).item()
    assert abs(got - expected) < 1e-8 * max(1.0, abs(expected))
    # Symmetric in its two arguments, as the distance is.
    assert abs(frechet_distance(*_t(mu2, s2, mu1, s1)).item() - got) < 1e-8


def test_singular_covariance_is_finite_and_exact():
    """Rank-deficient covariances (fewer samples than features) give a finite real number, exact where known."""
    d = 16
    s = _random_cov(d, 3, rank=4)  # rank 4 of 16
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    same = frechet_distance(*_t(mu1, s, mu2, s)).item()
    assert np.isfinite(same) and abs(same - 0.25 * d) < 1e-8  # identical covariances: only the means remain
    other = frechet_distance(*_t(mu1, s, mu2, _random_cov(d, 4, rank=3))).item()
    assert np.isfinite(other) and other > 0.25 * d - 1e-8
    zero = frechet_distance(*_t(mu1, np.zeros((d, d)), mu1, np.zeros((d, d)))).item()
    assert zero == 0.0


def test_psd_sqrt_squares_back():
    """psd_sqrt(S) @ psd_sqrt(S) == S for a covariance."""
    (s,) = _t(_random_cov(10, 5))
    root = psd_sqrt(s)
    assert torch.allclose(root @ root, s, atol=1e-10)


def test_mean_cov_from_sums_is_the_biased_covariance():
    """Mean and covariance divided by n (StyleGAN-V's FeatureStats.get_mean_cov)."""
    x = np.random.default_rng(6).normal(size=(50, 7)) + 3.0
    (feats,) = _t(x)
    mean, cov = mean_cov_from_sums(feats.sum(0), feats.T @ feats, len(feats))
    assert np.allclose(mean.numpy(), x.mean(0), atol=1e-12)
    assert np.allclose(cov.numpy(), np.cov(x, rowvar=False, bias=True), atol=1e-10)
