"""The mHC ops (mhc_pre, sinkhorn, mhc_post, the whole layer) against the memory-traffic floor.

    PYTHONPATH=. python -m benchmarks.run [--shapes default] [--ops fwd,bwd,...] [--impls NAME,...]
                                          [--host auto] [--out benchmarks/results] [--quick] [--device cuda]

For each shape and op, every implementation of the impl table (IMPLS) is called once and checked
against the golden by the accuracy rule (mhc_ops.golden.accuracy) on every output of the op; a row
that fails is reported as a failure and never timed. A passing row is timed by the median of
triton.testing.do_bench, which zeroes a 256 MB buffer before every timed call, so no input is served
from L2 (50 MB on an H100). Its floor is the op's minimal bytes (floors.bytes_per_token, docs/perf.md) over
the device-to-device copy bandwidth measured at the start of the same run (bytes read + written).

The ops: mhc_pre's forward (fwd) and backward (bwd; bwd_gxp with the grad_x_post a layer passes);
sinkhorn_fwd / sinkhorn_bwd (logits [.., n, n] fp32, 20 iterations); post_fwd / post_bwd; step, a
training step through mhc_pre's autograd (forward, then backward of its three outputs); layer_fwd,
layer_bwd and layer_step through mhc_ops.nn.HyperConnection around an identity branch. A composite
row (step, layer_*) also reports vs_parts: its time over the sum of its separately measured parts
(PARTS), so a layer backward that ran an extra [T, n, D] add would show it.

First, benchmarks/host.py measures the host (CPU) time per call of the training path at T = 1 and
T = 4096 (--host): short, so a long run cut short still has it.

Output: markdown tables on stdout; one JSON object per row appended to OUT/<gpu>-<date>.jsonl as
each shape completes; PNG plots next to it at the end (time / floor per op, speedup over
torch.compile of the golden, host time).

--device cpu (the default without CUDA) runs the Triton kernels through the interpreter and times
with time.perf_counter medians: a smoke test of this module (--shapes tiny), not a measurement.

The modules, by concern: goldens.py (the ops' inputs, outputs and goldens; the inputs of a shape; the
accuracy references), impls.py (IMPLS, PARTS), floors.py (bytes and floors), timing.py (medians, copy
bandwidth, extra memory), report.py (table, JSON lines); this one measures the rows and is the CLI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pathlib
import sys
import time
from collections.abc import Callable, Mapping

import torch

# A Triton kernel decides when it is defined (at the import of mhc_ops) whether it runs compiled or
# through the interpreter; without CUDA only the interpreter can run it, on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402

from . import host, plots  # noqa: E402
from .floors import floor_ms, op_bytes  # noqa: E402
from .goldens import OP_ARGS, OPS, TN_OPS, Tensors, badness, judge_outputs, references, shape_inputs  # noqa: E402
from .impls import COMPILE_IMPL, IMPLS, PARTS, PARTS_IMPL, UNAVAILABLE, Factory  # noqa: E402
from .report import ROW_KEYS, append_jsonl, format_table, gpu_tag, jsonl_path  # noqa: E402
from .shapes import SHAPE_SETS, X_DTYPE, Shape, parse_shapes, parsed_device, parsed_subset  # noqa: E402
from .timing import copy_bandwidth_GBps, extra_memory_bytes, median_ms  # noqa: E402

SHORT_OPS = tuple(op for op in OPS if op not in ("fwd", "bwd"))  # timed at timing.SHORT_DO_BENCH_MS


# ---- one row ------------------------------------------------------------------------------------


def measure(op: str, factory: Factory, args: Tensors, refs: tuple[tuple, tuple], device, quick: bool) -> dict:
    """Check first, then time: the row's status, accuracy and (only when it passes) time and memory."""
    try:
        fn = factory(args)
        outs = fn(args)  # first call: any compilation happens here, never inside the timing
    except UNAVAILABLE as e:
        return {"status": "unavailable", "ok": None, "reason": f"{type(e).__name__}: {e}"}
    except Exception as e:  # one broken impl must not end a long run: it becomes an error row
        return {"status": "error", "ok": False, "reason": f"{type(e).__name__}: {e}"}
    verdicts = judge_outputs(op, outs, *refs)
    del outs
    worst = max(verdicts, key=badness)
    row = {"worst_output": worst.name, "worst_err": worst.err, "worst_bound": worst.bound}
    failed = [v for v in verdicts if not v.ok]
    if failed:
        return row | {"status": "FAIL", "ok": False, "reason": "; ".join(str(v) for v in failed)}
    try:
        row["ms"] = median_ms(lambda: fn(args), device, quick, short=op in SHORT_OPS)
        if device.type == "cuda":
            row["extra_mem_bytes"] = extra_memory_bytes(fn, args, device)
    except Exception as e:
        return row | {"status": "error", "ok": False, "reason": f"{type(e).__name__}: {e}"}
    return row | {"status": "ok", "ok": True}


