"""The mHC layer step under the execution modes frameworks use: eager, torch.compile, reduce-overhead
and a manual CUDA graph, each against the step's CUDA-graph GPU time.

    PYTHONPATH=. python -m benchmarks.layer_modes [--shapes 1x4x4096,1024x4x4096,4096x4x4096,16384x4x7168]
        [--modes eager,compile,reduce-overhead,graph] [--steps N] [--backend auto] [--out benchmarks/results]
        [--device cuda]

The layer is ``HyperConnection(D, n, branch=torch.nn.Identity())`` (identity init, no gamma, fp32
parameters) on bf16 x of shape [T, n, D] that requires grad; one step sets the grads of x and of
every parameter to None, runs the forward and ``out.backward(dout)`` with a fixed random dout. Each
mode runs on its own copy of the layer and of x: a CUDA-graph capture turns the weight cache off for
the weights it saw (kernels/_cache.py), which must not slow the other modes' eager kernels.

- ``eager``: plain calls.
- ``compile``: ``torch.compile(layer, fullgraph=True, dynamic=False)``, default mode (on CPU
  ``backend="eager"``: no inductor, a tracing smoke test).
- ``reduce-overhead``: ``torch.compile(layer, mode="reduce-overhead", fullgraph=True)``, with
  ``torch.compiler.cudagraph_mark_step_begin()`` before each step (CUDA only).
- ``graph``: the eager step captured once in a CUDA graph (after warm-up steps on a side stream,
  benchmarks/host.py capture_graph) and replayed (CUDA only).

Per shape and mode, one row:

- wall_us: a loop of --steps steps with no synchronisation inside, after warm-up steps, timed up to a
  synchronize after it, divided by the steps (the median of LOOPS loops); host_us: the same loop
  timed before that synchronize (what the host took to issue the steps). For ``graph``, wall_us is
  graph_us.
- graph_us: the GPU time of one step: the ``graph`` mode's replays (--steps of them, between CUDA
  events), measured once per shape (whatever --modes says) and repeated in every row of that shape;
  ratio = wall_us / graph_us (1 when the GPU is the bottleneck, above it by the host's overhead).
- launches: the kernel events the profiler (ProfilerActivity.CUDA) records for one step of the mode
  (for the CUDA-graph modes, the kernels one step's replays ran; a capture rebuilds the bf16 weight
  split that eager finds cached, one kernel more, kernels/_cache.py); launch_calls: the launch API calls
  it records on the host (cudaLaunchKernel, cuLaunchKernelEx, cudaGraphLaunch, ...; a driver launch
  the profiler does not trace is not counted); host_us_per_launch (eager) = wall_us / launches.
- kernel_us (``graph``): the sum of those kernels' own GPU times in one replay, kernel_times each kernel's
  (by name, summed over its launches), and gap_us = graph_us - kernel_us: the step's time outside its
  kernels (launch gaps and tails between them; docs/perf.md, Performance XIV).
- accuracy: one step of the mode, after its warm-up steps, checked before it is timed: every output
  and gradient (out, dx, dphi, dalpha, dbias) by the accuracy rule (mhc_ops.golden.accuracy) against
  the fp64 golden of the layer step on the same inputs, as benchmarks/run.py's layer_step rows; two
  modes that both pass are within twice the rule's bound of each other. vs_eager_err: the largest
  norm-wise relative difference of those tensors to eager's. A mode that fails the rule has status
  FAIL and no time; one that raises has status error and the exception's first line as its reason;
  either way the other modes run. On CPU the CUDA-only modes are rows with status skipped.

Output: a markdown table on stdout; one JSON object per row appended to
OUT/<gpu>-<date>-layer-modes.jsonl as each shape completes.
"""

from __future__ import annotations

import argparse
import copy
import os
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

