"""Where mhc_pre's forward and fused backward's and mhc_post's GPU time goes, kernel by kernel, and a tile sweep.

    python -m benchmarks.kernel_breakdown [--shapes 1024x4x4096,8192x8x2048] [--ops fwd,bwd,post_fwd,post_bwd]
                                          [--sweep [--grid 'block_t=32,64;block_d=64,128']] [--quick]

For each shape (bf16 x, gamma, as the benchmark's rows) and op, each launch configuration (the
default, and with ``--sweep`` the grid SWEEP of tile options) is checked against the fp64 golden by
the accuracy rule, then called back to back under torch.profiler. One markdown row per configuration:
each kernel's GPU time per call (the profiler's CUDA kernel events; gaps between launches are not
counted), their sum as time / floor at the copy bandwidth measured in the same run, and each
compiled kernel's registers per thread, spilled registers and shared memory. On CPU (the
interpreter's smoke test) there are no kernel events: the row gives the wall time only.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import defaultdict

import torch

from mhc_ops.kernels import fused_bwd, fwd, post

from . import floors, goldens, timing
from .shapes import parsed_shapes

DEFAULT_SHAPES = "1024x4x4096,4096x4x4096,16384x4x7168,8192x6x4096,8192x8x2048"
CALLS = {False: 20, True: 5}  # profiled calls per configuration
KERNELS = {
    "fwd": (fwd._fwd_kernel, fwd._fwd_partial_kernel, fwd._fwd_finish_kernel),
    "bwd": (fused_bwd._pass_a_kernel, fused_bwd._pass_b_kernel, fused_bwd._finish_kernel),
    "post_fwd": (post._post_fwd_kernel,),
    "post_bwd": (post._post_bwd_kernel,),
}
# Launch options swept with --sweep (the launchers' keyword arguments); every combination runs.
SWEEP = {
    "fwd": {"block_t": (16, 32, 64), "num_warps": (4, 8), "splits": (None, 1)},
    "bwd": {"block_t": (16, 32, 64), "block_d": (16, 32, 64), "num_warps": (4, 8), "block_t_a": (32, 64)},
    "post_fwd": {"block_t": (1, 2, 4), "block_d": (128, 256, 512), "num_warps": (2, 4)},
    "post_bwd": {"block_t": (1, 2, 4), "block_d": (64, 128, 256), "num_warps": (2, 4), "num_stages": (2, 3)},
}
LAUNCHERS = {
    "fwd": lambda *args, **options: fwd.launch_fwd(*args, 1e-6, 1e-6, **options),
    "post_fwd": lambda *args, **options: (post.launch_post_fwd(*args, **options),),
    "post_bwd": post.launch_post_bwd,
}


def parse_grid(text: str) -> dict[str, tuple]:
    """'block_t=32,64;block_d=64,128' -> {'block_t': (32, 64), 'block_d': (64, 128)} ('None', 'True' and
    'False' for themselves)."""
    grid = {}
    for item in filter(None, text.split(";")):
        name, sep, values = item.partition("=")
        if not sep or not name.strip() or not values:
            raise ValueError(f"expected name=v1,v2;..., got {item!r}")
        words = {"None": None, "True": True, "False": False}
        grid[name.strip()] = tuple(words[v.strip()] if v.strip() in words else int(v) for v in values.split(","))
    return grid


def configs(op: str, sweep: bool, grid: dict | None = None) -> list[dict]:
    if not sweep:
        return [{}]
    names, values = zip(*(grid or SWEEP[op]).items())
    return [{}, *(dict(zip(names, combo)) for combo in itertools.product(*values))]


def launcher(op: str, t: dict, options: dict):
    if op in LAUNCHERS:
        args = [t[k] for k in goldens.OP_ARGS[op]]
        return lambda: LAUNCHERS[op](*args, **options)
    args = [t[k] for k in goldens.OP_ARGS["bwd"]]

    def call():
        out = fused_bwd.launch_backward_fused(*args, None, 1e-6, **options)
        return tuple(out[k] for k in goldens.OP_OUTPUTS["bwd"])

    return call


def kernel_times_us(call, op: str, calls: int) -> dict[str, float]:
    """GPU us per call of each kernel the op launches, from the profiler's kernel events."""
    names = {k.fn.__name__ for k in KERNELS[op]}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    total: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and event.name in names:
            total[event.name] += event.device_time / calls
    return dict(total)


