"""Every command of ``edmgrid`` is a function of ``edmgrid.api`` with the command's parameters;
the command line only parses and prints."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import typer
from fake_training import toy_space

from edmgrid import api
from edmgrid.cli import app
from edmgrid.run.summary import Summary

#: Parameters that only choose how the command line prints.
PRINTING = {"fmt", "as_json"}
#: Parameters of the library only: whom to tell warnings, trial lines and status looks.
CALLBACKS = {"warn", "log", "watch"}


@pytest.mark.parametrize("command", app.registered_commands, ids=lambda c: c.callback.__name__)
def test_each_command_is_an_api_function_with_its_parameters_and_defaults(command) -> None:
    cli = inspect.signature(command.callback).parameters
    function = getattr(api, command.callback.__name__)
    lib = inspect.signature(function).parameters
    assert [n for n in cli if n not in PRINTING] == [n for n in lib if n not in CALLBACKS]
    for name, param in lib.items():
        if name in cli and cli[name].default.default is not ...:  # typer's OptionInfo
            default = cli[name].default.default
            assert param.default == (tuple(default) if isinstance(default, list) else default)


def test_run_sql_compare_and_show_as_library_calls_return_what_the_commands_print(
    tmp_path: Path,
) -> None:
    space = toy_space(tmp_path, "lib", {"sampler.timesteps.num_steps": [2, 3]})
    results = tmp_path / "r"
    summary = api.run(Path(space.source), results, executor="serial")
    assert isinstance(summary, Summary) and summary.ok and summary.counts["done"] == 2
    again = api.run(Path(space.source), results, executor="serial")
    assert isinstance(again, Summary) and again.counts["skipped"] == 2 and not again.executed
    frame = api.sql("SELECT job_id, nfe FROM runs ORDER BY nfe", results)
    assert frame["nfe"].tolist() == [2.0, 3.0]
    result, kind = api.compare(results, space="lib", value="nfe", rows="timesteps_num_steps")
    assert kind is None and result.table.shape[0] == 2
    settings = dict(api.varying_settings(api.show(Path(space.source))))
    assert sorted(settings.values()) == ["timesteps_num_steps=2", "timesteps_num_steps=3"]


def test_warnings_go_to_the_warn_callback(tmp_path: Path) -> None:
    space = tmp_path / "chen.yaml"  # uniform steps on a γ schedule: σ_max = 31623 (test_suspect)
    space.write_text(
        "name: chen\nbase:\n  data: {name: digits}\n  model: {kind: analytic}\n"
        "  metrics: [{name: ode_error}]\n  sampler:\n    timesteps: {name: uniform, num_steps: 8}\n"
        "    scaling: {name: gamma}\n    schedule: {name: cosine}\n"
    )
    told: list[str] = []
    loaded = api.show(space, warn=told.append)
    assert len(told) == 1 and told[0].startswith("warning: 1 job(s) of chen")
    assert loaded.jobs[0].job_id in told[0]


def test_a_detached_runs_driver_command_line_parses_back_to_the_same_options() -> None:
    chosen: dict[str, Any] = {
        "space": Path("s.yaml"),
        "results": Path("out"),
        "force": True,
        "retry_failed": False,
        "rerun_stale": True,
        "executor": "slurm",
        "workers": 3,
        "devices": "0,2",
        "gpus": 2,
        "address": "auto",
        "partition": "gpu",
        "account": "lab",
        "time_limit": "02:00:00",
        "train_gpus": 2,
        "yes": True,
        "data": Path("d"),
        "inception": Path("i.pkl"),
        "pythonpath": [Path("a"), Path("b")],
        "plugin": ["p", "q"],
    }
    parameters = inspect.signature(api.run).parameters
    assert set(chosen) == set(parameters) - {"detach", "warn"}  # a new option: add it here
    argv = api.run_argv({**chosen, "detach": True, "warn": print})
    assert argv[0] == "run"
    command: Any = typer.main.get_command(app)
    parsed = command.commands["run"].make_context("run", argv[1:]).params
    assert parsed == {**chosen, "detach": False}
    assert api.run_argv({"space": Path("s.yaml")}) == ["run", "s.yaml"]
