"""mhc_pre forward and backward against the memory-traffic floor.

    PYTHONPATH=. python -m benchmarks.run [--shapes default] [--ops fwd,bwd] [--impls NAME,...]
                                          [--out benchmarks/results] [--quick] [--device cuda]

For each shape and op, every implementation of the impl table (IMPLS) is called once and checked
against the golden by the accuracy rule (mhc_ops.golden.accuracy) on every output of the op; a row
that fails is reported as a failure and never timed. A passing row is timed by the median of
triton.testing.do_bench, which zeroes a 256 MB buffer before every timed call, so no input is served
from L2 (50 MB on an H100). Its floor is the op's minimal bytes (bytes_per_token, docs/perf.md) over
the device-to-device copy bandwidth measured at the start of the same run (bytes read + written).

Output: a markdown table on stdout; one JSON object per row appended to OUT/<gpu>-<date>.jsonl; PNG
plots next to it (time / floor per op, speedup over torch.compile of the golden).

--device cpu (the default without CUDA) runs the Triton kernels through the interpreter and times
with time.perf_counter medians: a smoke test of this module (--shapes tiny), not a measurement.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import pathlib
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping

import torch

# A Triton kernel decides when it is defined (at the import of mhc_ops) whether it runs compiled or
# through the interpreter; without CUDA only the interpreter can run it, on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.testing  # noqa: E402

import mhc_ops  # noqa: E402
from mhc_ops import golden  # noqa: E402
from mhc_ops.golden.accuracy import Verdict  # noqa: E402
from mhc_ops.golden.fixtures import make_inputs  # noqa: E402

from . import plots  # noqa: E402
from .shapes import GAMMA, SEED, SHAPE_SETS, X_DTYPE, Shape, parse_shapes  # noqa: E402

OPS = ("fwd", "bwd")
# The op's inputs, positional in this order, and its outputs, in the order the op returns them.
OP_ARGS = {
    "fwd": ("x", "phi", "alpha", "bias", "gamma"),
    "bwd": ("x", "phi", "alpha", "dh_in", "dh_post", "dh_res", "inv_rms", "h_mix", "h_pre", "h_post", "gamma"),
}
OP_OUTPUTS = {
    "fwd": ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre"),
    "bwd": ("dx", "dphi", "dalpha", "dbias", "dgamma"),
}
GOLDEN = {"fwd": golden.mhc_pre_forward, "bwd": golden.mhc_pre_backward}
# Forward outputs the backward takes as inputs (saved tensors), stored in fp32.
SAVED = ("inv_rms", "h_mix", "h_pre", "h_post")

COMPILE_IMPL = "golden.compile"  # the baseline of speedup_vs_compile
# Raised by an impl that does not exist yet (e.g. a `plan` the op does not take): the row is
# reported as unavailable.
UNAVAILABLE = (TypeError, NotImplementedError)

# Timing: triton.testing.do_bench (warmup_ms, rep_ms) on CUDA; timed calls of the CPU fallback.
DO_BENCH_MS = {False: (25, 200), True: (10, 50)}
CPU_REPS = {False: 10, True: 3}
# The copy that measures bandwidth: large enough that L2 plays no part on a GPU.
COPY_BYTES = {"cuda": 1 << 30, "cpu": 64 << 20}

Tensors = Mapping[str, torch.Tensor | None]
OpFn = Callable[[Tensors], tuple]  # named input tensors -> outputs in OP_OUTPUTS order
Factory = Callable[[], OpFn]  # called once per shape (a fresh torch.compile per shape)


def positional(fn: Callable, op: str, **options) -> OpFn:
    """``fn(*the op's inputs in OP_ARGS order, **options)`` as a function of the named tensors."""
    names = OP_ARGS[op]
    return lambda t: fn(*(t[k] for k in names), **options)


def compiled_golden(op: str) -> OpFn:
    # Mode default. dynamic=False specialises the graph to the shape; the driver resets dynamo
    # before each shape, so the recompile limit is never reached (past it dynamo runs eager silently).
    return positional(torch.compile(GOLDEN[op], dynamic=False), op, compute_dtype=torch.float32)


# op -> impl name -> factory. Ours are named "mhc_ops[.variant]"; a new variant is one entry here.
IMPLS: dict[str, dict[str, Factory]] = {
    "fwd": {
        "mhc_ops": lambda: positional(mhc_ops.mhc_pre_forward, "fwd", backend="triton"),
        "golden.eager": lambda: positional(golden.mhc_pre_forward, "fwd", compute_dtype=torch.float32),
        "golden.compile": lambda: compiled_golden("fwd"),
    },
    "bwd": {
        "mhc_ops.staged": lambda: positional(mhc_ops.mhc_pre_backward, "bwd", backend="triton", plan="staged"),
        "mhc_ops.fused": lambda: positional(mhc_ops.mhc_pre_backward, "bwd", backend="triton", plan="fused"),
        "golden.eager": lambda: positional(golden.mhc_pre_backward, "bwd", compute_dtype=torch.float32),
        "golden.compile": lambda: compiled_golden("bwd"),
    },
}


# ---- floors -------------------------------------------------------------------------------------


def bytes_per_token(op: str, n: int, D: int, x_bytes: int, grad_x_post: bool = False) -> int:
    """Minimal device-memory bytes per token: each input read once, each output written once.

    fwd: read x (nD), write h_in (D), both in x's dtype (x_bytes per element), and write the fp32
    side outputs. bwd: read x and write dx (nD each), read dh_in (D), read the fp32 side inputs;
    grad_x_post adds one more nD read. Both count 2n² + 4n + 1 fp32 side values, as the contract's
    floor table does (docs/perf.md).
    """
    side = 4 * (2 * n * n + 4 * n + 1)
    if op == "fwd":
        return x_bytes * n * D + x_bytes * D + side
    if op == "bwd":
        return (3 if grad_x_post else 2) * x_bytes * n * D + x_bytes * D + side
    raise ValueError(f"op: expected one of {OPS}, got {op!r}")


def op_bytes(op: str, T: int, n: int, D: int, x_bytes: int, grad_x_post: bool = False) -> int:
    return T * bytes_per_token(op, n, D, x_bytes, grad_x_post)


def floor_ms(nbytes: int, copy_bw_GBps: float) -> float:
    """Time to move nbytes at the measured copy bandwidth (GB/s = 1e9 bytes/s, read + written)."""
    return nbytes / (copy_bw_GBps * 1e6)


# ---- timing -------------------------------------------------------------------------------------


def median_ms(fn: Callable[[], object], device: torch.device, quick: bool) -> float:
    """Median time of one call in ms. CUDA: do_bench, L2 flushed before every call. CPU: perf_counter
    around each call after one warm-up call."""
    if device.type == "cuda":
        warmup, rep = DO_BENCH_MS[quick]
        return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    fn()
    times = []
    for _ in range(CPU_REPS[quick]):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def copy_bandwidth_GBps(device: torch.device, quick: bool) -> float:
    """Device-to-device copy bandwidth, counting bytes read + written, in GB/s."""
    nbytes = COPY_BYTES[device.type]
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, quick)
    return 2 * nbytes / (ms * 1e6)


