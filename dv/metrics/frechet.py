"""The Fréchet distance between two Gaussians, and the mean and covariance it takes from running sums.

FVD (like FID) is ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``. The reference
(StyleGAN-V, src/metrics/frechet_video_distance.py) takes ``scipy.linalg.sqrtm(S1 @ S2)`` and drops
its imaginary part; here the trace of that square root is the sum of square roots of the
eigenvalues of the symmetric matrix ``S1^(1/2) S2 S1^(1/2)``, which has the same eigenvalues as
``S1 S2`` but can be diagonalised with ``eigh``: real, no NaN, and robust to singular covariances
(fewer videos than feature dimensions), whose rounding-level eigenvalues are set to zero.
"""

from __future__ import annotations

import torch
from einops import einsum
from torch import Tensor

__all__ = ["frechet_distance", "mean_cov_from_sums", "psd_sqrt"]


def _clean(eigvals: Tensor) -> Tensor:
    # Eigenvalues below the rounding level (as numpy's pinv/matrix_rank judge it) are zeros of a singular
    # covariance; their square roots (~1e-8 for 1e-16) would otherwise add noise, and negatives NaN.
    tol = eigvals.abs().max() * len(eigvals) * torch.finfo(eigvals.dtype).eps
    return torch.where(eigvals > tol, eigvals, torch.zeros_like(eigvals))


def psd_sqrt(matrix: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (rounding-level eigenvalues zeroed)."""
    sym = (matrix + matrix.mT) / 2  # rounding can make a covariance a hair asymmetric; eigh reads one triangle
    eigvals, eigvecs = torch.linalg.eigh(sym)
    roots = _clean(eigvals).sqrt()
    return einsum(eigvecs * roots, eigvecs, "i k, j k -> i j")


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64."""
    mu1, sigma1, mu2, sigma2 = (t.to(torch.float64) for t in (mu1, sigma1, mu2, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (*mu1.shape, *mu1.shape):
        shapes = [tuple(t.shape) for t in (mu1, sigma1, mu2, sigma2)]
        raise ValueError(f"means and covariances of one dimension expected, got shapes {shapes}")
    root1 = psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    # eigvalsh: real eigenvalues of the symmetric product, whose square roots sum to tr((S1 S2)^(1/2)).
    eigvals = torch.linalg.eigvalsh((inner + inner.mT) / 2)
    trace_covmean = _clean(eigvals).sqrt().sum()
    diff = mu1 - mu2
    return diff.dot(diff) + sigma1.trace() + sigma2.trace() - 2 * trace_covmean


def mean_cov_from_sums(feature_sum: Tensor, outer_sum: Tensor, n: Tensor | int) -> tuple[Tensor, Tensor]:
    """Mean and covariance (divided by n, as StyleGAN-V's FeatureStats.get_mean_cov) from running sums."""
    n = torch.as_tensor(n, dtype=torch.float64, device=feature_sum.device)
    mean = feature_sum.to(torch.float64) / n
    cov = outer_sum.to(torch.float64) / n - einsum(mean, mean, "i, j -> i j")
    return mean, cov
