"""Training throughput: edmgrid's training loop against a bare PyTorch loop (issue 7, part 5).

Both train the same network (Table 2 config E at the tiny budget: DDPM++, EDM preconditioning,
EDM loss, no augmentation) on digits with the same batch and Adam; the bare loop has no EMA, no
gradient sanitising, no learning-rate ramp, no dataset x-flips. One torch thread, images per
second of process CPU time (the machine is shared: wall time is noisy). Runs alternate (bare,
edmgrid, bare, …) so drift hits both; the figure is the ratio of median images/s.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from edmgrid.config.job import JobSpec
from edmgrid.config.space import resolve_presets
from edmgrid.engine.data import load_data
from edmgrid.engine.train import build_network, fit


def _job(kimg: float) -> JobSpec:
    model = {"preset": "vp-E", "budget": "tiny", "training": {"duration_kimg": kimg}}
    config = {"data": {"name": "digits"}, "model": model, "metrics": [{"name": "fd"}]}
    return JobSpec.model_validate(resolve_presets(config))


def bare_loop(
    job: JobSpec,
    images: int,
    device: torch.device | str = "cpu",
    clock: Callable[[], float] = time.process_time,
) -> float:
    """Images per second (by ``clock``) of a plain loop on ``device``: same network, batch,
    optimizer and loss."""
    model, data = job.model, load_data(job.data)
    torch.manual_seed(0)
    denoiser = build_network(model, data).to(device).train()  # type: ignore[arg-type]
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    batch = model.training.batch_size  # type: ignore[attr-defined]
    x = data.x.to(device)
    start, seen = clock(), 0
    while seen < images:
        y = x[torch.randint(len(x), (batch,), device=device)]
        sigma = (torch.randn(batch, device=device) * 1.2 - 1.2).exp()
        noise = torch.randn_like(y) * sigma.reshape(-1, 1, 1, 1)
        weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
        loss = (weight.reshape(-1, 1, 1, 1) * (denoiser(y + noise, sigma) - y) ** 2).sum() / batch
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += batch
    return seen / (clock() - start)


def run(tiny: bool = False) -> str:
    """Median images/s of both loops over alternating repeats; returns the Markdown table."""
    kimg, repeats = (0.256, 1) if tiny else (6.4, 3)
    job = _job(kimg)
    bare, ours = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for i in range(repeats):
        bare.append(bare_loop(job, round(kimg * 1000)))
        start = time.process_time()
        _, meta = fit(job.model, load_data(job.data))  # type: ignore[arg-type]
        ours.append(meta["images"] / (time.process_time() - start))
        print(f"  repeat {i}: bare {bare[-1]:.0f} img/s, edmgrid {ours[-1]:.0f} img/s", flush=True)
    torch.set_num_threads(threads)
    b, o = statistics.median(bare), statistics.median(ours)
    verdict = "met" if o / b >= 0.95 else "missed"
    return (
        "| figure | baseline | edmgrid | ratio | target |\n|---|---|---|---|---|\n"
        f"| training throughput (vp-E tiny on digits, batch 128, {kimg:g} kimg × {repeats}) "
        f"| bare PyTorch loop {b:.0f} img/s | {o:.0f} img/s | **{o / b:.3f}** "
        f"| ≥ 0.95 ({verdict}) |\n"
    )
