"""Host (CPU) time per call of the training path, measured where the GPU is not the bottleneck.

Issue 11's targets (H100, n = 4, D = 4096, bf16): at T = 1, mhc_pre's forward <= 40 us, backward
<= 60 us and a training step <= 120 us of host time per call; at T = 4096 a step within 1.1x of its
kernels' GPU time.

For each op (OPS: a one-kernel torch op as the host's yardstick, mhc_pre, sinkhorn, mhc_post, the
HyperConnection layer around an identity branch and a HyperStack of STACK_BLOCKS of them), each call of the
training path (VARIANTS):

- fwd_nograd: the forward under torch.no_grad (inference; the stack's at most 64 tokens: decode, each boundary
  between blocks one, _impl.boundary_decode);
- fwd: the forward on inputs that require grad, so autograd records the graph (as in training);
- bwd: torch.autograd.backward through a graph built once (retain_graph=True);
- step: fwd, then bwd.

bwd and step reset the leaves' grads to None before each backward (what zero_grad(set_to_none=True)
leaves), so no call accumulates into a previous gradient. Three numbers per call, no profiler:

- host_us: N calls in a Python loop timed by time.perf_counter, after warm-up calls and a
  synchronize, with no synchronisation inside the loop: the host's time per call while the GPU keeps
  up (at T = 1 each kernel takes a few us). When the GPU is slower the launch queue fills and the
  loop waits for it: host_us then approaches host_sync_us.
- host_sync_us: the same loop timed up to a torch.cuda.synchronize() after it: wall time per call.
  It equals host_us when the host is the bottleneck, and the GPU time when the GPU is.
- gpu_us: GPU time of one call: a CUDA graph of one call (captured on a side stream after warm-up
  calls there) replayed back to back and timed by CUDA events, so only kernels are timed, not the gaps
  the host leaves between launches (which do_bench would include at T = 1). A capture bypasses the
  weight cache (kernels/_cache.py), so for mhc_pre this also times the rebuild of the bf16 weight
  split that an eager call finds cached: one launch of about 5 us on an H200 (benchmarks/weight_split.py;
  it was ~25 us as torch kernels, docs/perf.md, Performance V). When the capture fails,
  do_bench's median (L2 flushed before each call) instead, with gpu_method "do_bench".

host_over_gpu = host_us / gpu_us (above 1: host-bound) and wall_over_gpu = host_sync_us / gpu_us (the
T = 4096 target); host_over_ref = host_us over the ref op's for the same variant and shape, meant to
stay comparable between calls on a host whose speed changes. Each number is the median over REPEATS
loops. On CPU (the interpreter smoke test) there is no GPU time.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import triton.testing

import mhc_ops
from mhc_ops import golden
from mhc_ops.golden.fixtures import make_inputs
from mhc_ops.nn import HyperConnection, HyperStack

from .shapes import GAMMA, SEED, X_DTYPE, Shape

# Triton on CUDA (what "auto" picks there), and through the interpreter on CPU tensors.
BACKEND = "triton"
VARIANTS = ("fwd_nograd", "fwd", "bwd", "step")
# (calls per timed loop, warm-up calls, loops) on CUDA, and for the CPU smoke test (the interpreter
# takes seconds per call); CUDA graph replays.
LOOP = {"cuda": {False: (200, 20, 5), True: (50, 5, 3)}, "cpu": {False: (1, 0, 1), True: (1, 0, 1)}}
GRAPH_REPLAYS = {False: 100, True: 20}
GRAPH_WARMUP = 3

# Issue 11's targets: host us per call at T = 1, and a step's wall time over its GPU time at T = 4096.
HOST_US_TARGETS = {"pre.fwd": 40.0, "pre.bwd": 60.0, "pre.step": 120.0}
WALL_OVER_GPU_TARGETS = {"pre.step": 1.1}

ROW_KEYS = (
    "call", "host_us", "host_sync_us", "gpu_us", "gpu_method", "host_over_gpu", "wall_over_gpu", "host_calls",
    "host_over_ref", "target", "target_met",
)  # fmt: skip


@dataclass(frozen=True)
class Training:
    """One op as training calls it: forward() runs it on leaves that require grad and returns its
    outputs (a tuple); upstream holds the fixed random gradients of those outputs."""

    forward: Callable[[], tuple[torch.Tensor, ...]]
    leaves: tuple[torch.Tensor, ...]
    upstream: tuple[torch.Tensor, ...]


Setup = Callable[[Shape, torch.device], Training]


def _leaves(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    return tuple(None if t is None else t.detach().requires_grad_() for t in tensors)


def _pre_inputs(shape: Shape, device: torch.device) -> dict:
    case = golden.Case(lead=shape.lead, n=shape.n, D=shape.D, dtype=X_DTYPE, seed=SEED, gamma=GAMMA)
    return make_inputs(case, device)


def setup_pre(shape: Shape, device: torch.device) -> Training:
    """mhc_pre(x, phi, alpha, bias, gamma) -> (h_in, h_post, h_res); x [.., n, D] bf16, params fp32."""
    t = _pre_inputs(shape, device)
    leaves = _leaves(t["x"], t["phi"], t["alpha"], t["bias"], t["gamma"])
    return Training(
        lambda: mhc_ops.mhc_pre(*leaves, backend=BACKEND),
        tuple(leaf for leaf in leaves if leaf is not None),
        (t["dh_in"], t["dh_post"], t["dh_res"]),
    )


def setup_sinkhorn(shape: Shape, device: torch.device) -> Training:
    """sinkhorn(logits [.., n, n] fp32), 20 iterations -> P fp32."""
    t = make_inputs(golden.Case(lead=shape.lead, n=shape.n, seed=SEED, op="sinkhorn"), device)
    (logits,) = _leaves(t["logits"])
    return Training(lambda: (mhc_ops.sinkhorn(logits, backend=BACKEND),), (logits,), (t["dP"],))


def _post_case(shape: Shape) -> golden.Case:
    return golden.Case(lead=shape.lead, n=shape.n, D=shape.D, dtype=X_DTYPE, seed=SEED, op="mhc_post")


def setup_post(shape: Shape, device: torch.device) -> Training:
    """mhc_post(x [.., n, D] bf16, h_res [.., n, n] fp32, h_out [.., D] bf16, h_post [.., n] fp32) -> out bf16."""
    t = make_inputs(_post_case(shape), device)
    leaves = _leaves(t["x"], t["h_res"], t["h_out"], t["h_post"])
    return Training(lambda: (mhc_ops.mhc_post(*leaves, backend=BACKEND),), leaves, (t["dout"],))


def hyper_connection(t: Mapping[str, torch.Tensor | None]) -> HyperConnection:
    """HyperConnection(D, n) around the identity branch on BACKEND, 20 Sinkhorn iterations, its
    parameters set to the mhc_pre inputs' phi, alpha, bias and gamma (the same numbers as the mhc_pre
    rows; benchmarks/impls.py builds its layer rows with it too)."""
    x = t["x"]
    n, D = x.shape[-2:]
    module = HyperConnection(D, n, sinkhorn_iters=20, backend=BACKEND, use_gamma=t["gamma"] is not None)
    return _with_pre_params(module.to(x.device), t)


def _with_pre_params(module: HyperConnection, t: Mapping[str, torch.Tensor | None]) -> HyperConnection:
    """module with its phi, alpha, bias and gamma set to the mhc_pre inputs' (in place)."""
    with torch.no_grad():
        for name in ("phi", "alpha", "bias", "gamma"):
            if t[name] is not None:
                getattr(module, name).copy_(t[name])
    return module


