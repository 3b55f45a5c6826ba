"""The public ops: mhc_pre, sinkhorn and mhc_post (differentiable, torch.compile-traceable), and mhc_pre's
forward/backward functions.

The path a training step takes, top to bottom:

1. ``mhc_pre(...)`` validates its inputs once (mhc_ops/_validate.py's table) and resolves ``backend`` and
   ``stages`` into a ``Route`` (cached: the same arguments give the same object).
2. ``MHC_PRE(route, inputs, consts)``, the op built from its one declaration (mhc_ops/_opspec.py):
   eager, an autograd Function that calls ``_impl.pre_forward`` / ``_impl.pre_backward`` directly;
   under torch.compile, the ops ``mhc_ops::mhc_pre_fwd`` / ``mhc_pre_bwd``, whose bodies (the same
   functions) the compiler traces, so Inductor launches the Triton kernels itself.
3. ``_impl`` picks the implementation per stage: the Triton launchers, the golden stages, or the
   composer for mixed per-stage backends.
"""

from __future__ import annotations

import torch

from . import _impl
from ._impl import resolve_route, sinkhorn_max_n
from ._opspec import ForwardOp, Op, OpSpec
from ._validate import check_inputs, check_post_inputs, check_sinkhorn_inputs
from .kernels._common import interpreting
from .stages import PARTS

# --- mhc_pre -------------------------------------------------------------------------------------------------


def _pre_backward(route, saved, grads, consts):
    dh_in, dh_post, dh_res, grad_x_post = grads
    return _impl.pre_backward(route, saved, dh_in, dh_post, dh_res, grad_x_post, consts[1])


def _pre_fake(x, phi, alpha, bias, gamma, norm_eps, hc_eps):
    lead, (n, D) = x.shape[:-2], x.shape[-2:]
    f32 = {"dtype": torch.float32}
    return (x.new_empty((*lead, D)), x.new_empty((*lead, n), **f32), x.new_empty((*lead, n, n), **f32),
            x.new_empty(lead, **f32), x.new_empty((*lead, n * n + 2 * n), **f32), x.new_empty((*lead, n), **f32))  # fmt: skip


def _pre_grad_like(saved, consts):
    x, phi, alpha, gamma = saved[:4]
    f32 = {"dtype": torch.float32}
    dgamma = x.new_empty(gamma.shape, **f32) if gamma is not None else None
    return x.new_empty(x.shape), x.new_empty(phi.shape, **f32), x.new_empty(3, **f32), x.new_empty(phi.shape[0], **f32), dgamma  # fmt: skip


MHC_PRE = Op(
    OpSpec(
        name="mhc_pre",
        inputs=("x", "phi", "alpha", "bias", "gamma"),
        optional=("gamma",),
        consts=(("norm_eps", "float"), ("hc_eps", "float")),
        outputs=("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre"),
        returns=3,
        saved=("x", "phi", "alpha", "gamma", "inv_rms", "h_mix", "h_pre", "h_post"),
        forward=_impl.pre_forward,
        backward=_pre_backward,
        fake=_pre_fake,
        grad_like=_pre_grad_like,
        extra_grads=("grad_x_post",),
    )
)


def mhc_pre(x, phi, alpha, bias, gamma=None, *, norm_eps=1e-6, hc_eps=1e-6, backend="auto", stages=None):
    """-> (h_in, h_post, h_res), differentiable in x, phi, alpha, bias and gamma.

    x: [B, S, n, D] or [T, n, D] (bf16, fp16, fp32); phi [n*n + 2n, n*D], alpha [3], bias [n*n + 2n],
    gamma [n, D] or None, fp32. h_in in x's dtype, h_post [.., n] and h_res [.., n, n] (logits) fp32.
    backend: "auto" | "golden" | "triton"; stages: per-stage backends through the composer (a dict
    such as {"dgamma": "golden"} or a Pipeline)."""
    check_inputs(x, phi=phi, alpha=alpha, bias=bias, gamma=gamma)
    route = resolve_route(backend, stages, x)
    return MHC_PRE(route, (x, phi, alpha, bias, gamma), (float(norm_eps), float(hc_eps)))


def mhc_pre_forward(
    x, phi, alpha, bias, gamma=None, *, norm_eps=1e-6, hc_eps=1e-6, backend="auto", stages=None
) -> tuple:
    """-> (h_in, h_post, h_res, inv_rms, h_mix, h_pre), not differentiable. backend: "auto" (Triton
    on CUDA tensors, golden on CPU), "golden" or "triton" (on CPU tensors through the interpreter,
    TRITON_INTERPRET=1); stages: per-stage backends (a dict or a Pipeline)."""
    check_inputs(x, phi=phi, alpha=alpha, bias=bias, gamma=gamma)
    return _impl.pre_forward(resolve_route(backend, stages, x), x, phi, alpha, bias, gamma, norm_eps, hc_eps)