def extra_memory_bytes(fn: OpFn, args: Tensors, device: torch.device) -> int:
    """Peak device memory of one call above what was allocated before it (the inputs), less the
    outputs' own storage."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    outs = fn(args)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    storages = {o.untyped_storage().data_ptr(): o.untyped_storage().nbytes() for o in outs if o is not None}
    return peak - before - sum(storages.values())


# ---- accuracy -----------------------------------------------------------------------------------


def _fp64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.double()


def references(op: str, args: Tensors) -> tuple[tuple, tuple]:
    """(fp64 golden on the inputs upcast to float64, fp32 golden): the two sides of the accuracy rule."""
    names = OP_ARGS[op]
    ref64 = GOLDEN[op](*(_fp64(args[k]) for k in names), compute_dtype=torch.float64)
    ref32 = GOLDEN[op](*(args[k] for k in names), compute_dtype=torch.float32)
    return ref64, ref32


def judge_outputs(op: str, outs, ref64: tuple, ref32: tuple) -> list[Verdict]:
    """One verdict per output of the op; a missing output or one of the wrong shape fails."""
    outs = tuple(outs) + (None,) * (len(OP_OUTPUTS[op]) - len(outs))
    verdicts = []
    for name, out, r64, r32 in zip(OP_OUTPUTS[op], outs, ref64, ref32):
        if out is None and r64 is None:  # dgamma without gamma
            continue
        if out is None or r64 is None or tuple(out.shape) != tuple(r64.shape):
            verdicts.append(Verdict(name, math.inf, math.nan, 0.0))
        else:
            verdicts.append(golden.judge(name, out, r64, r32))
    return verdicts


def _badness(v: Verdict) -> float:
    """err / bound, NaN as infinitely bad: the worst output has the largest."""
    if math.isnan(v.err):
        return math.inf
    return v.err / v.bound if v.bound > 0 else math.inf


# ---- one row ------------------------------------------------------------------------------------


def measure(op: str, factory: Factory, args: Tensors, refs: tuple[tuple, tuple], device, quick: bool) -> dict:
    """Check first, then time: the row's status, accuracy and (only when it passes) time and memory."""
    try:
        fn = factory()
        outs = fn(args)  # first call: any compilation happens here, never inside the timing
    except UNAVAILABLE as e:
        return {"status": "unavailable", "ok": None, "reason": f"{type(e).__name__}: {e}"}
    except Exception as e:  # one broken impl must not end a long run: it becomes an error row
        return {"status": "error", "ok": False, "reason": f"{type(e).__name__}: {e}"}
    verdicts = judge_outputs(op, outs, *refs)
    del outs
    worst = max(verdicts, key=_badness)
    row = {"worst_output": worst.name, "worst_err": worst.err, "worst_bound": worst.bound}
    failed = [v for v in verdicts if not v.ok]
    if failed:
        return row | {"status": "FAIL", "ok": False, "reason": "; ".join(str(v) for v in failed)}
    try:
        row["ms"] = median_ms(lambda: fn(args), device, quick)
        if device.type == "cuda":
            row["extra_mem_bytes"] = extra_memory_bytes(fn, args, device)
    except Exception as e:
        return row | {"status": "error", "ok": False, "reason": f"{type(e).__name__}: {e}"}
    return row | {"status": "ok", "ok": True}


