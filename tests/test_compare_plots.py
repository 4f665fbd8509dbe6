"""``compare --plot`` / ``--format latex`` and ``edmgrid samples``: files written, pixels right."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import PIL.Image
import pytest
from typer.testing import CliRunner

from edmgrid.cli import app
from edmgrid.config.job import JobSpec
from edmgrid.engine.evaluate import draw_samples
from edmgrid.engine.fid import quantize
from edmgrid.errors import InputError
from edmgrid.run.compare import compare
from edmgrid.run.jobs import Task, flatten, run_job
from edmgrid.run.plots import _bars, _lines, plot_comparison
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


def _figure(store: Store, **options: Any) -> tuple[Any, Any]:
    fig, ax = plt.subplots()
    _lines(ax, compare(store, value="ode_error", all_spaces=True, **options))
    return fig, ax


def test_one_line_per_sampler_and_a_legend_naming_only_what_varies(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for i, (solver, steps, churn) in enumerate(
        [("euler", 4, 0.0), ("euler", 8, 0.0), ("heun", 4, 0.0), ("heun", 8, 40.0)]
    ):
        store.write(_row(i, solver, steps, churn))
    fig, ax = _figure(store)
    _, labels = ax.get_legend_handles_labels()
    assert labels == ["euler solver_S_churn=0.0", "heun solver_S_churn=0.0",
                      "heun solver_S_churn=40.0"]  # fmt: skip
    euler = ax.get_lines()[0]
    assert euler.get_xdata().tolist() == [4.0, 8.0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert sorted(ax.get_xticks()) == [4.0, 7.0, 8.0, 15.0]  # the NFEs measured
    plt.close(fig)


def test_line_labels_leave_out_parameters_a_choice_does_not_have(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write(_row(0, "heun", 4))
    for order in (2, 3):
        solver = {"name": "dpmpp", "order": order}
        config = {"sampler": {"solver": solver, "timesteps": {"name": "edm", "num_steps": 4}}}
        store.write({**_row(order, "heun", 4), **flatten(config), "nfe": 4.0,
                     "config_json": json.dumps(config)})  # fmt: skip
    fig, ax = _figure(store, rows=["timesteps_num_steps"], cols=["solver", "solver_order"])
    _, labels = ax.get_legend_handles_labels()
    assert labels == ["dpmpp solver_order=2", "dpmpp solver_order=3", "heun"]  # no "order=nan"
    plt.close(fig)


def _sampler_rows(
    i: int, sampler: tuple[str, ...], steps: int, sigmas: tuple[float, float], errors: list[float]
) -> list[dict[str, Any]]:
    """Replicates (seed ranges) of one sampler at one step count, over σ range ``sigmas``."""
    solver, timesteps, schedule, scaling = sampler
    edm = {"sigma_max": sigmas[1]} if timesteps == "edm" else {}
    sampler_config = {
        "solver": {"name": solver},
        "timesteps": {"name": timesteps, "num_steps": steps, **edm},
        "schedule": {"name": schedule},
        "scaling": {"name": scaling},
    }
    config = {"sampler": sampler_config}
    rows = []
    for r, error in enumerate(errors):
        seeded = {**config, "seeds": f"{10 * r}-{10 * r + 9}"}
        rows.append({"job_id": f"{100 * i + r:016x}", "status": "done", **flatten(seeded),
                     "nfe": float(steps if solver == "euler" else 2 * steps - 1),
                     "sigma_min_used": sigmas[0], "sigma_max_used": sigmas[1],
                     "ode_error": error, "config_json": json.dumps(seeded)})  # fmt: skip
    return rows


def test_original_and_edm_samplers_pair_by_sigma_range_with_error_bars(tmp_path: Path) -> None:
    store = Store(tmp_path)
    lines = [(("euler", "vp", "vp", "vp"), (0.0105, 152.0)),
             (("euler", "ve", "ve", "none"), (0.02, 100.0)),
             (("heun", "edm", "linear", "none"), (0.0105, 152.2)),
             (("heun", "edm", "linear", "none"), (0.02, 100.0))]  # fmt: skip
    for i, (sampler, sigmas) in enumerate(lines):
        for steps in (4, 8):
            for row in _sampler_rows(
                10 * i + steps, sampler, steps, sigmas, [1 / steps, 2 / steps]
            ):
                store.write(row)
    result = compare(store, value="ode_error", all_spaces=True)
    assert result.cells["n"].tolist() == [2] * 8
    fig, ax = plt.subplots()
    _lines(ax, result)
    handles, labels = ax.get_legend_handles_labels()
    style = {label: (h.lines[0].get_color(), h.lines[0].get_linestyle())
             for h, label in zip(handles, labels, strict=True)}  # fmt: skip
    assert style["euler/vp"][0] == style["heun/edm timesteps_sigma_max=152.2"][0]
    assert style["euler/ve"][0] == style["heun/edm timesteps_sigma_max=100.0"][0]
    assert style["euler/vp"][0] != style["euler/ve"][0]  # a colour per family
    assert style["euler/vp"][1] == "--"  # original dashed
    assert style["heun/edm timesteps_sigma_max=100.0"][1] == "-"  # EDM solid
    (bars,) = handles[0].lines[2]  # the error bars of the first line: the t-intervals
    first = result.cells.iloc[0]
    low, high = bars.get_segments()[0][:, 1]
    assert (low, high) == pytest.approx((first["lo"], first["hi"]))
    plt.close(fig)


def test_table2_cells_become_grouped_bars_with_error_bars(tmp_path: Path) -> None:
    store = Store(tmp_path)
    i = 0
    for c in "ABC":
        for f in ("vp", "ve"):
            for seed, fd in enumerate((2.0, 2.5, 3.0)):
                model = {"kind": "trained", "config": c, "family": f, "training": {"seed": seed}}
                config = {"model": model, "seeds": "0-9"}
                row = {"job_id": f"{i:016x}", "status": "done", "fd": fd + i // 3, "nfe": 35.0}
                store.write({**row, **flatten(config), "config_json": json.dumps(config)})
                i += 1
    result = compare(store, rows=["config"], cols=["family"], value="fd")
    out = tmp_path / "table2.png"
    assert plot_comparison(result, out, "Table 2") == "bars"
    assert _pixels(out).std() > 10
    fig, ax = plt.subplots()
    _bars(ax, result)
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == sorted(result.cells["mean"].round(6).tolist())
    assert ax.get_legend().get_title().get_text() == "family"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B", "C"]
    plt.close(fig)


def test_compare_latex_is_a_booktabs_tabular_with_escaped_names(tmp_path: Path) -> None:
    store = Store(tmp_path / "r")
    _sweep(store)
    args = ["compare", "-r", str(store.root), "--rows", "timesteps_num_steps",
            "--cols", "solver,solver_S_churn", "--format", "latex"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == r"\begin{tabular}{rlll}" and lines[1] == r"\toprule"
    assert lines[2] == r"timesteps\_num\_steps & euler/0.0 & heun/0.0 & heun/40.0 \\"
    # 4 steps: Euler 1/4, Heun 1/7; churn 40 adds 0.4 to Heun; one replicate each.
    assert lines[4] == r"4 & 0.25 n=1 & 0.1429 n=1 & 0.5429 n=1 \\"
    end = lines.index(r"\end{tabular}")
    assert len(lines) > end + 1 and all(line.startswith("% ") for line in lines[end + 1 :])


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


def test_solvers_on_the_same_edm_steps_are_not_paired(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for i, solver in enumerate(("euler", "heun")):
        sampler = (solver, "edm", "linear", "none")
        for steps in (4, 8):
            for row in _sampler_rows(10 * i + steps, sampler, steps, (0.002, 80.0), [0.1, 0.2]):
                store.write(row)
    fig, ax = plt.subplots()
    _lines(ax, compare(store, value="ode_error", all_spaces=True))
    handles, labels = ax.get_legend_handles_labels()
    assert labels == ["euler", "heun"]
    styles = [(h.lines[0].get_color(), h.lines[0].get_linestyle()) for h in handles]
    assert styles == [("C0", "-"), ("C1", "-")]
    plt.close(fig)
