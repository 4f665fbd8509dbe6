"""``compare`` (issues 13 and 15): replicates summarised by mean, n and a 95% interval,
"within noise" marks, cells that never mix configurations unasked, one space by default."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.stats
from typer.testing import CliRunner

from edmgrid.cli import app
from edmgrid.errors import InputError
from edmgrid.run.compare import BOOTSTRAP_MIN_N, compare, interval
from edmgrid.run.jobs import flatten
from edmgrid.run.store import Store

#: fd of each (config, family) over training seeds 0, 1, 2: vp's A and B overlap (within
#: noise), ve's do not.
VALUES = {
    ("A", "vp"): [10.0, 12.0, 14.0],
    ("B", "vp"): [11.0, 13.0, 15.0],
    ("A", "ve"): [30.0, 31.0, 32.0],
    ("B", "ve"): [20.0, 21.0, 22.0],
}


def config(cfg: str, family: str, seed: int, **sampler: Any) -> dict[str, Any]:
    precond = {"vp": "vp", "ve": "ve"}[family]
    model = {"kind": "trained", "family": family, "config": cfg, "precond": {"name": precond},
             "training": {"seed": seed, "lr": 1e-3 if cfg == "A" else 2e-3}}  # fmt: skip
    return {"data": {"name": "digits"}, "model": model, "sampler": sampler, "seeds": "0-99"}


def write(store: Store, i: int, conf: dict[str, Any], space: str = "t2", **values: Any) -> str:
    job_id = f"{i:016x}"
    row = {"job_id": job_id, "space": space, "status": "done", **flatten(conf),
           "config_json": json.dumps(conf), "nfe": 35.0, **values}  # fmt: skip
    store.write(row)
    return job_id


def table2_store(root: Path) -> Store:
    store = Store(root)
    ids = []
    for (cfg, family), values in VALUES.items():
        for seed, fd in enumerate(values):
            ids.append(write(store, len(ids), config(cfg, family, seed), fd=fd))
    store.record_space("t2", "t2.yaml", ids)
    return store


@pytest.mark.parametrize("n", [2, 3, 5, 10, 29])
def test_interval_is_students_t_interval_below_the_bootstrap_threshold(n: int) -> None:
    x = np.random.default_rng(n).normal(3.0, 2.0, n)
    expected = scipy.stats.t.interval(0.95, n - 1, loc=x.mean(), scale=scipy.stats.sem(x))
    np.testing.assert_allclose(interval(x), expected, rtol=1e-12)


def test_one_value_has_no_interval_and_many_get_a_bootstrap_one() -> None:
    assert interval([4.0]) is None
    x = np.random.default_rng(0).normal(0.0, 1.0, 400)
    lo, hi = interval(x)  # type: ignore[misc]
    t_lo, t_hi = scipy.stats.t.interval(0.95, 399, loc=x.mean(), scale=scipy.stats.sem(x))
    assert len(x) >= BOOTSTRAP_MIN_N and lo != t_lo
    assert abs(lo - t_lo) < 0.02 and abs(hi - t_hi) < 0.02  # both ≈ mean ± 1.97·s/√n


def test_compare_gives_mean_n_and_interval_per_cell_and_marks_overlaps(tmp_path: Path) -> None:
    result = compare(table2_store(tmp_path), rows=["config"], cols=["family"], value="fd")
    cells = result.cells.set_index(["config", "family"])
    half = scipy.stats.t.ppf(0.975, 2) * 2.0 / math.sqrt(3)  # s = 2 for vp, 1 for ve
    a = cells.loc[("A", "vp")]
    assert (a["mean"], a["n"], a["min"]) == (12.0, 3, 10.0)
    assert a["lo"] == pytest.approx(12 - half) and a["hi"] == pytest.approx(12 + half)
    assert cells.loc[("B", "ve"), "hi"] == pytest.approx(21 + half / 2)
    assert cells.loc[("B", "vp"), "within_noise_above"]  # 13 ± 5 overlaps 12 ± 5
    assert not cells.loc[("B", "ve"), "within_noise_above"]  # 21 ± 2.5 vs 31 ± 2.5
    assert not cells.loc[("A", "vp"), "within_noise_left"]  # columns ve, vp: 31 ± 2.5 vs 12 ± 5
    table = result.table.set_index("config")
    assert table.loc["B", "ve"] == f"21 [{21 - half / 2:.4g}, {21 + half / 2:.4g}] n=3"
    assert table.loc["B", "vp"].endswith("≈↑")
    assert any("within noise of the row above" in note for note in result.notes)


def test_compare_refuses_a_cell_that_mixes_configurations_naming_the_columns(
    tmp_path: Path,
) -> None:
    store = table2_store(tmp_path)
    with pytest.raises(InputError, match=r"cell config=A holds 2 configurations that differ in "
                       r"family, precond; add them to --rows/--cols"):  # fmt: skip
        compare(store, rows=["config"], value="fd")
    mean = compare(store, rows=["config"], value="fd", aggregate="mean").cells
    assert mean["mean"].tolist() == [21.5, 17.0] and mean["configs"].tolist() == [2, 2]
    assert mean["lo"].isna().all()  # a mix of configurations is no replicate interval
    best = compare(store, rows=["config"], value="fd", aggregate="min")
    assert best.cells["mean"].tolist() == [12.0, 13.0]
    assert any("--aggregate min" in note for note in best.notes)
    assert best.table["fd"].iloc[0] == "12* (2 configs, n=6)"


def test_without_rows_and_cols_cells_are_keyed_by_the_settings_that_vary(tmp_path: Path) -> None:
    result = compare(table2_store(tmp_path), value="fd")
    assert result.rows == ["family", "config"]  # precond and lr follow from these
    assert any("precond" in n and "model_lr" in n for n in result.notes)
    assert result.cells["n"].tolist() == [3, 3, 3, 3]


def test_default_selection_is_the_last_space_run_and_all_takes_every_row(tmp_path: Path) -> None:
    store = table2_store(tmp_path)
    other = write(store, 99, config("A", "vp", 0, solver={"name": "euler"}), space="o", fd=99.0)
    store.record_space("o", "o.yaml", [other])
    assert compare(store, value="fd").cells["mean"].tolist() == [99.0]
    assert compare(store, space="t2", value="fd").cells["n"].sum() == 12
    both = compare(store, rows=["config", "family", "solver"], value="fd", all_spaces=True)
    assert both.cells["n"].sum() == 13


def test_optuna_trial_rows_are_left_out_unless_asked(tmp_path: Path) -> None:
    store = table2_store(tmp_path)
    trials = [config("A", "vp", 0, solver={"name": "heun", "S_churn": t}) for t in range(2)]
    ids = [
        write(store, 50 + t, c, space="churn", fd=5.0, study="s", trial=t, stage="search")
        for t, c in enumerate(trials)
    ]
    store.record_space("churn", "journal.log", ids)
    with pytest.raises(InputError, match=r"no done rows of space churn .* left out 2 optuna"):
        compare(store, space="churn", value="fd")
    kept = compare(store, space="churn", value="fd", include_trials=True)
    assert kept.cells["n"].tolist() == [1, 1]  # two settings of S_churn


def test_replicate_indices_of_the_space_come_with_its_rows(tmp_path: Path) -> None:
    store = table2_store(tmp_path)
    record = store.space_record("t2")
    assert record is not None
    indices = {job: (i % 3, 0) for i, job in enumerate(record["jobs"])}
    store.record_space("t2", "t2.yaml", record["jobs"], replicates=indices)
    frame = compare(store, rows=["config", "family", "replicate_train"], value="fd").cells
    assert frame["n"].tolist() == [1] * 12
    assert frame[frame["config"] == "A"]["replicate_train"].tolist() == [0, 1, 2] * 2


def test_stat_min_leads_with_the_papers_min_of_replicates(tmp_path: Path) -> None:
    result = compare(table2_store(tmp_path), rows=["config"], cols=["family"], value="fd",
                     stat="min")  # fmt: skip
    assert result.table.set_index("config").loc["A", "vp"].startswith("10 min; 12 [")
    with pytest.raises(InputError, match="unknown --stat 'median'; valid: mean, min"):
        compare(table2_store(tmp_path / "b"), value="fd", stat="median")  # type: ignore[arg-type]


def test_suspect_rows_are_marked_in_their_cell_and_only_there(tmp_path: Path) -> None:
    store = table2_store(tmp_path)
    write(store, 0, config("A", "vp", 0), fd=10.0, suspect="samples beyond 10× the data range")
    result = compare(store, rows=["config"], cols=["family"], value="fd")
    table = result.table.set_index("config")
    assert table.loc["A", "vp"].endswith("!")
    for cfg, family in [("B", "vp"), ("A", "ve"), ("B", "ve")]:
        assert "!" not in table.loc[cfg, family], (cfg, family)
    assert "!: suspect rows: samples beyond 10× the data range" in result.notes


@pytest.mark.parametrize("fmt", ["json", "csv", "markdown", "latex"])
def test_every_format_carries_mean_n_and_interval(tmp_path: Path, fmt: str) -> None:
    store = table2_store(tmp_path)
    args = ["compare", "-r", str(store.root), "--rows", "config", "--cols", "family",
            "--value", "fd", "--format", fmt]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    if fmt == "json":
        records = json.loads(result.output)
        first = records[0]
        assert {"config", "family", "mean", "n", "lo", "hi"} <= set(first)
        assert (first["mean"], first["n"]) == (12.0, 3) or (first["mean"], first["n"]) == (31.0, 3)
    elif fmt == "csv":
        assert result.output.splitlines()[0].startswith("config,family,mean,n,lo,hi,min")
    else:
        assert "12 [7.032, 16.97] n=3" in result.output
        assert "Student t-interval for n < 30" in result.output


def test_cli_refusal_is_exit_2_naming_the_columns(tmp_path: Path, cli: Callable[..., Any]) -> None:
    store = table2_store(tmp_path)
    result = cli("compare", "-r", store.root, "--rows", "config", "--value", "fd")
    assert result.code == 2 and len(result.err.splitlines()) == 1
    assert "--rows/--cols: cell config=A holds 2 configurations" in result.err
    assert "differ in family, precond" in result.err
