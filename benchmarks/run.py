"""The mHC ops (mhc_pre, sinkhorn, mhc_post, the whole layer) against the memory-traffic floor.

    PYTHONPATH=. python -m benchmarks.run [--shapes default] [--ops fwd,bwd,...] [--impls NAME,...]
                                          [--host auto] [--out benchmarks/results] [--quick] [--device cuda]

For each shape and op, every implementation of the impl table (IMPLS) is called once and checked
against the golden by the accuracy rule (mhc_ops.golden.accuracy) on every output of the op; a row
that fails is reported as a failure and never timed. A passing row is timed by the median of
triton.testing.do_bench, which zeroes a 256 MB buffer before every timed call, so no input is served
from L2 (50 MB on an H100). Its floor is the op's minimal bytes (bytes_per_token, docs/perf.md) over
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
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
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
from mhc_ops.golden.mhc_post import mhc_post_backward, mhc_post_forward  # noqa: E402
from mhc_ops.golden.sinkhorn import sinkhorn_backward, sinkhorn_forward  # noqa: E402
from mhc_ops.kernels import post as post_kernels  # noqa: E402
from mhc_ops.kernels import sinkhorn as sinkhorn_kernels  # noqa: E402

from . import host, plots  # noqa: E402
from .shapes import GAMMA, SEED, SHAPE_SETS, X_DTYPE, Shape, parse_shapes, parsed_device, parsed_subset  # noqa: E402

SINKHORN_ITERS = 20
SINKHORN_EPS = 1e-6

OPS = (
    "fwd", "bwd", "bwd_gxp", "sinkhorn_fwd", "sinkhorn_bwd", "post_fwd", "post_bwd",
    "step", "layer_fwd", "layer_bwd", "layer_step",
)  # fmt: skip
# Ops whose cost depends on T and n only (no D): they run once per (T, n) of the chosen shapes.
TN_OPS = ("sinkhorn_fwd", "sinkhorn_bwd")

# The op's inputs, positional in this order, and its outputs, in the order the op returns them. The
# inputs are keys of shape_inputs(): mhc_post's own inputs carry the prefix "post." (its x and
# h_post are not mhc_pre's).
PRE_FWD_ARGS = ("x", "phi", "alpha", "bias", "gamma")
PRE_BWD_ARGS = ("x", "phi", "alpha", "dh_in", "dh_post", "dh_res", "inv_rms", "h_mix", "h_pre", "h_post", "gamma")
POST_ARGS = ("post.x", "post.h_res", "post.h_out", "post.h_post")
PRE_GRADS = ("dx", "dphi", "dalpha", "dbias", "dgamma")
STEP_UPSTREAM = ("dh_in", "dh_post", "dh_res")  # the upstream gradients of mhc_pre's h_in, h_post, h_res
OP_ARGS = {
    "fwd": PRE_FWD_ARGS,
    "bwd": PRE_BWD_ARGS,
    "bwd_gxp": (*PRE_BWD_ARGS, "grad_x_post"),
    "sinkhorn_fwd": ("logits",),
    "sinkhorn_bwd": ("logits", "dP"),
    "post_fwd": POST_ARGS,
    "post_bwd": (*POST_ARGS, "post.dout"),
    "step": (*PRE_FWD_ARGS, *STEP_UPSTREAM),
    "layer_fwd": PRE_FWD_ARGS,
    "layer_bwd": (*PRE_FWD_ARGS, "post.dout"),  # the upstream gradient of the layer's output
    "layer_step": (*PRE_FWD_ARGS, "post.dout"),
}
OP_OUTPUTS = {
    "fwd": ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre"),
    "bwd": PRE_GRADS,
    "bwd_gxp": PRE_GRADS,
    "sinkhorn_fwd": ("P",),
    "sinkhorn_bwd": ("dlogits",),
    "post_fwd": ("out",),
    "post_bwd": ("dx", "dh_res", "dh_out", "dh_post"),
    "step": ("h_in", "h_post", "h_res", *PRE_GRADS),
    "layer_fwd": ("out",),
    "layer_bwd": PRE_GRADS,  # of the layer's inputs: x and the parameters
    "layer_step": ("out", *PRE_GRADS),
}
# Forward outputs the backward takes as inputs (saved tensors), stored in fp32.
SAVED = ("inv_rms", "h_mix", "h_pre", "h_post")

COMPILE_IMPL = "golden.compile"  # the baseline of speedup_vs_compile
# Raised by an impl that does not exist yet (e.g. a `plan` the op does not take): the row is
# reported as unavailable.
UNAVAILABLE = (TypeError, NotImplementedError)

# Timing: triton.testing.do_bench (warmup_ms, rep_ms) on CUDA; timed calls of the CPU fallback.
DO_BENCH_MS = {False: (25, 200), True: (10, 50)}
# The ops added with the whole layer run at the quick setting's warm-up and half the full
# repetitions: the default run's time goes mostly to torch.compile of the goldens (about 30 s per
# shape on an H200), so the timing is kept short where it can be.
SHORT_DO_BENCH_MS = {False: (10, 100), True: (10, 50)}
SHORT_OPS = tuple(op for op in OPS if op not in ("fwd", "bwd"))
CPU_REPS = {False: 3, True: 1}  # the interpreter takes seconds per call: a smoke test, not a measurement
# The copy that measures bandwidth: large enough that L2 plays no part on a GPU.
COPY_BYTES = {"cuda": 1 << 30, "cpu": 64 << 20}

Tensors = Mapping[str, torch.Tensor | None]
OpFn = Callable[[Tensors], tuple]  # named input tensors -> outputs in OP_OUTPUTS order
# Called once per shape with that shape's inputs: a fresh torch.compile per shape, or a module and an
# autograd graph built from the inputs.
Factory = Callable[[Tensors], OpFn]


# ---- the golden of every op: positional inputs in OP_ARGS order -> outputs in OP_OUTPUTS order -------


def _grad_x_post_last(fn: Callable) -> Callable:
    """A backward taking grad_x_post by keyword, as one taking it as its last positional input."""

    def call(*args, **options):
        *bwd_args, grad_x_post = args
        return fn(*bwd_args, grad_x_post=grad_x_post, **options)

    return call


def _golden_sinkhorn_fwd(logits, *, compute_dtype=torch.float32):
    return (sinkhorn_forward(logits, SINKHORN_ITERS, SINKHORN_EPS, compute_dtype=compute_dtype),)


def _golden_sinkhorn_bwd(logits, dP, *, compute_dtype=torch.float32):
    return (sinkhorn_backward(logits, dP, SINKHORN_ITERS, SINKHORN_EPS, compute_dtype=compute_dtype),)


def _golden_post_fwd(x, h_res, h_out, h_post, *, compute_dtype=torch.float32):
    return (mhc_post_forward(x, h_res, h_out, h_post, compute_dtype=compute_dtype),)


def _golden_step(x, phi, alpha, bias, gamma, dh_in, dh_post, dh_res, *, compute_dtype=torch.float32):
    """mhc_pre's forward, then its backward on the saved tensors of that forward."""
    h_in, h_post, h_res, inv_rms, h_mix, h_pre = golden.mhc_pre_forward(x, phi, alpha, bias, gamma,
                                                                        compute_dtype=compute_dtype)  # fmt: skip
    grads = golden.mhc_pre_backward(x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma,
                                    compute_dtype=compute_dtype)  # fmt: skip
    return (h_in, h_post, h_res, *grads)


