"""The public op: mhc_pre (differentiable, torch.compile-traceable) and its forward/backward functions."""

from __future__ import annotations

import torch

from .kernels._common import check_inputs
from .stages import PLANS, Pipeline

BACKEND_CHOICES = ("auto", "golden", "triton")


def _backend(backend: str, x: torch.Tensor) -> str:
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend: expected one of {BACKEND_CHOICES}, got {backend!r}")
    if backend == "auto":
        return "triton" if x.is_cuda else "golden"
    return backend


def mhc_pre_forward(x, phi, alpha, bias, gamma=None, *, norm_eps=1e-6, hc_eps=1e-6, backend="auto"):
    """-> (h_in, h_post, h_res, inv_rms, h_mix, h_pre). backend: "auto" (Triton on CUDA tensors,
    golden on CPU), "golden" or "triton" (on CPU tensors through the interpreter, TRITON_INTERPRET=1)."""
    check_inputs(x, phi=phi, alpha=alpha, bias=bias, gamma=gamma)
    env = Pipeline(_backend(backend, x)).forward(
        x=x, phi=phi, alpha=alpha, bias=bias, gamma=gamma, norm_eps=norm_eps, hc_eps=hc_eps
    )
    return tuple(env[k] for k in ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre"))


def mhc_pre_backward(
    x,
    phi,
    alpha,
    dh_in,
    dh_post,
    dh_res,
    inv_rms,
    h_mix,
    h_pre,
    h_post,
    gamma=None,
    *,
    hc_eps=1e-6,
    grad_x_post=None,
    backend="auto",
    plan="fused",
):
    """-> (dx, dphi, dalpha, dbias, dgamma); dgamma is None when gamma is None.

    plan: "fused" (the default: two passes over x, no [T, nD] intermediate) or "staged" (the four
    stage kernels); it selects Triton kernels, so the golden backend ignores it."""
    check_inputs(
        x,
        phi=phi,
        alpha=alpha,
        dh_in=dh_in,
        dh_post=dh_post,
        dh_res=dh_res,
        inv_rms=inv_rms,
        h_mix=h_mix,
        h_pre=h_pre,
        h_post=h_post,
        gamma=gamma,
        grad_x_post=grad_x_post,
    )
    saved = {
        "x": x,
        "phi": phi,
        "alpha": alpha,
        "gamma": gamma,
        "inv_rms": inv_rms,
        "h_mix": h_mix,
        "h_pre": h_pre,
        "h_post": h_post,
    }
    resolved = _backend(backend, x)
    if plan not in PLANS:
        raise ValueError(f"plan: expected one of {PLANS}, got {plan!r}")
    env = Pipeline(resolved, plan=plan if resolved == "triton" else "staged").backward(
        saved, dh_in=dh_in, dh_post=dh_post, dh_res=dh_res, grad_x_post=grad_x_post, hc_eps=hc_eps
    )
    return tuple(env[k] for k in ("dx", "dphi", "dalpha", "dbias", "dgamma"))


@torch.library.custom_op("mhc_ops::mhc_pre_fwd", mutates_args=())
def _fwd_op(
    x: torch.Tensor,
    phi: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor,
    gamma: torch.Tensor | None,
    norm_eps: float,
    hc_eps: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return mhc_pre_forward(x, phi, alpha, bias, gamma, norm_eps=norm_eps, hc_eps=hc_eps, backend=backend)


@_fwd_op.register_fake
def _(x, phi, alpha, bias, gamma, norm_eps, hc_eps, backend):
    lead, (n, D) = x.shape[:-2], x.shape[-2:]
    f32 = {"dtype": torch.float32, "device": x.device}
    return (x.new_empty((*lead, D)), x.new_empty((*lead, n), **f32), x.new_empty((*lead, n, n), **f32),
            x.new_empty(lead, **f32), x.new_empty((*lead, n * n + 2 * n), **f32), x.new_empty((*lead, n), **f32))  # fmt: skip


@torch.library.custom_op("mhc_ops::mhc_pre_bwd", mutates_args=())
def _bwd_op(
    x: torch.Tensor,
    phi: torch.Tensor,
    alpha: torch.Tensor,
    dh_in: torch.Tensor,
    dh_post: torch.Tensor,
    dh_res: torch.Tensor,
    inv_rms: torch.Tensor,
    h_mix: torch.Tensor,
    h_pre: torch.Tensor,
    h_post: torch.Tensor,
    gamma: torch.Tensor | None,
    hc_eps: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dphi, dalpha, dbias, dgamma = mhc_pre_backward(
        x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma, hc_eps=hc_eps, backend=backend
    )
    # A custom op returns tensors only: no gamma gives an empty dgamma, mapped back to None below.
    return dx, dphi, dalpha, dbias, dgamma if dgamma is not None else x.new_empty(0, dtype=torch.float32)


@_bwd_op.register_fake
def _(x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma, hc_eps, backend):
    f32 = {"dtype": torch.float32}
    dgamma = x.new_empty(gamma.shape, **f32) if gamma is not None else x.new_empty(0, **f32)
    return (
        x.new_empty(x.shape),
        x.new_empty(phi.shape, **f32),
        x.new_empty(3, **f32),
        x.new_empty(phi.shape[0], **f32),
        dgamma,
    )


def _setup_context(ctx, inputs, output):
    x, phi, alpha, bias, gamma, norm_eps, hc_eps, backend = inputs
    h_in, h_post, h_res, inv_rms, h_mix, h_pre = output
    ctx.save_for_backward(x, phi, alpha, gamma, inv_rms, h_mix, h_pre, h_post)
    ctx.hc_eps, ctx.backend, ctx.h_in_dtype = hc_eps, backend, h_in.dtype


def _backward(ctx, dh_in, dh_post, dh_res, _d_inv_rms, _d_h_mix, _d_h_pre):
    x, phi, alpha, gamma, inv_rms, h_mix, h_pre, h_post = ctx.saved_tensors
    lead, (n, D) = x.shape[:-2], x.shape[-2:]
    # An output the loss does not use comes back as None: its gradient is zero.
    dh_in = dh_in if dh_in is not None else x.new_zeros((*lead, D))
    dh_post = dh_post if dh_post is not None else h_post.new_zeros(h_post.shape)
    dh_res = dh_res if dh_res is not None else h_post.new_zeros((*lead, n, n))
    dx, dphi, dalpha, dbias, dgamma = _bwd_op(
        x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma, ctx.hc_eps, ctx.backend
    )
    dgamma = dgamma if gamma is not None else None
    return dx, dphi.to(phi.dtype), dalpha.to(alpha.dtype), dbias, dgamma, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def mhc_pre(x, phi, alpha, bias, gamma=None, *, norm_eps=1e-6, hc_eps=1e-6, backend="auto"):
    """-> (h_in, h_post, h_res), differentiable in x, phi, alpha, bias and gamma."""
    check_inputs(x, phi=phi, alpha=alpha, bias=bias, gamma=gamma)
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend: expected one of {BACKEND_CHOICES}, got {backend!r}")
    h_in, h_post, h_res, *_ = _fwd_op(x, phi, alpha, bias, gamma, float(norm_eps), float(hc_eps), backend)
    return h_in, h_post, h_res
