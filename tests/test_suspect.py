"""Numerical nonsense is flagged, not stored as plain ``done`` (issue #15): Chen's sigmoid and
linear γ schedules with uniform time steps default to σ_max = 31623 (γ clipped at 1e-9), and
Heun from there gives samples far outside the data for digits in [−1, 1]."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from edmgrid.config.metrics import ODEError
from edmgrid.config.sampler import SamplerSpec
from edmgrid.run.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")

# The example at a test's size (16 seeds, 8 steps: 0.2 s a job).
CHEN = """name: chen
base:
  data: {name: digits}
  model: {kind: analytic}
  sampler:
    solver: {name: heun}
    timesteps: {name: uniform, num_steps: 8}
    scaling: {name: gamma}
  metrics: [{name: ode_error, reference_steps: 64}]
  seeds: 0-15
grid:
  sampler.schedule.name: [sigmoid, linear_gamma, cosine]
"""


@pytest.fixture(scope="module")
def chen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    space = tmp_path_factory.mktemp("chen") / "chen.yaml"
    space.write_text(CHEN)
    return space


def test_show_names_the_jobs_whose_default_sigma_max_is_extreme_and_the_fix(
    chen: Path, cli: Callable[..., Any]
) -> None:
    shown = cli("show", chen)
    assert shown.code == 0
    warnings = [line for line in shown.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3  # one per schedule: each defaults to σ_max = 31623
    for schedule in ("sigmoid", "linear_gamma", "cosine"):
        (line,) = [w for w in warnings if f"the {schedule} schedule" in w]
        assert "uniform time steps" in line and "σ_max = 31622.8" in line
        assert "set sampler.timesteps.sigma_max" in line
    ids = [line.split("│")[1].strip() for line in shown.out.splitlines() if "schedule=" in line]
    assert len(ids) == 3 and all(job in shown.err for job in ids)


def test_a_set_sigma_max_or_a_table_1_default_is_not_extreme() -> None:
    assert SamplerSpec().extreme_default_sigma_max() is None  # EDM: 80
    for preset in ({"name": "vp"}, {"name": "ve"}, {"name": "iddpm"}):
        assert SamplerSpec.model_validate({"timesteps": preset}).extreme_default_sigma_max() is None
    gamma = {"timesteps": {"name": "uniform"}, "schedule": {"name": "sigmoid"}}
    assert SamplerSpec.model_validate(gamma).extreme_default_sigma_max() == pytest.approx(31622.8)
    gamma["timesteps"] = {"name": "uniform", "sigma_max": 80.0}
    assert SamplerSpec.model_validate(gamma).extreme_default_sigma_max() is None


def test_absurd_samples_and_ode_errors_are_stored_done_but_suspect_with_the_reason(
    chen: Path, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    results = tmp_path / "results"
    ran = cli("run", chen, "-r", results, "-x", "serial")
    assert ran.code == 0, ran.err  # stored, not failed
    rows = Store(results).query(
        "SELECT job_id, schedule, status, ode_error, num_samples, suspect FROM runs"
        " ORDER BY schedule"
    )
    by = {r["schedule"]: r for r in rows.to_dict("records")}
    assert {r["status"] for r in by.values()} == {"done"}
    for schedule in ("sigmoid", "linear_gamma"):  # the examples
        reason = by[schedule]["suspect"]
        assert by[schedule]["ode_error"] > 2  # the numbers are kept
        assert reason.startswith("samples reach |x| = ")
        assert "> 4 × max|data| 1" in reason and "ode_error = " in reason
        beyond, total = map(int, re.search(r"\((\d+) of (\d+)\)", reason).groups())  # type: ignore[union-attr]
        assert 1 <= beyond <= total == by[schedule]["num_samples"]
        assert f"suspect {by[schedule]['job_id']}: samples reach" in " ".join(ran.out.split())
    assert pd.isna(by["cosine"]["suspect"])  # the same σ_max, and samples stay in range


def test_the_ode_error_bound_is_twice_the_data_range() -> None:
    assert ODEError().bounds(1.0) == {"ode_error": 2.0}