ROW_KEYS = (
    "op", "impl", "T", "n", "D", "B", "S", "dtype", "ms", "floor_ms", "x_floor", "speedup_vs_compile",
    "status", "ok", "worst_output", "worst_err", "worst_bound", "extra_mem_bytes", "extra_mem_frac_x",
    "bytes", "copy_bw_GBps", "gpu", "device_name", "date", "run", "quick", "torch", "triton", "reason",
)  # fmt: skip


def bench_op(op: str, shape: Shape, tensors: Tensors, impls: Mapping[str, Factory], env: dict) -> list[dict]:
    """Every impl of one op at one shape; env holds the run's fields (device, copy_bw_GBps, ...)."""
    device, quick = env["device"], env["quick"]
    args = {k: tensors[k] for k in OP_ARGS[op]}
    x = args["x"]
    nbytes = op_bytes(op, shape.T, shape.n, shape.D, x.element_size())
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
            row["extra_mem_frac_x"] = row["extra_mem_bytes"] / (x.numel() * x.element_size())
        rows.append(row)
    compiled = next((r["ms"] for r in rows if r["impl"] == COMPILE_IMPL), None)
    for row in rows:
        if compiled is not None and row["ms"] is not None:
            row["speedup_vs_compile"] = compiled / row["ms"]
    return rows


def shape_inputs(shape: Shape, device: torch.device, ops: tuple[str, ...]) -> dict[str, torch.Tensor | None]:
    """Fresh random inputs; for bwd also the saved forward tensors, from the fp64 golden rounded to fp32."""
    case = golden.Case(lead=shape.lead, n=shape.n, D=shape.D, dtype=X_DTYPE, seed=SEED, gamma=GAMMA)
    tensors = make_inputs(case, device)
    if "bwd" in ops:
        fwd64 = GOLDEN["fwd"](*(_fp64(tensors[k]) for k in OP_ARGS["fwd"]), compute_dtype=torch.float64)
        fwd64 = dict(zip(OP_OUTPUTS["fwd"], fwd64))
        tensors |= {k: fwd64[k].float() for k in SAVED}
    return tensors


# ---- the run ------------------------------------------------------------------------------------


