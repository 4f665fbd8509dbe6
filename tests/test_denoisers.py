"""Any callable is a denoiser: plain functions, the official attributes, and the adapters.

The Gaussian data N(μ, s²I) has the ideal denoiser D(x; σ) = (s²x + σ²μ)/(s²+σ²) and the
probability flow solution x(σ) − μ = (x(σ_0) − μ)·√(s²+σ²)/√(s²+σ_0²).
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

import edmgrid
from edmgrid.engine.sample import plan

pytestmark = pytest.mark.usefixtures("one_thread")

MU, S = 0.3, 0.5
README = Path(__file__).resolve().parents[1] / "README.md"


def gaussian(x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
    """The ideal denoiser of N(μ, s²I), a plain function."""
    return (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)


def exact_final(latents: Tensor, sigmas: Tensor) -> Tensor:
    """x_N as N → ∞ with σ_{N−1} fixed: the exact x(σ_{N−1}), then the last (Euler) step,
    which lands on D(x(σ_{N−1}); σ_{N−1})."""
    sigma_0, sigma_last = sigmas[0], sigmas[-2]
    ratio = ((S**2 + sigma_last**2) / (S**2 + sigma_0**2)).sqrt()
    return gaussian(MU + (latents * sigma_0 - MU) * ratio, sigma_last)


def heun(num_steps: int, **timesteps: float) -> edmgrid.SamplerSpec:
    return edmgrid.SamplerSpec.model_validate(
        {
            "solver": {"name": "heun"},
            "timesteps": {"name": "edm", "num_steps": num_steps, **timesteps},
        }
    )


def test_a_plain_function_samples_the_closed_form_gaussian_ode_with_second_order():
    latents = edmgrid.latents(range(4), (3,)).double()
    errors = []
    for n in (32, 64, 128):
        spec = heun(n, sigma_min=0.5)  # where D still depends on x
        exact = exact_final(latents, plan(gaussian, spec).sigma_steps)
        errors.append(float((edmgrid.sample(gaussian, latents, spec) - exact).abs().max()))
    assert errors[-1] < 3e-4
    assert -np.polyfit(np.log2([32, 64, 128]), np.log2(errors), 1)[0] == pytest.approx(2, abs=0.3)


def test_a_function_without_class_labels_is_called_with_x_and_sigma_only():
    seen = []

    def D(x: Tensor, sigma: Tensor) -> Tensor:
        seen.append((x.dtype, sigma.shape))
        return gaussian(x, sigma)

    x = edmgrid.sample(D, edmgrid.latents(range(2), (3,)), heun(4))
    assert x.dtype == torch.float64 and seen == [(torch.float64, torch.Size([]))] * 7


class Official:
    """The official network attributes: a σ range and round_sigma onto a log grid of levels."""

    def __init__(self, sigma_min: float = 0.05, sigma_max: float = 10.0) -> None:
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.levels = torch.logspace(math.log10(sigma_min), math.log10(sigma_max), 200)
        self.levels = self.levels.double()
        self.sigmas: list[float] = []

    def round_sigma(self, sigma: Tensor) -> Tensor:
        index = (sigma.reshape(-1, 1).log() - self.levels.log()).abs().argmin(1)
        return self.levels[index].reshape(sigma.shape).to(sigma)

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        self.sigmas.append(float(sigma))
        return gaussian(x, sigma)


def official_ablation_sampler(net: Official, latents: Tensor, num_steps: int, S_churn: float,
                              noise: list[Tensor]) -> Tensor:  # fmt: skip
    """The official ablation_sampler for EDM steps, σ(t) = t, s = 1, Heun, as edm-facts.md §2.2
    writes it: clamp [0.002, 80] to the net's range, round every t_i and t̂, float64."""
    sigma_min, sigma_max, rho = max(0.002, net.sigma_min), min(80.0, net.sigma_max), 7.0
    i = torch.arange(num_steps, dtype=torch.float64)
    ramp = sigma_max ** (1 / rho) + i / (num_steps - 1) * (
        sigma_min ** (1 / rho) - sigma_max ** (1 / rho)
    )
    t_steps = torch.cat([net.round_sigma(ramp**rho), torch.zeros(1, dtype=torch.float64)])
    x = latents.double() * t_steps[0]
    for k, (t_cur, t_next) in enumerate(itertools.pairwise(t_steps)):
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1)
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        x_hat = x + (t_hat**2 - t_cur**2).clamp(min=0).sqrt() * noise[k]
        h = t_next - t_hat
        d = (x_hat - net(x_hat, t_hat)) / t_hat
        x = x_hat + h * d
        if k < num_steps - 1:
            d_prime = (x - net(x, t_next)) / t_next
            x = x_hat + h * (0.5 * d + 0.5 * d_prime)
    return x