def setup_layer(shape: Shape, device: torch.device) -> Training:
    """The HyperConnection layer (pre + sinkhorn + post around the identity branch), x [.., n, D] bf16;
    the upstream gradient is mhc_post's random dout."""
    t = _pre_inputs(shape, device)
    module = hyper_connection(t)
    (x,) = _leaves(t["x"])
    dout = make_inputs(_post_case(shape), device)["dout"]
    return Training(lambda: (module(x),), (x, *module.parameters()), (dout,))


STACK_BLOCKS = 4


def setup_stack(shape: Shape, device: torch.device) -> Training:
    """HyperStack of STACK_BLOCKS identity branches, each block's parameters the mhc_pre inputs' (as the layer
    row's), x [.., n, D] bf16; the upstream gradient is mhc_post's random dout."""
    t = _pre_inputs(shape, device)
    x = t["x"]
    n, D = x.shape[-2:]
    stack = HyperStack(D, n, [torch.nn.Identity() for _ in range(STACK_BLOCKS)], sinkhorn_iters=20, backend=BACKEND,
                       use_gamma=t["gamma"] is not None).to(device)  # fmt: skip
    for layer in stack.layers:
        _with_pre_params(layer, t)
    (x,) = _leaves(x)
    dout = make_inputs(_post_case(shape), device)["dout"]
    return Training(lambda: (stack(x),), (x, *stack.parameters()), (dout,))