# As benchmarks/run.py: without CUDA, the Triton kernels (defined at the import of mhc_ops) can only
# run through the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import mhc_ops  # noqa: E402
from mhc_ops.golden.accuracy import rel_err  # noqa: E402
from mhc_ops.nn import HyperConnection  # noqa: E402

from . import goldens, host, report, run  # noqa: E402
from .shapes import SEED, X_DTYPE, Shape, parsed_device, parsed_shapes, parsed_subset  # noqa: E402

DEFAULT_SHAPES = "1x4x4096,1024x4x4096,4096x4x4096,16384x4x7168"
OP = "layer_step"  # benchmarks/goldens.py's name for the same step: its golden and output names
OUTPUTS = goldens.OP_OUTPUTS[OP]  # out, dx, dphi, dalpha, dbias, dgamma
STEPS = {"cuda": 100, "cpu": 1}  # default --steps
# Steps before the checked one (reduce-overhead records its graphs here), and before the timed loops
# (after the profiled step). On CPU none: the test's smoke run stays short.
WARMUP = {"cuda": 5, "cpu": 0}
LOOP_WARMUP = {"cuda": 2, "cpu": 0}
LOOPS = {"cuda": 3, "cpu": 1}  # timed loops of --steps steps; the row has their median
LAUNCH_APIS = frozenset({
    "cudaLaunchKernel", "cudaLaunchKernelExC", "cudaLaunchCooperativeKernel", "cuLaunchKernel", "cuLaunchKernelEx",
    "cudaGraphLaunch", "cuGraphLaunch",
})  # fmt: skip

ROW_KEYS = (
    "op", "mode", "T", "n", "D", "dtype", "backend", "steps", "wall_us", "host_us", "graph_us", "ratio", "launches",
    "launch_calls", "host_us_per_launch", "kernel_us", "kernel_times", "gap_us", "status", "ok", "worst_output", "worst_err", "worst_bound", "vs_eager_err",
    "reason", "gpu", "device_name", "date", "run", "torch", "triton",
)  # fmt: skip
ENV_KEYS = ("gpu", "device_name", "date", "run", "torch", "triton")


@dataclass(frozen=True)
class Mode:
    """wrap(layer, device) -> the callable a step runs x through; None: the manual CUDA graph of the
    eager step. cuda_only: a skipped row on CPU. mark_step: cudagraph_mark_step_begin() first."""

    wrap: Callable[[torch.nn.Module, torch.device], Callable] | None
    cuda_only: bool = False
    mark_step: bool = False


def _compiled(layer: torch.nn.Module, device: torch.device) -> Callable:
    options = {} if device.type == "cuda" else {"backend": "eager"}
    return torch.compile(layer, fullgraph=True, dynamic=False, **options)


def _reduce_overhead(layer: torch.nn.Module, device: torch.device) -> Callable:
    return torch.compile(layer, mode="reduce-overhead", fullgraph=True)


MODES: dict[str, Mode] = {
    "eager": Mode(lambda layer, device: layer),
    "compile": Mode(_compiled),
    "reduce-overhead": Mode(_reduce_overhead, cuda_only=True, mark_step=True),
    "graph": Mode(None, cuda_only=True),
}
GRAPH = "graph"


# ---- the step -----------------------------------------------------------------------------------


@dataclass
class Case:
    """One shape's inputs: the layer every mode copies, x and dout, and the golden's two references."""

    layer: HyperConnection
    x: torch.Tensor
    dout: torch.Tensor
    refs: tuple[tuple, tuple]