def _golden_layer_fwd(x, phi, alpha, bias, gamma, *, compute_dtype=torch.float32):
    """x_next = mhc_post(x, sinkhorn(h_res), h_in, h_post): the identity branch gives h_out = h_in (in
    x's dtype, as the module stores the branch output)."""
    h_in, h_post, logits, *_ = golden.mhc_pre_forward(x, phi, alpha, bias, gamma, compute_dtype=compute_dtype)
    P = sinkhorn_forward(logits, SINKHORN_ITERS, SINKHORN_EPS, compute_dtype=compute_dtype)
    return (mhc_post_forward(x, P, h_in, h_post, compute_dtype=compute_dtype),)


def _golden_layer_bwd(x, phi, alpha, bias, gamma, dout, *, compute_dtype=torch.float32):
    """The layer's backward: post, then sinkhorn, then pre with post's dx as grad_x_post."""
    cd = compute_dtype
    h_in, h_post, logits, inv_rms, h_mix, h_pre = golden.mhc_pre_forward(x, phi, alpha, bias, gamma, compute_dtype=cd)
    P = sinkhorn_forward(logits, SINKHORN_ITERS, SINKHORN_EPS, compute_dtype=cd)
    dx_post, dP, dh_out, dh_post = mhc_post_backward(x, P, h_in, h_post, dout, compute_dtype=cd)
    dlogits = sinkhorn_backward(logits, dP, SINKHORN_ITERS, SINKHORN_EPS, compute_dtype=cd)
    return golden.mhc_pre_backward(x, phi, alpha, dh_out, dh_post, dlogits, inv_rms, h_mix, h_pre, h_post, gamma,
                                   grad_x_post=dx_post, compute_dtype=cd)  # fmt: skip


