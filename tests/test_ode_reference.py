"""The ODE error's reference: documented as it is, and like-for-like across σ ranges when asked
(issue #15)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edmgrid.config.job import JobSpec
from edmgrid.config.metrics import ODEError
from edmgrid.config.space import load_space
from edmgrid.engine.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def job(timesteps: dict[str, object], **metric: object) -> JobSpec:
    return JobSpec.model_validate(
        {
            "data": {"name": "toy2d", "n": 32},
            "sampler": {"timesteps": timesteps},
            "metrics": [{"name": "ode_error", "reference_steps": 32, **metric}],
            "seeds": "0-7",
        }
    )


def test_the_readme_states_the_default_number_of_reference_steps() -> None:
    (line,) = [r for r in (ROOT / "README.md").read_text().splitlines() if "| `metrics` |" in r]
    steps = re.search(r"`ode_error` \(RMS to a (\d+)-step Heun solution", line)
    assert steps is not None and int(steps[1]) == ODEError().reference_steps == 256


def test_the_run_range_reference_keeps_job_ids_from_before_the_option() -> None:
    default = job({"name": "edm"}).resolved()["metrics"][0]
    assert default == {"name": "ode_error", "reference_steps": 32}
    common = job({"name": "edm"}, reference_range="common")
    assert common.resolved()["metrics"][0]["common_sigma_max"] == 80.0
    assert common.job_id != job({"name": "edm"}).job_id


def test_each_run_has_its_own_reference_range_unless_it_is_common(tmp_path: Path) -> None:
    vp, edm = {"name": "vp", "num_steps": 6}, {"name": "edm", "num_steps": 6}
    own = [evaluate(job(ts), tmp_path) for ts in (vp, edm)]
    for row in own:
        assert (row["ode_error_sigma_min"], row["ode_error_sigma_max"]) == (
            row["sigma_min_used"],
            row["sigma_max_used"],
        )
    assert own[0]["ode_error_sigma_max"] == pytest.approx(152.167, rel=1e-5)  # VP's range
    common = [evaluate(job(ts, reference_range="common"), tmp_path) for ts in (vp, edm)]
    for row in common:
        assert (row["ode_error_sigma_min"], row["ode_error_sigma_max"]) == (0.002, 80.0)
    # over EDM's own range the common reference is the run's; VP's is measured end to end
    assert common[1]["ode_error"] == pytest.approx(own[1]["ode_error"], abs=1e-12)
    assert common[0]["ode_error"] != pytest.approx(own[0]["ode_error"], abs=1e-6)


def test_a_run_that_is_the_common_reference_has_no_error(tmp_path: Path) -> None:
    same = job({"name": "edm", "num_steps": 32}, reference_range="common")
    assert evaluate(same, tmp_path)["ode_error"] == 0.0


def test_a_common_range_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="common_sigma_min"):
        ODEError(reference_range="common", common_sigma_min=10, common_sigma_max=1)


def test_the_shipped_sampler_ablation_measures_each_run_over_its_own_range() -> None:
    space = load_space(ROOT / "spaces" / "sampler-ablation.yaml")
    (metric,) = {m for j in space.jobs for m in j.metrics if isinstance(m, ODEError)}
    assert metric.reference_range == "run" and metric.reference_steps == 512