def bench_op(op: str, shape: Shape, tensors: Tensors, impls: Mapping[str, Factory], env: dict) -> list[dict]:
    """Every impl of one op at one shape; env holds the run's fields (device, copy_bw_GBps, ...)."""
    device, quick = env["device"], env["quick"]
    args = {k: tensors[k] for k in OP_ARGS[op]}
    main_input = args[OP_ARGS[op][0]]  # x (post.x for post, logits for sinkhorn): extra memory is a fraction of it
    nbytes = op_bytes(op, shape.T, shape.n, shape.D, getattr(torch, X_DTYPE).itemsize)
    floor = floor_ms(nbytes, env["copy_bw_GBps"])
    refs = references(op, args)
    B, S = shape.lead
    base = {"op": op, "T": shape.T, "n": shape.n, "D": shape.D, "B": B, "S": S, "dtype": X_DTYPE}
    base |= {"bytes": nbytes, "floor_ms": floor} | {k: v for k, v in env.items() if k in ROW_KEYS}
    rows = []
    for name, factory in impls.items():
        row = dict.fromkeys(ROW_KEYS) | base | {"impl": name}
        row |= measure(op, factory, args, refs, device, quick)
        if row["ms"] is not None:
            row["x_floor"] = row["ms"] / floor
        if row["extra_mem_bytes"] is not None:
            row["extra_mem_frac_x"] = row["extra_mem_bytes"] / (main_input.numel() * main_input.element_size())
        rows.append(row)
    compiled = next((r["ms"] for r in rows if r["impl"] == COMPILE_IMPL), None)
    for row in rows:
        if compiled is not None and row["ms"] is not None:
            row["speedup_vs_compile"] = compiled / row["ms"]
    return rows


def add_parts(rows: list[dict]) -> None:
    """parts_ms and vs_parts of the composite rows of PARTS_IMPL, from the rows of their parts (all
    timed, or both stay None)."""

    def key(op, T, n, D):
        return (op, T, n) if op in TN_OPS else (op, T, n, D)

    timed = {(*key(r["op"], r["T"], r["n"], r["D"]), r["impl"]): r["ms"] for r in rows if r["ms"] is not None}
    for row in rows:
        if row["op"] not in PARTS or row["impl"] != PARTS_IMPL or row["ms"] is None:
            continue
        parts = [timed.get((*key(op, row["T"], row["n"], row["D"]), impl)) for op, impl in PARTS[row["op"]]]
        if None not in parts:
            row["parts_ms"] = sum(parts)
            row["vs_parts"] = row["ms"] / row["parts_ms"]


# ---- the run ------------------------------------------------------------------------------------


def run_env(device: torch.device, quick: bool) -> dict:
    """The fields every row of one run shares; the copy bandwidth is measured here."""
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    now = dt.datetime.now()
    return {
        "start": time.perf_counter(),  # of the run, for the time budget
        "device": device,
        "quick": quick,
        "gpu": gpu_tag(device_name),
        "device_name": device_name,
        "date": now.date().isoformat(),
        "run": now.isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "copy_bw_GBps": copy_bandwidth_GBps(device, quick),
    }