def make_case(shape: Shape, device: torch.device, backend: str) -> Case:
    """The layer (parameters from the seeded default init), x and dout ~ N(0, 1) in bf16, and the fp64
    and fp32 golden of the layer step on them (benchmarks/goldens.py references)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        layer = HyperConnection(shape.D, shape.n, branch=torch.nn.Identity(), backend=backend)
    layer = layer.to(device)
    g = torch.Generator(device=device).manual_seed(SEED)
    dtype = getattr(torch, X_DTYPE)
    x, dout = (torch.randn(shape.T, shape.n, shape.D, generator=g, device=device).to(dtype) for _ in range(2))
    args = {"x": x, "phi": layer.phi, "alpha": layer.alpha, "bias": layer.bias, "gamma": layer.gamma, "post.dout": dout}
    with torch.no_grad():
        refs = goldens.references(OP, {k: None if v is None else v.detach() for k, v in args.items()})
    return Case(layer, x, dout, refs)


class Step:
    """One training step of a copy of case's layer run through wrap; outputs() reads the last step's
    out and gradients in OUTPUTS order (cloned: a CUDA-graph mode rewrites them on its next step)."""

    def __init__(self, case: Case, wrap: Callable, device: torch.device, mark_step: bool = False):
        self.layer = copy.deepcopy(case.layer)
        self.x = case.x.detach().clone().requires_grad_()
        self.dout, self.mark_step = case.dout, mark_step
        self.fn = wrap(self.layer, device)
        self.leaves = (self.x, *self.layer.parameters())
        self.out: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor:
        for leaf in self.leaves:
            leaf.grad = None
        if self.mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        out = self.fn(self.x)
        out.backward(self.dout)
        self.out = out
        return out

    def outputs(self) -> tuple[torch.Tensor | None, ...]:
        layer = self.layer
        tensors = (self.out, self.x.grad, *(None if p is None else p.grad for p in (layer.phi, layer.alpha,
                                                                                  layer.bias, layer.gamma)))  # fmt: skip
        return tuple(None if t is None else t.detach().clone() for t in tensors)


# ---- measurements -------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0].strip() if lines else ''}".rstrip(": ")


def _is_kernel(event) -> bool:
    """A GPU kernel among the profiler's CUDA events (not a memcpy or memset): by the event's
    activity type where torch records it (2.13), by its name otherwise."""
    kind = getattr(event, "activity_type", None)
    if kind is not None:
        return kind == "kernel"
    return not event.name.startswith(("Memcpy", "Memset"))


def count_launches(fn: Callable[[], object], device: torch.device) -> tuple[int | None, int | None, dict | None]:
    """(kernel events on the GPU, launch API calls on the host, kernel name -> its GPU us summed over its
    events) the profiler records for one fn(); (None, None, None) on CPU."""
    if device.type != "cuda":
        return None, None, None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    events = prof.events()
    kernel_events = [e for e in events if e.device_type == DeviceType.CUDA and _is_kernel(e)]
    calls = sum(e.device_type == DeviceType.CPU and e.name in LAUNCH_APIS for e in events)
    return len(kernel_events), calls, kernel_times(kernel_events)


def kernel_times(events) -> dict[str, float]:
    """kernel name -> the GPU us of its events, summed (device_time), largest first."""
    times: dict[str, float] = {}
    for e in events:
        times[e.name] = times.get(e.name, 0.0) + e.device_time
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


def judge(outs: Sequence[torch.Tensor | None], case: Case, eager: Sequence | None) -> dict:
    """The accuracy rule on every output against the golden; vs_eager_err against eager's outputs."""
    verdicts = goldens.judge_outputs(OP, outs, *case.refs)
    worst = max(verdicts, key=goldens.badness)
    row = {"worst_output": worst.name, "worst_err": worst.err, "worst_bound": worst.bound}
    if eager is not None:
        diffs = [rel_err(o, e) for o, e in zip(outs, eager) if o is not None and e is not None and o.shape == e.shape]
        row["vs_eager_err"] = max(diffs, default=None)
    failed = [v for v in verdicts if not v.ok]
    if failed:
        return row | {"status": "FAIL", "ok": False, "reason": "; ".join(" ".join(str(v).split()) for v in failed)}
    return row | {"status": "ok", "ok": True}


