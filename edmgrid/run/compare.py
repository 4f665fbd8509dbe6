"""Tables over the store (``edmgrid compare``): one cell per configuration, its replicates
summarised by mean, n and a 95% interval, and never two configurations averaged unasked.

Replicates are rows whose configurations differ only in the training seed and in which
evaluation seeds they sampled (``config.job.replicate_key``): a space's ``replicates:`` or an
equivalent grid over ``model.training.seed`` / ``seeds``.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edmgrid.config.job import replicate_key
from edmgrid.errors import InputError
from edmgrid.run.jobs import flatten
from edmgrid.run.store import Store

#: Columns that must agree for FIDs to sit side by side (issue #6): sample count and detector.
FID_PROTOCOL_COLUMNS = ("fid_n", "fid_extractor")
#: Columns in which replicates of one configuration differ (``model_seed``: the training seed).
REPLICATE_COLUMNS = ("model_seed", "seeds", "replicate_train", "replicate_eval")
#: Columns of optuna-churn's trial rows; such rows are left out unless asked for.
TRIAL_COLUMNS = ("study", "trial", "stage")
#: The confidence of the intervals.
LEVEL = 0.95
#: From this many replicates on, the interval is a bootstrap percentile one (no normality
#: assumed); below it, Student's t-interval (a bootstrap of few values is too narrow).
BOOTSTRAP_MIN_N = 30
BOOTSTRAP_RESAMPLES = 10_000
#: Marks of a cell whose interval overlaps its neighbour's: the row above, the column left.
WITHIN_NOISE_ABOVE, WITHIN_NOISE_LEFT = "≈↑", "≈←"

Stat = Literal["mean", "min"]
STATS = ("mean", "min")
#: Columns a cell also reports when its rows agree on them: what ``plot_comparison`` needs to
#: pair an original sampler with the EDM sampler over the same σ range (Fig. 2).
CELL_COLUMNS = ("solver", "timesteps", "schedule", "scaling", "sigma_min_used", "sigma_max_used")


def interval(values: Any, level: float = LEVEL) -> tuple[float, float] | None:
    """The ``level`` interval of the mean of ``values``; None for fewer than two values.

    Student's t: mean ± t_{(1+level)/2, n−1} · s/√n; from ``BOOTSTRAP_MIN_N`` values on, the
    percentile bootstrap of the mean (``BOOTSTRAP_RESAMPLES`` resamples, a fixed seed).
    """
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n < 2:
        return None
    if n >= BOOTSTRAP_MIN_N:
        rng = np.random.default_rng(0)
        means = x[rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))].mean(axis=1)
        lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)
    from scipy.special import stdtrit

    half = float(stdtrit(n - 1, (1 + level) / 2)) * x.std(ddof=1) / math.sqrt(n)
    return float(x.mean() - half), float(x.mean() + half)


def last_space(store: Store) -> str | None:
    """The space recorded last (the last one run), or None when none is recorded."""
    records = sorted((store.root / "spaces").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return records[-1].stem if records else None


def load_runs(store: Store, space: str | None) -> Any:
    """The done rows (and suspect ones), restricted to a space's jobs when ``space`` is given;
    then with the space's replicate indices (``replicate_train``, ``replicate_eval``)."""
    query = "SELECT * FROM runs WHERE status IN ('done', 'suspect')"
    if space is None:
        return store.query(query)
    record = store.space_record(space)
    if record is None:
        recorded = store.space_path(space).parent.glob("*.json")
        known = ", ".join(sorted(p.stem for p in recorded))
        raise InputError(f"no space named {space!r} in {store.root}; recorded: {known or 'none'}")
    # the name is checked (``Store.space_path``): it cannot break out of the string
    frame = store.query(
        f"{query} AND job_id IN (SELECT job_id FROM space_jobs WHERE space = '{space}')"
    )
    jobs = record["jobs"]
    for column in ("replicate_train", "replicate_eval"):
        indices = dict(zip(jobs, record.get(column) or [None] * len(jobs), strict=True))
        frame[column] = frame["job_id"].map(indices)
    return frame