def _golden_layer_step(x, phi, alpha, bias, gamma, dout, *, compute_dtype=torch.float32):
    fwd = _golden_layer_fwd(x, phi, alpha, bias, gamma, compute_dtype=compute_dtype)
    return (*fwd, *_golden_layer_bwd(x, phi, alpha, bias, gamma, dout, compute_dtype=compute_dtype))


GOLDEN = {
    "fwd": golden.mhc_pre_forward,
    "bwd": golden.mhc_pre_backward,
    "bwd_gxp": _grad_x_post_last(golden.mhc_pre_backward),
    "sinkhorn_fwd": _golden_sinkhorn_fwd,
    "sinkhorn_bwd": _golden_sinkhorn_bwd,
    "post_fwd": _golden_post_fwd,
    "post_bwd": mhc_post_backward,
    "step": _golden_step,
    "layer_fwd": _golden_layer_fwd,
    "layer_bwd": _golden_layer_bwd,
    "layer_step": _golden_layer_step,
}


# ---- the implementations ------------------------------------------------------------------------


def positional(fn: Callable, op: str, **options) -> OpFn:
    """``fn(*the op's inputs in OP_ARGS order, **options)`` as a function of the named tensors."""
    names = OP_ARGS[op]
    return lambda t: fn(*(t[k] for k in names), **options)


def stage_launcher(fn: Callable, op: str, **options) -> OpFn:
    """A Triton stage launcher (keyword inputs named as in the contract, a dict of outputs) as an OpFn."""
    names = OP_ARGS[op]

    def call(t):
        out = fn(**{k.removeprefix("post."): t[k] for k in names}, **options)
        return tuple(out[k] for k in OP_OUTPUTS[op])

    return call


# Mode default. dynamic=False specialises the graph to the shape; the driver resets dynamo before each
# shape, so the recompile limit is never reached (past it dynamo runs eager silently). fullgraph: a
# graph break would make the baseline slower without a word; it is an error row instead.
COMPILE_OPTIONS = {"dynamic": False, "fullgraph": True}


def _compile(fn: Callable) -> Callable:
    return torch.compile(fn, **COMPILE_OPTIONS)


def compiled_golden(op: str) -> OpFn:
    return positional(_compile(GOLDEN[op]), op, compute_dtype=torch.float32)


def _golden_pre_outputs(x, phi, alpha, bias, gamma):
    """The golden forward's three differentiable outputs (fp32 compute), as mhc_pre returns them."""
    return golden.mhc_pre_forward(x, phi, alpha, bias, gamma, compute_dtype=torch.float32)[:3]


def _golden_layer_output(x, phi, alpha, bias, gamma):
    return _golden_layer_fwd(x, phi, alpha, bias, gamma, compute_dtype=torch.float32)


def autograd_step(forward: Callable, upstream: tuple[str, ...]) -> OpFn:
    """A training step through autograd: ``forward(x, phi, alpha, bias, gamma)`` on fresh leaves that
    require grad (views of the inputs, nothing copied), then ``torch.autograd.backward`` of its outputs
    with the fixed upstream gradients (input keys) -> (outputs, grads of the five leaves)."""

    def call(t):
        leaves = [None if t[k] is None else t[k].detach().requires_grad_() for k in PRE_FWD_ARGS]
        outs = tuple(forward(*leaves))
        torch.autograd.backward(outs, tuple(t[k] for k in upstream))
        return (*(o.detach() for o in outs), *(None if leaf is None else leaf.grad for leaf in leaves))

    return call


def _params(module: torch.nn.Module) -> tuple:
    return module.phi, module.alpha, module.bias, module.gamma


def layer_fwd(args: Tensors) -> OpFn:
    """The module's forward as training runs it: x requires grad, so autograd records the graph."""
    module = host.hyper_connection(args)
    return lambda t: (module(t["x"].detach().requires_grad_()),)


