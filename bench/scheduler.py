"""Scheduler benchmarks (issue #4), printed as ratios measured in the same process run.

1. Throughput of the local executor on a quickstart-style, evaluation-heavy grid (the analytic
   digits denoiser; Euler/Heun × VP/VE/EDM steps × step counts; ``ode_error`` and ``fd_raw``):
   2 workers × 1 thread against 1 worker × 1 thread and 1 worker × 2 threads.
   Target: 2 workers ≥ 1.7× the throughput of 1 worker.
2. A no-op re-run of a finished 100-job space: ``edmgrid run`` end to end (a fresh
   interpreter, as a user types it) and ``run_space`` alone. Target: ≤ 2 s.

Run: ``python bench/scheduler.py [--tiny] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP = 1.7
TARGET_NOOP_S = 2.0


def write_space(folder: Path, body: dict[str, Any]) -> Path:
    path = folder / f"{body['name']}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def eval_heavy(folder: Path, tiny: bool) -> Path:
    """The quickstart grid (18 jobs, 128 seeds each; tiny: 4 jobs of 16 seeds)."""
    grid: dict[str, list[Any]] = {
        "sampler.solver.name": ["euler", "heun"],
        "sampler.timesteps.name": ["vp", "ve", "edm"],
        "sampler.timesteps.num_steps": [8, 16, 32],
    }
    if tiny:
        grid = {"sampler.solver.name": ["euler", "heun"], "sampler.timesteps.name": ["vp", "edm"]}
    body = {
        "name": "bench-throughput",
        "base": {
            "data": {"name": "digits"},
            "model": {"kind": "analytic"},
            "sampler": {"preset": "edm"},
            "metrics": [{"name": "ode_error"}, {"name": "fd_raw"}],
            "seeds": "0-15" if tiny else "0-127",
        },
        "grid": grid,
    }
    return write_space(folder, body)


def hundred_jobs(folder: Path, tiny: bool) -> Path:
    """100 tiny toy2d jobs: 25 step counts × 4 seed ranges (tiny: 5 × 2)."""
    steps = list(range(2, 7 if tiny else 27))
    seeds = ["0-7", "8-15"] if tiny else ["0-7", "8-15", "16-23", "24-31"]
    body = {
        "name": "bench-noop",
        "base": {
            "data": {"name": "toy2d", "n": 256},
            "model": {"kind": "analytic"},
            "sampler": {"solver": {"name": "euler"}, "timesteps": {"name": "edm"}},
            "metrics": [{"name": "fd_raw"}],
        },
        "grid": {"sampler.timesteps.num_steps": steps, "seeds": seeds},
    }
    return write_space(folder, body)


def timed_run(space: Path, results: Path, workers: int, threads: int) -> float:
    from edmgrid.run.executors import LocalExecutor
    from edmgrid.run.runner import run_space
    from edmgrid.run.store import Store
    from edmgrid.spec.space import load_space

    loaded = load_space(space)
    executor = LocalExecutor(workers=workers, threads=threads)
    start = time.perf_counter()
    summary = run_space(loaded, Store(results), executor=executor, show_progress=False)
    elapsed = time.perf_counter() - start
    assert summary.ok and summary.counts["done"] == len(loaded.jobs), summary
    return elapsed


def throughput(folder: Path, tiny: bool, repeats: int) -> list[str]:
    space = eval_heavy(folder, tiny)
    configs = {"1 worker × 1 thread": (1, 1), "1 worker × 2 threads": (1, 2)}
    configs["2 workers × 1 thread"] = (2, 1)
    timed_run(space, folder / "warmup", 1, 1)  # starts the fork server (imports torch once)
    times: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(repeats):  # interleaved, so that load from other processes hits all alike
        for name, (workers, threads) in configs.items():
            times[name].append(
                timed_run(space, folder / f"{r}-{workers}-{threads}", *configs[name])
            )
    median = {name: statistics.median(t) for name, t in times.items()}
    two = median["2 workers × 1 thread"]
    lines = [f"throughput: {space.stem}, median of {repeats} cold-cache runs (wall s)"]
    for name, t in times.items():
        lines.append(
            f"  {name:22s} {median[name]:7.2f} s   runs: {', '.join(f'{x:.2f}' for x in t)}"
        )
    for name in ("1 worker × 1 thread", "1 worker × 2 threads"):
        ratio = median[name] / two
        verdict = "meets" if ratio >= TARGET_SPEEDUP else "misses"
        lines.append(
            f"  speed-up of 2 workers × 1 thread over {name}: {ratio:.2f}× "
            f"({verdict} the {TARGET_SPEEDUP}× target)"
        )
    return lines


def noop(folder: Path, tiny: bool, repeats: int) -> list[str]:
    from edmgrid.run.executors import SerialExecutor
    from edmgrid.run.runner import run_space
    from edmgrid.run.store import Store
    from edmgrid.spec.space import load_space

    space = hundred_jobs(folder, tiny)
    results = folder / "noop"
    loaded = load_space(space)
    run_space(loaded, Store(results), executor=SerialExecutor(), show_progress=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-c", "from edmgrid.cli import main; main()", "run", str(space)]

    def wall(edit: bool) -> float:
        """``edmgrid run`` end to end; ``edit``: change a comment, so the space's fingerprint
        differs and the run expands the space (the full path) instead of the fast path."""
        if edit:
            space.write_text(space.read_text() + "# edited\n")
        start = time.perf_counter()
        subprocess.run([*cli, "-r", str(results)], env=env, check=True, capture_output=True)
        return time.perf_counter() - start

    full = [wall(edit=True) for _ in range(repeats)]
    fast = [wall(edit=False) for _ in range(repeats)]
    in_process = []
    for _ in range(repeats):
        start = time.perf_counter()
        again = run_space(
            load_space(space), Store(results), executor=SerialExecutor(), show_progress=False
        )
        in_process.append(time.perf_counter() - start)
        assert again.counts["skipped"] == len(loaded.jobs) and not again.executed
    fast_s, full_s, inp = (statistics.median(x) for x in (fast, full, in_process))
    verdict = "meets" if fast_s <= TARGET_NOOP_S else "misses"
    n = len(loaded.jobs)
    return [
        f"no-op re-run of a finished {n}-job space "
        f"(median of {repeats}; target ≤ {TARGET_NOOP_S} s)",
        f"  edmgrid run, unchanged space (fast path)  {fast_s:6.2f} s = "
        f"{fast_s / TARGET_NOOP_S:.2f}× the target ({verdict} it)",
        f"  edmgrid run, edited space (expands it)    {full_s:6.2f} s = "
        f"{full_s / TARGET_NOOP_S:.2f}× the target",
        f"  run_space in process (expands it)         {inp:6.2f} s = "
        f"{inp / TARGET_NOOP_S:.2f}× the target",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="A smoke test: small grids, 1 repeat.")
    parser.add_argument("--repeats", type=int, default=None, help="Timed runs per figure.")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.tiny else 3)
    print(f"scheduler benchmark on {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edmgrid-bench-") as tmp:
        folder = Path(tmp)
        for line in [*throughput(folder, args.tiny, repeats), *noop(folder, args.tiny, repeats)]:
            print(line, flush=True)
    print(f"took {time.perf_counter() - start:.0f} s; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
