"""The analytic denoiser against a brute-force softmax over the data (EDM App. B.3, Eq. 57)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from edmgrid.engine.denoiser import AnalyticDenoiser


def brute_force(y: Tensor, x: Tensor, sigma: float) -> Tensor:
    """D(x; σ) = Σ_i softmax_i(−‖x − y_i‖²/2σ²)·y_i for one flat sample x, in float64."""
    logits = -((x[None, :] - y) ** 2).sum(1) / (2 * sigma**2)
    return logits.softmax(0) @ y


@pytest.fixture
def data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.rand(50, 2, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    x = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    return y, x


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0, 20.0])
def test_analytic_denoiser_matches_brute_force_softmax(data, sigma):
    y, x = data
    expected = torch.stack([brute_force(y.flatten(1), xi.flatten(), sigma) for xi in x])
    got = AnalyticDenoiser(y)(x, torch.tensor(sigma, dtype=torch.float64))
    assert got.shape == x.shape
    torch.testing.assert_close(got.flatten(1), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sigma", [1e-3, 0.3, 5.0])
def test_chunked_online_softmax_equals_the_unchunked_one(data, sigma):
    y, x = data
    sigma_t = torch.tensor(sigma, dtype=torch.float64)
    chunked = AnalyticDenoiser(y, chunk=7)(x, sigma_t)
    assert torch.isfinite(chunked).all()
    torch.testing.assert_close(chunked, AnalyticDenoiser(y)(x, sigma_t), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [7, 4096])
def test_per_sample_sigma_vector_equals_one_call_per_sample(data, chunk):
    y, x = data
    sigmas = torch.tensor([0.01, 0.1, 0.5, 1.0, 3.0, 50.0], dtype=torch.float64)
    denoiser = AnalyticDenoiser(y, chunk=chunk)
    one_by_one = torch.cat([denoiser(xi[None], s) for xi, s in zip(x, sigmas, strict=True)])
    torch.testing.assert_close(denoiser(x, sigmas), one_by_one, rtol=1e-12, atol=1e-12)


def test_at_tiny_sigma_the_denoiser_returns_the_nearest_data_point(data):
    y, _ = data
    x = y[[4, 17]] + 1e-3
    got = AnalyticDenoiser(y, chunk=7)(x, torch.tensor(1e-4, dtype=torch.float64))
    torch.testing.assert_close(got, y[[4, 17]], rtol=0, atol=1e-12)