def layer_bwd(args: Tensors) -> OpFn:
    """Backward only: the forward graph is built once here; each call runs
    ``torch.autograd.backward(out, dout, retain_graph=True)`` through it again, the grads reset to
    None first (as zero_grad(set_to_none=True) leaves them), so nothing accumulates."""
    module = host.hyper_connection(args)
    x = args["x"].detach().requires_grad_()
    out = module(x)
    leaves = (x, *_params(module))

    def call(t):
        for leaf in leaves:
            if leaf is not None:
                leaf.grad = None
        torch.autograd.backward(out, t["post.dout"], retain_graph=True)
        return tuple(None if leaf is None else leaf.grad for leaf in leaves)

    return call


def layer_step(args: Tensors) -> OpFn:
    """Forward and backward through the module, the grads reset to None first."""
    module = host.hyper_connection(args)
    params = _params(module)

    def call(t):
        for p in params:
            if p is not None:
                p.grad = None
        x = t["x"].detach().requires_grad_()
        out = module(x)
        torch.autograd.backward(out, t["post.dout"])
        return (out.detach(), x.grad, *(None if p is None else p.grad for p in params))

    return call


def golden_impls(op: str) -> dict[str, Factory]:
    return {
        "golden.eager": lambda _: positional(GOLDEN[op], op, compute_dtype=torch.float32),
        "golden.compile": lambda _: compiled_golden(op),
    }


# op -> impl name -> factory. Ours are named "mhc_ops[.variant]"; a new variant is one entry here.
IMPLS: dict[str, dict[str, Factory]] = {
    "fwd": {
        "mhc_ops": lambda _: positional(mhc_ops.mhc_pre_forward, "fwd", backend="triton"),
        **golden_impls("fwd"),
    },
    "bwd": {
        "mhc_ops.staged": lambda _: positional(mhc_ops.mhc_pre_backward, "bwd", backend="triton", plan="staged"),
        "mhc_ops.fused": lambda _: positional(mhc_ops.mhc_pre_backward, "bwd", backend="triton", plan="fused"),
        **golden_impls("bwd"),
    },
    # Only the plan the layer runs: the other half of layer_bwd's parts.
    "bwd_gxp": {
        "mhc_ops.fused": lambda _: positional(
            _grad_x_post_last(mhc_ops.mhc_pre_backward), "bwd_gxp", backend="triton", plan="fused"
        ),
    },
    "sinkhorn_fwd": {
        "mhc_ops": lambda _: stage_launcher(
            sinkhorn_kernels.sinkhorn_fwd, "sinkhorn_fwd", iters=SINKHORN_ITERS, eps=SINKHORN_EPS
        ),
        **golden_impls("sinkhorn_fwd"),
    },
    "sinkhorn_bwd": {
        "mhc_ops": lambda _: stage_launcher(
            sinkhorn_kernels.sinkhorn_bwd, "sinkhorn_bwd", iters=SINKHORN_ITERS, eps=SINKHORN_EPS
        ),
        **golden_impls("sinkhorn_bwd"),
    },
    "post_fwd": {"mhc_ops": lambda _: stage_launcher(post_kernels.post_fwd, "post_fwd"), **golden_impls("post_fwd")},
    "post_bwd": {"mhc_ops": lambda _: stage_launcher(post_kernels.post_bwd, "post_bwd"), **golden_impls("post_bwd")},
    "step": {
        "mhc_ops": lambda _: autograd_step(functools.partial(mhc_ops.mhc_pre, backend="triton"), STEP_UPSTREAM),
        # torch.compile of the golden forward; AOTAutograd derives and compiles its backward.
        "golden.compile": lambda _: autograd_step(_compile(_golden_pre_outputs), STEP_UPSTREAM),
    },
    "layer_fwd": {"mhc_ops": layer_fwd},
    "layer_bwd": {"mhc_ops": layer_bwd},
    "layer_step": {
        "mhc_ops": layer_step,
        # The module's math as one golden function compiled (pre + sinkhorn + post, all visible to
        # inductor). A HyperConnection(backend="golden") under torch.compile would not be this
        # baseline: its golden runs inside mhc_ops' custom ops, opaque to inductor.
        "golden.compile": lambda _: autograd_step(_compile(_golden_layer_output), ("post.dout",)),
    },
}

