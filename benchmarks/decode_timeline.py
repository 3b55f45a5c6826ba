"""Where the one-launch decode boundary's time goes (kernels/decode.py), phase by phase, on the GPU.

    PYTHONPATH=. python -m benchmarks.decode_timeline [--shapes 1x4x4096,...] [--launches 20] [--grid 'block_d=32;num_warps=4,8']
        [--iters 1,20,40]

Each shape (bf16 x, the delayed pre, sinkhorn iters 20 or each of --iters, benchmarks/decode.py's inputs) is launched --launches
times in one CUDA graph, each launch with launch_decode's timeline= (the kernel's _common.stamp marks:
%globaltimer and %clock64 at each phase; benchmarks/host.capture_graph), and the graph replayed once. Per launch: the first
program's start to the last program's end, the idle gap since the previous launch ended, a program's
column pass (median and slowest), when the last program arrived, and the last program's phases (arrival
atomic, reduction of the partials, coefficients, Sinkhorn) in µs, from its SM's cycles at the clock the
launch itself shows (cycles over ns of the last program). Medians over the launches after the first two.
--grid: launch_decode's options, 'name=v1,v2;...' (their product; integers or words). The marks cost a reduction each, so
the phases add up to a little more than benchmarks/decode.py's time of the unmarked kernel. --iters: Sinkhorn
iteration counts, so the Sinkhorn column's difference between two counts is their iterations' cost alone. GPU only.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import torch

from mhc_ops.kernels.decode import TIMELINE_MARKS, TIMELINE_SLOTS, auto_block_t, grid, launch_decode

from .decode import EPS, HC_EPS, ITERS, NORM_EPS, POST, _inputs
from .host import capture_graph
from .shapes import parsed_shapes

DEFAULT = "1x4x4096,64x4x4096,1x4x7168,1x8x4096"
M = {name: i for i, name in enumerate(TIMELINE_MARKS)}
# the last program's phases, between two marks: atomic, reduce, coefficients, sinkhorn
PHASES = (("partials stored", "arrived"), ("arrived", "reduced"), ("reduced", "coefficients"), ("logits loaded", "sinkhorn"))
COLUMNS = ("total", "gap", "columns", "columns_max", "last_arrives", "atomic", "reduce", "coefficients", "sinkhorn")


def parse_grid(text: str) -> list[dict]:
    """'block_d=32,64;num_warps=4;sink_order=tokens-first' -> every combination as launch_decode's keyword
    arguments (integers where a value is one, else the word)."""
    axes = []
    for part in (p for p in text.split(";") if p.strip()):
        name, _, values = part.partition("=")
        words = [v.strip() for v in values.split(",") if v.strip()]
        axes.append([(name.strip(), int(v) if v.lstrip("-").isdigit() else v) for v in words])
    return [dict(c) for c in itertools.product(*axes)] if axes else [{}]


def timeline(T: int, n: int, D: int, launches: int, iters: int = ITERS, **launch) -> dict:
    """Median phase times (µs) of `launches` marked launches in one CUDA graph."""
    device = torch.device("cuda")
    t = _inputs(T, n, D, device)
    args = [*(t[k] for k in POST), t["h_pre_prev"], *(t[k] for k in ("phi", "alpha", "bias", "gamma"))]
    block_t = launch.get("block_t") or auto_block_t(T, n)
    blocks, splits = grid(T, D, block_t, launch.get("block_d", 64), launch.get("splits"))
    slots = TIMELINE_SLOTS.value
    marks = torch.zeros(launches, blocks * splits * slots, dtype=torch.int64, device=device)

    def call():
        for i in range(launches):
            launch_decode(*args, NORM_EPS, HC_EPS, iters, EPS, timeline=marks[i], **launch)

    capture_graph(lambda: call, device).replay()
    torch.cuda.synchronize(device)
    return phases(marks.view(launches, blocks, splits, slots)[:, 0].cpu())  # token block 0 (at T <= 16 the only one)


def phases(marks: torch.Tensor) -> dict:
    """[launches, splits, TIMELINE_SLOTS] int64 marks of one token block's programs -> median µs per COLUMNS entry
    over the launches after the first two. A program's phases are in its own SM's cycles, converted at the
    clock its launch shows (cycles over ns between the last program's first and last marks)."""
    m = marks.double()
    ns, cyc, arrived = m[..., 0:18:2], m[..., 1:18:2], m[..., -1]
    rows = []
    for i in range(2, m.shape[0]):
        last = int(arrived[i].argmax())  # the program that arrived last
        lns, lcy = ns[i, last], cyc[i, last]
        ghz = (lcy[M["end"]] - lcy[M["start"]]) / (lns[M["end"]] - lns[M["start"]])
        start = ns[i, :, M["start"]].min()
        cols = (cyc[i, :, M["columns"]] - cyc[i, :, M["start"]]) / ghz / 1e3
        prev_end = ns[i - 1, int(arrived[i - 1].argmax()), M["end"]]
        rows.append([float(lns[M["end"]] - start) / 1e3, float(start - prev_end) / 1e3, float(cols.median()),
                     float(cols.max()), float(ns[i, :, M["arrived"]].max() - start) / 1e3,
                     *(float((lcy[M[b]] - lcy[M[a]]) / ghz / 1e3) for a, b in PHASES)])  # fmt: skip
    return dict(zip(COLUMNS, torch.tensor(rows, dtype=torch.float64).median(dim=0).values.tolist()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode_timeline", description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=DEFAULT)
    parser.add_argument("--launches", type=int, default=20)
    parser.add_argument("--grid", default="", help="launch_decode options: 'name=v1,v2;name=v' (their product)")
    parser.add_argument("--iters", default=str(ITERS), help="Sinkhorn iteration counts, comma-separated")
    args = parser.parse_args(argv)
    shapes = parsed_shapes(parser, args.shapes)
    if args.launches < 3:
        parser.error(f"--launches: expected at least 3 (the first two are dropped), got {args.launches}")
    try:
        options = parse_grid(args.grid)
    except ValueError as e:
        parser.error(f"--grid: expected 'name=int,int;...', got {args.grid!r} ({e})")
    try:
        counts = [int(v) for v in args.iters.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        parser.error(f"--iters: expected positive integers, comma-separated, got {args.iters!r}")
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU: the marks are PTX timers (the interpreter runs no PTX)")
    print(f"decode boundary timeline on {torch.cuda.get_device_name()}, delayed pre; µs, medians\n")
    print("| shape | iters | options | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (len(COLUMNS) + 3))
    for shape, iters, launch in itertools.product(shapes, counts, options):
        row = timeline(shape.T, shape.n, shape.D, args.launches, iters, **launch)
        opts = ",".join(f"{k}={v}" for k, v in launch.items()) or "default"
        print(f"| {shape.T}x{shape.n}x{shape.D} | {iters} | {opts} | " + " | ".join(f"{row[c]:.2f}" for c in COLUMNS)
              + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