def check_columns(frame: Any, columns: list[str]) -> None:
    """A InputError naming the columns ``frame`` lacks, and the ones it has."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        valid = ", ".join(sorted(frame.columns))
        raise InputError(f"unknown column(s) {', '.join(missing)}; columns: {valid}")


def check_comparable(frame: Any, value: str) -> None:
    """Refuse FIDs taken with different n or feature extractors in one table or plot."""
    if value != "fid":
        return
    rows = frame[frame[value].notna()]
    for column in FID_PROTOCOL_COLUMNS:
        if column in rows.columns and rows[column].nunique() > 1:
            seen = ", ".join(sorted(map(str, rows[column].dropna().unique())))
            raise InputError(
                f"these rows hold FIDs with different {column} ({seen}), which are not "
                "comparable side by side; select like rows (e.g. --space) or pass --allow-mixed"
            )


def config_columns(frame: Any) -> list[str]:
    """The flattened config columns of the rows (from their stored ``config_json``), in the
    order of the row's columns (the resolved config's: solver before time steps …)."""
    keys: set[str] = set()
    if "config_json" in frame.columns:
        for text in frame["config_json"].dropna():
            keys.update(flatten(json.loads(text)))
    return [c for c in frame.columns if c in keys]


@dataclass
class Comparison:
    """``cells``: one row per cell (its keys, mean, n, lo, hi, min, nfe, marks); ``table``:
    ROWS × COLS as text for people; ``notes``: the legend, printed under the table."""

    space: str | None
    rows: list[str]
    cols: list[str]
    value: str
    cells: Any
    table: Any
    notes: list[str] = field(default_factory=list)


def compare(
    store: Store,
    space: str | None = None,
    rows: list[str] | None = None,
    cols: list[str] | None = None,
    value: str = "ode_error",
    stat: Stat = "mean",
    aggregate: Stat | None = None,
    all_spaces: bool = False,
    include_trials: bool = False,
    allow_mixed: bool = False,
) -> Comparison:
    """ROWS × COLS → ``value`` over the rows of ``space`` (default: the last space run; every
    row with ``all_spaces``), optuna-churn trial rows only with ``include_trials``.

    Without ``rows``/``cols`` the cells are keyed by the settings that vary among the rows (a
    smallest set in config order that tells the configurations apart; the others are noted).
    A cell holding more than one configuration is an InputError naming the columns they differ
    in, unless ``aggregate`` says to take the mean or min of their means (then noted, no
    interval). ``stat`` picks what a cell shows first: the mean or the paper's min of replicates.
    """
    for option, given, valid in (
        ("--stat", stat, STATS),
        ("--aggregate", aggregate, (None, *STATS)),
    ):
        if given not in valid:
            raise InputError(f"unknown {option} {given!r}; valid: mean, min", path=option)
    if space is None and not all_spaces:
        space = last_space(store)
    frame = load_runs(store, space)
    notes = [f"rows: space {space}" if space is not None else f"rows: every space in {store.root}"]
    if "trial" in frame.columns and not include_trials:
        trials = frame["trial"].notna()
        if trials.any():
            frame = frame[~trials]
            notes.append(f"left out {int(trials.sum())} optuna-churn trial rows (--include-trials)")
    named = [*(rows or []), *(cols or [])]
    check_columns(frame, [*named, value])
    frame = frame[frame[value].notna()].copy()
    if frame.empty:
        left_out = f"; {notes[-1]}" if len(notes) > 1 else ""
        raise InputError(f"no done rows of {notes[0][6:]} have a value of {value!r}{left_out}")
    if not allow_mixed:
        check_comparable(frame, value)
    frame["_config"] = [_identity(r) for r in frame.to_dict("records")]
    settings = [c for c in config_columns(frame) if c not in REPLICATE_COLUMNS]
    if named:
        rows, cols = list(rows or []), list(cols or [])
    else:
        rows, cols = _separating(frame, settings), []
        implied = [c for c in _varying(frame, settings) if c not in rows]
        if implied:
            notes.append(f"also varying, fixed by the keys: {', '.join(implied)}")
    keys = [*rows, *cols]
    for key in keys:
        frame[key] = frame[key].astype(object).where(frame[key].notna(), "default")
    cells = _cells(frame, keys, value, settings, aggregate)
    _mark_noise(cells, rows, cols)
    notes += _legend(cells, stat, aggregate)
    table = _table(cells, frame, rows, cols, value, stat)
    return Comparison(space, rows, cols, value, cells, table, notes)


def _identity(row: dict[str, Any]) -> str:
    """The row's configuration up to replicates; a row without its config is its own."""
    text = row.get("config_json")
    return replicate_key(json.loads(text)) if isinstance(text, str) else str(row.get("job_id"))


