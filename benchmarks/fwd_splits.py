"""The forward's split count against its floor: a sweep for tuning launch_fwd's auto heuristic.

    python -m benchmarks.fwd_splits [--shapes 1x4x4096,1024x4x4096,...] [--splits 1,2,4,8,16,32,64]
        [--once auto,16,32,64] [--once-apply 128,256] [--quick]

For each shape (bf16 x, gamma, as the benchmark's rows), the forward's GPU time with ``splits=1`` (the
single kernel), each forced split count, the read-once path (``once=True``: one launch, each token
block finished by its last program) at each of its split counts and apply widths, and ``auto`` (what
the op runs), as time / floor at the copy bandwidth measured in the same run. GPU time is a CUDA graph of
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
DEFAULT_ONCE = "auto,16,32,64"
DEFAULT_ONCE_APPLY = "128"
NAMES = ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre")


def chosen(T: int, n: int, D: int, device: torch.device) -> str:
    """What auto runs (launch_fwd's defaults: block_t 64, default block_d, bf16): a split count, or
    "once S" for the read-once path with S ranges."""
    once, splits = fwd.auto_launch(
        fwd.cdiv(T, 64), n, fwd.cdiv(D, fwd.default_block_d(n, None)), fwd.sm_count(device), 64 * n * D * 2, False
    )
    return f"once {splits}" if once else str(splits)


def variants(splits_list: list[int], once_list: list[int | None], apply_list: list[int], per_sm: list[int | None],
             sms: int) -> list[tuple[str, dict]]:  # fmt: skip
    """(label, launch_fwd options) of each row: the forced split counts, the read-once path at each split
    count (None: once_splits), apply width and programs per SM (None: its default), then auto."""
    rows = [(str(s), {"splits": s}) for s in splits_list]
    for p in per_sm:
        for s in once_list:
            for a in apply_list:
                label = f"once {'auto' if s is None else s}, apply {a}" + ("" if p is None else f", {p}/SM")
                rows.append((label, {"once": True, "splits": s, "block_d_apply": a, "programs": p and p * sms}))
    return [*rows, ("auto", {})]


def sweep(shape, rows_spec, device, copy_bw, quick) -> list[dict]:
    case = golden.Case(lead=shape.lead, n=shape.n, D=shape.D, dtype=X_DTYPE, seed=SEED, gamma=GAMMA)
    t = make_inputs(case, device)
    args = [t[k] for k in ("x", "phi", "alpha", "bias", "gamma")]
    ref64, ref32 = goldens.references("fwd", t)
    floor = floors.floor_ms(floors.op_bytes("fwd", shape.T, shape.n, shape.D, t["x"].element_size()), copy_bw)
    rows = []
    for label, options in rows_spec:
        def call(options=options):
            return fwd.launch_fwd(*args, 1e-6, 1e-6, **options)

        verdicts = goldens.judge_outputs("fwd", call(), ref64, ref32)
        ok = all(v.ok for v in verdicts)
        if not ok:
            ms = None
        elif device.type == "cuda":
            ms = host.graph_gpu_us(lambda call=call: call, device, quick) / 1e3
        else:
            ms = timing.median_ms(call, device, quick)
        if not options and device.type == "cuda":
            label += f" (= {chosen(shape.T, shape.n, shape.D, device)})"
        rows.append({"shape": shape.label, "splits": label, "ms": ms, "floor_ms": floor, "ok": ok})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fwd_splits", description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"TxnxD, comma separated (default {DEFAULT_SHAPES})")
    parser.add_argument("--splits", default=DEFAULT_SPLITS, help=f"forced split counts (default {DEFAULT_SPLITS})")
    parser.add_argument("--once", default=DEFAULT_ONCE, help=f"read-once split counts, auto = once_splits (default {DEFAULT_ONCE})")
    parser.add_argument("--once-apply", default=DEFAULT_ONCE_APPLY, help=f"read-once apply widths (default {DEFAULT_ONCE_APPLY})")
    parser.add_argument("--once-per-sm", default="", help="read-once programs per SM (default: its own)")
    parser.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes)
        splits_list = [int(s) for s in args.splits.split(",") if s]
        once_list = [None if s == "auto" else int(s) for s in args.once.split(",") if s]
        apply_list = [int(s) for s in args.once_apply.split(",") if s]
        per_sm = [int(s) for s in args.once_per_sm.split(",") if s] or [None]
    except ValueError as e:
        parser.error(f"--shapes/--splits/--once/--once-apply: {e}")
    if any(s is not None and s < 1 for s in [*splits_list, *once_list]):
        parser.error("--splits/--once: expected positive ints")
    if any(a < 16 or a & (a - 1) for a in apply_list):
        parser.error("--once-apply: expected powers of two >= 16")
    device = torch.device(args.device)
    rows_spec = variants(splits_list, once_list, apply_list, per_sm, fwd.sm_count(device) if device.type == "cuda" else 1)
    copy_bw = timing.copy_bandwidth_GBps(device, args.quick)
    print(f"# launch_fwd by split count, {device}, copy bandwidth {copy_bw:.0f} GB/s\n")
    print("| shape | splits | ms | time / floor | accuracy rule |")
    print("|---|---|---|---|---|")
    for shape in shapes:
        for r in sweep(shape, rows_spec, device, copy_bw, args.quick):
            ms = "-" if r["ms"] is None else f"{r['ms']:.4f}"
            x = "-" if r["ms"] is None else f"{r['ms'] / r['floor_ms']:.2f}x"
            print(f"| {r['shape']} | {r['splits']} | {ms} | {x} | {'ok' if r['ok'] else 'FAILED'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