def gpu_tag(device_name: str) -> str:
    """A file-name tag for the device: 'NVIDIA H100 80GB HBM3' -> 'h100' (the first model-like word,
    letters then digits), otherwise the whole name in lower case with '-' for anything else."""
    name = device_name.lower()
    m = re.search(r"\b[a-z]{1,2}\d{1,4}[a-z]?\b", name)
    return m.group(0) if m else re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def run(
    shapes: list[Shape], ops: tuple[str, ...], impls: Mapping[str, Mapping[str, Factory]], device, quick: bool
) -> list[dict]:
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    now = dt.datetime.now()
    env = {
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
    rows = []
    for i, shape in enumerate(shapes, 1):
        print(f"[{i}/{len(shapes)}] {shape.label}: {', '.join(ops)}", file=sys.stderr, flush=True)
        torch._dynamo.reset()  # fresh torch.compile graphs for this shape (see compiled_golden)
        tensors = shape_inputs(shape, device, ops)
        for op in ops:
            rows += bench_op(op, shape, tensors, impls[op], env)
        del tensors
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---- output -------------------------------------------------------------------------------------

TABLE_COLUMNS = (
    "op", "impl", "T", "n", "D", "ms", "floor_ms", "x_floor", "speedup_vs_compile", "extra_mem_frac_x", "accuracy",
)  # fmt: skip
NUMBER_FORMAT = {
    "ms": ".4g",
    "floor_ms": ".4g",
    "x_floor": ".3g",
    "speedup_vs_compile": ".3g",
    "extra_mem_frac_x": ".3f",
}


def accuracy_cell(row: Mapping) -> str:
    status = row["status"]
    if status in ("ok", "FAIL"):
        rel = "<=" if status == "ok" else ">"
        return f"{status} ({row['worst_output']} {row['worst_err']:.2e} {rel} {row['worst_bound']:.2e})"
    reason = " ".join(str(row["reason"]).split())
    return f"{status} ({reason[:80]})"


def format_table(rows: list[Mapping]) -> str:
    def cell(row: Mapping, key: str) -> str:
        if key == "accuracy":
            return accuracy_cell(row).replace("|", "\\|")
        value = row[key]
        if value is None:
            return "-"
        return format(value, NUMBER_FORMAT[key]) if key in NUMBER_FORMAT else str(value)

    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(r, k) for k in TABLE_COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def _json_value(value):
    # Strict JSON has no NaN or infinity (a NaN output's error): they are written as null.
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_jsonl(rows: list[Mapping], out: pathlib.Path) -> pathlib.Path:
    """Append one JSON object per row to OUT/<gpu>-<date>.jsonl (rows of one run share `run`)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{rows[0]['gpu']}-{rows[0]['date']}.jsonl"
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps({k: _json_value(row[k]) for k in ROW_KEYS}, allow_nan=False) + "\n")
    return path


def parse_args(argv: list[str] | None, impls: Mapping[str, Mapping[str, Factory]]) -> argparse.Namespace:
    names = list(dict.fromkeys(name for table in impls.values() for name in table))
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--shapes",
        default="default",
        help=f"comma-separated TxnxD (e.g. 16384x4x7168) or named sets: {', '.join(SHAPE_SETS)} (default: default)",
    )
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of fwd,bwd (default: both)")
    p.add_argument("--impls", default=None, help=f"comma-separated subset of: {', '.join(names)} (default: all)")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"), help="results folder")
    p.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda[:i] or cpu")
    args = p.parse_args(argv)
    try:
        args.shapes = parse_shapes(args.shapes)
    except ValueError as e:
        p.error(str(e))
    args.ops = tuple(dict.fromkeys(s.strip() for s in args.ops.split(",") if s.strip()))
    if not args.ops or set(args.ops) - set(OPS):
        p.error(f"--ops: expected a comma-separated subset of {', '.join(OPS)}, got {','.join(args.ops)!r}")
    if args.impls is not None:
        args.impls = {s.strip() for s in args.impls.split(",") if s.strip()}
        if not args.impls or args.impls - set(names):
            p.error(f"--impls: expected a comma-separated subset of {', '.join(names)}")
    args.device = torch.device(args.device)
    if args.device.type not in ("cuda", "cpu"):
        p.error(f"--device: expected cuda[:i] or cpu, got {args.device}")
    if args.device.type == "cuda":
        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device here (--device cpu runs the interpreter smoke test)")
        if args.device.index is None:
            args.device = torch.device("cuda", torch.cuda.current_device())
    return args


def main(argv: list[str] | None = None, impls: Mapping[str, Mapping[str, Factory]] = IMPLS) -> list[dict]:
    """Run, print the table, append the JSON lines, draw the plots; returns the rows."""
    args = parse_args(argv, impls)
    if args.device.type == "cuda":
        torch.cuda.set_device(args.device)
    chosen = {op: {k: f for k, f in impls[op].items() if args.impls is None or k in args.impls} for op in args.ops}
    rows = run(args.shapes, args.ops, chosen, args.device, args.quick)
    if not rows:
        raise SystemExit("no rows: --impls selects no implementation of the chosen --ops")
    first = rows[0]
    print(
        f"mhc_pre on {first['device_name']}: copy bandwidth {first['copy_bw_GBps']:.0f} GB/s (read + write), "
        f"torch {first['torch']}, triton {first['triton']}{', quick' if args.quick else ''}\n"
    )
    print(format_table(rows))
    path = write_jsonl(rows, args.out)
    pngs = plots.write_plots(rows, args.out, path.stem)
    print(f"\nrows appended to {path}; plots: {', '.join(str(p) for p in pngs)}")
    return rows


if __name__ == "__main__":
    main()
