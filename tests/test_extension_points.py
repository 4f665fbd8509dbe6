"""Extension points are documented abstract bases; the sampler tells a callback every step."""

from __future__ import annotations

from typing import Any, Literal

import pytest
import torch
from conftest import GaussianDenoiser

from edmgrid.config.sampler import SamplerSpec
from edmgrid.design.augment import Augment
from edmgrid.design.loss_weight import LossWeight
from edmgrid.design.networks import Network
from edmgrid.design.p_train import PTrain
from edmgrid.design.precond import Precond
from edmgrid.design.scaling import Scaling
from edmgrid.design.schedule import GammaSchedule, Schedule
from edmgrid.design.solver import Multistep, Solver, Step
from edmgrid.design.timesteps import EDMSteps, Timesteps
from edmgrid.engine.sample import SeedRNG, fit_steps, latents, plan, sample

BASES = [Schedule, GammaSchedule, Scaling, Timesteps, Solver, Multistep, Precond, LossWeight,
         PTrain, Augment]  # fmt: skip


@pytest.mark.parametrize("base", BASES, ids=lambda b: b.__name__)
def test_a_choice_that_leaves_out_a_method_of_its_base_cannot_be_made(base: type) -> None:
    incomplete = type("Incomplete", (base,), {"__annotations__": {"name": str}, "name": "x"})
    with pytest.raises(TypeError, match="abstract"):
        incomplete()
    assert "subclass" in (base.__doc__ or "") or "new one" in (base.__doc__ or "")


def test_a_network_without_build_cannot_be_made() -> None:
    class NoBuild(Network):
        arch: Literal["nobuild"] = "nobuild"

    with pytest.raises(TypeError, match="abstract"):
        NoBuild()


@pytest.mark.parametrize(
    "solver",
    [{"name": "euler"}, {"name": "heun", "S_churn": 40.0}, {"name": "dpmpp", "order": 3}],
)
def test_the_solver_tells_the_callback_every_step_as_k_diffusion_does(solver: Any) -> None:
    g = GaussianDenoiser(0.5)
    spec = SamplerSpec.model_validate(
        {"solver": solver, "timesteps": {"name": "edm", "num_steps": 6}}
    )
    x_T = latents(range(3), (2,))
    steps: list[Step] = []
    x = sample(g, x_T, spec, randn_like=SeedRNG(range(3)).randn_like, callback=steps.append)
    assert torch.equal(x, sample(g, x_T, spec, randn_like=SeedRNG(range(3)).randn_like))
    sigmas = plan(g, spec).sigma_steps[:-1]
    assert [s["i"] for s in steps] == list(range(6))
    assert torch.allclose(torch.stack([s["sigma"] for s in steps]), sigmas)
    for s in steps:
        assert s["sigma_hat"] >= s["sigma"]
        assert torch.allclose(s["denoised"], g(s["x"], s["sigma_hat"]))
    churned = [s["sigma_hat"] > s["sigma"] for s in steps]
    assert any(churned) == (solver.get("S_churn", 0) > 0)


def test_time_steps_that_do_not_depend_on_the_model_are_not_fitted() -> None:
    spec = SamplerSpec.model_validate({"timesteps": {"name": "edm", "num_steps": 6}})
    assert isinstance(spec.timesteps, EDMSteps)
    assert fit_steps(GaussianDenoiser(), spec, (2,), "cpu") is spec
