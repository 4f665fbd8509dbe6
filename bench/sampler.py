"""Sampler benchmarks (issue #7, parts 1–3); every figure is a ratio to a baseline of this run.

1. Overhead: ``edmgrid.sample`` (EDM Heun, 18 steps) with a fixed-cost conv-net denoiser
   against (a) the same number of bare denoiser calls and (b) a plain float64 Heun loop.
2. NFE to target: the NFE at which each Table 1 family's original sampler, and the improved
   one (Heun, EDM steps, σ(t) = t, s = 1 over the family's σ range), get within multiples of
   τ, the ODE error of EDM's Heun at 35 NFE on the digits analytic denoiser (cf. Fig. 2).
3. Solvers: ODE error against NFE for every solver, and the NFE each needs for error τ.

ODE error is ``ode_error``: the RMS distance to EDM Heun with 256 steps over the run's own
[σ_{N−1}, σ_0], from the same latents. On the ideal denoiser most samples land exactly on the
reference's data point and a few on another one, so the error moves in steps of about
0.6/sqrt(samples) and is not monotone in NFE: "NFE to reach τ" is read off a ladder of step
counts as the least NFE from which on the error stays ≤ τ.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from edmgrid.config.data import Digits
from edmgrid.config.metrics import ODEError
from edmgrid.config.presets import SAMPLER
from edmgrid.config.sampler import SamplerSpec
from edmgrid.design.precond import EDMPrecond
from edmgrid.design.timesteps import GITSSteps
from edmgrid.engine.data import load_data
from edmgrid.engine.denoiser import AnalyticDenoiser, Denoiser, PrecondDenoiser
from edmgrid.engine.metrics import rms_distance
from edmgrid.engine.sample import (
    CountingDenoiser,
    SeedRNG,
    fit_steps,
    latents,
    plan,
    sample,
)
from edmgrid.files import content_hash


@dataclass(frozen=True)
class Size:
    """Problem sizes of a run (the full one, or ``--tiny`` for a smoke test)."""

    batch: int = 256  # part 1
    channels: int = 32
    num_steps: int = 18
    repeats: int = 10
    samples: int = 512  # part 2
    solver_samples: int = 2048  # part 3
    gits_fine_steps: int = 128  # part 3, GITS
    calibration_samples: int = 256
    max_steps: int = 8192
    solver_max_steps: int = 2048
    reference_steps: int = 256  # ODEError's default
    budgets: tuple[int, ...] = (5, 6, 8, 10, 12, 15, 20, 25, 35, 50, 79)


FULL = Size()
TINY = Size(
    batch=8,
    channels=4,
    num_steps=3,
    repeats=1,
    samples=4,
    solver_samples=4,
    gits_fine_steps=12,
    calibration_samples=4,
    max_steps=8,
    solver_max_steps=8,
    reference_steps=8,
    budgets=(5, 9),
)

#: Paper Fig. 2 / Table 3: NFE of the original sampler → EDM's, per family.
PAPER_NFE = {"vp": (256, 35), "ve": (8192, 27), "iddpm": (250, 79)}

#: Solvers of part 3, by label: the solver, and its time steps (EDM's, or fitted by GITS).
SOLVERS: dict[str, tuple[dict[str, Any], str]] = {
    "euler": ({"name": "euler"}, "edm"),
    "heun": ({"name": "heun"}, "edm"),
    "heun α=½ (midpoint)": ({"name": "heun", "alpha": 0.5}, "edm"),
    "dpmpp order 1 (DDIM)": ({"name": "dpmpp", "order": 1}, "edm"),
    "dpmpp order 2 (2M)": ({"name": "dpmpp", "order": 2}, "edm"),
    "dpmpp order 3 (3M)": ({"name": "dpmpp", "order": 3}, "edm"),
    "ipndm order 4": ({"name": "ipndm", "order": 4}, "edm"),
    "ipndm order 4, variable step": ({"name": "ipndm", "order": 4, "variable_step": True}, "edm"),
    "heun, GITS steps": ({"name": "heun"}, "gits"),
    "dpmpp 2M, GITS steps": ({"name": "dpmpp", "order": 2}, "gits"),
    "dpmpp 3M, GITS steps": ({"name": "dpmpp", "order": 3}, "gits"),
    "dpmpp 3M lower order final, GITS steps": (
        {"name": "dpmpp", "order": 3, "lower_order_final": True},
        "gits",
    ),
    "ipndm order 4, GITS steps": ({"name": "ipndm", "order": 4}, "gits"),
}


@contextmanager
def one_thread() -> Iterator[None]:
    """Time on one thread: the machine is shared, and ratios are what is reported."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run(tiny: bool) -> str:
    size = TINY if tiny else FULL
    with one_thread():
        overhead_table = overhead(size)
        probe = Probe(size.samples, ODEError(reference_steps=size.reference_steps))
        tau = probe.error(edm_spec(18))[1]
        print(f"τ = ODE error of EDM Heun at 35 NFE = {tau:.4f}", flush=True)
        families_table = nfe_to_target_table(probe, tau, size)
        probe = Probe(size.solver_samples, ODEError(reference_steps=size.reference_steps))
        solver_tau = probe.error(edm_spec(18))[1]
        solvers_table = solver_curves(probe, solver_tau, size)
    return "\n\n".join(
        [
            "One torch thread. Ratios compare figures measured in this same run.",
            f"### 1. Sampler overhead (batch {size.batch}, conv net with {size.channels} "
            f"channels, Heun {size.num_steps} steps; best of {size.repeats})",
            overhead_table,
            f"### 2. NFE to reach an ODE error threshold (τ = {tau:.4f}, EDM Heun-35's), "
            f"digits analytic denoiser, {size.samples} samples",
            families_table,
            f"### 3. Solvers: ODE error against NFE (σ ∈ [0.002, 80], EDM steps with ρ = 7 "
            f"or GITS steps fitted to the model), {size.solver_samples} samples",
            solvers_table,
        ]
    )