def measure_mode(
    mode: Mode, case: Case, device: torch.device, steps: int, eager: Sequence | None
) -> tuple[dict, tuple]:
    """-> (the row's numbers, the checked step's outputs): warm-up steps, one checked step, one
    profiled step, then the timed loops (only when the check passed)."""
    step = Step(case, mode.wrap, device, mode.mark_step)
    for _ in range(WARMUP[device.type]):
        step()
    step()
    outs = step.outputs()
    row = judge(outs, case, eager)
    if not row["ok"]:
        return row, outs
    row["launches"], row["launch_calls"], _ = count_launches(step, device)
    loop = (steps, LOOP_WARMUP[device.type], LOOPS[device.type])
    host_us, wall_us, _ = host.host_loop_us(step, device, False, loop=loop)
    return row | {"wall_us": wall_us, "host_us": host_us}, outs


def measure_graph(case: Case, device: torch.device, steps: int, eager: Sequence | None) -> tuple[dict, tuple]:
    """The eager step captured in a CUDA graph: its replays' GPU us per step (graph_us), their kernels,
    and the outputs the replays left (the captured step's tensors, rewritten by every replay)."""
    step = Step(case, MODES["eager"].wrap, device)
    graph = host.capture_graph(lambda: step, device)
    gpu_us = host.replay_us(graph, device, steps)
    outs = step.outputs()
    row = judge(outs, case, eager)
    if not row["ok"]:
        return row, outs
    row["launches"], row["launch_calls"], times = count_launches(graph.replay, device)
    kernel_us = sum(times.values())
    row |= {"kernel_us": kernel_us, "kernel_times": times, "gap_us": gpu_us - kernel_us}
    return row | {"wall_us": gpu_us, "graph_us": gpu_us}, outs


def _cleanup(device: torch.device) -> None:
    torch._dynamo.reset()  # fresh graphs (and cudagraph trees) for the next mode and shape
    mhc_ops.clear_weight_cache()  # also forgets which weights a capture saw (their copies are gone)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def run_shape(
    shape: Shape, modes: Sequence[str], env: Mapping, device: torch.device, steps: int, backend: str
) -> list[dict]:
    """One row per mode, in the order of modes. eager runs first (the reference of vs_eager_err); on
    CUDA the graph is measured whether or not graph is one of the modes: every row reports graph_us."""
    base = {"op": OP, "T": shape.T, "n": shape.n, "D": shape.D, "dtype": X_DTYPE, "backend": backend, "steps": steps}
    base |= {k: env[k] for k in ENV_KEYS}
    rows = [dict.fromkeys(ROW_KEYS) | base | {"mode": name} for name in modes]
    try:
        case = make_case(shape, device, backend)
    except Exception as e:  # no inputs or no golden: every row says so
        return [row | {"status": "error", "ok": False, "reason": _first_line(e)} for row in rows]
    order = sorted(modes, key=lambda name: name != "eager")
    if device.type == "cuda" and GRAPH not in order:
        order.append(GRAPH)
    measured: dict[str, dict] = {}
    eager_outs = None
    for name in order:
        mode = MODES[name]
        if mode.cuda_only and device.type != "cuda":
            measured[name] = {"status": "skipped", "ok": None, "reason": "needs CUDA"}
            continue
        print(f"[layer_modes] {shape.label}: {name}", file=sys.stderr, flush=True)
        _cleanup(device)
        try:
            if mode.wrap is None:
                measured[name], outs = measure_graph(case, device, steps, eager_outs)
            else:
                measured[name], outs = measure_mode(mode, case, device, steps, eager_outs)
        except Exception as e:  # one broken mode must not end the run: it becomes an error row
            measured[name], outs = {"status": "error", "ok": False, "reason": _first_line(e)}, None
        if name == "eager" and measured[name]["ok"]:
            eager_outs = outs
        del outs
    del case, eager_outs
    _cleanup(device)
    graph_us = measured.get(GRAPH, {}).get("graph_us")
    for row in rows:
        row |= measured[row["mode"]] | {"graph_us": graph_us}
        if row["wall_us"] is not None and graph_us:
            row["ratio"] = row["wall_us"] / graph_us
        if row["mode"] == "eager" and row["wall_us"] is not None and row["launches"]:
            row["host_us_per_launch"] = row["wall_us"] / row["launches"]
    return rows


