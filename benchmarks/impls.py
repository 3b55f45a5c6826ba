"""The implementations benchmarked per op (IMPLS: op -> impl name -> factory), and the parts a
composite row is compared with (PARTS)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

import mhc_ops
from mhc_ops import golden
from mhc_ops.kernels import post as post_kernels
from mhc_ops.kernels import sinkhorn as sinkhorn_kernels

from . import host
from .goldens import (
    GOLDEN,
    OP_ARGS,
    OP_OUTPUTS,
    PRE_FWD_ARGS,
    SINKHORN_EPS,
    SINKHORN_ITERS,
    STEP_UPSTREAM,
    OpFn,
    Tensors,
    golden_layer_fwd,
    grad_x_post_last,
)

COMPILE_IMPL = "golden.compile"  # the baseline of speedup_vs_compile
# Raised by an impl that does not exist yet (e.g. an argument the op does not take): the row is
# reported as unavailable.
UNAVAILABLE = (TypeError, NotImplementedError)
STAGED = {"pre_bwd": "parts"}

# Called once per shape with that shape's inputs: a fresh torch.compile per shape, or a module and an
# autograd graph built from the inputs.
Factory = Callable[[Tensors], OpFn]


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
    return golden_layer_fwd(x, phi, alpha, bias, gamma, compute_dtype=torch.float32)


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
        # pre_bwd as its four parts, and whole (the fused kernels, the default)
        "mhc_ops.staged": lambda _: positional(mhc_ops.mhc_pre_backward, "bwd", backend="triton", stages=STAGED),
        "mhc_ops.fused": lambda _: positional(mhc_ops.mhc_pre_backward, "bwd", backend="triton"),
        **golden_impls("bwd"),
    },
    # Only the backward the layer runs (pre_bwd whole): the other half of layer_bwd's parts.
    "bwd_gxp": {
        "mhc_ops.fused": lambda _: positional(grad_x_post_last(mhc_ops.mhc_pre_backward), "bwd_gxp", backend="triton"),
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
