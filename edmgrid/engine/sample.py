"""The ablation sampler (EDM App. D, official ``ablation_sampler`` semantics) and per-seed noise."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from edmgrid.config.sampler import SamplerSpec
from edmgrid.design.ode import Denoise, ProbabilityFlow
from edmgrid.design.timesteps import GITSSteps
from edmgrid.engine.denoiser import Denoiser, label_dim


class SeedRNG:
    """One CPU ``torch.Generator`` per seed (seed mod 2³²), like the official
    StackedRandomGenerator.

    Every sample's noise depends on its seed alone, never on batch size, worker count or
    device: it is drawn on the CPU and then moved to where it is used.
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        self.generators = [torch.Generator("cpu").manual_seed(int(s) % (1 << 32)) for s in seeds]

    def randn(
        self,
        size: Sequence[int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """N(0, I) of ``size`` = [number of seeds, …], one row per generator, on ``device``."""
        if size[0] != len(self.generators):
            raise ValueError(f"first dimension {size[0]} != number of seeds {len(self.generators)}")
        rows = [
            torch.randn(size[1:], generator=g, dtype=dtype, device="cpu") for g in self.generators
        ]
        return torch.stack(rows).to(device)

    def randn_like(self, x: Tensor) -> Tensor:
        return self.randn(x.shape, dtype=x.dtype, device=x.device)

    def randint(self, high: int, size: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
        rows = [torch.randint(high, size[1:], generator=g, device="cpu") for g in self.generators]
        return torch.stack(rows).to(device)


def latents(
    seeds: Sequence[int], shape: Sequence[int], device: torch.device | str = "cpu"
) -> Tensor:
    """x_T ~ N(0, I) of shape [len(seeds), *shape] on ``device``, one generator per seed."""
    return SeedRNG(seeds).randn([len(seeds), *shape], device=device)


@dataclass(frozen=True)
class Plan:
    """The resolved σ range, the bound ODE and the time grid t_0 > … > t_N = 0 of one run."""

    sigma_min: float
    sigma_max: float
    ode: ProbabilityFlow
    t_steps: Tensor

    @property
    def sigma_steps(self) -> Tensor:
        return self.ode.sigma(self.t_steps)


def sigma_bounds(denoiser: Denoiser, spec: SamplerSpec) -> tuple[float, float]:
    """The σ range asked for, clamped to the denoiser's."""
    asked_min, asked_max = spec.sigma_range()
    net_min, net_max = denoiser.sigma_range()
    sigma_min, sigma_max = max(asked_min, net_min), min(asked_max, net_max)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"empty σ range [{sigma_min}, {sigma_max}] after clamping to the model's")
    return sigma_min, sigma_max


def plan(denoiser: Denoiser, spec: SamplerSpec, class_labels: Tensor | None = None) -> Plan:
    """Clamp the σ range to the denoiser's, bind σ(t), and build t_i = σ⁻¹(round_sigma(σ_i))."""
    sigma_min, sigma_max = sigma_bounds(denoiser, spec)
    ts = spec.timesteps
    schedule = spec.schedule.bind(sigma_min, sigma_max)

    denoise = partial(_denoise, denoiser, class_labels)
    ode = ProbabilityFlow(schedule, spec.scaling, denoise, denoiser.round_sigma)
    sigma_steps = ts.sigma_steps(schedule, sigma_min, sigma_max)
    t_steps = ode.t_of_sigma(sigma_steps)
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])
    return Plan(sigma_min, sigma_max, ode, t_steps)


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    latents: Tensor,
    spec: SamplerSpec,
    class_labels: Tensor | None = None,
    randn_like: Callable[[Tensor], Tensor] = torch.randn_like,
) -> Tensor:
    """Solve from x_0 = latents·σ(t_0)·s(t_0) to t_N = 0 in float64 (official ablation sampler).

    Runs without autograd: a network denoiser's graph would otherwise be kept for every call.
    """
    p = plan(denoiser, spec, class_labels)
    t0 = p.t_steps[0]
    x = latents.to(torch.float64) * p.ode.sigma(t0) * p.ode.s(t0)
    return spec.solver.solve(p.ode, x, p.t_steps, randn_like)