def _varying(frame: Any, columns: list[str]) -> list[str]:
    return [c for c in columns if frame[c].astype(str).nunique() > 1]


def _separating(frame: Any, settings: list[str]) -> list[str]:
    """The varying settings, in config order, that each split the rows further."""
    keys: list[str] = []
    groups = 1
    for column in _varying(frame, settings):
        count = frame[[*keys, column]].astype(str).drop_duplicates().shape[0]
        if count > groups:
            keys, groups = [*keys, column], count
    return keys


def _cells(
    frame: Any, keys: list[str], value: str, settings: list[str], aggregate: Stat | None
) -> Any:
    import pandas as pd

    out = []
    groups = frame.groupby(keys, sort=True, dropna=False) if keys else [((), frame)]
    for key, cell in groups:
        parts = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        configs = cell.groupby("_config")[value].mean()
        if len(configs) > 1 and aggregate is None:
            differing = _differing(cell, settings)
            where = ", ".join(f"{k}={v}" for k, v in parts.items()) or "the one cell"
            raise InputError(
                f"cell {where} holds {len(configs)} configurations that differ in "
                f"{', '.join(differing)}; add them to --rows/--cols, select fewer rows "
                "(--space), or pass --aggregate mean|min to combine them",
                path="--rows/--cols",
            )
        values = cell[value].to_numpy(dtype=float)
        bounds = interval(values) if len(configs) == 1 else None
        record = {
            **parts,
            "mean": float(values.mean()) if len(configs) == 1 else _combine(configs, aggregate),
            "n": len(values),
            "lo": bounds[0] if bounds else math.nan,
            "hi": bounds[1] if bounds else math.nan,
            "min": float(values.min()),
            "configs": len(configs),
            "nfe": _unique(cell, "nfe"),
            "suspect": _suspect(cell),
            **{c: _unique(cell, c) for c in CELL_COLUMNS if c in cell.columns and c not in keys},
        }
        out.append(record)
    return pd.DataFrame(out)


def _combine(means: Any, aggregate: Stat | None) -> float:
    return float(means.min() if aggregate == "min" else means.mean())


def _differing(cell: Any, settings: list[str]) -> list[str]:
    """The setting columns (else the config paths) in which a cell's configurations differ."""
    columns = _varying(cell, settings)
    if columns:
        return columns
    configs = [json.loads(t) for t in cell["config_json"].dropna().unique()]
    leaves = [_leaves(c) for c in configs]
    paths = {p for leaf in leaves for p in leaf}
    return sorted(p for p in paths if len({str(leaf.get(p)) for leaf in leaves}) > 1)


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b[0].c': value} of a nested config, without the replicate settings."""
    if isinstance(node, dict):
        items = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in node.items()]
    elif isinstance(node, list):
        items = [(f"{prefix}[{i}]", v) for i, v in enumerate(node)]
    else:
        return {prefix: node}
    out: dict[str, Any] = {}
    for path, value in items:
        if path not in ("seeds", "model.training.seed"):
            out.update(_leaves(value, path))
    return out


def _unique(cell: Any, column: str) -> Any:
    """The cell's one value of ``column`` (NaN when it has none or several)."""
    if column not in cell.columns:
        return math.nan
    seen = cell[column].dropna().unique()
    return seen[0] if len(seen) == 1 else math.nan


def _suspect(cell: Any) -> str | None:
    """The reasons of the cell's suspect rows (a ``suspect`` column or status), if any."""
    reasons: list[str] = []
    if "suspect" in cell.columns:
        reasons += [str(r) for r in cell["suspect"].dropna().unique() if str(r)]
    if not reasons and (cell["status"] == "suspect").any():
        reasons.append("status suspect")
    return "; ".join(reasons) or None


def _overlap(a: Any, b: Any) -> bool:
    """Whether two cells' intervals overlap (False when either has none)."""
    if any(math.isnan(v) for v in (a["lo"], a["hi"], b["lo"], b["hi"])):
        return False
    return bool(a["lo"] <= b["hi"] and b["lo"] <= a["hi"])


