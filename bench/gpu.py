"""Device benchmark (issue 12): ratios measured in one run on the worker's device.

On CUDA when it is there, else on the CPU at small sizes (so CI smoke-tests it); every figure
is a ratio of two runs of this process on the same device, the contenders in turn.

1. Training: images/s of ``engine.train.fit`` (EMA, gradient sanitising, learning-rate ramp)
   against a bare PyTorch loop of the same network, batch, Adam and loss (target ≥ 0.95).
2. Sampling: images/s of ``edmgrid.sample`` as a job runs it (``evaluate.sample_seeds``:
   per-seed CPU noise moved to the device, float64 state, samples back to the CPU) against the
   same number of bare denoiser calls on the same batch (target ≥ 0.97).
3. bf16 against fp32: sampling images/s with ``sampling_precision: bf16`` over fp32, and the
   RMS difference of their samples (of the untrained network, whose zero-initialised output
   layer makes F ≈ 0: this is not bf16's error on a trained network).
4. How busy the GPU is (``nvidia-smi`` utilisation, sampled every 100 ms) during a local run of
   several analytic sampler jobs on one GPU, with 1 and with 3 workers; on the CPU: not
   applicable.

Timing: on CUDA wall time after ``torch.cuda.synchronize()``; on the CPU the process's CPU
time with one torch thread (the machine is shared, wall time is noisy there).
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from bench.training import _job, bare_loop
from edmgrid.config.sampler import SamplerSpec
from edmgrid.config.space import load_space
from edmgrid.design.precision import Precision
from edmgrid.engine.data import load_data
from edmgrid.engine.denoiser import TorchDenoiser
from edmgrid.engine.device import pinned_gpus, worker_device
from edmgrid.engine.evaluate import sample_seeds
from edmgrid.engine.sample import CountingDenoiser, plan
from edmgrid.engine.train import build_network, fit
from edmgrid.run.executors import LocalExecutor
from edmgrid.run.runner import run_space
from edmgrid.run.store import Store


@dataclass(frozen=True)
class Size:
    """Problem sizes of one run: the device's, or ``--tiny``'s (a smoke test)."""

    train_kimg: float
    batch: int  # sampling batch
    num_steps: int
    repeats: int
    busy_seeds: int = 0  # part 4 (GPU only)

    @classmethod
    def of(cls, device: torch.device, tiny: bool) -> Size:
        if tiny:
            return cls(train_kimg=0.128, batch=8, num_steps=3, repeats=1, busy_seeds=256)
        if device.type == "cuda":
            return cls(train_kimg=25.6, batch=512, num_steps=18, repeats=3, busy_seeds=8192)
        return cls(train_kimg=1.28, batch=128, num_steps=18, repeats=3)


def clock(device: torch.device) -> Callable[[], float]:
    """Seconds: wall time once the device's queued work is done (CUDA), else CPU time."""
    if device.type != "cuda":
        return time.process_time

    def synced() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return synced


def training(device: torch.device, size: Size) -> tuple[float, float, str]:
    """Median images/s of the bare loop and of ``fit``, and the device ``fit``'s network was on."""
    job = _job(size.train_kimg)
    images, now = round(size.train_kimg * 1000), clock(device)
    bare, ours, where = [], [], ""
    for i in range(size.repeats):
        bare.append(bare_loop(job, images, device, now))
        start = now()
        ema, meta = fit(job.model, load_data(job.data))  # type: ignore[arg-type]
        ours.append(meta["images"] / (now() - start))
        where = str(next(ema.parameters()).device)
        print(
            f"  training {i}: bare {bare[-1]:.0f} img/s, edmgrid {ours[-1]:.0f} img/s", flush=True
        )
    return statistics.median(bare), statistics.median(ours), where