def test_official_attributes_clamp_and_round_exactly_as_the_official_ablation_sampler():
    latents, num_steps, S_churn = edmgrid.latents(range(3), (4,)).double(), 10, 5.0
    noise = [torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
             for k in range(num_steps)]  # fmt: skip
    draws = iter(noise)
    spec = edmgrid.SamplerSpec.model_validate(
        {
            "solver": {"name": "heun", "S_churn": S_churn},
            "timesteps": {"name": "edm", "num_steps": num_steps},
        }
    )
    net = Official()
    got = edmgrid.sample(net, latents, spec, randn_like=lambda x: next(draws))
    called = net.sigmas
    reference = Official()
    want = official_ablation_sampler(reference, latents, num_steps, S_churn, noise)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert called == pytest.approx(reference.sigmas, rel=1e-12)
    levels = set(net.levels.tolist())
    assert max(called) <= 10.0 and min(called) == pytest.approx(0.05)
    assert all(any(abs(s - v) < 1e-12 * v for v in levels) for s in called)  # on the grid


def test_a_missing_sigma_range_is_the_whole_range_and_missing_round_sigma_is_none():
    p = plan(gaussian, heun(18))
    assert (p.sigma_min, p.sigma_max) == (0.002, 80.0)
    i = torch.arange(18, dtype=torch.float64)
    ramp = 80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))  # Eq. 5, unrounded
    torch.testing.assert_close(p.sigma_steps[:-1], ramp**7, rtol=1e-12, atol=0)


def test_label_dim_makes_a_callable_class_conditional():
    seen = []

    class Conditional:
        label_dim = 4

        def __call__(self, x, sigma, class_labels=None):
            seen.append(class_labels)
            return gaussian(x, sigma)

    from edmgrid.engine.evaluate import sample_seeds

    sample_seeds(Conditional(), heun(2), [0, 1, 2], (3,), torch.device("cpu"))
    assert seen[0].shape == (3, 4) and bool((seen[0].sum(1) == 1).all())


def test_the_k_diffusion_adapter_passes_sigma_per_sample_extra_args_and_the_models_range():
    calls = []

    class KModel(torch.nn.Module):  # k-diffusion: model(x, sigma, **extra) -> D, σ of shape [N]
        sigma_min, sigma_max = torch.tensor(0.1), torch.tensor(20.0)

        def forward(self, x, sigma, *, cond):
            calls.append((sigma.shape, cond))
            return gaussian(x, sigma.reshape(-1, 1))

    latents = edmgrid.latents(range(5), (2,))
    spec = heun(6)
    got = edmgrid.sample(edmgrid.KDiffusionDenoiser(KModel(), cond="c"), latents, spec)
    assert calls[0] == (torch.Size([5]), "c")
    p = plan(edmgrid.KDiffusionDenoiser(KModel()), spec)
    assert (p.sigma_min, p.sigma_max) == (pytest.approx(0.1), 20.0)

    class Plain:  # the same model seen as an official-style denoiser
        sigma_min, sigma_max = 0.1, 20.0

        def __call__(self, x, sigma, class_labels=None):
            return gaussian(x, sigma)

    torch.testing.assert_close(got, edmgrid.sample(Plain(), latents, spec), rtol=1e-6, atol=1e-7)