# ---------------------------------------------------------------------------------------------
# 1. Overhead


class ConvNet(nn.Module):
    """F of fixed cost: three 3×3 convolutions with SiLU between; the noise level is ignored."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, 1, 3, padding=1),
        )

    def forward(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
    ) -> Tensor:
        return self.layers(x)


def plain_heun(denoiser: Denoiser, x_T: Tensor, sigmas: Tensor) -> Tensor:
    """EDM Algorithm 1 written out by hand in float64 (σ(t) = t, s = 1), σ_N = 0 appended."""
    x = x_T.double() * sigmas[0]
    values = sigmas.tolist()
    for i, (sigma, sigma_next) in enumerate(itertools.pairwise(values)):
        d = (x - denoiser(x, sigmas[i]).double()) / sigma
        x_next = x + (sigma_next - sigma) * d
        if sigma_next > 0:
            d_next = (x_next - denoiser(x_next, sigmas[i + 1]).double()) / sigma_next
            x_next = x + (sigma_next - sigma) * (d + d_next) / 2
        x = x_next
    return x


class Identity:
    """D(x; σ) = x at no cost: what a run then takes is the sampler's own work."""

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return x


CALLS, PLAIN, SAMPLE = "(a) bare denoiser calls", "(b) plain float64 Heun loop", "edmgrid.sample"
SEEDED = "edmgrid.sample, per-seed noise (SeedRNG)"


def time_runs(denoiser: Denoiser, size: Size) -> tuple[dict[str, float], float, int]:
    """CPU seconds of the four runs, max |edmgrid − (b)|, and the NFE."""
    spec = edm_spec(size.num_steps)
    seeds = range(size.batch)
    x_T = latents(seeds, (1, 8, 8))
    sigmas = plan(denoiser, spec).sigma_steps
    heun_sigmas = [s for pair in itertools.pairwise(sigmas[:-1]) for s in pair] + [sigmas[-2]]
    x64, rng = x_T.double(), SeedRNG(seeds)

    def calls() -> None:
        for sigma in heun_sigmas:
            denoiser(x64, sigma)

    runs: dict[str, Callable[[], object]] = {
        CALLS: calls,
        PLAIN: lambda: plain_heun(denoiser, x_T, sigmas),
        SAMPLE: lambda: sample(denoiser, x_T, spec),
        SEEDED: lambda: sample(denoiser, x_T, spec, randn_like=rng.randn_like),
    }
    with torch.no_grad():  # as edmgrid.sample runs
        gap = (sample(denoiser, x_T, spec) - plain_heun(denoiser, x_T, sigmas)).abs().max()
        return best_cpu_seconds(runs, size.repeats), float(gap), len(heun_sigmas)