def sampling(device: torch.device, size: Size) -> dict[str, float]:
    """Images/s of bare denoiser calls, of ``sample_seeds`` in fp32 and in bf16, and the RMS
    difference of the bf16 samples from the fp32 ones."""
    job = _job(size.train_kimg)
    data = load_data(job.data)
    torch.manual_seed(0)
    net = build_network(job.model, data).to(device).eval().requires_grad_(False)  # type: ignore[arg-type]
    spec = SamplerSpec.model_validate({"timesteps": {"name": "edm", "num_steps": size.num_steps}})
    seeds, shape, now = list(range(size.batch)), data.sample_shape, clock(device)
    denoisers = {p: TorchDenoiser(net, p) for p in ("fp32", "bf16")}
    counter = CountingDenoiser(denoisers["fp32"])
    sample_seeds(counter, spec, seeds, shape, device)  # warm-up, and the NFE
    nfe = round(counter.evaluations / len(seeds))
    sigmas = plan(counter, spec).sigma_steps[:-1]
    x = torch.randn(size.batch, *shape, device=device)

    def calls() -> None:
        with torch.inference_mode():
            for k in range(nfe):
                net(x, sigmas[k * len(sigmas) // nfe])

    def ours(precision: Precision) -> Callable[[], object]:
        return lambda: sample_seeds(denoisers[precision], spec, seeds, shape, device)

    runs = {"bare": calls, "fp32": ours("fp32"), "bf16": ours("bf16")}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(size.repeats):
        for name, run in runs.items():
            start = now()
            run()
            seconds[name].append(now() - start)
    rates = {name: size.batch / statistics.median(s) for name, s in seconds.items()}
    fp32, bf16 = runs["fp32"](), runs["bf16"]()
    rates["bf16_rms"] = float((fp32 - bf16).pow(2).mean().sqrt())  # type: ignore[operator]
    rates["nfe"] = nfe
    print(
        f"  sampling: bare {rates['bare']:.0f} img/s, edmgrid fp32 {rates['fp32']:.0f}, "
        f"bf16 {rates['bf16']:.0f} img/s (NFE {nfe})",
        flush=True,
    )
    return rates


@contextlib.contextmanager
def utilisation(gpu: str) -> Iterator[list[float]]:
    """GPU ``gpu``'s utilisation in %, sampled every 100 ms by ``nvidia-smi`` during the block."""
    samples: list[float] = []
    query = ["--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
    smi = subprocess.Popen(["nvidia-smi", *query, "-i", gpu], stdout=subprocess.PIPE, text=True)
    try:
        yield samples
    finally:
        smi.terminate()
        out, _ = smi.communicate()
        samples.extend(float(line) for line in out.split() if line.strip().isdigit())


def busy(size: Size, workers: int, folder: Path) -> tuple[float, float]:
    """Mean GPU utilisation (%) and wall seconds of a local run of 6 analytic sampler jobs on
    one GPU with ``workers`` workers."""
    body = {
        "name": f"busy{workers}",
        "base": {
            "data": {"name": "digits"},
            "model": {"kind": "analytic"},
            "sampler": {"timesteps": {"name": "edm"}},
            "metrics": [{"name": "fd_raw"}],
            "seeds": f"0-{size.busy_seeds - 1}",
        },
        "grid": {
            "sampler.timesteps.num_steps": [8, 12, 18],
            "sampler.solver.name": ["euler", "heun"],
        },
    }
    path = folder / f"busy{workers}.yaml"
    path.write_text(yaml.safe_dump(body))
    gpu = (pinned_gpus() or ["0"])[0]
    executor = LocalExecutor(workers=workers, devices=[gpu])
    start = time.perf_counter()
    with utilisation(gpu) as samples:
        summary = run_space(load_space(path), Store(folder / f"r{workers}"), executor=executor)
    seconds = time.perf_counter() - start
    if not summary.ok:
        raise RuntimeError(f"the busy run failed: {summary.counts}")
    mean = statistics.fmean(samples) if samples else float("nan")
    print(f"  busy, {workers} worker(s): GPU {mean:.0f}% over {seconds:.1f} s", flush=True)
    return mean, seconds


TIMING = {True: "wall time after synchronize", False: "process CPU time"}


def run(tiny: bool = False) -> str:
    device = worker_device()
    size = Size.of(device, tiny)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        bare, ours, trained_on = training(device, size)
        rates = sampling(device, size)
    finally:
        torch.set_num_threads(threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, 1 thread"
    train_ratio, sample_ratio = ours / bare, rates["fp32"] / rates["bare"]
    rows = [
        f"Device: {device} ({name}); timing: {TIMING[device.type == 'cuda']}.\n",
        "| figure | baseline | edmgrid | ratio | target |",
        "|---|---|---|---|---|",
        f"| training (vp-E tiny on digits, batch 128, {size.train_kimg:g} kimg × {size.repeats}; "
        f"fit's network on {trained_on}) | bare PyTorch loop {bare:.0f} img/s | {ours:.0f} img/s "
        f"| **{train_ratio:.3f}** | ≥ 0.95 ({'met' if train_ratio >= 0.95 else 'missed'}) |",
        f"| sampling (same net, EDM Heun {size.num_steps} steps = NFE {rates['nfe']:.0f}, batch "
        f"{size.batch}) | bare denoiser calls {rates['bare']:.0f} img/s | edmgrid.sample "
        f"{rates['fp32']:.0f} img/s | **{sample_ratio:.3f}** "
        f"| ≥ 0.97 ({'met' if sample_ratio >= 0.97 else 'missed'}) |",
        f"| bf16 against fp32 (sampling) | fp32 {rates['fp32']:.0f} img/s | bf16 "
        f"{rates['bf16']:.0f} img/s | **{rates['bf16'] / rates['fp32']:.3f}** "
        f"| – (RMS sample difference {rates['bf16_rms']:.1e}, of an untrained net) |",
    ]
    if device.type == "cuda" and shutil.which("nvidia-smi"):
        with tempfile.TemporaryDirectory() as tmp:
            (one, t1), (three, t3) = busy(size, 1, Path(tmp)), busy(size, 3, Path(tmp))
        rows.append(
            f"| GPU busy, 6 analytic sampler jobs of {size.busy_seeds} seeds on one GPU "
            f"| 1 worker: {one:.0f}% over {t1:.1f} s | 3 workers: {three:.0f}% over {t3:.1f} s "
            f"| **{t1 / t3:.2f}** (speed-up) | – |"
        )
    else:
        reason = "no GPU" if device.type == "cpu" else "no nvidia-smi"
        rows.append(
            f"| GPU busy during a local run of sampler jobs | not applicable ({reason}) | | | |"
        )
    return "\n".join(rows) + "\n"
