"""The ablation sampler (EDM App. D, official ``ablation_sampler`` semantics) and per-seed noise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from edmgrid.config.sampler import SamplerSpec
from edmgrid.design.ode import Denoise, ProbabilityFlow
from edmgrid.design.solver import Callback
from edmgrid.design.timesteps import Cache, FitContext, uncached
from edmgrid.engine.denoiser import Denoiser, label_dim, round_sigma, sigma_limits


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
    """The σ range asked for, clamped to the denoiser's ``sigma_min``, ``sigma_max``."""
    asked_min, asked_max = spec.sigma_range()
    net_min, net_max = sigma_limits(denoiser)
    sigma_min, sigma_max = max(asked_min, net_min), min(asked_max, net_max)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"empty σ range [{sigma_min}, {sigma_max}] after clamping to the model's")
    return sigma_min, sigma_max


def plan(denoiser: Denoiser, spec: SamplerSpec, class_labels: Tensor | None = None) -> Plan:
    """Clamp the σ range to the denoiser's, bind σ(t), and build t_i = σ⁻¹(round_sigma(σ_i)).

    ``denoiser``: any callable ``D(x, sigma, class_labels)`` (see ``edmgrid.engine.denoiser``).
    """
    sigma_min, sigma_max = sigma_bounds(denoiser, spec)
    ts = spec.timesteps
    schedule = spec.schedule.bind(sigma_min, sigma_max)

    denoise = partial(_denoise, denoiser, class_labels)
    ode = ProbabilityFlow(schedule, spec.scaling, denoise, partial(round_sigma, denoiser))
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
    callback: Callback | None = None,
) -> Tensor:
    """Solve from x_0 = latents·σ(t_0)·s(t_0) to t_N = 0 in float64 (official ablation sampler);
    ``callback`` is told every step (``design.solver.Step``).

    Runs without autograd: a network denoiser's graph would otherwise be kept for every call.
    """
    p = plan(denoiser, spec, class_labels)
    t0 = p.t_steps[0]
    x = latents.to(torch.float64) * p.ode.sigma(t0) * p.ode.s(t0)
    return spec.solver.solve(p.ode, x, p.t_steps, randn_like, callback)


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


def fit_steps(
    denoiser: Denoiser,
    spec: SamplerSpec,
    shape: Sequence[int],
    device: torch.device | str,
    cached: Cache = uncached,
) -> SamplerSpec:
    """``spec`` with its time steps fitted to ``denoiser`` (``Timesteps.fit``: GITS's), as
    ``sigmas``; a spec whose steps do not depend on the model as it is. ``cached(key, make)``
    keeps the fit's costly tensors (``engine.evaluate``: on disk, per model)."""
    sigma_min, sigma_max = sigma_bounds(denoiser, spec)

    def inputs(seeds: Sequence[int]) -> tuple[Tensor, Denoise]:
        x_T, labels, _ = seed_inputs(denoiser, seeds, shape, device)
        return x_T, partial(_denoise, denoiser, labels)

    model = FitContext(
        sigma_min, sigma_max, partial(round_sigma, denoiser), tuple(shape), inputs, cached
    )
    fitted = spec.timesteps.fit(model)
    return spec if fitted is spec.timesteps else spec.model_copy(update={"timesteps": fitted})


def _denoise(denoiser: Denoiser, labels: Tensor | None, x: Tensor, sigma: Tensor) -> Tensor:
    """D(x; σ) in float64; class labels are passed only when there are any."""
    out = denoiser(x, sigma) if labels is None else denoiser(x, sigma, labels)
    return out.to(torch.float64)


class CountingDenoiser:
    """Wraps a denoiser and counts evaluations per sample: NFE = Σ batch sizes / num samples.

    It carries the wrapped denoiser's σ range, ``round_sigma`` and ``label_dim``.
    """

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser, self.evaluations = denoiser, 0
        self.sigma_min, self.sigma_max = sigma_limits(denoiser)
        self.label_dim = label_dim(denoiser)

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        self.evaluations += len(x)
        return _denoise(self.denoiser, class_labels, x, sigma)

    def round_sigma(self, sigma: Tensor) -> Tensor:
        return round_sigma(self.denoiser, sigma)