def setup_ref(shape: Shape, device: torch.device) -> Training:
    """The host's yardstick, not an mHC op: x * w with x [.., D] bf16 and w [D] (one ATen kernel each
    way, through the same autograd engine). The lent GPU machines' host speed changes between calls
    (docs/perf.md, Performance IV); an op's host time over ref's, from the same call, is meant to
    compare across calls (not shown yet across calls; within one call, docs/perf.md Performance V)."""
    g = torch.Generator().manual_seed(SEED)
    x, w = (torch.randn(*size, generator=g).to(device, torch.bfloat16) for size in ((*shape.lead, shape.D), (shape.D,)))
    leaves = _leaves(x, w)
    return Training(lambda: (leaves[0] * leaves[1],), leaves, (torch.ones_like(x),))


OPS: dict[str, Setup] = {
    "ref": setup_ref, "pre": setup_pre, "sinkhorn": setup_sinkhorn, "post": setup_post, "layer": setup_layer,
    "stack": setup_stack,
}  # fmt: skip


def make_call(training: Training, variant: str) -> Callable[[], object]:
    """The function one timed call runs. bwd runs the forward here, once."""

    def clear_grads():
        for leaf in training.leaves:
            leaf.grad = None

    if variant in ("fwd_nograd", "fwd"):
        return training.forward
    if variant == "bwd":
        outs = training.forward()

        def bwd():
            clear_grads()
            torch.autograd.backward(outs, training.upstream, retain_graph=True)

        return bwd
    if variant == "step":

        def step():
            clear_grads()
            torch.autograd.backward(training.forward(), training.upstream)

        return step
    raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")


# ---- timing -------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_loop_us(
    fn: Callable[[], object], device: torch.device, quick: bool, loop: tuple[int, int, int] | None = None
) -> tuple[float, float, int]:
    """-> (host_us, host_sync_us, calls per loop): medians over the loops, per call. loop: (calls per
    loop, warm-up calls, loops) instead of LOOP's."""
    calls, warmup, loops = LOOP[device.type][quick] if loop is None else loop
    for _ in range(warmup):
        fn()
    host, wall = [], []
    for _ in range(loops):
        _sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        host.append(time.perf_counter() - start)
        _sync(device)
        wall.append(time.perf_counter() - start)
    return statistics.median(host) / calls * 1e6, statistics.median(wall) / calls * 1e6, calls


