"""Pictures of results: a ``compare`` table as metric against NFE (Fig. 2 style) or as grouped
bars (Table 2), with the cells' intervals as error bars; and sample grids.

matplotlib is imported inside the functions, with the Agg backend (no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from edmgrid.engine.data import Dataset
from edmgrid.engine.fid import quantize
from edmgrid.run.compare import Comparison

#: The sampler columns of a line; the EDM sampler's values of them (Table 1, last column).
SAMPLER = ("solver", "timesteps", "schedule", "scaling")
EDM_SAMPLER = ("heun", "edm", "linear", "none")
#: The time steps of Table 1's original samplers (the dashed lines of Fig. 2).
ORIGINAL_TIMESTEPS = ("vp", "ve", "iddpm")
#: The column of the x axis and the config column it follows from.
NFE, STEPS = "nfe", "timesteps_num_steps"
#: An original sampler and the EDM sampler are one family (one colour) when the largest σ they
#: start from (``sigma_max_used``) agrees within this factor; σ_min is no guide (iDDPM's last
#: σ is a rounded index: 0.0064 at M = 1000, not the 0.002 its EDM counterpart is given).
SAME_RANGE = 1.1


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_numbers(mantissas: tuple[int, ...] | None = None) -> Any:
    """Tick labels as plain numbers (16, 0.2) rather than powers (2⁴, 2×10⁻¹); with
    ``mantissas``, only ticks m·10^k for m in them are labelled (uncrowded minor ticks)."""
    from matplotlib.ticker import FuncFormatter

    def label(v: float, _: int) -> str:
        if mantissas is not None and round(v / 10 ** math.floor(math.log10(v))) not in mantissas:
            return ""
        return f"{v:.3g}"

    return FuncFormatter(label)


def plot_comparison(result: Comparison, out: Path, title: str) -> str:
    """Draw a ``compare`` result with its intervals as error bars to ``out``; return which kind:
    ``lines`` over measured NFE when the cells' NFE varies (one line per combination of the
    other keys, Fig. 2), else ``bars`` (ROWS groups, COLS bars; Table 2)."""
    cells = result.cells
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        if NFE in cells.columns and cells[NFE].nunique() > 1:
            _lines(ax, result)
            kind = "lines"
        else:
            _bars(ax, result)
            kind = "bars"
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        legend = [ax.get_legend()] if ax.get_legend() else []  # beside the axes
        fig.savefig(out, bbox_inches="tight", bbox_extra_artists=legend)
    finally:
        plt.close(fig)
    return kind


def _errors(cells: Any) -> np.ndarray:
    """[2, n] distances from the means to the interval ends (0 where a cell has none)."""
    low = (cells["mean"] - cells["lo"]).to_numpy(dtype=float)
    high = (cells["hi"] - cells["mean"]).to_numpy(dtype=float)
    return np.nan_to_num(np.stack([low, high]))


def _labels(keys: list[str], parts: list[dict[str, Any]]) -> list[str]:
    """One label per line naming only the keys that vary among the lines (sampler choices by
    value, ``a/b``; other keys as ``k=v``); a value a line does not have is left out."""
    varying = [k for k in keys if len({str(p[k]) for p in parts}) > 1]
    labels = []
    for p in parts:
        shown = [k for k in varying if str(p[k]) != "default"]
        names = "/".join(str(p[k]) for k in shown if k in SAMPLER)
        rest = ", ".join(f"{k}={p[k]}" for k in shown if k not in SAMPLER)
        labels.append(" ".join(filter(None, [names, rest])) or "all")
    return labels


def _families(lines: list[tuple[dict[str, Any], Any]]) -> list[tuple[int, bool]]:
    """(colour index, solid) per line: an original sampler (``ORIGINAL_TIMESTEPS``, dashed)
    takes the colour of the EDM sampler line that starts from the nearest σ_max, if within
    ``SAME_RANGE`` (Fig. 2); every other line is solid in a colour of its own."""

    def value(parts: dict[str, Any], rows: Any, column: str) -> Any:
        return (
            parts[column] if column in parts else rows[column].iloc[0] if column in rows else None
        )

    def start(rows: Any) -> float | None:
        high = rows["sigma_max_used"].median() if "sigma_max_used" in rows else math.nan
        return float(high) if high > 0 else None  # NaN (unknown) compares False

    edm = [tuple(value(p, r, c) for c in SAMPLER) == EDM_SAMPLER for p, r in lines]
    original = [value(p, r, "timesteps") in ORIGINAL_TIMESTEPS for p, r in lines]
    starts = [start(rows) for _, rows in lines]
    colours = list(range(len(lines)))
    for i, sigma in enumerate(starts):
        if not original[i] or sigma is None:
            continue
        gaps = {
            j: abs(math.log(sigma / other))
            for j, other in enumerate(starts)
            if edm[j] and other is not None
        }
        nearest = min(gaps, key=gaps.__getitem__, default=None)
        if nearest is not None and gaps[nearest] <= math.log(SAME_RANGE):
            colours[i] = nearest
    order = {c: k for k, c in enumerate(dict.fromkeys(colours))}
    return [(order[c], not o) for c, o in zip(colours, original, strict=True)]


def _lines(ax: Any, result: Comparison) -> None:
    """Mean ± interval over measured NFE, one line per combination of the keys other than the
    step count; ticks at the NFEs measured."""
    cells = result.cells[result.cells[NFE].notna()]
    keys = [k for k in [*result.rows, *result.cols] if k not in (STEPS, NFE)]
    groups = list(cells.groupby(keys, sort=True)) if keys else [((), cells)]
    lines = [
        (dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True)), rows.sort_values(NFE))
        for k, rows in groups
    ]
    labels = _labels(keys, [parts for parts, _ in lines])
    for (_, rows), label, (colour, solid) in zip(lines, labels, _families(lines), strict=True):
        ax.errorbar(
            rows[NFE], rows["mean"], yerr=_errors(rows), marker="o", markersize=4, capsize=3,
            color=f"C{colour % 10}", linestyle="-" if solid else "--", label=label,
        )  # fmt: skip
    from matplotlib.ticker import NullLocator

    plain = _plain_numbers()
    ax.set_xscale("log", base=2)
    ticks = sorted(cells[NFE].unique())
    ax.set_xticks(ticks, _spaced(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    low = np.nanmin(np.where(cells["lo"].notna(), cells["lo"], cells["mean"]))
    high = cells["mean"].max()
    if low > 0:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
        few = None if high < 10 * low else (2, 3, 5)  # within a decade: label every tick
        ax.yaxis.set_minor_formatter(_plain_numbers(mantissas=few))
    ax.set_xlabel("NFE (measured)")
    ax.set_ylabel(f"{result.value} (mean, 95% interval)")
    if len(lines) > 1:
        legend = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        legend.set_in_layout(False)  # beside the axes, which keep their size; the image grows


def _spaced(ticks: list[float], ratio: float = 1.2) -> list[str]:
    """Labels of log-axis ``ticks``, blank where a tick is within ``ratio`` of the last labelled
    one (7 and 8 NFE: 8 keeps its tick mark, unlabelled)."""
    labels, last = [], -math.inf
    for tick in ticks:
        keep = tick >= last * ratio
        labels.append(f"{tick:.4g}" if keep else "")
        last = tick if keep else last
    return labels


def _bars(ax: Any, result: Comparison) -> None:
    """Grouped bars with error bars: ROWS groups, COLS bars (without COLS: the last key)."""
    rows, cols = result.rows, result.cols
    if not cols:
        rows, cols = rows[:-1], rows[-1:]
    cells = result.cells
    groups = list(cells.groupby(rows, sort=True)) if rows else [((), cells)]
    bars = list(dict.fromkeys(tuple(r[c] for c in cols) for _, r in cells.iterrows()))
    width = 0.8 / max(len(bars), 1)
    x = np.arange(len(groups))
    for i, bar in enumerate(bars):
        chosen = cells[
            np.logical_and.reduce([cells[c] == v for c, v in zip(cols, bar, strict=True)])
        ]
        index = {tuple(r[c] for c in rows): k for k, (_, r) in enumerate(chosen.iterrows())}
        heights = np.full(len(groups), np.nan)
        errors = np.zeros((2, len(groups)))
        for g, (key, _) in enumerate(groups):
            k = index.get(key if isinstance(key, tuple) else (key,))
            if k is not None:
                heights[g] = chosen["mean"].iloc[k]
                errors[:, g] = _errors(chosen.iloc[[k]])[:, 0]
        label = "/".join(map(str, bar)) if bar else result.value
        drawn = ax.bar(x + (i - (len(bars) - 1) / 2) * width, heights, width, yerr=errors,
                       capsize=3, label=label)  # fmt: skip
        ax.bar_label(drawn, labels=[f"{h:.3g}" if np.isfinite(h) else "" for h in heights],
                     fontsize=7, padding=2)  # fmt: skip
    names = ["/".join(map(str, k if isinstance(k, tuple) else (k,))) for k, _ in groups]
    ax.set_xticks(x, names)
    ax.set_xlabel("/".join(rows))
    ax.set_ylabel(f"{result.value} (mean, 95% interval)")
    if len(bars) > 1:
        ax.legend(title="/".join(cols), fontsize=8)


def save_samples(samples: Tensor, dataset: Dataset, out: Path, title: str) -> None:
    """Images as a tiled grid (upscaled to ≥ 64 px a tile); 2-D points as a scatter over data."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if dataset.is_image:
        _image_grid(quantize(samples).numpy()).save(out)
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    try:
        data = dataset.x.numpy()
        ax.scatter(data[:, 0], data[:, 1], s=4, c="0.7", label="data")
        points = samples.numpy()
        ax.scatter(points[:, 0], points[:, 1], s=6, c="tab:red", label="samples")
        ax.set_aspect("equal")
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out)
    finally:
        plt.close(fig)


def _image_grid(images: np.ndarray, pad: int = 2) -> Any:
    """uint8 [N, C, H, W] (C = 1 or 3) → one PIL image, tiles in rows of ⌈√N⌉."""
    import PIL.Image

    n, c, h, w = images.shape
    scale = max(1, math.ceil(64 / max(h, w)))
    tiles = images.repeat(scale, axis=2).repeat(scale, axis=3)
    h, w = h * scale, w * scale
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), 255, np.uint8)
    for i, tile in enumerate(tiles):
        top, left = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[:, top : top + h, left : left + w] = tile
    return PIL.Image.fromarray(grid[0] if c == 1 else grid.transpose(1, 2, 0))