def mhc_pre_backward(
    x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma=None, *, hc_eps=1e-6,
    grad_x_post=None, backend="auto", stages=None, plan=None,
) -> tuple:  # fmt: skip
    """-> (dx, dphi, dalpha, dbias, dgamma); dgamma is None when gamma is None.

    What runs is the stage pre_bwd: on Triton the fused backward (two passes over x, no [T, nD]
    intermediate); stages={"pre_bwd": "parts"}, or a backend for one of dh_mix, dx, dparams, dgamma,
    runs the four stages instead. plan: the older spelling of that choice ("fused": the default;
    "staged": pre_bwd "parts")."""
    check_inputs(x, phi=phi, alpha=alpha, dh_in=dh_in, dh_post=dh_post, dh_res=dh_res, inv_rms=inv_rms, h_mix=h_mix,
                 h_pre=h_pre, h_post=h_post, gamma=gamma, grad_x_post=grad_x_post)  # fmt: skip
    route = resolve_route(backend, _with_plan(stages, plan), x)
    saved = (x, phi, alpha, gamma, inv_rms, h_mix, h_pre, h_post)
    return _impl.pre_backward(route, saved, dh_in, dh_post, dh_res, grad_x_post, hc_eps)


def _with_plan(stages, plan):
    """mhc_pre_backward's plan= as the per-stage choice it names."""
    if plan is None or plan == "fused":
        return stages
    if plan != "staged":
        raise ValueError(f"plan: expected 'fused' or 'staged', got {plan!r}")
    if stages is None or isinstance(stages, dict):
        return {"pre_bwd": PARTS} | (stages or {})
    raise ValueError("plan: give it with stages=None or a dict, not a Pipeline (a Pipeline's pre_bwd decides)")


# --- mhc_pre_delayed (DeepSeek-V4.1) ---------------------------------------------------------------------------


def _delayed_backward(route, saved, grads, consts):
    dh_in, dh_post, dh_res, dh_pre, grad_x_post = grads
    return _impl.pre_delayed_backward(route, saved, dh_in, dh_post, dh_res, dh_pre, grad_x_post, consts[1])


def _delayed_fake(x, phi, alpha, bias, gamma, h_pre_prev, norm_eps, hc_eps):
    h_in, h_post, h_res, inv_rms, h_mix, h_pre = _pre_fake(x, phi, alpha, bias, gamma, norm_eps, hc_eps)
    return h_in, h_post, h_res, h_pre, inv_rms, h_mix


def _delayed_grad_like(saved, consts):
    x, phi, alpha, gamma, h_pre_prev = saved[:5]
    dh_pre_prev = x.new_empty(h_pre_prev.shape, dtype=torch.float32) if h_pre_prev is not None else None
    return (*_pre_grad_like((x, phi, alpha, gamma), consts), dh_pre_prev)


MHC_PRE_DELAYED = Op(
    OpSpec(
        name="mhc_pre_delayed",
        inputs=("x", "phi", "alpha", "bias", "gamma", "h_pre_prev"),
        optional=("gamma", "h_pre_prev"),
        consts=(("norm_eps", "float"), ("hc_eps", "float")),
        outputs=("h_in", "h_post", "h_res", "h_pre", "inv_rms", "h_mix"),
        returns=4,
        saved=("x", "phi", "alpha", "gamma", "h_pre_prev", "inv_rms", "h_mix", "h_pre", "h_post"),
        forward=_impl.pre_delayed_forward,
        backward=_delayed_backward,
        fake=_delayed_fake,
        grad_like=_delayed_grad_like,
        extra_grads=("grad_x_post",),
    )
)


def mhc_pre_delayed(
    x, phi, alpha, bias, gamma=None, h_pre_prev=None, *, norm_eps=1e-6, hc_eps=1e-6, backend="auto", stages=None
):
    """DeepSeek-V4.1's delayed pre -> (h_in, h_post, h_res, h_pre), differentiable in x, phi, alpha, bias,
    gamma and h_pre_prev.

    As mhc_pre, except that h_in = sum_i h_pre_prev[.., i] * x[.., i, :] (x's dtype, fp32 sums): the
    previous sublayer's coefficients, or x[.., 0, :] when h_pre_prev is None (the first sublayer).
    h_pre [.., n] fp32 is this x's pre coefficients, for the next sublayer. h_pre_prev: [.., n] fp32.
    backend: "auto" | "golden" | "triton"; stages: None (the delayed pre runs whole on one backend)."""
    check_inputs(x, phi=phi, alpha=alpha, bias=bias, gamma=gamma, h_pre_prev=h_pre_prev)
    if stages is not None:
        raise ValueError("stages: expected None for mhc_pre_delayed (it runs whole on one backend: use backend=)")
    route = resolve_route(backend, None, x)
    return MHC_PRE_DELAYED(route, (x, phi, alpha, bias, gamma, h_pre_prev), (float(norm_eps), float(hc_eps)))


# --- sinkhorn ------------------------------------------------------------------------------------------------


def _sinkhorn_backward(route, saved, grads, consts):
    return (_impl.sinkhorn_backward(route, saved[0], grads[0], *consts),)


