"""Time step discretisations against Table 1 and the official ablation sampler's grids."""

from __future__ import annotations

import math

import pytest
import torch

from edmgrid.design.schedule import Linear, schedules
from edmgrid.design.timesteps import iddpm_u, timesteps

EDM_18 = [
    80,
    57.586,
    40.786,
    28.375,
    19.353,
    12.910,
    8.401,
    5.315,
    3.257,
    1.923,
    1.088,
    0.5853,
    0.2964,
    0.1395,
    0.0599,
    0.0229,
    0.0075,
    0.002,
]


def test_edm_18_steps_match_eq5_grid():
    sigmas = timesteps["edm"](num_steps=18).sigma_steps(Linear(), 0.002, 80.0)
    assert sigmas.dtype == torch.float64
    assert sigmas.tolist() == pytest.approx(EDM_18, rel=5e-3)


def test_edm_steps_closed_form_with_other_rho():
    n, rho = 7, 3.0
    sigmas = timesteps["edm"](num_steps=n, rho=rho).sigma_steps(Linear(), 0.01, 10.0)
    expected = [
        (10 ** (1 / rho) + i / (n - 1) * (0.01 ** (1 / rho) - 10 ** (1 / rho))) ** rho
        for i in range(n)
    ]
    assert sigmas.tolist() == pytest.approx(expected, rel=1e-12)


def test_default_ranges_per_discretisation():
    lin = Linear()
    vp_min, vp_max = timesteps["vp"]().default_range(lin)
    assert vp_min == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 * 1e-6 + 0.1 * 1e-3) - 1))
    assert vp_min == pytest.approx(0.010486, rel=1e-4)
    assert vp_max == pytest.approx(152.167, rel=1e-5)
    assert timesteps["ve"]().default_range(lin) == (0.02, 100.0)
    assert timesteps["iddpm"]().default_range(lin) == (0.002, 81.0)
    assert timesteps["edm"]().default_range(lin) == (0.002, 80.0)


def test_vp_steps_are_vp_sigma_of_uniform_t():
    n, eps = 10, 1e-3
    sigmas = timesteps["vp"](num_steps=n).sigma_steps(Linear(), 0.010486, 152.167)
    ts = [1 + i / (n - 1) * (eps - 1) for i in range(n)]
    beta_d = 2 * (math.log(0.010486**2 + 1) / eps - math.log(152.167**2 + 1)) / (eps - 1)
    beta_min = math.log(152.167**2 + 1) - beta_d / 2
    expected = [math.sqrt(math.exp(0.5 * beta_d * t * t + beta_min * t) - 1) for t in ts]
    assert sigmas.tolist() == pytest.approx(expected, rel=1e-10)
    assert sigmas[0] == pytest.approx(152.167) and sigmas[-1] == pytest.approx(0.010486)


def test_ve_steps_are_geometric():
    sigmas = timesteps["ve"](num_steps=9).sigma_steps(Linear(), 0.02, 100.0)
    ratios = sigmas[1:] / sigmas[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, (0.02 / 100) ** (1 / 8)))
    assert sigmas[0] == pytest.approx(100) and sigmas[-1] == pytest.approx(0.02)


def test_iddpm_u_table_matches_paper_values():
    u = iddpm_u(1000, 0.001, 0.008)
    expected = [20291, 642, 321, 214, 160, 128, 106, 92, 80, 71, 64]
    assert u[:11].tolist() == pytest.approx(expected, abs=1.0)
    assert float(u[999]) == pytest.approx(0.0064, abs=1e-4)
    assert float(u[1000]) == 0.0


def test_iddpm_steps_start_at_u8_for_sigma_max_81():
    u = iddpm_u(1000, 0.001, 0.008)
    sigmas = timesteps["iddpm"](num_steps=18).sigma_steps(Linear(), 0.002, 81.0)
    assert float(sigmas[0]) == float(u[8])
    assert float(sigmas[0]) == pytest.approx(80.2, abs=0.05)


def test_iddpm_index_rounds_like_the_official_sampler():
    # With an iDDPM network (σ_min clamped to u_999 ≈ 0.006425) 992 levels survive; round() gives
    # indices 0, 58, 117, 175, 233, 291, 350 (a floor would give 0, 58, 116, 174, ...).
    u = iddpm_u(1000, 0.001, 0.008)
    sigma_min = float(iddpm_u(1000, 0.001, 0.008, torch.float32)[999])
    kept = u[(u >= sigma_min) & (u <= 81.0)]
    assert len(kept) == 992
    sigmas = timesteps["iddpm"](num_steps=18).sigma_steps(Linear(), sigma_min, 81.0)
    index = [int((kept == s).nonzero()) for s in sigmas[:7]]
    assert index == [0, 58, 117, 175, 233, 291, 350]


def test_uniform_steps_are_uniform_in_t_of_the_schedule():
    cosine = schedules["cosine"]()
    steps = timesteps["uniform"](num_steps=5)
    lo, hi = steps.default_range(cosine)
    assert hi == pytest.approx(math.tan(math.pi / 2 * 1.0), rel=0.2) or hi > 1e4
    sigmas = steps.sigma_steps(cosine, 0.01, 10.0)
    t = cosine.sigma_inv(sigmas)
    torch.testing.assert_close(
        t[1:] - t[:-1], torch.full((4,), float(t[1] - t[0]), dtype=torch.float64)
    )
    assert sigmas[0] == pytest.approx(10.0) and sigmas[-1] == pytest.approx(0.01)
    assert lo == pytest.approx(math.tan(math.pi / 2 * 1e-3))


def test_sigma_min_not_below_sigma_max_is_rejected():
    with pytest.raises(ValueError, match="sigma_min"):
        timesteps["edm"](sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValueError):
        timesteps["edm"](num_steps=1)
