"""σ(t), σ'(t), σ⁻¹ and s(t) against closed forms from Table 1 and Chen 2023."""

from __future__ import annotations

import math

import pytest
import torch

from edmgrid.design.scaling import scalings
from edmgrid.design.schedule import VP, schedules, vp_betas, vp_sigma

T = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)


def test_vp_sigma_at_one_is_152_167_with_table1_constants():
    vp = VP(beta_d=19.9, beta_min=0.1)
    assert float(vp.sigma(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(
        math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1)
    )
    assert float(vp.sigma(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(
        152.167, abs=1e-3
    )


def test_vp_sigma_of_a_float_is_the_schedules_sigma():
    vp = VP(beta_d=12.5, beta_min=0.3)
    t = [1e-5, 1e-3, 0.2, 0.7, 1.0]
    expected = vp.sigma(torch.tensor(t, dtype=torch.float64)).tolist()
    assert [vp_sigma(x, 12.5, 0.3) for x in t] == pytest.approx(expected, rel=1e-14)
    assert vp_sigma(1.0) == pytest.approx(152.167, abs=1e-3)  # Table 1's β_d = 19.9, β_min = 0.1


def test_vp_betas_rederived_from_default_range_are_19_9_and_0_1():
    beta_d, beta_min = vp_betas(vp_sigma(1e-3), vp_sigma(1.0), 1e-3)
    assert beta_d == pytest.approx(19.9, rel=1e-9)
    assert beta_min == pytest.approx(0.1, rel=1e-7)


def test_unbound_vp_schedule_binds_to_the_sampling_range():
    bound = VP().bind(0.002, 80.0)
    ends = bound.sigma(torch.tensor([1e-3, 1.0], dtype=torch.float64))
    assert ends.tolist() == pytest.approx([0.002, 80.0], rel=1e-9)


@pytest.mark.parametrize(
    ("config", "closed_form"),
    [
        ({"name": "ve"}, lambda t: math.sqrt(t)),
        ({"name": "linear"}, lambda t: t),
        (
            {"name": "vp", "beta_d": 19.9, "beta_min": 0.1},
            lambda t: math.sqrt(math.exp(0.5 * 19.9 * t * t + 0.1 * t) - 1),
        ),
        ({"name": "cosine"}, lambda t: math.tan(math.pi * t / 2)),
        ({"name": "cosine", "input_scale": 0.5}, lambda t: math.tan(math.pi * t / 2) / 0.5),
        ({"name": "linear_gamma"}, lambda t: math.sqrt(t / (1 - t))),
        ({"name": "linear_gamma", "input_scale": 2.0}, lambda t: math.sqrt(t / (1 - t)) / 2),
        (
            {"name": "sigmoid", "start": -3, "end": 3, "tau": 0.9},
            lambda t: _sigmoid_sigma(t, -3, 3, 0.9),
        ),
    ],
)
def test_schedule_matches_closed_form_derivative_and_inverse(config, closed_form):
    schedule = schedules[config["name"]].model_validate(config)
    expected = torch.tensor([closed_form(float(t)) for t in T], dtype=torch.float64)
    torch.testing.assert_close(schedule.sigma(T), expected, rtol=1e-9, atol=1e-12)
    t = T.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(schedule.sigma(t).sum(), t)
    torch.testing.assert_close(schedule.sigma_deriv(T), grad, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(schedule.sigma_inv(expected), T, rtol=1e-7, atol=1e-9)


def _sigmoid_sigma(t: float, start: float, end: float, tau: float) -> float:
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    v_s, v_e = sig(start / tau), sig(end / tau)
    gamma = (v_e - sig((t * (end - start) + start) / tau)) / (v_e - v_s)
    return math.sqrt((1 - gamma) / gamma)


def test_gamma_schedules_start_at_zero_noise():
    for name in ("cosine", "sigmoid", "linear_gamma"):
        schedule = schedules[name]()
        assert float(schedule.sigma(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(
            0, abs=1e-6
        )


@pytest.mark.parametrize(
    ("name", "b", "closed_form"),
    [
        ("none", 1.0, lambda s: 1.0),
        ("vp", 1.0, lambda s: 1 / math.sqrt(s * s + 1)),
        ("gamma", 1.0, lambda s: 1 / math.sqrt(s * s + 1)),
        ("gamma", 0.5, lambda s: 1 / math.sqrt(0.25 * s * s + 1)),
    ],
)
def test_scaling_matches_closed_form_and_its_derivative(name, b, closed_form):
    scaling = scalings[name]()
    vp = VP(beta_d=19.9, beta_min=0.1)
    sigma = vp.sigma(T)
    expected = torch.tensor([closed_form(float(s)) for s in sigma], dtype=torch.float64)
    torch.testing.assert_close(scaling.s(sigma, b), expected)
    t = T.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((scaling.s(vp.sigma(t), b) + 0 * t).sum(), t)
    torch.testing.assert_close(
        scaling.s_deriv(sigma, vp.sigma_deriv(T), b), grad, rtol=1e-7, atol=1e-12
    )


def test_vp_scaling_equals_table1_exp_form():
    vp = VP(beta_d=19.9, beta_min=0.1)
    expected = 1 / torch.exp(0.5 * 19.9 * T**2 + 0.1 * T).sqrt()
    torch.testing.assert_close(scalings["vp"]().s(vp.sigma(T), 1.0), expected)