def kernel_info(kernel) -> str | None:
    """'regs/spills/shared KB[/wgmma]' of the specialisation of a launched kernel compiled or found last
    (wgmma: its products compiled to Hopper's warp-group MMA rather than per-warp mma); None: none yet."""
    info = None
    for compiled in kernel._compiled.values():
        regs, spills = getattr(compiled, "n_regs", None), getattr(compiled, "n_spills", None)
        wgmma = "/wgmma" if "warp_group_dot" in compiled.asm.get("ttgir", "") else ""
        info = f"{regs}/{spills}/{compiled.metadata.shared / 1024:.0f}{wgmma}"
    return info


def compiled_info(op: str) -> dict[str, str]:
    """kernel_info of each kernel of the op that the last configuration compiled or found."""
    return {k.fn.__name__: info for k in KERNELS[op] if (info := kernel_info(k)) is not None}


def measure(op: str, shape, options: dict, t: dict, refs: tuple, device, copy_bw: float, quick: bool) -> dict:
    for k in KERNELS[op]:
        k._compiled.clear()  # so that compiled_info sees exactly this configuration's kernels
    call = launcher(op, t, options)
    ok = all(v.ok for v in goldens.judge_outputs(op, call(), *refs))
    floor = floors.floor_ms(floors.op_bytes(op, shape.T, shape.n, shape.D, t["x"].element_size()), copy_bw) * 1e3
    row = {"shape": shape.label, "op": op, "options": options, "ok": ok, "floor_us": floor, "kernels": {}}
    if not ok:
        return row
    if device.type == "cuda":
        row["kernels"] = kernel_times_us(call, op, CALLS[quick])
        row["info"] = compiled_info(op)
        row["us"] = sum(row["kernels"].values())
    else:
        start = time.perf_counter()
        call()
        row["us"] = (time.perf_counter() - start) * 1e6
    return row


def format_row(row: dict) -> str:
    options = ", ".join(f"{k}={v}" for k, v in row["options"].items()) or "default"
    if not row["ok"]:
        return f"| {row['shape']} | {row['op']} | {options} | - | - | - | FAILED |"
    kernels = "; ".join(
        f"{name.strip('_').removesuffix('_kernel')} {us:.1f}" + (f" ({row['info'].get(name, '?')})" if "info" in row else "")
        for name, us in sorted(row["kernels"].items())
    )
    return (f"| {row['shape']} | {row['op']} | {options} | {row['us']:.1f} | {row['us'] / row['floor_us']:.2f}x | "
            f"{kernels or '-'} | ok |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernel_breakdown", description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"TxnxD, comma separated (default {DEFAULT_SHAPES})")
    parser.add_argument("--ops", default="fwd,bwd", help=f"a subset of {','.join(KERNELS)} (default fwd,bwd)")
    parser.add_argument("--sweep", action="store_true", help="also every combination of SWEEP's tile options")
    parser.add_argument("--grid", default=None,
                        help="with --sweep and one op: its options to sweep, e.g. 'block_t=32,64;block_d=64,128'")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="fewer profiled calls")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    shapes = parsed_shapes(parser, args.shapes)
    ops = [o for o in args.ops.split(",") if o]
    if not ops or any(o not in KERNELS for o in ops):
        parser.error(f"--ops: expected a subset of {','.join(KERNELS)}, got {args.ops!r}")
    try:
        grid = parse_grid(args.grid) if args.grid else None
    except ValueError as e:
        parser.error(f"--grid: {e}")
    if grid and len(ops) != 1:
        parser.error("--grid: expected a single op in --ops")
    device = torch.device(args.device)
    copy_bw = timing.copy_bandwidth_GBps(device, args.quick)
    print(f"# Kernel breakdown, {device}, copy bandwidth {copy_bw:.0f} GB/s\n")
    print("kernel cells: GPU us per call (registers per thread / spilled registers / shared KB[/wgmma])\n")
    print("| shape | op | options | us | time / floor | kernels | accuracy rule |")
    print("|---|---|---|---|---|---|---|")
    for shape in shapes:
        t = goldens.shape_inputs(shape, device, tuple(ops))
        for op in ops:
            refs = goldens.references(op, t)
            for options in configs(op, args.sweep, grid):
                print(format_row(measure(op, shape, options, t, refs, device, copy_bw, args.quick)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
