"""``compare --plot`` / ``--format latex`` and ``edmgrid samples``: files written, pixels right."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import PIL.Image
import pytest
from typer.testing import CliRunner

from edmgrid.cli import app
from edmgrid.config.job import JobSpec
from edmgrid.engine.evaluate import draw_samples
from edmgrid.engine.fid import quantize
from edmgrid.errors import InputError
from edmgrid.run.jobs import Task, flatten, run_job
from edmgrid.run.plots import _lines, plot_results, table2_columns
from edmgrid.run.store import Store

matplotlib.use("Agg")


pytestmark = pytest.mark.usefixtures("one_thread")


def _row(i: int, solver: str, steps: int, churn: float = 0.0) -> dict[str, Any]:
    sampler = {
        "solver": {"name": solver, "S_churn": churn},
        "timesteps": {"name": "edm", "num_steps": steps},
        "schedule": {"name": "linear"},
        "scaling": {"name": "none"},
    }
    config = {"data": {"name": "digits"}, "sampler": sampler}
    nfe = float(steps if solver == "euler" else 2 * steps - 1)
    return {"job_id": f"{i:016x}", "status": "done", **flatten(config), "nfe": nfe,
            "ode_error": 1.0 / nfe + churn / 100, "config_json": json.dumps(config)}  # fmt: skip


def _sweep(store: Store) -> None:
    i = 0
    for solver, churn in (("euler", 0.0), ("heun", 0.0), ("heun", 40.0)):
        for steps in (4, 8, 16, 32):
            store.write(_row(i, solver, steps, churn))
            i += 1


def _pixels(path: Path) -> np.ndarray:
    with PIL.Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_compare_plot_draws_metric_against_nfe_and_writes_a_varied_png(tmp_path: Path) -> None:
    store = Store(tmp_path / "r")
    _sweep(store)
    out = tmp_path / "fig2.png"
    args = ["compare", "-r", str(store.root), "--value", "ode_error", "--plot", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    pixels = _pixels(out)
    assert pixels.shape[0] > 300 and pixels.std() > 10
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # lines, markers, text


def test_one_line_per_sampler_family_and_per_other_varying_setting(tmp_path: Path) -> None:
    frame = pd.DataFrame([_row(0, "euler", 4), _row(1, "euler", 8), _row(2, "heun", 4),
                          _row(3, "heun", 8, churn=40.0)])  # fmt: skip
    fig, ax = matplotlib.pyplot.subplots()
    _lines(ax, frame, "ode_error")
    _, labels = ax.get_legend_handles_labels()
    assert labels == [
        "euler/edm/linear/none solver_S_churn=0.0",
        "heun/edm/linear/none solver_S_churn=0.0",
        "heun/edm/linear/none solver_S_churn=40.0",
    ]
    (euler, *_) = ax.get_lines()
    assert euler.get_xdata().tolist() == [4.0, 8.0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    matplotlib.pyplot.close(fig)


def test_line_labels_leave_out_parameters_a_choice_does_not_have(tmp_path: Path) -> None:
    rows = [_row(0, "heun", 4)]
    for order in (2, 3):
        solver = {"name": "dpmpp", "order": order}
        config = json.dumps({"sampler": {"solver": solver}})
        rows.append({**rows[0], "solver": "dpmpp", "solver_order": order, "config_json": config})
    fig, ax = matplotlib.pyplot.subplots()
    _lines(ax, pd.DataFrame(rows), "ode_error")
    _, labels = ax.get_legend_handles_labels()
    assert labels == [
        "dpmpp/edm/linear/none solver_order=2.0",
        "dpmpp/edm/linear/none solver_order=3.0",
        "heun/edm/linear/none",  # not "solver_order=nan"
    ]
    matplotlib.pyplot.close(fig)


def test_table2_rows_become_grouped_bars(tmp_path: Path) -> None:
    rows = [
        {"config": c, "family": f, "fid": 2.0 + i / 10, "config_json": "{}"}
        for i, (c, f) in enumerate((c, f) for c in "ABCDEF" for f in ("vp", "ve"))
    ]
    frame = pd.DataFrame(rows)
    assert table2_columns(frame) == ("config", "family")
    assert table2_columns(frame.rename(columns={"config": "x"})) is None
    out = tmp_path / "table2.png"
    assert plot_results(frame, "fid", out, "Table 2") == "bars"
    assert _pixels(out).std() > 10


def test_compare_latex_is_a_booktabs_tabular_with_escaped_names(tmp_path: Path) -> None:
    store = Store(tmp_path / "r")
    _sweep(store)
    args = ["compare", "-r", str(store.root), "--rows", "timesteps_num_steps",
            "--cols", "solver_S_churn", "--format", "latex"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == r"\begin{tabular}{rrr}" and lines[1] == r"\toprule"
    assert lines[2] == r"timesteps\_num\_steps & 0.0 & 40.0 \\"
    # 4 steps: the mean of Euler (1/4) and Heun (1/7); churn 40 adds 0.4 to Heun.
    assert lines[4] == r"4 & 0.1964 & 0.5429 \\" and lines[-1] == r"\end{tabular}"


def _digits_job(tmp_path: Path, **over: Any) -> tuple[Store, JobSpec]:
    config = {
        "data": {"name": "digits"},
        "sampler": {"timesteps": {"name": "edm", "num_steps": 4}},
        "metrics": [{"name": "fd_raw"}],
        "seeds": "0-8",
        **over,
    }
    store, job = Store(tmp_path / "r"), JobSpec.model_validate(config)
    assert run_job(Task.evaluation(job, "t"), store)["status"] == "done"
    return store, job


def test_samples_grid_is_deterministic_and_tiles_the_job_samples(tmp_path: Path) -> None:
    store, job = _digits_job(tmp_path)
    outs = [tmp_path / "a.png", tmp_path / "b.png"]
    for out in outs:
        args = ["samples", job.job_id, "-r", str(store.root), "--out", str(out), "--n", "9"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    grid = _pixels(outs[0])
    np.testing.assert_array_equal(grid, _pixels(outs[1]))
    assert grid.shape == (3 * 66 + 2, 3 * 66 + 2, 3)  # 3×3 tiles of 8 px × 8, 2 px apart
    first = quantize(draw_samples(job, store.cache, 1)[1])[0, 0].numpy()
    np.testing.assert_array_equal(grid[2:66, 2:66, 0], first.repeat(8, 0).repeat(8, 1))
    assert not np.array_equal(grid[2:66, 2:66], grid[2:66, 68:132])


def test_samples_of_points_are_a_scatter_over_the_data(tmp_path: Path) -> None:
    store, job = _digits_job(tmp_path, data={"name": "toy2d", "n": 64})
    out = tmp_path / "toy.png"
    args = ["samples", job.job_id, "-r", str(store.root), "--out", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert _pixels(out).std() > 10


def test_samples_of_an_unknown_job_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no result for job 0123456789abcdef"):
        Store(tmp_path).config("0123456789abcdef")


def test_list_columns_print_as_comma_separated_cells(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write({"job_id": "0" * 16, "status": "done", "fid_runs": [2.0, 3.5],
                 "fid_seeds": ["0-9", "10-19"]})  # fmt: skip
    args = ["sql", "SELECT fid_runs, fid_seeds FROM runs", "-r", str(tmp_path), "--format",
            "markdown"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.output.splitlines()[-1] == "| 2, 3.5 | 0-9, 10-19 |"
