"""Preconditioners, λ(σ) and p_train against Table 1 and the derivation of App. B.6."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from edmgrid.design.loss_weight import loss_weights
from edmgrid.design.p_train import p_trains
from edmgrid.design.precond import preconds
from edmgrid.design.schedule import VP, schedules
from edmgrid.design.timesteps import iddpm_u

SIGMAS = [0.01, 0.1, 0.5, 1.0, 5.0, 50.0]


def _effective(precond, sigma: float, sigma_data: float, n: int = 200_000):
    """Var of the network input c_in(y+n) and of the effective target (y − c_skip(y+n))/c_out."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(n, generator=g, dtype=torch.float64) * sigma_data
    noise = torch.randn(n, generator=g, dtype=torch.float64) * sigma
    s = torch.tensor(sigma, dtype=torch.float64)
    c_skip, c_out, c_in, _ = precond.coefficients(s)
    return float((c_in * (y + noise)).var()), float(((y - c_skip * (y + noise)) / c_out).var())


@pytest.mark.parametrize("sigma", SIGMAS)
def test_edm_input_and_target_have_unit_variance(sigma):
    var_in, var_target = _effective(preconds["edm"](sigma_data=0.5), sigma, 0.5)
    assert var_in == pytest.approx(1, rel=0.02)
    assert var_target == pytest.approx(1, rel=0.02)


@pytest.mark.parametrize("name", ["vp", "iddpm"])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_vp_and_iddpm_input_and_target_have_unit_variance_for_unit_data(name, sigma):
    var_in, var_target = _effective(preconds[name](), sigma, 1.0)
    assert var_in == pytest.approx(1, rel=0.02)
    assert var_target == pytest.approx(1, rel=0.02)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_ve_target_has_unit_variance(sigma):
    _, var_target = _effective(preconds["ve"](), sigma, 1.0)
    assert var_target == pytest.approx(1, rel=0.02)


def test_edm_loss_weight_times_c_out_squared_is_one():
    sigma = torch.logspace(-3, 2, 50, dtype=torch.float64)
    c_out = preconds["edm"]().coefficients(sigma)[1]
    torch.testing.assert_close(loss_weights["edm"]()(sigma) * c_out**2, torch.ones_like(sigma))
    for name in ("vp", "ve", "iddpm"):
        torch.testing.assert_close(loss_weights[name]()(sigma), sigma**-2)


def test_c_noise_matches_table1():
    sigma = torch.tensor(SIGMAS, dtype=torch.float64)
    vp_inv = (torch.sqrt(0.1**2 + 2 * 19.9 * torch.log(sigma**2 + 1)) - 0.1) / 19.9
    torch.testing.assert_close(preconds["vp"]().coefficients(sigma)[3], 999 * vp_inv)
    torch.testing.assert_close(preconds["ve"]().coefficients(sigma)[3], torch.log(sigma / 2))
    torch.testing.assert_close(preconds["edm"]().coefficients(sigma)[3], torch.log(sigma) / 4)


def test_iddpm_rounds_to_nearest_level_and_c_noise_counts_down():
    precond = preconds["iddpm"]()
    u = precond.u()
    for j in (0, 8, 500, 999):
        level = u[j].double()
        assert float(precond.round_sigma(level * (1 + 1e-4))) == pytest.approx(float(level))
        assert float(precond.coefficients(level.reshape(1))[3]) == 999 - j
    assert precond.sigma_range() == (pytest.approx(float(u[999])), pytest.approx(20291.17, abs=0.1))


def test_ve_and_edm_network_ranges_match_official_values():
    # VP's and iDDPM's float32 ranges: tests/test_official_parity.py.
    assert preconds["ve"]().sigma_range() == (0.02, 100.0)
    assert preconds["edm"]().sigma_range() == (0.0, math.inf)


def _ks(samples: torch.Tensor, cdf) -> float:
    return float(stats.kstest(samples.double().numpy(), cdf).pvalue)


N = 20_000


def test_edm_p_train_is_lognormal():
    sigma = p_trains["edm"](P_mean=-1.2, P_std=1.2).sample(N, torch.Generator().manual_seed(1))
    assert _ks(sigma.log(), stats.norm(-1.2, 1.2).cdf) > 1e-3


def test_ve_p_train_is_log_uniform():
    sigma = p_trains["ve"]().sample(N, torch.Generator().manual_seed(2))
    assert _ks(sigma.log(), stats.uniform(math.log(0.02), math.log(100 / 0.02)).cdf) > 1e-3


def test_vp_p_train_is_uniform_in_t():
    sigma = p_trains["vp"]().sample(N, torch.Generator().manual_seed(3))
    t = VP(beta_d=19.9, beta_min=0.1).sigma_inv(sigma.double())
    assert _ks(t, stats.uniform(1e-5, 1 - 1e-5).cdf) > 1e-3


def test_iddpm_p_train_draws_table_levels_uniformly():
    sigma = p_trains["iddpm"]().sample(N, torch.Generator().manual_seed(4))
    u = iddpm_u(1000, 0.001, 0.008, torch.float32)[:1000]
    index = (sigma.reshape(-1, 1) - u.reshape(1, -1)).abs().argmin(1)
    assert torch.equal(u[index], sigma)
    assert _ks(index.double() / 1000, stats.uniform(0, 1).cdf) > 1e-3


@pytest.mark.parametrize("name", ["cosine", "sigmoid", "linear_gamma"])
def test_chen_p_train_is_uniform_in_t(name):
    sigma = p_trains[name](input_scale=0.7).sample(N, torch.Generator().manual_seed(5))
    t = schedules[name](input_scale=0.7).sigma_inv(sigma.double())
    assert _ks(t, stats.uniform(0, 1).cdf) > 1e-3