def run(
    shapes: list[Shape],
    ops: tuple[str, ...],
    impls: Mapping[str, Mapping[str, Factory]],
    env: dict,
    sink: Callable[[list[dict]], object] = lambda rows: None,
    time_budget_s: float | None = None,
) -> list[dict]:
    """Every op at every shape; each shape's rows go to sink as soon as they are complete (a run cut
    short keeps what it measured). With time_budget_s, no shape starts once that many seconds have
    passed since env was made: the remaining shapes are skipped, and said so."""
    rows = []
    seen_tn = set()  # (T, n) at which the TN_OPS ran already
    for i, shape in enumerate(shapes, 1):
        elapsed = time.perf_counter() - env["start"]
        if time_budget_s is not None and elapsed > time_budget_s:
            skipped = ", ".join(s.label for s in shapes[i - 1 :])
            print(f"time budget of {time_budget_s:g} s spent after {elapsed:.0f} s: skipped {skipped}", file=sys.stderr)
            break
        shape_ops = tuple(op for op in ops if op not in TN_OPS or (shape.T, shape.n) not in seen_tn)
        seen_tn.add((shape.T, shape.n))
        print(
            f"[{i}/{len(shapes)}, {elapsed:.0f} s] {shape.label}: {', '.join(shape_ops)}", file=sys.stderr, flush=True
        )
        torch._dynamo.reset()  # fresh torch.compile graphs for this shape (see _compile)
        tensors = shape_inputs(shape, env["device"], shape_ops)
        shape_rows = []
        for op in shape_ops:
            shape_rows += bench_op(op, shape, tensors, impls[op], env)
        del tensors
        if env["device"].type == "cuda":
            torch.cuda.empty_cache()
        rows += shape_rows
        add_parts(rows)  # a composite's parts are at its shape, or (sinkhorn) at an earlier one
        sink(shape_rows)
    return rows


# ---- the command line ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None, impls: Mapping[str, Mapping[str, Factory]]) -> argparse.Namespace:
    names = list(dict.fromkeys(name for table in impls.values() for name in table))
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--shapes",
        default="default",
        help=f"comma-separated TxnxD (e.g. 16384x4x7168) or named sets: {', '.join(SHAPE_SETS)} (default: default)",
    )
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)} (default: all)")
    p.add_argument("--impls", default=None, help=f"comma-separated subset of: {', '.join(names)} (default: all)")
    p.add_argument(
        "--host",
        default="auto",
        help="shapes of the host-time rows (benchmarks/host.py), as --shapes; 'auto': 'host' (1x4x4096,4096x4x4096) "
        "on CUDA, 'host-tiny' on CPU; 'none': no host rows",
    )
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"), help="results folder")
    p.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="start no new shape after this many seconds of the run (a shape takes up to about a minute on an "
        "H200, mostly torch.compile of the goldens); the rest are skipped and said so (default: no limit)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda[:i] or cpu")
    args = p.parse_args(argv)
    args.device = parsed_device(p, args.device, "the interpreter smoke test")
    if args.host == "auto":
        args.host = "host" if args.device.type == "cuda" else "host-tiny"
    try:
        args.shapes = parse_shapes(args.shapes)
        args.host = [] if args.host == "none" else parse_shapes(args.host)
    except ValueError as e:
        p.error(str(e))
    args.ops = parsed_subset(p, "--ops", args.ops, OPS)
    if args.impls is not None:
        args.impls = {s.strip() for s in args.impls.split(",") if s.strip()}
        if not args.impls or args.impls - set(names):
            p.error(f"--impls: expected a comma-separated subset of {', '.join(names)}")
    return args


def main(
    argv: list[str] | None = None,
    impls: Mapping[str, Mapping[str, Factory]] = IMPLS,
    host_ops: Mapping[str, host.Setup] = host.OPS,
) -> list[dict]:
    """Run, print the tables, append the JSON lines, draw the plots; returns the rows in the order
    written: the host rows first (short, and not lost if a long run is cut), then the op rows."""
    args = parse_args(argv, impls)
    if args.device.type == "cuda":
        torch.cuda.set_device(args.device)
    chosen = {op: {k: f for k, f in impls[op].items() if args.impls is None or k in args.impls} for op in args.ops}
    env = run_env(args.device, args.quick)
    path = jsonl_path(env, args.out)
    host_rows = [dict.fromkeys(ROW_KEYS) | r for r in host.run(args.host, host_ops, env)] if args.host else []
    append_jsonl(host_rows, path)
    rows = run(args.shapes, args.ops, chosen, env, lambda shape_rows: append_jsonl(shape_rows, path), args.time_budget)
    if not rows + host_rows:
        raise SystemExit("no rows: --impls selects no implementation of the chosen --ops, and --host is none")
    print(
        f"mHC ops on {env['device_name']}: copy bandwidth {env['copy_bw_GBps']:.0f} GB/s (read + write), "
        f"torch {env['torch']}, triton {env['triton']}{', quick' if args.quick else ''}\n"
    )
    if rows:
        print(format_table(rows))
    if host_rows:
        print("\nHost time per call (benchmarks/host.py):\n")
        print(host.format_table(host_rows))
    rows = host_rows + rows
    pngs = plots.write_plots(rows, args.out, path.stem)
    print(f"\nrows appended to {path}; plots: {', '.join(str(p) for p in pngs)}")
    return rows


if __name__ == "__main__":
    main()
