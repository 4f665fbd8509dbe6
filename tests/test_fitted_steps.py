"""Model-dependent time steps (GITS) and given σ lists (issue #7, solvers at low NFE)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import GaussianDenoiser
from pydantic import ValidationError

from edmgrid.config.data import Digits
from edmgrid.config.job import JobSpec
from edmgrid.config.sampler import SamplerSpec
from edmgrid.design.timesteps import GITSSteps, SigmaList, edm_sigmas
from edmgrid.engine.data import load_data
from edmgrid.engine.denoiser import AnalyticDenoiser
from edmgrid.engine.evaluate import evaluate
from edmgrid.engine.metrics import rms_distance
from edmgrid.engine.sample import fit_steps, latents, plan, sample

pytestmark = pytest.mark.usefixtures("one_thread")


def brute_force_path(cost: torch.Tensor, n: int) -> tuple[int, ...]:
    """The least-cost path of n points from the first to the last index, by enumeration."""
    G = len(cost)
    paths = ((0, *mid, G - 1) for mid in itertools.combinations(range(1, G - 1), n - 2))
    return min(paths, key=lambda p: sum(float(cost[i, j]) for i, j in itertools.pairwise(p)))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [2, 4, 9])
def test_dynamic_programming_finds_the_least_cost_path_of_an_exhaustive_search(seed, n):
    G = 9
    cost = torch.rand(G, G, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cost = cost.triu(1) + torch.full((G, G), math.inf).tril()
    sigmas = torch.linspace(10, 1, G, dtype=torch.float64)
    chosen = GITSSteps(num_steps=n, fine_steps=G).choose(sigmas, cost).sigmas
    assert chosen == tuple(float(sigmas[i]) for i in brute_force_path(cost, n))


def test_local_errors_are_the_euler_errors_of_a_known_trajectory():
    # x(σ) = σ² has slope 2σ: one Euler step from σ_i to σ_j misses x(σ_j) by (σ_j − σ_i)²
    sigmas = torch.tensor([3.0, 2.0, 1.5, 0.5], dtype=torch.float64)
    x = (sigmas**2).reshape(-1, 1, 1).expand(-1, 2, 1)  # two identical samples
    d = (2 * sigmas[:-1]).reshape(-1, 1, 1).expand(-1, 2, 1)
    errors = GITSSteps.local_errors(sigmas, x, d)
    for i, j in itertools.product(range(4), repeat=2):
        expected = 2 * float(sigmas[j] - sigmas[i]) ** 4 if i < j else math.inf
        assert float(errors[i, j]) == pytest.approx(expected)


def test_teacher_follows_the_closed_form_gaussian_trajectory():
    g = GaussianDenoiser(0.5)
    sigmas = edm_sigmas(64, 7.0, 0.002, 80.0)
    x0 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 80
    states, slopes = GITSSteps.teacher(lambda x, s: g(x, s), x0, sigmas)
    exact = x0 * ((0.25 + sigmas**2) / (0.25 + 80.0**2)).sqrt().reshape(-1, 1, 1)
    assert states.shape == (64, 4, 3) and slopes.shape == (63, 4, 3)
    assert (states - exact).abs().max() < 1e-3 * exact.abs().max()


@pytest.fixture(scope="module")
def digits() -> AnalyticDenoiser:
    return AnalyticDenoiser(load_data(Digits()).x)


def gits(solver: dict[str, object], num_steps: int, **timesteps: object) -> SamplerSpec:
    return SamplerSpec.model_validate(
        {"solver": solver, "timesteps": {"name": "gits", "num_steps": num_steps, **timesteps}}
    )


def test_fitted_steps_are_fine_steps_from_sigma_max_to_sigma_min(digits):
    spec = gits({"name": "ipndm"}, 8, fine_steps=32, calibration_samples=16)
    fitted = fit_steps(digits, spec, (1, 8, 8), "cpu")
    assert isinstance(fitted.timesteps, SigmaList) and fitted.solver == spec.solver
    fine = edm_sigmas(32, 7.0, 0.002, 80.0).tolist()
    assert len(fitted.timesteps.sigmas) == 8
    assert set(fitted.timesteps.sigmas) <= set(fine)
    assert fitted.timesteps.sigmas[0] == 80.0
    assert fitted.timesteps.sigmas[-1] == pytest.approx(0.002, rel=1e-12)


def test_fitted_steps_beat_edm_steps_at_equal_nfe_on_held_out_seeds(digits):
    """GITS's claim on the ideal digits denoiser: iPNDM with 10 fitted steps is closer to the
    exact ODE solution than with 10 EDM steps (2048 samples: 0.054 against 0.237)."""
    x_T = latents(range(256), (1, 8, 8))  # the calibration uses other seeds
    reference = sample(
        digits, x_T, SamplerSpec.model_validate({"timesteps": {"name": "edm", "num_steps": 128}})
    )
    spec = gits({"name": "ipndm"}, 10, fine_steps=64, calibration_samples=64)
    edm = SamplerSpec.model_validate(
        {"solver": {"name": "ipndm"}, "timesteps": {"name": "edm", "num_steps": 10}}
    )
    fitted_error = rms_distance(
        sample(digits, x_T, fit_steps(digits, spec, (1, 8, 8), "cpu")), reference
    )
    edm_error = rms_distance(sample(digits, x_T, edm), reference)
    assert fitted_error < 0.5 * edm_error


def test_unfitted_gits_steps_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"fit them first with edmgrid\.engine\.sample\.fit_steps"):
        plan(GaussianDenoiser(), gits({"name": "heun"}, 8))


def test_gits_needs_as_many_fine_steps_as_steps():
    with pytest.raises(ValidationError, match="fine_steps"):
        GITSSteps(num_steps=20, fine_steps=10)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sigmas": [1.0, 2.0]}, "strictly decreasing"),
        ({"sigmas": [2.0, 2.0]}, "strictly decreasing"),
        ({"sigmas": [2.0, 1.0], "num_steps": 3}, "num_steps"),
        ({"sigmas": [2.0, 1.0], "sigma_min": 0.5}, "leave sigma_min and sigma_max unset"),
        ({"sigmas": [2.0, -1.0]}, "greater than 0"),
        ({"sigmas": [2.0]}, "at least 2"),
    ],
)
def test_sigma_lists_must_be_positive_and_strictly_decreasing(fields, message):
    with pytest.raises(ValidationError, match=message):
        SigmaList(**fields)


def test_a_sigma_list_is_sampled_at_exactly_its_levels():
    spec = SamplerSpec.model_validate({"timesteps": {"name": "sigmas", "sigmas": [80, 5, 0.5]}})
    assert spec.timesteps.num_steps == 3 and spec.sigma_range() == (0.5, 80.0)
    assert plan(GaussianDenoiser(), spec).sigma_steps.tolist() == [80.0, 5.0, 0.5, 0.0]


def test_lower_order_final_ends_with_first_order_steps():
    """With 3 steps (2 multistep steps, then Euler into 0) every step of 3M is first order."""
    g, x_T = GaussianDenoiser(0.5), torch.randn(4, 3, generator=torch.Generator().manual_seed(1))

    def run(**solver: object) -> torch.Tensor:
        spec = {"solver": {"name": "dpmpp", **solver}, "timesteps": {"name": "edm", "num_steps": 3}}
        return sample(g, x_T, SamplerSpec.model_validate(spec))

    assert torch.equal(run(order=3, lower_order_final=True), run(order=1))
    assert not torch.equal(run(order=3), run(order=1))


def test_evaluation_calibrates_once_per_model_and_records_the_fit(tmp_path: Path, monkeypatch):
    config = {
        "data": {"name": "toy2d", "n": 64},
        "model": {"kind": "analytic"},
        "sampler": {
            "solver": {"name": "ipndm"},
            "timesteps": {"name": "gits", "num_steps": 6, "fine_steps": 16},
        },
        "metrics": [{"name": "ode_error"}],
        "seeds": "0-15",
    }
    row = evaluate(JobSpec.model_validate(config), tmp_path)
    fitted = json.loads(row["fitted_sigmas"])
    assert len(fitted) == 6 and fitted[0] == row["sigma_max_used"]
    assert row["nfe"] == 6  # the calibration is counted apart
    assert row["calibration_evaluations"] == 2 * 15 * 256

    def recalibrate(*args: object) -> None:
        raise AssertionError("calibrated again")

    monkeypatch.setattr(GITSSteps, "calibration_cost", recalibrate)
    other_seeds = JobSpec.model_validate({**config, "seeds": "16-31"})
    assert json.loads(evaluate(other_seeds, tmp_path)["fitted_sigmas"]) == fitted
    sampler = config["sampler"]
    fewer = {"timesteps": {"name": "gits", "num_steps": 4, "fine_steps": 16}}
    four = evaluate(JobSpec.model_validate({**config, "sampler": {**sampler, **fewer}}), tmp_path)
    assert len(json.loads(four["fitted_sigmas"])) == 4
