"""Spaces: base × grid × zip expansion, presets, job identity, and schema errors (issue #2)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from edmgrid.config.job import MAX_SEEDS, JobSpec, parse_seeds
from edmgrid.config.presets import SOLVER
from edmgrid.config.sampler import SamplerSpec
from edmgrid.config.space import load_space
from edmgrid.design.solver import solvers
from edmgrid.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
BASE = "base:\n  data: {name: toy2d, n: 16}\n  metrics: [{name: ode_error}]\n  seeds: 0-1\n"
TIMESTEPS = "  sampler: {timesteps: {name: edm}}\n"


@pytest.fixture
def write(tmp_path: Path):
    def write(text: str, name: str = "space.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def sampler_of(job: JobSpec) -> dict:
    return job.resolved()["sampler"]


def test_grid_is_the_cartesian_product_with_later_keys_varying_fastest(write) -> None:
    space = load_space(
        write(
            "name: g\n" + BASE + TIMESTEPS + "grid:\n"
            "  sampler.solver.name: [euler, heun]\n"
            "  sampler.timesteps.num_steps: [2, 3, 4]\n"
        )
    )
    got = [
        (sampler_of(j)["solver"]["name"], sampler_of(j)["timesteps"]["num_steps"])
        for j in space.jobs
    ]
    assert got == [(s, n) for s in ("euler", "heun") for n in (2, 3, 4)]


def test_zip_lists_vary_in_lockstep_and_multiply_with_the_grid(write) -> None:
    space = load_space(
        write(
            "name: z\n" + BASE + TIMESTEPS + "grid:\n  sampler.solver.name: [euler, heun]\n"
            "zip:\n  - sampler.timesteps.num_steps: [2, 4]\n    seeds: [0-1, 2-5]\n"
        )
    )
    got = [
        (sampler_of(j)["solver"]["name"], sampler_of(j)["timesteps"]["num_steps"], j.seeds)
        for j in space.jobs
    ]
    assert got == [
        ("euler", 2, "0-1"),
        ("euler", 4, "2-5"),
        ("heun", 2, "0-1"),
        ("heun", 4, "2-5"),
    ]


def test_a_space_without_grid_is_its_base_job(write) -> None:
    assert len(load_space(write("name: one\n" + BASE)).jobs) == 1


def test_grid_points_that_resolve_to_the_same_job_are_run_once(write) -> None:
    # the EDM preset's step count is 18: the two grid points are one job
    space = load_space(
        write(
            "name: d\n" + BASE + "  sampler: {preset: edm}\n"
            "grid:\n  sampler.timesteps.num_steps: [18, 18, 7]\n"
        )
    )
    assert len(space.jobs) == 2


def test_job_id_ignores_key_order_and_spelled_out_defaults() -> None:
    short = JobSpec.model_validate({"data": {"name": "digits"}, "metrics": [{"name": "fd_raw"}]})
    spelled = JobSpec.model_validate(
        {
            "seeds": "0-255",
            "metrics": [{"name": "fd_raw"}],
            "sampler": {"solver": {"S_noise": 1.0, "name": "heun"}, "timesteps": {"name": "edm"}},
            "model": {"kind": "analytic", "chunk": 4096},
            "data": {"name": "digits"},
        }
    )
    assert short.job_id == spelled.job_id
    assert len(short.job_id) == 16
    changed = short.model_copy(update={"seeds": "0-254"})
    assert changed.job_id != short.job_id


def test_sampler_preset_is_table_1_edm_and_keys_beside_it_override(write) -> None:
    space = load_space(
        write("name: p\n" + BASE + "  sampler: {preset: edm, timesteps: {num_steps: 7}}\n")
    )
    sampler = sampler_of(space.jobs[0])
    assert sampler["solver"]["name"] == "heun"
    assert sampler["timesteps"] == {**sampler["timesteps"], "name": "edm", "num_steps": 7}
    assert sampler["timesteps"]["rho"] == 7.0


def test_a_different_choice_over_a_preset_replaces_its_parameters(write) -> None:
    # VE's 8192 steps belong to the VE discretisation; switching to EDM steps drops them
    space = load_space(
        write("name: p\n" + BASE + "  sampler: {preset: ve, timesteps: {name: edm}}\n")
    )
    assert sampler_of(space.jobs[0])["timesteps"]["num_steps"] == 18


def test_solver_preset_is_table_5(write) -> None:
    space = load_space(
        write(
            "name: t5\n" + BASE + "  sampler:\n"
            "    solver: {name: heun, preset: table5-imagenet-ours}\n"
        )
    )
    solver = sampler_of(space.jobs[0])["solver"]
    assert {k: solver[k] for k in SOLVER["table5-imagenet-ours"]} == SOLVER["table5-imagenet-ours"]


def test_quickstart_space_expands_to_18_jobs() -> None:
    space = load_space(ROOT / "spaces" / "quickstart.yaml")
    assert space.name == "quickstart"
    assert len(space.jobs) == 18


def test_schema_error_carries_file_line_and_field_path(write) -> None:
    path = write("name: e\n" + BASE + TIMESTEPS + "grid:\n  sampler.timesteps.num_steps: [4, 1]\n")
    with pytest.raises(InputError) as info:
        load_space(path)
    error = info.value
    assert (error.file, error.line, error.path) == (str(path), 8, "sampler.timesteps.num_steps")
    assert "greater than or equal to 2" in error.reason
    assert "(job 1)" in error.reason


def test_unknown_key_names_itself_and_the_valid_keys() -> None:
    with pytest.raises(ValidationError) as info:
        SamplerSpec.model_validate({"solver": {"name": "euler", "S_chrun": 1}})
    (error,) = info.value.errors()
    assert error["type"] == "unknown_key"
    assert error["ctx"]["key"] == "S_chrun"
    assert "S_churn" in error["msg"]


def test_unknown_choice_lists_the_registered_ones_and_what_was_given(write) -> None:
    path = write("name: c\n" + BASE + "  sampler: {solver: {name: rk45}}\n")
    valid = re.escape(", ".join(solvers.names))
    with pytest.raises(InputError, match=rf"valid choices: {valid} \(got name: 'rk45'\)"):
        load_space(path)


def test_nan_is_refused_wherever_a_number_goes_and_infinity_only_where_bounds_allow() -> None:
    with pytest.raises(ValidationError, match="NaN"):
        SamplerSpec.model_validate({"solver": {"name": "heun", "S_noise": math.nan}})
    with pytest.raises(ValidationError, match="NaN"):
        SamplerSpec.model_validate({"schedule": {"name": "sigmoid", "tau": 1, "end": "NaN"}})
    assert SamplerSpec.model_validate({"solver": {"name": "heun", "S_max": math.inf}})


def test_sigma_range_is_the_given_bounds_else_the_discretisation_defaults() -> None:
    assert SamplerSpec().sigma_range() == (0.002, 80.0)
    spec = SamplerSpec.model_validate({"timesteps": {"name": "ve", "sigma_max": 50.0}})
    assert spec.sigma_range() == (0.02, 50.0)


@pytest.mark.parametrize(
    "timesteps",
    [
        {"name": "edm", "sigma_min": 90.0},
        {"name": "ve", "sigma_max": 0.01},
        {"name": "edm", "sigma_max": math.inf},
    ],
)
def test_a_sigma_range_that_is_empty_or_unbounded_is_refused(timesteps: dict) -> None:
    with pytest.raises(ValidationError, match="σ range"):
        SamplerSpec.model_validate({"timesteps": timesteps})


def test_seeds_take_the_official_range_syntax_or_one_integer() -> None:
    assert parse_seeds("0-3,7,10-11") == [0, 1, 2, 3, 7, 10, 11]
    job = JobSpec.model_validate(
        {"data": {"name": "digits"}, "metrics": [{"name": "fd_raw"}], "seeds": 7}
    )
    assert job.seed_list == [7]


def test_seed_count_is_bounded_before_the_list_is_built() -> None:
    with pytest.raises(ValueError, match=f"more than {MAX_SEEDS}"):
        parse_seeds(f"0-{10**15}")
    assert len(parse_seeds(f"0-{MAX_SEEDS - 1}")) == MAX_SEEDS


TRAINED = (
    "name: rep\nbase:\n  data: {name: digits}\n  model: {preset: vp-A, budget: tiny}\n"
    "  metrics: [{name: fd}]\n  seeds: 0-99\n"
)


def test_replicate_zero_is_the_job_itself_and_others_shift_training_and_eval_seeds(write) -> None:
    plain = load_space(write(TRAINED, "plain.yaml"))
    space = load_space(write(TRAINED + "replicates: {train: 3, eval: 2}\n"))
    (job,) = plain.jobs
    assert space.jobs[0].job_id == job.job_id  # replicate (0, 0): unchanged id
    pairs = [(j.model.training.seed, j.seeds) for j in space.jobs]
    assert pairs == [(s, e) for s in (0, 1, 2) for e in ("0-99", "100-199")]
    assert [space.replicates[j.job_id] for j in space.jobs] == [
        (t, e) for t in range(3) for e in range(2)
    ]
    # nothing else changes: same replicate key, i.e. the same configuration
    others = [dict(j.resolved(), seeds=None) for j in space.jobs]
    for config in others:
        config["model"]["training"].pop("seed")
    assert all(config == others[0] for config in others)


def test_replicates_have_the_ids_and_indices_of_the_equivalent_grid(write) -> None:
    replicated = load_space(write(TRAINED + "replicates: {train: 3, eval: 2}\n"))
    grid = load_space(
        write(
            TRAINED + "grid:\n  model.training.seed: [0, 1, 2]\n  seeds: [0-99, 100-199]\n",
            "grid.yaml",
        )
    )
    assert [j.job_id for j in grid.jobs] == [j.job_id for j in replicated.jobs]
    assert grid.replicates == replicated.replicates


def test_eval_replicates_of_a_seed_list_shift_by_its_span(write) -> None:
    text = BASE.replace("seeds: 0-1", "seeds: 0-2,5") + "name: s\nreplicates: {eval: 3}\n"
    space = load_space(write(text))
    assert [j.seeds for j in space.jobs] == ["0-2,5", "6-8,11", "12-14,17"]
    assert len({j.job_id for j in space.jobs}) == 3


def test_replicates_count_against_the_job_limit(write) -> None:
    text = TRAINED + "grid:\n  model.preset: [vp-A, ve-A]\nreplicates: {train: 3, eval: 3}\n"
    with pytest.raises(InputError, match="expands to 18 jobs, over the limit of 10"):
        load_space(write(text), max_jobs=10)
