"""The forward's split count against its floor: a sweep for tuning launch_fwd's auto heuristic.

    python -m benchmarks.fwd_splits [--shapes 1x4x4096,1024x4x4096,...] [--splits 1,2,4,8,16,32,64] [--quick]

For each shape (bf16 x, gamma, as the benchmark's rows), the forward's GPU time with ``splits=1`` (the single kernel), each forced split count, and ``auto`` (what the op
runs), as time / floor at the copy bandwidth measured in the same run. GPU time is a CUDA graph of
one call replayed back to back (benchmarks/host.py graph_gpu_us): do_bench would time the host's
launches at small T (its median at T = 1 was 0.17 ms, the graph's 0.04 ms). A capture bypasses the
weight cache (kernels/_cache.py), so the graph also rebuilds the bf16 weight split on each replay
(one launch, about 5 us on an H200), which an eager call finds cached: for the kernels alone,
``python -m benchmarks.kernel_breakdown --ops fwd --sweep --grid 'splits=None,1,2,4'``. On CPU: wall
time. Every configuration's outputs are checked against the fp64 golden by the accuracy rule before
it is timed. One markdown table.
"""

from __future__ import annotations

import argparse
import sys

import torch

from mhc_ops import golden
from mhc_ops.golden.fixtures import make_inputs
from mhc_ops.kernels import fwd

from . import floors, goldens, host, timing
from .shapes import GAMMA, SEED, X_DTYPE, parse_shapes

DEFAULT_SHAPES = "1x4x4096,1024x4x4096,4096x4x4096,16384x4x7168,8192x8x2048"
DEFAULT_SPLITS = "1,2,4,8,16,32,64"
NAMES = ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre")


def chosen_splits(T: int, n: int, D: int, device: torch.device) -> int:
    """The split count auto picks (launch_fwd's defaults: block_t 64, default block_d)."""
    return fwd.auto_splits(fwd.cdiv(T, 64), n * fwd.cdiv(D, fwd.default_block_d(n, None)), fwd.sm_count(device))


def sweep(shape, splits_list, device, copy_bw, quick) -> list[dict]:
    case = golden.Case(lead=shape.lead, n=shape.n, D=shape.D, dtype=X_DTYPE, seed=SEED, gamma=GAMMA)
    t = make_inputs(case, device)
    args = [t[k] for k in ("x", "phi", "alpha", "bias", "gamma")]
    ref64, ref32 = goldens.references("fwd", t)
    floor = floors.floor_ms(floors.op_bytes("fwd", shape.T, shape.n, shape.D, t["x"].element_size()), copy_bw)
    rows = []
    for splits in [*splits_list, None]:
        def call(splits=splits):
            return fwd.launch_fwd(*args, 1e-6, 1e-6, splits=splits)

        verdicts = goldens.judge_outputs("fwd", call(), ref64, ref32)
        ok = all(v.ok for v in verdicts)
        if not ok:
            ms = None
        elif device.type == "cuda":
            ms = host.graph_gpu_us(lambda call=call: call, device, quick) / 1e3
        else:
            ms = timing.median_ms(call, device, quick)
        label = "auto" if splits is None else str(splits)
        if splits is None and device.type == "cuda":
            label += f" (= {chosen_splits(shape.T, shape.n, shape.D, device)})"
        rows.append({"shape": shape.label, "splits": label, "ms": ms, "floor_ms": floor, "ok": ok})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fwd_splits", description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"TxnxD, comma separated (default {DEFAULT_SHAPES})")
    parser.add_argument("--splits", default=DEFAULT_SPLITS, help=f"forced split counts (default {DEFAULT_SPLITS})")
    parser.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes)
        splits_list = [int(s) for s in args.splits.split(",") if s]
    except ValueError as e:
        parser.error(f"--shapes/--splits: {e}")
    if any(s < 1 for s in splits_list):
        parser.error("--splits: expected positive ints")
    device = torch.device(args.device)
    copy_bw = timing.copy_bandwidth_GBps(device, args.quick)
    print(f"# launch_fwd by split count, {device}, copy bandwidth {copy_bw:.0f} GB/s\n")
    print("| shape | splits | ms | time / floor | accuracy rule |")
    print("|---|---|---|---|---|")
    for shape in shapes:
        for r in sweep(shape, splits_list, device, copy_bw, args.quick):
            ms = "-" if r["ms"] is None else f"{r['ms']:.4f}"
            x = "-" if r["ms"] is None else f"{r['ms'] / r['floor_ms']:.2f}x"
            print(f"| {r['shape']} | {r['splits']} | {ms} | {x} | {'ok' if r['ok'] else 'FAILED'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