def capture_graph(build: Callable[[], Callable[[], object]], device: torch.device) -> torch.cuda.CUDAGraph:
    """A CUDA graph of one call: build() and its warm-up calls run on a side stream (so that a
    backward's graph is recorded there and its kernels are captured with it), then one call is
    captured. What that call allocated stays in the graph's pool, rewritten by each replay."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn = build()
        for _ in range(GRAPH_WARMUP):
            fn()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    return graph


def replay_us(graph: torch.cuda.CUDAGraph, device: torch.device, replays: int) -> float:
    """GPU us per replay: one replay to warm, then `replays` back to back between two CUDA events."""
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / replays * 1e3


def graph_gpu_us(build: Callable[[], Callable[[], object]], device: torch.device, quick: bool) -> float:
    """GPU us of one call: a CUDA graph of it (capture_graph) replayed back to back (replay_us)."""
    return replay_us(capture_graph(build, device), device, GRAPH_REPLAYS[quick])


def gpu_us(
    build: Callable[[], Callable[[], object]], device: torch.device, quick: bool
) -> tuple[float | None, str | None, str | None]:
    """-> (GPU us per call, method, why the CUDA graph failed or None); (None, None, None) on CPU. A
    failure here leaves the row's host numbers standing: it is reported in the row's reason."""
    if device.type != "cuda":
        return None, None, None
    try:
        return graph_gpu_us(build, device, quick), "cuda_graph", None
    except Exception as e:  # not capturable (yet): time it with do_bench instead, and say why
        why = f"CUDA graph: {type(e).__name__}: {e}"
    try:
        torch.cuda.synchronize(device)
        ms = triton.testing.do_bench(build(), warmup=10, rep=50 if quick else 100, return_mode="median")
    except Exception as e:
        return None, None, f"{why}; do_bench: {type(e).__name__}: {e}"
    return ms * 1e3, "do_bench", why


# ---- rows ---------------------------------------------------------------------------------------


def _target(row: dict) -> tuple[str | None, bool | None]:
    """(issue 11's target for this row, met), at T = 1 (host) and T = 4096 (wall / GPU)."""
    call = row["call"]
    if row["T"] == 1 and call in HOST_US_TARGETS:
        bound = HOST_US_TARGETS[call]
        return f"host <= {bound:g} us", row["host_us"] <= bound
    if row["T"] == 4096 and call in WALL_OVER_GPU_TARGETS and row["wall_over_gpu"] is not None:
        bound = WALL_OVER_GPU_TARGETS[call]
        return f"wall/gpu <= {bound:g}", row["wall_over_gpu"] <= bound
    return None, None


def measure_call(training: Training, graphed: Training, variant: str, device: torch.device, quick: bool) -> dict:
    """One row's numbers; a call that raises becomes an error row. The GPU time is taken on graphed, a
    second copy of the inputs and parameters: a weight seen in a CUDA-graph capture is never cached
    again (kernels/_cache.py), so a capture on training's weights would slow every later host loop
    (the bf16 weight split rebuilt on each call: 450 against 180 us for the forward at T = 1)."""
    try:
        with torch.set_grad_enabled(variant != "fwd_nograd"):
            host_us, sync_us, calls = host_loop_us(make_call(training, variant), device, quick)
            gpu, method, why = gpu_us(lambda: make_call(graphed, variant), device, quick)
    except Exception as e:
        return {"status": "error", "ok": False, "reason": f"{type(e).__name__}: {e}"}
    row = {"host_us": host_us, "host_sync_us": sync_us, "host_calls": calls, "gpu_us": gpu, "gpu_method": method}
    if gpu is not None:
        row |= {"host_over_gpu": host_us / gpu, "wall_over_gpu": sync_us / gpu}
    return row | {"status": "ok", "ok": True, "reason": why}


def run(shapes: Sequence[Shape], ops: Mapping[str, Setup], env: dict) -> list[dict]:
    """Every variant of every op at every shape; env: the run's fields (device, quick, gpu, ...)."""
    device, quick = env["device"], env["quick"]
    rows = []
    for shape in shapes:
        print(f"[host] {shape.label}: {', '.join(ops)}", file=sys.stderr, flush=True)
        B, S = shape.lead
        base = {"op": "host", "impl": "mhc_ops", "T": shape.T, "n": shape.n, "D": shape.D, "B": B, "S": S}
        base |= {"dtype": X_DTYPE} | {k: v for k, v in env.items() if k not in ("device", "start")}
        for name, setup in ops.items():
            try:
                training, graphed = setup(shape, device), setup(shape, device)
            except Exception as e:  # a broken op is reported in each of its rows, not raised
                training, failure = None, {"status": "error", "ok": False, "reason": f"{type(e).__name__}: {e}"}
            for variant in VARIANTS:
                row = dict.fromkeys(ROW_KEYS) | base | {"call": f"{name}.{variant}"}
                row |= measure_call(training, graphed, variant, device, quick) if training is not None else failure
                if device.type == "cuda" and row["status"] == "ok":  # the targets are GPU targets
                    row["target"], row["target_met"] = _target(row)
                rows.append(row)
            training = graphed = None
        _add_host_over_ref(rows[-len(ops) * len(VARIANTS) :])
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _add_host_over_ref(rows: Sequence[dict]) -> None:
    """host_over_ref: a row's host_us over the ref op's for the same variant at the same shape."""
    ref = {r["call"].split(".")[1]: r["host_us"] for r in rows if r["call"].startswith("ref.") and r["ok"]}
    for r in rows:
        base = ref.get(r["call"].split(".")[1])
        if base and r["host_us"] is not None:
            r["host_over_ref"] = r["host_us"] / base


def format_table(rows: Sequence[Mapping]) -> str:
    """op, T, host us/call, wall us/call, GPU us/call, host / GPU, wall / GPU, host / ref, target."""
    columns = ("call", "T", "n", "D", "host us/call", "wall us/call", "GPU us/call", "host/GPU", "wall/GPU",
               "host/ref", "GPU via", "target", "status")  # fmt: skip

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        target = "-" if r["target"] is None else f"{r['target']}: {'met' if r['target_met'] else 'MISSED'}"
        status = r["status"] if r["status"] == "ok" and r["reason"] is None else f"{r['status']} ({r['reason']})"
        cells = (
            r["call"], str(r["T"]), str(r["n"]), str(r["D"]), num(r["host_us"], ".1f"), num(r["host_sync_us"], ".1f"),
            num(r["gpu_us"], ".1f"), num(r["host_over_gpu"], ".2f"), num(r["wall_over_gpu"], ".2f"),
            num(r["host_over_ref"], ".1f"), r["gpu_method"] or "-", target, " ".join(status.split())[:100].replace("|", "\\|"),
        )  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
