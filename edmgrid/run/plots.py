"""Pictures of results: metric against NFE (Fig. 2 style), Table 2 bars, and sample grids.

matplotlib is imported inside the functions, with the Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from edmgrid.engine.data import Dataset
from edmgrid.engine.fid import quantize
from edmgrid.errors import InputError
from edmgrid.run.jobs import flatten

#: A sampler family of Fig. 2: one line per solver, discretisation, σ(t) and s(t).
FAMILY = ("solver", "timesteps", "schedule", "scaling")
#: The column of the x axis and the config column it follows from.
NFE, STEPS = "nfe", "timesteps_num_steps"
#: The (configuration, family) columns that mark Table 2 rows.
TABLE2 = ("config", "family")


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


def table2_columns(frame: Any) -> tuple[str, str] | None:
    """The (configuration, family) columns of Table 2 rows ("A".."F", "vp"/"ve"), if any."""
    config, family = TABLE2
    if config in frame.columns and family in frame.columns and frame[config].notna().any():
        return TABLE2
    return None


def plot_results(frame: Any, value: str, out: Path, title: str) -> str:
    """Write ``value`` as Table 2 bars or as lines over NFE to ``out``; return which."""
    frame = frame[frame[value].notna()]
    if frame.empty:
        raise InputError(f"no done rows have a value of {value!r} to plot")
    pair = table2_columns(frame)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        if pair is not None:
            _bars(ax, frame, value, *pair)
            kind = "bars"
        else:
            _lines(ax, frame, value)
            kind = "lines"
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        legend = [ax.get_legend()] if ax.get_legend() else []  # beside the axes
        fig.savefig(out, bbox_inches="tight", bbox_extra_artists=legend)
    finally:
        plt.close(fig)
    return kind


def _config_columns(frame: Any) -> list[str]:
    """The flattened config columns of the rows (from their stored ``config_json``)."""
    keys: dict[str, None] = {}
    for text in frame["config_json"].dropna():
        keys.update(dict.fromkeys(flatten(json.loads(text))))
    return [k for k in keys if k in frame.columns]


def _lines(ax: Any, frame: Any, value: str) -> None:
    """One line per sampler family (and per any other config column that varies) over NFE."""
    if NFE not in frame.columns:
        raise InputError(f"cannot plot {value} against NFE: the rows have no {NFE!r} column")
    varying = [
        c
        for c in _config_columns(frame)
        if c not in (*FAMILY, STEPS) and frame[c].astype(str).nunique() > 1
    ]
    keys = [c for c in FAMILY if c in frame.columns] + varying
    groups = frame.groupby(keys, dropna=False, sort=True) if keys else [((), frame)]
    for key, rows in groups:
        parts = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        label = "/".join(str(parts[c]) for c in keys if c in FAMILY)
        extra = ", ".join(f"{c}={parts[c]}" for c in varying if not _missing(parts[c]))
        curve = rows.groupby(NFE)[value].mean().sort_index()
        ax.plot(curve.index, curve.values, marker="o", label=f"{label} {extra}".strip())
    plain = _plain_numbers()
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(plain)
    low, high = frame[value].min(), frame[value].max()
    if low > 0:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
        few = None if high < 10 * low else (2, 3, 5)  # within a decade: label every tick
        ax.yaxis.set_minor_formatter(_plain_numbers(mantissas=few))
    ax.set_xlabel("NFE")
    ax.set_ylabel(value)
    legend = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    legend.set_in_layout(False)  # beside the axes, which keep their size; the saved image grows


def _missing(value: Any) -> bool:
    """A parameter the row's choice does not have (NaN/NA in the pivoted frame)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "<NA>"


def _bars(ax: Any, frame: Any, value: str, config: str, family: str) -> None:
    """Grouped bars: one group per configuration, one bar per family (Table 2 layout)."""
    table = frame.pivot_table(index=config, columns=family, values=value, aggfunc="mean")
    width = 0.8 / max(len(table.columns), 1)
    x = np.arange(len(table.index))
    for i, name in enumerate(table.columns):
        heights = table[name].to_numpy()
        bars = ax.bar(x + (i - (len(table.columns) - 1) / 2) * width, heights, width, label=name)
        ax.bar_label(bars, labels=[f"{h:.3g}" if np.isfinite(h) else "" for h in heights],
                     fontsize=7)  # fmt: skip
    ax.set_xticks(x, [str(c) for c in table.index])
    ax.set_xlabel(f"configuration ({config})")
    ax.set_ylabel(value)
    ax.legend(title=family, fontsize=8)


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