def _mark_noise(cells: Any, rows: list[str], cols: list[str]) -> None:
    """``within_noise_above``/``_left``: the cell's interval overlaps that of the neighbour in
    the previous row (column) that differs from it only in the last row (column) key."""
    for name, along, across in (
        ("within_noise_above", rows, cols),
        ("within_noise_left", cols, rows),
    ):
        marks = [False] * len(cells)
        if along:
            index = {tuple(r[k] for k in [*along, *across]): i for i, r in cells.iterrows()}
            for i, r in cells.iterrows():
                previous = _previous(cells, r, along, across)
                j = index.get(previous) if previous is not None else None
                marks[i] = j is not None and _overlap(r, cells.loc[j])
        cells[name] = marks


def _previous(cells: Any, row: Any, along: list[str], across: list[str]) -> tuple[Any, ...] | None:
    """The key of the cell before ``row`` in its last ``along`` key, others equal."""
    *fixed, last = along
    same = cells
    for k in [*fixed, *across]:
        same = same[same[k] == row[k]]
    before = [v for v in same[last].unique() if _sort_key(v) < _sort_key(row[last])]
    if not before:
        return None
    previous = max(before, key=_sort_key)
    return (*(row[k] for k in fixed), previous, *(row[k] for k in across))


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers by value before text (the order of ``groupby`` over an object column)."""
    return (0, value) if isinstance(value, numbers.Real) else (1, str(value))


def _legend(cells: Any, stat: Stat, aggregate: Stat | None) -> list[str]:
    notes = [
        f"cell: {'min (the paper’s min of the replicates), then ' if stat == 'min' else ''}"
        f"mean [{LEVEL:.0%} interval] n, n = replicates (rows differing only in training "
        f"seed or evaluation seeds); Student t-interval for n < {BOOTSTRAP_MIN_N}, bootstrap "
        f"percentile ({BOOTSTRAP_RESAMPLES} resamples) from n = {BOOTSTRAP_MIN_N}; n = 1: no "
        "interval"
    ]
    if cells["within_noise_above"].any() or cells["within_noise_left"].any():
        notes.append(
            f"{WITHIN_NOISE_ABOVE} / {WITHIN_NOISE_LEFT}: within noise of the row above / "
            "the column to the left (the intervals overlap)"
        )
    mixed = cells[cells["configs"] > 1]
    if len(mixed):
        notes.append(
            f"*: {len(mixed)} cells combine several configurations (--aggregate {aggregate}: "
            f"the {aggregate} of their means; no interval)"
        )
    for reason in cells["suspect"].dropna().unique():
        notes.append(f"!: suspect rows: {reason}")
    return notes


def _text(cell: Any, stat: Stat) -> str:
    mean = f"{cell['mean']:.4g}"
    if not math.isnan(cell["lo"]):
        mean += f" [{cell['lo']:.4g}, {cell['hi']:.4g}]"
    text = f"{mean} n={cell['n']}"
    if cell["configs"] > 1:
        text = f"{cell['mean']:.4g}* ({cell['configs']} configs, n={cell['n']})"
    elif stat == "min":
        text = f"{cell['min']:.4g} min; {text}"
    marks = [WITHIN_NOISE_ABOVE] if cell["within_noise_above"] else []
    marks += [WITHIN_NOISE_LEFT] if cell["within_noise_left"] else []
    if isinstance(cell["suspect"], str):  # a frame turns a cell's None into NaN
        marks.append("!")
    return " ".join([text, *marks])


def _table(cells: Any, frame: Any, rows: list[str], cols: list[str], value: str, stat: Stat) -> Any:
    """ROWS × COLS of cell texts; an ``NFE`` row under a one-key table whose every column has
    one NFE, as in Table 2."""
    import pandas as pd

    texts = cells.assign(text=[_text(c, stat) for _, c in cells.iterrows()])
    if not cols:
        return texts[[*rows, "text"]].rename(columns={"text": value})
    if not rows:  # one line of columns
        rows, texts = [""], texts.assign(**{"": value})
    table = texts.pivot_table(index=rows, columns=cols, values="text", aggfunc="first")
    if rows and len(rows) == 1 and "nfe" not in [value, *rows, *cols] and "nfe" in frame.columns:
        nfe = frame.groupby(cols)["nfe"].agg(["min", "max"])
        if (nfe["min"] == nfe["max"]).all():
            table.loc["NFE"] = [f"{v:.4g}" for v in nfe["min"].reindex(table.columns)]
    table.columns = [
        "/".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in table.columns
    ]
    return pd.DataFrame(table).fillna("").reset_index()