def overhead(size: Size) -> str:
    torch.manual_seed(0)
    conv, gap, nfe = time_runs(PrecondDenoiser(ConvNet(size.channels), EDMPrecond()).eval(), size)
    free, _, _ = time_runs(Identity(), size)
    a, b = conv[CALLS], conv[PLAIN]
    rows = [
        "| run | CPU ms | ÷ (a) | ÷ (b) | own work, µs/step | (a) + own work: ÷ (a) | ÷ (b) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in conv.items():
        own = free[name] - free[CALLS]
        implied, implied_b = (a + own) / a, (a + own) / (a + free[PLAIN] - free[CALLS])
        rows.append(
            f"| {name} | {1e3 * s:.1f} | {s / a:.3f} | {s / b:.3f} "
            f"| {1e6 * own / size.num_steps:.0f} | {implied:.4f} | {implied_b:.4f} |"
        )
        print(
            f"{name}: {1e3 * s:.1f} ms = {s / a:.3f}× (a) = {s / b:.3f}× (b); own work "
            f"{1e6 * own / size.num_steps:.0f} µs/step → {implied:.4f}× (a), {implied_b:.4f}× (b)",
            flush=True,
        )
    rows.append(
        f"\nNFE {nfe}; max |edmgrid − (b)| = {gap:.1e}. CPU time of this process, the least "
        "of the repeats run in turn (the machine is shared, so single runs vary by ±10%). "
        "'Own work' is the same run with the denoiser replaced by the identity, less its "
        "bare calls; '(a) + own work' is the overhead that implies, free of that noise."
    )
    return "\n".join(rows)


def best_cpu_seconds(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """The least process CPU time of each contender over ``repeats`` rounds, run in turn."""
    seconds = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.process_time()
            fn()
            seconds[name] = min(seconds[name], time.process_time() - start)
    return seconds


# ---------------------------------------------------------------------------------------------
# 2. and 3. ODE error on the digits analytic denoiser


def edm_spec(
    num_steps: int, solver: dict[str, Any] | None = None, **timesteps: float
) -> SamplerSpec:
    """EDM time steps over [σ_min, σ_max] (default [0.002, 80]) with ``solver`` (Heun)."""
    return SamplerSpec.model_validate(
        {
            "solver": solver or {"name": "heun"},
            "timesteps": {"name": "edm", "num_steps": num_steps, **timesteps},
        }
    )


class Probe:
    """ODE error of sampler specs from fixed latents of the digits analytic denoiser."""

    def __init__(self, samples: int, ode_error: ODEError) -> None:
        data = load_data(Digits())
        self.denoiser = AnalyticDenoiser(data.x)
        self.latents = latents(range(samples), data.sample_shape)
        self.ode_error = ode_error
        self.references: dict[tuple[float, float], Tensor] = {}
        self.costs: dict[str, Tensor] = {}  # GITS calibrations, by their cache key

    def sigma_range(self, spec: SamplerSpec) -> tuple[float, float]:
        """σ_{N−1} and σ_0 of the run."""
        sigmas = plan(self.denoiser, spec).sigma_steps
        return float(sigmas[-2]), float(sigmas[0])

    def cached(self, key: dict[str, Any], make: Callable[[], Tensor]) -> Tensor:
        """``Timesteps.fit``'s cache: each calibration is made once per bench run."""
        name = content_hash(key)
        if name not in self.costs:
            self.costs[name] = make()
        return self.costs[name]

    def error(self, spec: SamplerSpec) -> tuple[float, float]:
        """(NFE measured, ODE error) of one run; model-dependent steps are fitted first, and
        their calibration is not counted."""
        spec = fit_steps(self.denoiser, spec, self.latents.shape[1:], "cpu", self.cached)
        counter = CountingDenoiser(self.denoiser)
        x = sample(counter, self.latents, spec)
        key = self.sigma_range(spec)
        if key not in self.references:
            reference = self.ode_error.reference(*key)
            self.references[key] = sample(self.denoiser, self.latents, reference)
        return counter.evaluations / len(self.latents), rms_distance(x, self.references[key])


def ladder(max_steps: int) -> list[int]:
    """Step counts growing by about √2 from 2: 2, 3, 4, 6, 8, 11, 16, 23, 32, … ≤ max_steps."""
    steps = {round(2 * math.sqrt(2) ** k) for k in range(2 * max_steps.bit_length())}
    return sorted(n for n in steps if n <= max_steps)


@dataclass(frozen=True)
class Curve:
    """(NFE, ODE error) of one sampler over the step ladder, NFE increasing."""

    points: tuple[tuple[float, float], ...]

    def nfe_below(self, tau: float) -> float | None:
        """The least NFE from which on every point of the curve has error ≤ τ."""
        nfe = None
        for n, error in reversed(self.points):
            if error > tau:
                break
            nfe = n
        return nfe

    def __str__(self) -> str:
        return " ".join(f"{n:.0f}:{e:.3f}" for n, e in self.points)


def curve(probe: Probe, make: Callable[[int], SamplerSpec], max_steps: int, floor: float) -> Curve:
    """Errors over ``ladder(max_steps)``, stopping after three points in a row ≤ floor."""
    points: list[tuple[float, float]] = []
    for n in ladder(max_steps):
        points.append(probe.error(make(n)))
        if len(points) >= 3 and all(e <= floor for _, e in points[-3:]):
            break
    return Curve(tuple(points))


#: Error thresholds, as multiples of EDM Heun-35's ODE error τ.
TAUS = (2.0, 1.0, 0.5)


def original(family: str, num_steps: int) -> SamplerSpec:
    preset = SAMPLER[family]
    return SamplerSpec.model_validate(
        {**preset, "timesteps": {**preset["timesteps"], "num_steps": num_steps}}
    )


def fmt_nfe(nfe: float | None) -> str:
    return "–" if nfe is None else f"{nfe:.0f}"


def fmt_cut(slow: float | None, fast: float | None) -> str:
    return "–" if slow is None or fast is None else f"{slow / fast:.1f}×"


def nfe_to_target_table(probe: Probe, tau: float, size: Size) -> str:
    heads = " | ".join(f"error ≤ {k:g}τ" if k != 1 else "error ≤ τ" for k in TAUS)
    rows = [
        f"| family | σ range | {heads} | paper (FID) |",
        "|---|---|" + "---|" * (len(TAUS) + 1),
    ]
    curves = []
    for family, (paper_original, paper_improved) in PAPER_NFE.items():
        lo, hi = probe.sigma_range(original(family, 2))
        floor = min(TAUS) * tau
        orig = curve(probe, partial(original, family), size.max_steps, floor)
        impr = curve(probe, partial(edm_spec, sigma_min=lo, sigma_max=hi), size.max_steps, floor)
        cells = []
        for k in TAUS:
            slow, fast = orig.nfe_below(k * tau), impr.nfe_below(k * tau)
            cells.append(f"{fmt_nfe(slow)} → {fmt_nfe(fast)} = {fmt_cut(slow, fast)}")
        paper = f"{paper_original} → {paper_improved} = {paper_original / paper_improved:.1f}×"
        rows.append(f"| {family} | [{lo:.4g}, {hi:.4g}] | {' | '.join(cells)} | {paper} |")
        print(f"{family}: {' | '.join(cells)} (paper {paper})", flush=True)
        curves += [f"- {family} original: {orig}", f"- {family} improved: {impr}"]
    edm = curve(probe, edm_spec, size.max_steps, min(TAUS) * tau)
    cells = [fmt_nfe(edm.nfe_below(k * tau)) for k in TAUS]
    rows.append(f"| edm (Heun, EDM steps) | [0.002, 80] | {' | '.join(cells)} | 35 |")
    curves.append(f"- edm: {edm}")
    notes = (
        f"\n\nCells: NFE of the original sampler → the improved one (Heun, EDM steps, σ(t) = t, "
        "s = 1, same σ range) = the cut. NFE is the least on a ladder of step counts "
        "(×√2) from which on the error stays within the threshold; '–': not within "
        f"{size.max_steps} steps. The paper's cuts are for FID (Fig. 2, Table 3).\n\n"
        "Curves (NFE:error):\n"
    )
    return "\n".join(rows) + notes + "\n".join(curves)


def steps_within(solver: dict[str, Any], budget: int) -> int:
    """The most steps whose NFE fits the budget: Heun-type solvers use 2N − 1, others N."""
    return (budget + 1) // 2 if solver["name"] == "heun" else budget


def solver_spec(num_steps: int, solver: dict[str, Any], steps: str, size: Size) -> SamplerSpec:
    """``solver`` on EDM steps, or on GITS steps chosen from max(fine steps, N) EDM steps."""
    if steps == "edm":
        return edm_spec(num_steps, solver)
    fine = max(size.gits_fine_steps, num_steps)
    timesteps = {"fine_steps": fine, "calibration_samples": size.calibration_samples}
    return SamplerSpec.model_validate(
        {"solver": solver, "timesteps": {"name": "gits", "num_steps": num_steps, **timesteps}}
    )


def solver_curves(probe: Probe, tau: float, size: Size) -> str:
    head = " | ".join(f"≤{b}" for b in size.budgets)
    rows = [
        f"| solver | {head} | NFE for error ≤ τ | NFE cut vs heun |",
        "|---|" + "---|" * (len(size.budgets) + 2),
    ]
    errors_at: dict[str, dict[int, float]] = {}
    nfe_at_tau: dict[str, float | None] = {}
    for label, (solver, steps) in SOLVERS.items():
        errors_at[label] = {}
        make = partial(solver_spec, solver=solver, steps=steps, size=size)
        for budget in size.budgets:
            nfe, error = probe.error(make(steps_within(solver, budget)))
            assert nfe <= budget, (label, budget, nfe)
            errors_at[label][budget] = error
        nfe_at_tau[label] = curve(probe, make, size.solver_max_steps, tau).nfe_below(tau)
    for label in SOLVERS:
        cells = " | ".join(f"{errors_at[label][b]:.3f}" for b in size.budgets)
        cut = fmt_cut(nfe_at_tau["heun"], nfe_at_tau[label])
        rows.append(f"| {label} | {cells} | {fmt_nfe(nfe_at_tau[label])} | {cut} |")
        print(f"{label}: {cells}; error ≤ τ from NFE {fmt_nfe(nfe_at_tau[label])}", flush=True)
    budget = max((b for b in size.budgets if b <= 20), default=min(size.budgets))
    calibration = GITSSteps(  # any num_steps: the calibration does not depend on it
        num_steps=2, fine_steps=size.gits_fine_steps, calibration_samples=size.calibration_samples
    ).calibration_evaluations
    notes = [
        f"\nCells: ODE error with the most steps whose NFE fits the budget. τ = {tau:.4f} "
        f"(EDM Heun, 35 NFE, these {len(probe.latents)} samples). GITS steps are fitted once "
        f"per model from {size.calibration_samples} calibration latents (other seeds) and "
        f"{size.gits_fine_steps} fine EDM steps: {calibration} denoiser evaluations, "
        f"{calibration / len(probe.latents):.0f} per sample here, not counted in the NFE."
    ]
    for group in ("dpmpp", None):
        within = {
            k: e[budget] for k, e in errors_at.items() if group in (None, SOLVERS[k][0]["name"])
        }
        best = min(within, key=within.__getitem__)
        verdict = "matches" if within[best] <= tau else "does not match"
        notes.append(
            f"Best {'DPM-Solver++' if group else 'solver'} within {budget} NFE: {best}, "
            f"error {within[best]:.4f} = {within[best] / tau:.2f}τ: it {verdict} Heun-35."
        )
    rows.append("\n".join(notes))
    print(rows[-1].strip(), flush=True)
    return "\n".join(rows)
