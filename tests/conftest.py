"""Shared fixtures: small data and a closed-form Gaussian denoiser."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from edmgrid.engine.device import SIMULATED_GPUS

# The suite simulates GPUs on machines without one (test_executors, test_ray): a worker pinned
# to a GPU id that CUDA cannot use runs on the CPU and records ``cpu (simulated GPU <id>)``
# instead of failing its job. Set here, before any worker or Ray process starts, so that every
# one inherits it; tests of the real behaviour unset it.
os.environ[SIMULATED_GPUS] = "1"


class GaussianDenoiser:
    """Ideal denoiser of N(0, s²I): D(x; σ) = x·s²/(s²+σ²), a plain callable (no σ range).

    Its ODE solution is known in closed form: x(σ) = x(σ_0)·sqrt(s²+σ²)/sqrt(s²+σ_0²).
    """

    def __init__(self, s: float = 0.5) -> None:
        self.s = s

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return x * self.s**2 / (self.s**2 + sigma**2)


@pytest.fixture
def gaussian() -> GaussianDenoiser:
    return GaussianDenoiser()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread for the test: on a shared 2-core machine two threads thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


ROOT = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    """Exit code and captured output of one ``edmgrid`` invocation."""

    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Invoke the console entry point ``edmgrid.cli.main`` in-process with the given arguments.

    This is the code path of the installed ``edmgrid`` script (exit codes, error messages),
    without the second or two of imports a subprocess costs.
    """
    from edmgrid.cli import main

    def invoke(*args: str | Path) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["edmgrid", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        code = exit_info.value.code
        return CliResult(code if isinstance(code, int) else 1, captured.out, captured.err)

    return invoke