def test_the_k_diffusion_adapter_rounds_to_a_quantizing_models_sigma_table():
    class Discrete(torch.nn.Module):  # k-diffusion's DiscreteSchedule attributes
        def __init__(self):
            super().__init__()
            self.sigmas, self.quantize = torch.logspace(-2, 2, 50), True
            self.sigma_min, self.sigma_max = self.sigmas[0], self.sigmas[-1]

        def forward(self, x, sigma):
            return gaussian(x, sigma.reshape(-1, 1))

    model = Discrete()
    steps = plan(edmgrid.KDiffusionDenoiser(model), heun(8)).sigma_steps[:-1]
    table = model.sigmas.double()
    assert all(bool((table - s).abs().min() < 1e-6 * s) for s in steps)


#: A linear-β DDPM table (Ho et al. 2020): β_j from 1e-4 to 0.02 over 1000 steps.
ALPHAS_CUMPROD = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)


class GaussianEps:
    """ε̂(x_t, j) of the ideal denoiser of N(μ, s²I) under the table: x = x_t·√(1+σ_j²)."""

    def __init__(self) -> None:
        self.sigmas = ((1 - ALPHAS_CUMPROD) / ALPHAS_CUMPROD).sqrt()
        self.timesteps: list[Tensor] = []

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        self.timesteps.append(t)
        sigma = self.sigmas[t].reshape(-1, 1)
        x = x_t * (1 + sigma**2).sqrt()
        return (x - gaussian(x, sigma)) / sigma


def test_the_epsilon_adapter_is_the_ideal_denoiser_at_the_tables_noise_levels():
    eps = GaussianEps()
    D = edmgrid.EpsilonDenoiser(eps, ALPHAS_CUMPROD)
    x = torch.randn(6, 3, dtype=torch.float64)
    for j in (0, 17, 500, 999):
        sigma = eps.sigmas[j]
        torch.testing.assert_close(D(x, sigma), gaussian(x, sigma), rtol=1e-12, atol=1e-12)
        assert eps.timesteps[-1].tolist() == [j] * 6
    assert (D.sigma_min, D.sigma_max) == (float(eps.sigmas[0]), float(eps.sigmas[-1]))


def test_the_epsilon_adapter_quantizes_the_samplers_steps_or_interpolates_its_timestep():
    eps = GaussianEps()
    quantized = edmgrid.EpsilonDenoiser(eps, ALPHAS_CUMPROD)
    steps = plan(quantized, heun(12)).sigma_steps[:-1]
    assert all(bool((eps.sigmas - s).abs().min() < 1e-12 * s) for s in steps)
    edmgrid.sample(quantized, edmgrid.latents(range(2), (3,)), heun(12))
    assert all(not t.is_floating_point() for t in eps.timesteps)
    smooth = edmgrid.EpsilonDenoiser(eps, ALPHAS_CUMPROD, quantize=False)
    between = (eps.sigmas[40] * eps.sigmas[41]).sqrt()  # halfway in log σ
    assert float(smooth.timestep(between.reshape(1))) == pytest.approx(40.5, abs=1e-9)
    assert float(smooth.timestep(eps.sigmas[40].reshape(1))) == pytest.approx(40, abs=1e-9)


def test_the_readme_python_example_runs_with_a_plain_function():
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    scope: dict[str, object] = {}
    exec(compile(block[1], str(README), "exec"), scope)
    x = scope["x"]
    assert isinstance(x, Tensor) and x.shape == (16, 1, 8, 8) and x.dtype == torch.float64
    assert float(x.mean()) == pytest.approx(0.3, abs=0.1)
    assert float(x.std()) == pytest.approx(0.5, abs=0.1)