def run_all(shapes: Sequence[Shape], modes: Sequence[str], env: Mapping, device: torch.device, steps: int,
            backend: str, sink: Callable[[list[dict]], object] = lambda rows: None) -> list[dict]:  # fmt: skip
    rows = []
    for shape in shapes:
        shape_rows = run_shape(shape, modes, env, device, steps, backend)
        sink(shape_rows)
        rows += shape_rows
    return rows


# ---- output -------------------------------------------------------------------------------------

TABLE_COLUMNS = ("mode", "T", "n", "D", "wall us/step", "host us/step", "graph us", "wall/graph", "launches",
                 "us/launch", "kernels us (gap)", "vs eager", "accuracy")  # fmt: skip


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def accuracy_cell(row: Mapping) -> str:
    if row["status"] == "ok":
        return f"ok ({row['worst_output']} {row['worst_err']:.2e} <= {row['worst_bound']:.2e})"
    reason = " ".join(str(row["reason"]).split())
    return f"{row['status']} ({reason[:100]})".replace("|", "\\|")


def format_table(rows: Sequence[Mapping]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for r in rows:
        launches = "-" if r["launches"] is None else f"{r['launches']} ({_num(r['launch_calls'], 'd')} calls)"
        cells = (
            r["mode"], str(r["T"]), str(r["n"]), str(r["D"]), _num(r["wall_us"], ".1f"), _num(r["host_us"], ".1f"),
            _num(r["graph_us"], ".1f"), _num(r["ratio"], ".2f"), launches, _num(r["host_us_per_launch"], ".2f"),
            "-" if r["kernel_us"] is None else f"{r['kernel_us']:.1f} ({r['gap_us']:.1f})",
            _num(r["vs_eager_err"], ".1e"), accuracy_cell(r),
        )  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.layer_modes", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"TxnxD, comma separated (default {DEFAULT_SHAPES})")
    p.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)} (default: all)"
    )
    p.add_argument("--steps", type=int, default=None, help="steps per timed loop and graph replays (default: 100 on "
                   "CUDA, 1 on CPU)")  # fmt: skip
    p.add_argument("--backend", choices=("auto", "golden", "triton"), default="auto",
                   help="HyperConnection's backend (auto: Triton on CUDA, the golden on CPU)")  # fmt: skip
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"), help="results folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda[:i] or cpu")
    args = p.parse_args(argv)
    args.shapes = parsed_shapes(p, args.shapes)
    args.modes = list(parsed_subset(p, "--modes", args.modes, MODES))
    args.device = parsed_device(p, args.device, "the smoke test")
    if args.steps is None:
        args.steps = STEPS[args.device.type]
    if args.steps < 1:
        p.error(f"--steps: expected a positive int, got {args.steps}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    """Run, print the table, append the JSON lines; returns the rows."""
    args = parse_args(argv)
    if args.device.type == "cuda":
        torch.cuda.set_device(args.device)
    env = run.run_env(args.device, quick=True)
    path = report.jsonl_path(env, args.out, "-layer-modes")
    rows = run_all(args.shapes, args.modes, env, args.device, args.steps, args.backend,
                   lambda shape_rows: report.append_jsonl(shape_rows, path, ROW_KEYS))  # fmt: skip
    print(
        f"mHC layer step (HyperConnection, identity branch, backend {args.backend}) on {env['device_name']}: "
        f"torch {env['torch']}, triton {env['triton']}, {args.steps} steps per loop, median of "
        f"{LOOPS[args.device.type]} loops\n"
    )
    print(format_table(rows))
    print(f"\nrows appended to {path}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