# The separately measured rows a composite row is compared with: vs_parts = ms / the sum of theirs
# (at the same shape; sinkhorn at the same T and n). A layer backward that ran a separate add of
# post's and pre's [T, n, D] gradients of x would be slower than its parts.
PARTS_IMPL = "mhc_ops"  # the impl of a composite row that gets vs_parts
PARTS = {
    "step": (("fwd", "mhc_ops"), ("bwd", "mhc_ops.fused")),
    "layer_fwd": (("fwd", "mhc_ops"), ("sinkhorn_fwd", "mhc_ops"), ("post_fwd", "mhc_ops")),
    "layer_bwd": (("bwd_gxp", "mhc_ops.fused"), ("sinkhorn_bwd", "mhc_ops"), ("post_bwd", "mhc_ops")),
}
PARTS["layer_step"] = PARTS["layer_fwd"] + PARTS["layer_bwd"]


# ---- floors -------------------------------------------------------------------------------------

# Composite ops move the bytes of their parts.
COMPOSITE_FLOORS = {
    "step": ("fwd", "bwd"),
    "layer_fwd": ("fwd", "sinkhorn_fwd", "post_fwd"),
    "layer_bwd": ("bwd_gxp", "sinkhorn_bwd", "post_bwd"),
}
COMPOSITE_FLOORS["layer_step"] = COMPOSITE_FLOORS["layer_fwd"] + COMPOSITE_FLOORS["layer_bwd"]


def bytes_per_token(op: str, n: int, D: int, x_bytes: int, grad_x_post: bool = False) -> int:
    """Minimal device-memory bytes per token: each input read once, each output written once
    (../shared/spec/mhc-math.md, docs/perf.md). s = x_bytes, bytes per element of x.

    fwd: read x (nD), write h_in (D), both in x's dtype, and write the fp32 side outputs. bwd: read x
    and write dx (nD each), read dh_in (D), read the fp32 side inputs; grad_x_post (or op bwd_gxp)
    adds one more nD read. Both count 2n² + 4n + 1 fp32 side values, as the contract's floor table
    does. sinkhorn (fp32 logits whatever x's dtype): fwd reads logits and writes P, 4·2n²; bwd reads
    logits and dP and writes dlogits, 4·3n². post fwd: read x, write out (s·nD each), read h_out
    (s·D), read h_res and h_post (4·(n² + n)). post bwd: read dout and x, write dx (3·s·nD), read
    h_out, write dh_out (2·s·D), read h_res, h_post and write dh_res, dh_post (4·(2n² + 2n)).
    Composite ops (step, layer_*) sum their parts (COMPOSITE_FLOORS).
    """
    s, nD = x_bytes, n * D
    side = 4 * (2 * n * n + 4 * n + 1)
    if op in COMPOSITE_FLOORS:
        return sum(bytes_per_token(part, n, D, x_bytes) for part in COMPOSITE_FLOORS[op])
    if op == "fwd":
        return s * nD + s * D + side
    if op in ("bwd", "bwd_gxp"):
        return (3 if grad_x_post or op == "bwd_gxp" else 2) * s * nD + s * D + side
    if op == "sinkhorn_fwd":
        return 4 * 2 * n * n
    if op == "sinkhorn_bwd":
        return 4 * 3 * n * n
    if op == "post_fwd":
        return 2 * s * nD + s * D + 4 * (n * n + n)
    if op == "post_bwd":
        return 3 * s * nD + 2 * s * D + 4 * (2 * n * n + 2 * n)
    raise ValueError(f"op: expected one of {OPS}, got {op!r}")


def op_bytes(op: str, T: int, n: int, D: int, x_bytes: int, grad_x_post: bool = False) -> int:
    return T * bytes_per_token(op, n, D, x_bytes, grad_x_post)


def floor_ms(nbytes: int, copy_bw_GBps: float) -> float:
    """Time to move nbytes at the measured copy bandwidth (GB/s = 1e9 bytes/s, read + written)."""
    return nbytes / (copy_bw_GBps * 1e6)


# ---- timing -------------------------------------------------------------------------------------