SINKHORN = Op(
    OpSpec(
        name="sinkhorn",
        inputs=("logits",),
        optional=(),
        consts=(("iters", "int"), ("eps", "float")),
        outputs=("P",),
        returns=1,
        saved=("logits",),
        forward=lambda route, logits, iters, eps: (_impl.sinkhorn_forward(route, logits, iters, eps),),
        backward=_sinkhorn_backward,
        fake=lambda logits, iters, eps: (logits.new_empty(logits.shape, dtype=torch.float32),),
        grad_like=lambda saved, consts: (torch.empty_like(saved[0], memory_format=torch.contiguous_format),),
    )
)


def sinkhorn(logits, iters=20, eps=1e-6, *, backend="auto", stages=None):
    """DeepSeek's Sinkhorn-Knopp projection of per-token logits [.., n, n] onto (nearly) doubly
    stochastic matrices: row softmax + eps, a column pass, then iters - 1 row/column passes.
    -> P [.., n, n] fp32, differentiable (the exact gradient of the finite iteration)."""
    route = resolve_route(backend, stages, logits)
    check_sinkhorn_inputs(logits, iters=iters, eps=eps, max_n=sinkhorn_max_n(route))
    return SINKHORN(route, (logits,), (int(iters), float(eps)))


# --- mhc_post ------------------------------------------------------------------------------------------------


def _post_grad_like(saved, consts):
    x, h_res, h_out, h_post = saved
    f32 = {"dtype": torch.float32}
    return x.new_empty(x.shape), x.new_empty(h_res.shape, **f32), h_out.new_empty(h_out.shape), x.new_empty(h_post.shape, **f32)  # fmt: skip


MHC_POST = Op(
    OpSpec(
        name="post",
        inputs=("x", "h_res", "h_out", "h_post"),
        optional=(),
        consts=(),
        outputs=("out",),
        returns=1,
        saved=("x", "h_res", "h_out", "h_post"),
        forward=lambda route, x, h_res, h_out, h_post: (_impl.post_forward(route, x, h_res, h_out, h_post),),
        backward=lambda route, saved, grads, consts: _impl.post_backward(route, *saved, grads[0]),
        fake=lambda x, h_res, h_out, h_post: (x.new_empty(x.shape),),
        grad_like=_post_grad_like,
    )
)


def mhc_post(x, h_res, h_out, h_post, *, backend="auto", stages=None):
    """out[.., j, :] = h_post[j]*h_out + sum_i h_res[i, j]*x[i]: the block's output written back into the
    streams (the first index of h_res is the input stream). x [.., n, D] (bf16, fp16, fp32), h_res
    [.., n, n] (after sinkhorn) and h_post [.., n] fp32, h_out [.., D] in x's dtype -> out in x's
    dtype, differentiable in all four."""
    check_post_inputs(x, h_res, h_out, h_post)
    route = resolve_route(backend, stages, x)
    return MHC_POST(route, (x, h_res, h_out, h_post), ())


def _boundary_fake(x, h_res, h_out, h_post, h_pre_prev, phi, alpha, bias, gamma, iters, eps, norm_eps, hc_eps):
    """boundary_decode's outputs, empty: x_next like x, h_in [.., D] in x's dtype, h_post [.., n], P [.., n, n] and
    h_pre [.., n] fp32."""
    lead, (n, D) = x.shape[:-2], x.shape[-2:]
    f32 = torch.float32
    return (x.new_empty(x.shape), x.new_empty((*lead, D)), x.new_empty((*lead, n), dtype=f32),
            x.new_empty((*lead, n, n), dtype=f32), x.new_empty((*lead, n), dtype=f32))  # fmt: skip


_T, _MAYBE = torch.Tensor, torch.Tensor | None
BOUNDARY_DECODE = ForwardOp(
    "boundary_decode", _impl.boundary_decode, _boundary_fake,
    {"x": _T, "h_res": _T, "h_out": _T, "h_post": _T, "h_pre_prev": _MAYBE, "phi": _T, "alpha": _T, "bias": _T,
     "gamma": _MAYBE, "iters": int, "eps": float, "norm_eps": float, "hc_eps": float,
     "return": tuple[_T, _T, _T, _T, _T]},
)  # fmt: skip


def boundary_decode(x, h_res, h_out, h_post, h_pre_prev, phi, alpha, bias, gamma, iters, eps, norm_eps, hc_eps):
    """_impl.boundary_decode on validated inputs, where _impl.decodes says so: eager, or under torch.compile as
    the op mhc_ops::boundary_decode (Inductor launches its kernels; CUDA graphs capture it) -> (x_next, h_in,
    h_post, P, h_pre) of the next sublayer, not differentiable."""
    return BOUNDARY_DECODE(not interpreting(), x, h_res, h_out, h_post, h_pre_prev, phi, alpha, bias, gamma, int(iters),
                           float(eps), float(norm_eps), float(hc_eps))  # fmt: skip


# Every op, by the golden registry's op name (golden/registry.py OPS): docs/adding-an-op.md.
OPS = {"mhc_pre": MHC_PRE, "sinkhorn": SINKHORN, "mhc_post": MHC_POST}
