"""PNG plots of benchmark rows: time / floor per op, and speedup over torch.compile of the golden.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no display, no global backend).
Only timed rows (status ok) get a bar; a failing, unavailable or broken impl gets its status instead.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _label(row: Mapping) -> str:
    return f"{row['T']}x{row['n']}x{row['D']}"


def _grouped_bars(ax, rows: Sequence[Mapping], key: str, colors: Mapping[str, str]) -> None:
    """Shapes along x, one bar per impl in each group, the value of `key` as the bar's height. A row
    without a value (not timed: FAIL, unavailable, error) gets its status written in its slot."""
    shapes = list(dict.fromkeys(_label(r) for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    width = 0.8 / max(len(impls), 1)
    for i, impl in enumerate(impls):
        xs, ys = [], []
        for row in (r for r in rows if r["impl"] == impl):
            x = shapes.index(_label(row)) + (i - (len(impls) - 1) / 2) * width
            if row[key] is not None:
                xs.append(x)
                ys.append(row[key])
            else:  # x in data coordinates, y in axes fraction: just above the x axis
                ax.text(x, 0.02, row["status"], transform=ax.get_xaxis_transform(), rotation=90, fontsize=6,
                        ha="center", va="bottom", color=colors[impl])  # fmt: skip
        bars = ax.bar(xs, ys, width, label=impl, color=colors[impl])
        ax.bar_label(bars, fmt="%.3g", fontsize=6)
    ax.set_xticks(range(len(shapes)), shapes, rotation=30, ha="right")
    ax.set_xlabel("T x n x D")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _save(fig: Figure, path: pathlib.Path) -> pathlib.Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _colors(rows: Sequence[Mapping]) -> dict[str, str]:
    """One colour per impl, the same in every figure of a run."""
    impls = dict.fromkeys(r["impl"] for r in rows)
    return {impl: f"C{i % 10}" for i, impl in enumerate(impls)}


def plot_x_floor(rows: Sequence[Mapping], op: str, path: pathlib.Path) -> pathlib.Path:
    fig = Figure(figsize=(11, 4.5))
    ax = fig.add_subplot()
    _grouped_bars(ax, [r for r in rows if r["op"] == op], "x_floor", _colors(rows))
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("time / floor (1 = copy bandwidth)")
    ax.set_title(f"mhc_pre {op} on {rows[0]['device_name']}: time / memory-traffic floor")
    return _save(fig, path)


def plot_speedup(rows: Sequence[Mapping], ops: Sequence[str], path: pathlib.Path) -> pathlib.Path:
    fig = Figure(figsize=(11, 4.5 * len(ops)))
    for i, op in enumerate(ops, 1):
        ax = fig.add_subplot(len(ops), 1, i)
        _grouped_bars(ax, [r for r in rows if r["op"] == op], "speedup_vs_compile", _colors(rows))
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylabel("speedup over golden.compile")
        ax.set_title(f"mhc_pre {op} on {rows[0]['device_name']}: speedup over torch.compile of the golden")
    return _save(fig, path)


def write_plots(rows: Sequence[Mapping], out: pathlib.Path, stem: str) -> list[pathlib.Path]:
    """OUT/<stem>-<op>.png per op and OUT/<stem>-speedup.png; overwritten by a later run."""
    ops = list(dict.fromkeys(r["op"] for r in rows))
    paths = [plot_x_floor(rows, op, out / f"{stem}-{op}.png") for op in ops]
    if any(r["speedup_vs_compile"] is not None for r in rows):
        paths.append(plot_speedup(rows, ops, out / f"{stem}-speedup.png"))
    return paths