def median_ms(fn: Callable[[], object], device: torch.device, quick: bool, short: bool = False) -> float:
    """Median time of one call in ms, fn called once before (warm). CUDA: do_bench, L2 flushed before
    every call (short: the SHORT_DO_BENCH_MS lengths). CPU: perf_counter around each call."""
    if device.type == "cuda":
        warmup, rep = (SHORT_DO_BENCH_MS if short else DO_BENCH_MS)[quick]
        return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
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
    dst.copy_(src)
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
        fn = factory(args)
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
        row["ms"] = median_ms(lambda: fn(args), device, quick, short=op in SHORT_OPS)
        if device.type == "cuda":
            row["extra_mem_bytes"] = extra_memory_bytes(fn, args, device)
    except Exception as e:
        return row | {"status": "error", "ok": False, "reason": f"{type(e).__name__}: {e}"}
    return row | {"status": "ok", "ok": True}


ROW_KEYS = (
    "op", "impl", "T", "n", "D", "B", "S", "dtype", "ms", "floor_ms", "x_floor", "speedup_vs_compile",
    "parts_ms", "vs_parts", "status", "ok", "worst_output", "worst_err", "worst_bound", "extra_mem_bytes",
    "extra_mem_frac_x", "bytes", "copy_bw_GBps", *host.ROW_KEYS, "gpu", "device_name", "date", "run", "quick",
    "torch", "triton", "reason",
)  # fmt: skip


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


def shape_inputs(shape: Shape, device: torch.device, ops: tuple[str, ...]) -> dict[str, torch.Tensor | None]:
    """Fresh random inputs of the chosen ops (golden.fixtures.make_inputs): mhc_pre's, with grad_x_post;
    for bwd also the saved forward tensors, from the fp64 golden rounded to fp32; sinkhorn's logits and
    dP; mhc_post's, under "post."."""
    needed = {k for op in ops for k in OP_ARGS[op]}
    case = golden.Case(lead=shape.lead, n=shape.n, D=shape.D, dtype=X_DTYPE, seed=SEED, gamma=GAMMA,
                       grad_x_post="grad_x_post" in needed)  # fmt: skip
    tensors = make_inputs(case, device)
    if needed & set(SAVED):
        fwd64 = GOLDEN["fwd"](*(_fp64(tensors[k]) for k in OP_ARGS["fwd"]), compute_dtype=torch.float64)
        fwd64 = dict(zip(OP_OUTPUTS["fwd"], fwd64))
        tensors |= {k: fwd64[k].float() for k in SAVED}
    if "logits" in needed:
        tensors |= make_inputs(golden.Case(lead=shape.lead, n=shape.n, seed=SEED, op="sinkhorn"), device)
    if any(k.startswith("post.") for k in needed):
        post_case = golden.Case(lead=shape.lead, n=shape.n, D=shape.D, dtype=X_DTYPE, seed=SEED, op="mhc_post")
        tensors |= {f"post.{k}": v for k, v in make_inputs(post_case, device).items()}
    return tensors


# ---- the run ------------------------------------------------------------------------------------


def gpu_tag(device_name: str) -> str:
    """A file-name tag for the device: 'NVIDIA H100 80GB HBM3' -> 'h100' (the first model-like word,
    letters then digits), otherwise the whole name in lower case with '-' for anything else."""
    name = device_name.lower()
    m = re.search(r"\b[a-z]{1,2}\d{1,4}[a-z]?\b", name)
    return m.group(0) if m else re.sub(r"[^a-z0-9]+", "-", name).strip("-")


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


# ---- output -------------------------------------------------------------------------------------

TABLE_COLUMNS = (
    "op", "impl", "T", "n", "D", "ms", "floor_ms", "x_floor", "speedup_vs_compile", "vs_parts", "extra_mem_frac_x",
    "accuracy",
)  # fmt: skip
NUMBER_FORMAT = {
    "ms": ".4g",
    "floor_ms": ".4g",
    "x_floor": ".3g",
    "speedup_vs_compile": ".3g",
    "vs_parts": ".3g",
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


def jsonl_path(env: Mapping, out: pathlib.Path, suffix: str = "") -> pathlib.Path:
    """OUT/<gpu>-<date><suffix>.jsonl: rows are appended to it (rows of one run share `run`)."""
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{env['gpu']}-{env['date']}{suffix}.jsonl"


def append_jsonl(rows: list[Mapping], path: pathlib.Path, keys: tuple[str, ...] = ROW_KEYS) -> None:
    """One JSON object per row, every key of keys (null where a row has none)."""
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps({k: _json_value(row.get(k)) for k in keys}, allow_nan=False) + "\n")


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
