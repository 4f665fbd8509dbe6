"""The sampler against closed forms and independent solvers (issue #2; solvers of issue #7).

The Gaussian data N(0, c²I) has the ideal denoiser D(x̃; σ) = x̃·c²/(c²+σ²) and the ODE
solution x̃(σ) = x̃(σ_0)·sqrt(c²+σ²)/sqrt(c²+σ_0²) in x̃ = x/s(t), for every σ(t) and s(t).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from conftest import GaussianDenoiser
from scipy.integrate import solve_ivp
from torch import Tensor

from edmgrid.config.data import Digits
from edmgrid.config.metrics import ODEError
from edmgrid.config.sampler import SamplerSpec
from edmgrid.design.solver import (
    Multistep,
    Solver,
    StepNoise,
    adams_bashforth_weights,
    solvers,
)
from edmgrid.engine.data import load_data
from edmgrid.engine.denoiser import AnalyticDenoiser, Denoiser
from edmgrid.engine.metrics import Evaluation, compute
from edmgrid.engine.sample import CountingDenoiser, Plan, SeedRNG, plan, sample

LINEAR = {"schedule": {"name": "linear"}, "scaling": {"name": "none"}}
VP = {"schedule": {"name": "vp"}, "scaling": {"name": "vp"}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> Denoiser:
    """The ideal denoiser of the digits as a plain function: no σ range, no rounding."""
    analytic = AnalyticDenoiser(load_data(Digits()).x)

    def D(x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return analytic(x, sigma)

    return D


def spec(solver: dict[str, Any], num_steps: int, **sampler: Any) -> SamplerSpec:
    timesteps = {"name": "edm", "num_steps": num_steps, **sampler.pop("timesteps", {})}
    return SamplerSpec.model_validate({"solver": solver, "timesteps": timesteps, **sampler})


def gaussian_final(g: GaussianDenoiser, p: Plan, latents: Tensor, solver: Solver) -> Tensor:
    """The limit of x_N as N → ∞ with σ_{N−1} fixed: exact x̃(σ_{N−1}), then the last step.

    Euler and Heun end with an Euler step in t into t_N = 0 (so in the VP parameterisation
    the limit keeps part of the noise); the multistep solvers return D(x̃_{N−1}; σ_{N−1}).
    """
    sigma, c2 = p.sigma_steps, g.s**2
    x_tilde = latents * sigma[0] * ((c2 + sigma[-2] ** 2) / (c2 + sigma[0] ** 2)).sqrt()
    if isinstance(solver, Multistep):
        return g(x_tilde, sigma[-2])
    t = p.t_steps[-2]
    x = x_tilde * p.ode.s(t)
    return x - t * p.ode.derivative(x, t)


def observed_order(solver: dict[str, Any], family: dict[str, Any], steps: tuple[int, ...]) -> float:
    """Slope of −log2(error) against log2(N) on the Gaussian ODE (least squares)."""
    g = GaussianDenoiser()
    latents = torch.linspace(-2, 2, 6, dtype=torch.float64).reshape(2, 3)
    errors = []
    for n in steps:
        s = spec(solver, n, **family)
        exact = gaussian_final(g, plan(g, s), latents, s.solver)
        errors.append(float((sample(g, latents, s) - exact).abs().max()))
    return -float(np.polyfit(np.log2(steps), np.log2(errors), 1)[0])


@pytest.mark.parametrize(
    ("solver", "family", "order"),
    [
        ({"name": "euler"}, LINEAR, 1),
        ({"name": "euler"}, VP, 1),
        ({"name": "heun"}, LINEAR, 2),
        ({"name": "heun"}, VP, 2),
        ({"name": "heun", "alpha": 0.5}, VP, 2),  # midpoint
        ({"name": "heun", "alpha": 2 / 3}, VP, 2),  # Ralston
        ({"name": "heun", "alpha": 2 / 3}, LINEAR, 2),
        ({"name": "dpmpp", "order": 1}, LINEAR, 1),
        ({"name": "dpmpp", "order": 2}, LINEAR, 2),
        ({"name": "dpmpp", "order": 3}, LINEAR, 3),
        ({"name": "dpmpp", "order": 3}, VP, 3),
        ({"name": "ipndm", "order": 2, "variable_step": True}, LINEAR, 2),
        ({"name": "ipndm", "order": 3, "variable_step": True}, LINEAR, 3),
        ({"name": "ipndm", "order": 4, "variable_step": True}, VP, 4),
        # equal-step Adams–Bashforth coefficients are second order on the EDM grid
        ({"name": "ipndm", "order": 4}, LINEAR, 2),
    ],
)
def test_solver_converges_with_its_order_on_the_gaussian_ode(solver, family, order):
    steps = (64, 128, 256, 512) if order == 4 else (32, 64, 128, 256)
    assert observed_order(solver, family, steps) == pytest.approx(order, abs=0.35)


@pytest.mark.parametrize(
    "solver",
    [{"name": "dpmpp", "order": 2}, {"name": "dpmpp", "order": 3}, {"name": "ipndm"}],
)
def test_multistep_solvers_give_the_same_sample_for_every_parameterisation(solver):
    g = GaussianDenoiser()
    latents = torch.randn(4, 3, dtype=torch.float64)
    x_linear = sample(g, latents, spec(solver, 12, **LINEAR))
    x_vp = sample(g, latents, spec(solver, 12, **VP))
    torch.testing.assert_close(x_vp, x_linear, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("solver", "nfe"),
    [
        ({"name": "euler"}, lambda n: n),
        ({"name": "heun"}, lambda n: 2 * n - 1),
        ({"name": "heun", "S_churn": 10}, lambda n: 2 * n - 1),
        ({"name": "dpmpp", "order": 1}, lambda n: n),
        ({"name": "dpmpp", "order": 3}, lambda n: n),
        ({"name": "ipndm"}, lambda n: n),
    ],
)
def test_nfe_measured_by_the_counting_denoiser(solver, nfe):
    for n in (2, 18):
        counter = CountingDenoiser(GaussianDenoiser())
        sample(counter, torch.randn(5, 2, dtype=torch.float64), spec(solver, n))
        assert counter.evaluations / 5 == nfe(n)


def linear_flow() -> Plan:
    return plan(GaussianDenoiser(), spec({"name": "heun"}, 20))


@pytest.mark.parametrize(
    ("S_churn", "num_steps", "gamma"),
    [(2.0, 20, 0.1), (40.0, 20, math.sqrt(2) - 1), (0.0, 20, 0.0)],
)
def test_churn_raises_sigma_by_one_plus_gamma(S_churn, num_steps, gamma):
    ode, x = linear_flow().ode, torch.zeros(3, dtype=torch.float64)
    t = torch.tensor(1.5, dtype=torch.float64)
    S_noise = 1.007
    churn = solvers["heun"](S_churn=S_churn, S_noise=S_noise)
    x_hat, t_hat = churn.churn(ode, x, t, num_steps, StepNoise(torch.ones_like))
    assert float(ode.sigma(t_hat) / ode.sigma(t)) == pytest.approx(1 + gamma, rel=1e-12)
    noise = math.sqrt((1.5 * (1 + gamma)) ** 2 - 1.5**2) * S_noise
    torch.testing.assert_close(x_hat, torch.full_like(x, noise), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("sigma", "churned"), [(0.4, False), (0.5, True), (2.0, True), (2.5, False)]
)
def test_churn_applies_only_within_s_min_and_s_max(sigma, churned):
    ode = linear_flow().ode
    churn = solvers["euler"](S_churn=2.0, S_min=0.5, S_max=2.0)
    t = torch.tensor(sigma, dtype=torch.float64)
    _, t_hat = churn.churn(
        ode, torch.zeros(2, dtype=torch.float64), t, 20, StepNoise(torch.ones_like)
    )
    assert float(t_hat / t) == pytest.approx(1.1 if churned else 1.0, rel=1e-12)


def test_churn_in_vp_parameterisation_rescales_x_and_scales_noise_by_s():
    p = plan(GaussianDenoiser(), spec({"name": "heun"}, 20, **VP))
    ode, t = p.ode, p.t_steps[5]
    x = torch.tensor([0.3, -1.2], dtype=torch.float64)
    x_hat, t_hat = solvers["heun"](S_churn=2.0).churn(ode, x, t, 20, StepNoise(torch.ones_like))
    sigma, sigma_hat, s, s_hat = ode.sigma(t), ode.sigma(t_hat), ode.s(t), ode.s(t_hat)
    assert float(sigma_hat / sigma) == pytest.approx(1.1, rel=1e-12)
    expected = s_hat / s * x + (sigma_hat**2 - sigma**2).sqrt() * s_hat
    torch.testing.assert_close(x_hat, expected, rtol=1e-12, atol=0)


class CountingNoise:
    """randn_like whose n-th draw is filled with n (so which draw a step used shows)."""

    def __init__(self) -> None:
        self.draws = 0

    def __call__(self, x: Tensor) -> Tensor:
        self.draws += 1
        return torch.full_like(x, float(self.draws))


@pytest.mark.parametrize(
    ("churn", "draws"),
    [
        ({"S_churn": 0.0}, 0),
        ({"S_churn": 5.0, "S_min": 1e3, "S_max": 1e4}, 0),  # no σ_i in [S_min, S_max]
        ({"S_churn": 5.0, "S_max": 1.0}, 10),  # the last steps churn: every draw is owed
        ({"S_churn": 5.0, "S_min": 1.0}, 6),  # σ_0 … σ_5 ≥ 1 churn, later draws unused
    ],
)
def test_noise_is_drawn_only_up_to_the_last_step_that_uses_it(churn, draws):
    g, latents = GaussianDenoiser(), torch.randn(3, 4, dtype=torch.float64)
    noise = CountingNoise()
    x = sample(g, latents, spec({"name": "heun", **churn}, 10), randn_like=noise)
    deterministic = sample(g, latents, spec({"name": "heun"}, 10))
    assert noise.draws == draws
    assert torch.equal(x, deterministic) is (draws == 0)


def test_the_noise_of_step_i_is_the_i_th_draw_as_in_the_official_sampler():
    ode = linear_flow().ode
    churn = solvers["heun"](S_churn=2.0, S_min=0.9, S_max=1.1)
    noise, x = StepNoise(CountingNoise()), torch.zeros(2, dtype=torch.float64)
    for sigma in (3.0, 2.0, 1.5):  # outside [S_min, S_max]: no churn, draws owed
        assert churn.churn(ode, x, torch.tensor(sigma), 20, noise)[0] is x
    x_hat, _ = churn.churn(ode, x, torch.tensor(1.0, dtype=torch.float64), 20, noise)
    std = math.sqrt(1.1**2 - 1)
    torch.testing.assert_close(x_hat, torch.full_like(x, 4 * std), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "solver",
    [
        {"name": "heun", "S_churn": 8.0, "S_min": 0.05, "S_max": 50, "S_noise": 1.007},
        {"name": "euler", "S_churn": 20.0},
        {"name": "dpmpp", "order": 3},
    ],
)
def test_samples_depend_on_their_seed_not_on_the_batch(digits, solver):
    s = spec(solver, 8)
    rng = SeedRNG(range(10))
    batch = sample(digits, rng.randn([10, 1, 8, 8]), s, randn_like=rng.randn_like)
    rng = SeedRNG([3, 7])
    pair = sample(digits, rng.randn([2, 1, 8, 8]), s, randn_like=rng.randn_like)
    torch.testing.assert_close(pair, batch[[3, 7]], rtol=0, atol=1e-12)


def test_multistep_solvers_reject_churn():
    with pytest.raises(ValueError, match="S_churn must be 0"):
        SamplerSpec.model_validate({"solver": {"name": "dpmpp", "S_churn": 1.0}})


@pytest.mark.parametrize("nodes", [[0.7], [0.7, 1.1], [0.7, 1.1, 1.6], [0.7, 1.1, 1.6, 2.5]])
def test_variable_step_adams_bashforth_integrates_polynomials_exactly(nodes):
    degree = len(nodes) - 1
    lo, hi = 0.7, 0.2
    weights = adams_bashforth_weights(nodes, lo, hi)
    integral = (hi - lo) * sum(w * (u - 0.3) ** degree for w, u in zip(weights, nodes, strict=True))
    exact = ((hi - 0.3) ** (degree + 1) - (lo - 0.3) ** (degree + 1)) / (degree + 1)
    assert integral == pytest.approx(exact, rel=1e-12)


def test_adams_bashforth_weights_on_equal_steps_are_the_ipndm_coefficients():
    weights = adams_bashforth_weights([4.0, 5.0, 6.0, 7.0], 4.0, 3.0)
    assert weights == pytest.approx([55 / 24, -59 / 24, 37 / 24, -9 / 24], rel=1e-12)


def probability_flow_reference(
    denoiser: Denoiser, latents: Tensor, sigma_min: float, sigma_max: float
) -> Tensor:
    """dx/dσ = (x − D(x; σ))/σ by DOP853 (rtol 1e-10) in u = ln σ, then x_N = D(x; σ_min)."""

    def rhs(u: float, y: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(y).reshape(latents.shape)
        return (x - denoiser(x, torch.tensor(math.exp(u)))).reshape(-1).numpy()

    x0 = (latents * sigma_max).reshape(-1).numpy()
    span = (math.log(sigma_max), math.log(sigma_min))
    sol = solve_ivp(rhs, span, x0, method="DOP853", rtol=1e-10, atol=1e-12)
    assert sol.success
    x = torch.from_numpy(sol.y[:, -1].copy()).reshape(latents.shape)
    return denoiser(x, torch.tensor(sigma_min, dtype=torch.float64))


#: σ range of the independent check: at σ ≲ 1 the ideal denoiser has settled on one data
#: point, so that D(x; σ_min) would hide any solver error.
SIGMA_MIN, SIGMA_MAX = 2.0, 80.0


@pytest.fixture(scope="module")
def dop853(digits: Denoiser) -> tuple[Tensor, Tensor]:
    latents = SeedRNG([0, 1]).randn([2, 1, 8, 8])
    return latents, probability_flow_reference(digits, latents, SIGMA_MIN, SIGMA_MAX)


@pytest.mark.parametrize(
    ("solver", "order"), [({"name": "heun"}, 2), ({"name": "dpmpp", "order": 3}, 3)]
)
def test_sampler_converges_to_an_independent_dop853_solution(digits, dop853, solver, order):
    latents, reference = dop853
    errors = [
        float(
            (
                sample(digits, latents, spec(solver, n, timesteps={"sigma_min": SIGMA_MIN}))
                - reference
            )
            .abs()
            .max()
        )
        for n in (32, 64, 128)
    ]
    assert errors[-1] < 3e-4
    assert math.log2(errors[0] / errors[-1]) / 2 == pytest.approx(order, abs=0.35)


def test_ode_error_reference_is_within_2e_5_of_an_independent_dop853_solution(
    digits, dop853, tmp_path
):
    latents, reference = dop853
    ev = Evaluation(
        samples=reference,
        dataset=load_data(Digits()),
        denoiser=digits,
        seeds=[0, 1],
        sigma_first=SIGMA_MAX,
        sigma_last=SIGMA_MIN,
        cache_dir=tmp_path,
        device=torch.device("cpu"),
        resample=lambda s: sample(digits, latents, s),
        generate=lambda seeds: pytest.fail("not used"),
    )
    assert compute(ODEError(), ev)["ode_error"] < 2e-5


def test_karras_sigmas_euler_heun_and_dpmpp_2m_match_k_diffusion(digits):
    sampling = pytest.importorskip("k_diffusion.sampling")
    n = 12
    timesteps = {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX}  # before D settles on a point
    sigmas = plan(digits, spec({"name": "heun"}, n, timesteps=timesteps)).sigma_steps
    karras = sampling.get_sigmas_karras(n, SIGMA_MIN, SIGMA_MAX, rho=7.0)  # built in float32
    torch.testing.assert_close(sigmas.float(), karras, rtol=1e-6, atol=0)
    latents = SeedRNG([0, 1]).randn([2, 1, 8, 8]).double()
    for solver, theirs in [
        ("euler", sampling.sample_euler),
        ("heun", sampling.sample_heun),
        ("dpmpp", sampling.sample_dpmpp_2m),
    ]:
        expected = theirs(digits, latents * sigmas[0], sigmas, disable=True)
        got = sample(digits, latents, spec({"name": solver}, n, timesteps=timesteps))
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
