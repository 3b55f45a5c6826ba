"""PNG plots of benchmark rows: time / floor per op, speedup over torch.compile of the golden, host time.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no display, no global backend).
Only timed rows (status ok) get a bar; a failing, unavailable or broken impl gets its status instead.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# One time / floor figure per group, one panel per op: OUT/<stem>-<group>.png.
FLOOR_FIGURES = {
    "fwd": ("fwd",),
    "bwd": ("bwd", "bwd_gxp"),
    "sinkhorn": ("sinkhorn_fwd", "sinkhorn_bwd"),
    "post": ("post_fwd", "post_bwd"),
    "step": ("step",),
    "layer": ("layer_fwd", "layer_bwd", "layer_step"),
}
HOST_OP = "host"  # the op of the host-time rows (benchmarks/host.py)
PANEL = (11, 4.5)  # inches


def _label(row: Mapping) -> str:
    return f"{row['T']}x{row['n']}x{row['D']}"


def _grouped_bars(
    ax,
    rows: Sequence[Mapping],
    key: str,
    colors: Mapping[str, str],
    group: Callable[[Mapping], str] = _label,
    series: Callable[[Mapping], str] = lambda r: r["impl"],
) -> None:
    """Groups along x (shapes by default), one bar per series (impl) in each group, the value of
    `key` as the bar's height. A row without a value (not timed: FAIL, unavailable, error) gets its
    status written in its slot."""
    groups = list(dict.fromkeys(group(r) for r in rows))
    names = list(dict.fromkeys(series(r) for r in rows))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        xs, ys = [], []
        for row in (r for r in rows if series(r) == name):
            x = groups.index(group(row)) + (i - (len(names) - 1) / 2) * width
            if row[key] is not None:
                xs.append(x)
                ys.append(row[key])
            else:  # x in data coordinates, y in axes fraction: just above the x axis
                ax.text(x, 0.02, row["status"], transform=ax.get_xaxis_transform(), rotation=90, fontsize=6,
                        ha="center", va="bottom", color=colors[name])  # fmt: skip
        bars = ax.bar(xs, ys, width, label=name, color=colors[name])
        ax.bar_label(bars, fmt="%.3g", fontsize=6)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _save(fig: Figure, path: pathlib.Path) -> pathlib.Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _colors(names) -> dict[str, str]:
    """One colour per name (impl), the same in every figure of a run."""
    return {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(names))}


def plot_x_floor(rows: Sequence[Mapping], ops: Sequence[str], path: pathlib.Path) -> pathlib.Path:
    """One panel per op (that has rows): time / floor per shape and impl, log scale."""
    ops = [op for op in ops if any(r["op"] == op for r in rows)]
    colors = _colors(r["impl"] for r in rows)
    fig = Figure(figsize=(PANEL[0], PANEL[1] * len(ops)))
    for i, op in enumerate(ops, 1):
        ax = fig.add_subplot(len(ops), 1, i)
        _grouped_bars(ax, [r for r in rows if r["op"] == op], "x_floor", colors)
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("T x n x D")
        ax.set_ylabel("time / floor (1 = copy bandwidth)")
        ax.set_title(f"{op} on {rows[0]['device_name']}: time / memory-traffic floor")
    return _save(fig, path)


def plot_speedup(rows: Sequence[Mapping], ops: Sequence[str], path: pathlib.Path) -> pathlib.Path:
    """One panel per op, two columns when there are several."""
    colors = _colors(r["impl"] for r in rows)
    cols = 1 if len(ops) == 1 else 2
    nrows = math.ceil(len(ops) / cols)
    fig = Figure(figsize=(PANEL[0] * cols, PANEL[1] * nrows))
    for i, op in enumerate(ops, 1):
        ax = fig.add_subplot(nrows, cols, i)
        _grouped_bars(ax, [r for r in rows if r["op"] == op], "speedup_vs_compile", colors)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("T x n x D")
        ax.set_ylabel("speedup over golden.compile")
        ax.set_title(f"{op} on {rows[0]['device_name']}: speedup over torch.compile of the golden")
    return _save(fig, path)


def plot_host(rows: Sequence[Mapping], path: pathlib.Path) -> pathlib.Path:
    """Host us per call (and GPU us per call, where measured) of each call of the training path, one
    bar per token count, log scale."""
    bars = []  # one entry per bar: the call, which number at which T, its value, the row's status
    for r in rows:
        bars.append({"call": r["call"], "series": f"host, T={r['T']}", "us": r["host_us"], "status": r["status"]})
        if r["gpu_us"] is not None:
            bars.append({"call": r["call"], "series": f"GPU, T={r['T']}", "us": r["gpu_us"], "status": r["status"]})
    fig = Figure(figsize=(max(PANEL[0], 0.9 * len({r["call"] for r in rows})), PANEL[1] + 0.5))
    ax = fig.add_subplot()
    series = lambda b: b["series"]  # noqa: E731
    _grouped_bars(ax, bars, "us", _colors(map(series, bars)), group=lambda b: b["call"], series=series)
    ax.set_yscale("log")
    ax.set_xlabel("op.call (fwd_nograd: under no_grad; bwd: autograd backward of a built graph; step: fwd + bwd)")
    ax.set_ylabel("us per call")
    first = rows[0]
    ax.set_title(f"host time per call on {first['device_name']}, n={first['n']}, D={first['D']} (benchmarks/host.py)")
    return _save(fig, path)


def plot_decode(rows: Sequence[Mapping], path: pathlib.Path, target_us: float | None = None) -> pathlib.Path:
    """benchmarks/decode.py's rows: one boundary's GPU time per shape and row (chain_us where measured, a boundary
    inside a graph of many; else gpu_us), a line at target_us; a row not timed gets its status."""
    key = "chain_us" if any(r.get("chain_us") is not None for r in rows) else "gpu_us"
    bars = [{"shape": r["shape"], "row": r["row"], "us": r.get(key), "status": r["status"]} for r in rows]
    series = lambda b: b["row"]  # noqa: E731
    fig = Figure(figsize=PANEL)
    ax = fig.add_subplot()
    _grouped_bars(ax, bars, "us", _colors(map(series, bars)), group=lambda b: b["shape"], series=series)
    if target_us is not None:
        ax.axhline(target_us, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("T x n x D (bf16)")
    ax.set_ylabel(f"us per boundary ({key})")
    device = rows[0].get("device", "") if rows else ""
    ax.set_title(f"one boundary's forward at decode (post + next pre + Sinkhorn) on {device}")
    return _save(fig, path)


def write_plots(rows: Sequence[Mapping], out: pathlib.Path, stem: str) -> list[pathlib.Path]:
    """OUT/<stem>-<group>.png per FLOOR_FIGURES group with rows, OUT/<stem>-speedup.png and
    OUT/<stem>-host.png; overwritten by a later run."""
    host_rows = [r for r in rows if r["op"] == HOST_OP]
    rows = [r for r in rows if r["op"] != HOST_OP]
    present = list(dict.fromkeys(r["op"] for r in rows))
    paths = [
        plot_x_floor(rows, ops, out / f"{stem}-{name}.png")
        for name, ops in FLOOR_FIGURES.items()
        if set(present) & set(ops)
    ]
    compared = [op for op in present if any(r["op"] == op and r["speedup_vs_compile"] is not None for r in rows)]
    if compared:
        paths.append(plot_speedup(rows, compared, out / f"{stem}-speedup.png"))
    if host_rows:
        paths.append(plot_host(host_rows, out / f"{stem}-host.png"))
    return paths
