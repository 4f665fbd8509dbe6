"""Training throughput: edmgrid's training loop against a bare PyTorch loop (issue 7, part 5).

Both train the same network (Table 2 config E at the tiny budget: DDPM++, EDM preconditioning,
EDM loss, no augmentation) on digits with the same batch and Adam; the bare loop has no EMA, no
gradient sanitising, no learning-rate ramp. Runs alternate (bare, edmgrid, bare, edmgrid, …) so
machine noise hits both; the figure is the ratio of median images/s.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from edmgrid.engine.train import build_network, fit
from edmgrid.spec.job import JobSpec
from edmgrid.spec.space import resolve_presets


def _job(kimg: float) -> JobSpec:
    model = {"preset": "vp-E", "budget": "tiny", "training": {"duration_kimg": kimg}}
    config = {"data": {"name": "digits"}, "model": model, "metrics": [{"name": "fd"}]}
    return JobSpec.model_validate(resolve_presets(config))


def bare_loop(job: JobSpec, images: int) -> float:
    """Images per second of a plain loop: same network, batch, optimizer and loss."""
    model, data = job.model, job.data.load()
    torch.manual_seed(0)
    denoiser = build_network(model, data).train()  # type: ignore[arg-type]
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    batch = model.training.batch_size  # type: ignore[attr-defined]
    start, seen = time.perf_counter(), 0
    while seen < images:
        y = data.x[torch.randint(len(data.x), (batch,))]
        sigma = (torch.randn(batch) * 1.2 - 1.2).exp()
        noise = torch.randn_like(y) * sigma.reshape(-1, 1, 1, 1)
        weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
        loss = (weight.reshape(-1, 1, 1, 1) * (denoiser(y + noise, sigma) - y) ** 2).sum() / batch
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += batch
    return seen / (time.perf_counter() - start)


def run(tiny: bool = False) -> list[dict[str, Any]]:
    """Rows of the benchmark table."""
    kimg, repeats = (0.512, 1) if tiny else (6.4, 3)
    job = _job(kimg)
    bare, ours = [], []
    for _ in range(repeats):
        bare.append(bare_loop(job, round(kimg * 1000)))
        _, meta = fit(job.model, job.data.load())  # type: ignore[arg-type]
        ours.append(meta["images_per_second"])
    ratio = statistics.median(ours) / statistics.median(bare)
    return [
        {
            "benchmark": "training throughput (vp-E tiny, digits, batch 128)",
            "baseline": f"bare PyTorch loop {statistics.median(bare):.0f} img/s",
            "edmgrid": f"{statistics.median(ours):.0f} img/s",
            "ratio": round(ratio, 3),
            "target": "≥ 0.95",
            "met": ratio >= 0.95,
        }
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
