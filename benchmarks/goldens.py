"""The benchmarked ops: their names, inputs and outputs, the golden of each, the inputs of a shape,
and the accuracy rule's two references (benchmarks/run.py times every impl of IMPLS against them)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from mhc_ops import golden
from mhc_ops.golden.accuracy import Verdict
from mhc_ops.golden.fixtures import make_inputs
from mhc_ops.golden.layer import layer_backward, layer_forward
from mhc_ops.golden.mhc_post import mhc_post_backward, mhc_post_forward
from mhc_ops.golden.sinkhorn import sinkhorn_backward, sinkhorn_forward

from .shapes import GAMMA, SEED, X_DTYPE, Shape

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

Tensors = Mapping[str, torch.Tensor | None]
OpFn = Callable[[Tensors], tuple]  # named input tensors -> outputs in OP_OUTPUTS order


# ---- the golden of every op: positional inputs in OP_ARGS order -> outputs in OP_OUTPUTS order -------


def grad_x_post_last(fn: Callable) -> Callable:
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


def golden_layer_fwd(x, phi, alpha, bias, gamma, *, compute_dtype=torch.float32):
    """(x_next,) of the layer golden around the identity branch: h_out = h_in (in x's dtype, as the
    module stores the branch output)."""
    cd = compute_dtype
    return (layer_forward(x, phi, alpha, bias, gamma, iters=SINKHORN_ITERS, eps=SINKHORN_EPS, compute_dtype=cd),)


def _golden_layer_bwd(x, phi, alpha, bias, gamma, dout, *, compute_dtype=torch.float32):
    """The layer golden's backward around the identity branch: post, then sinkhorn, then pre with post's
    dx as grad_x_post."""
    return layer_backward(x, phi, alpha, bias, gamma, dout, iters=SINKHORN_ITERS, eps=SINKHORN_EPS,
                          compute_dtype=compute_dtype)  # fmt: skip


def _golden_layer_step(x, phi, alpha, bias, gamma, dout, *, compute_dtype=torch.float32):
    fwd = golden_layer_fwd(x, phi, alpha, bias, gamma, compute_dtype=compute_dtype)
    return (*fwd, *_golden_layer_bwd(x, phi, alpha, bias, gamma, dout, compute_dtype=compute_dtype))


GOLDEN = {
    "fwd": golden.mhc_pre_forward,
    "bwd": golden.mhc_pre_backward,
    "bwd_gxp": grad_x_post_last(golden.mhc_pre_backward),
    "sinkhorn_fwd": _golden_sinkhorn_fwd,
    "sinkhorn_bwd": _golden_sinkhorn_bwd,
    "post_fwd": _golden_post_fwd,
    "post_bwd": mhc_post_backward,
    "step": _golden_step,
    "layer_fwd": golden_layer_fwd,
    "layer_bwd": _golden_layer_bwd,
    "layer_step": _golden_layer_step,
}


# ---- inputs -------------------------------------------------------------------------------------


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


def badness(v: Verdict) -> float:
    """err / bound, NaN as infinitely bad: the worst output has the largest."""
    if math.isnan(v.err):
        return math.inf
    return v.err / v.bound if v.bound > 0 else math.inf