def seed_inputs(
    denoiser: Denoiser, seeds: Sequence[int], shape: Sequence[int], device: torch.device | str
) -> tuple[Tensor, Tensor | None, SeedRNG]:
    """Per seed, as the official generate.py: the latents, then (for a class-conditional
    denoiser) a class drawn uniformly from its generator as a one-hot label, both on
    ``device``; and the generators, which go on to give the solver's noise."""
    rng = SeedRNG(seeds)
    x_T = rng.randn([len(seeds), *shape], device=device)
    num_classes = label_dim(denoiser)
    labels = None
    if num_classes:
        labels = torch.eye(num_classes, device=device)[
            rng.randint(num_classes, [len(seeds)], device)
        ]
    return x_T, labels, rng


#: Calibration latents (GITS) use the seeds from here on, apart from those of any run.
CALIBRATION_SEED = 1 << 31


@torch.no_grad()
def teacher(denoise: Denoise, x: Tensor, sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """States x(σ_k) of EDM Heun along ``sigmas`` (σ(t) = t, s = 1) from x(σ_0) = ``x``, and
    the slopes dx/dσ = (x − D(x; σ))/σ at all but the last state."""
    states, slopes = [x], []
    for sigma, sigma_next in itertools.pairwise(sigmas):
        d = (x - denoise(x, sigma)) / sigma
        h = sigma_next - sigma
        x_pred = x + h * d
        x = x + h / 2 * (d + (x_pred - denoise(x_pred, sigma_next)) / sigma_next)
        states.append(x)
        slopes.append(d)
    return torch.stack(states), torch.stack(slopes)


def calibration_cost(
    denoiser: Denoiser, spec: SamplerSpec, shape: Sequence[int], device: torch.device | str
) -> Tensor:
    """GITS's cost: the Euler local errors between the fine steps along the teacher's paths
    from the calibration latents, summed over them. It depends on the model and the time steps'
    settings, not on ``num_steps``. The teacher runs on ``device`` in batches of at most 2²⁴
    values; the cost [G, G] is on the CPU."""
    ts = spec.timesteps
    assert isinstance(ts, GITSSteps)
    sigmas = fine_grid(denoiser, spec)
    seeds = range(CALIBRATION_SEED, CALIBRATION_SEED + ts.calibration_samples)
    batch = max(1, (1 << 24) // (len(sigmas) * math.prod(shape)))
    cost = torch.zeros(len(sigmas), len(sigmas), dtype=torch.float64, device="cpu")
    for lo in range(0, len(seeds), batch):
        x_T, labels, _ = seed_inputs(denoiser, seeds[lo : lo + batch], shape, device)
        denoise = partial(_denoise, denoiser, labels)
        states, slopes = teacher(denoise, x_T.double() * sigmas[0], sigmas)
        cost += ts.local_errors(sigmas, states, slopes)
    return cost


def fine_grid(denoiser: Denoiser, spec: SamplerSpec) -> Tensor:
    """GITS's candidate steps, at noise levels the model supports (``round_sigma``)."""
    ts = spec.timesteps
    assert isinstance(ts, GITSSteps)
    return denoiser.round_sigma(ts.fine_sigmas(*sigma_bounds(denoiser, spec))).unique_consecutive()


def fit_steps(
    denoiser: Denoiser,
    spec: SamplerSpec,
    shape: Sequence[int],
    device: torch.device | str,
    cost: Tensor | None = None,
) -> SamplerSpec:
    """``spec`` with model-dependent time steps (GITS) fitted to ``denoiser``, as ``sigmas``;
    any other spec as it is. ``cost``: ``calibration_cost``'s, if already at hand (else it is
    computed on ``device``)."""
    ts = spec.timesteps
    if not isinstance(ts, GITSSteps):
        return spec
    sigmas = fine_grid(denoiser, spec)
    if len(sigmas) < ts.num_steps:
        raise ValueError(f"the model has {len(sigmas)} noise levels in range, < num_steps")
    if cost is None:
        cost = calibration_cost(denoiser, spec, shape, device)
    return spec.model_copy(update={"timesteps": ts.choose(sigmas, cost)})


def _denoise(denoiser: Denoiser, labels: Tensor | None, x: Tensor, sigma: Tensor) -> Tensor:
    return denoiser(x, sigma, labels).to(torch.float64)


class CountingDenoiser:
    """Wraps a denoiser and counts evaluations per sample: NFE = Σ batch sizes / num samples."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser, self.evaluations = denoiser, 0
        self.label_dim = label_dim(denoiser)

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        self.evaluations += len(x)
        return self.denoiser(x, sigma, class_labels)

    def sigma_range(self) -> tuple[float, float]:
        return self.denoiser.sigma_range()

    def round_sigma(self, sigma: Tensor) -> Tensor:
        return self.denoiser.round_sigma(sigma)
