"""Golden of one mHC layer: mhc_pre, sinkhorn and mhc_post around a branch F, forward and backward,
composed from the ops' goldens in the contract's names (docs/math.md), per token::

    (h_in, h_post, h_res) = mhc_pre(x, phi, alpha, bias, gamma)
    x_next = mhc_post(x, sinkhorn(h_res), F(h_in), h_post)

With the delayed pre (DeepSeek-V4.1) h_in is collapsed with the previous sublayer's h_pre_prev (stream 0
when None) and the layer also returns its own h_pre for the next sublayer. F takes h_in as stored (x's
dtype) and its output is stored in x's dtype, as HyperConnection stores it; F = None is the identity.
The backward runs post, then sinkhorn, then pre with post's dx as grad_x_post.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .mhc_post import mhc_post_backward, mhc_post_forward
from .mhc_pre import mhc_pre_backward, mhc_pre_delayed_backward, mhc_pre_delayed_forward, mhc_pre_forward
from .sinkhorn import sinkhorn_backward, sinkhorn_forward

__all__ = ["layer_backward", "layer_forward"]

Branch = Callable[[torch.Tensor], torch.Tensor] | None


def _pre_forward(x, phi, alpha, bias, gamma, delayed, h_pre_prev, norm_eps, hc_eps, cd) -> tuple:
    """-> (h_in, h_post, h_res, h_pre, inv_rms, h_mix) of mhc_pre or the delayed pre."""
    if delayed:
        return mhc_pre_delayed_forward(x, phi, alpha, bias, gamma, h_pre_prev, norm_eps=norm_eps, hc_eps=hc_eps,
                                       compute_dtype=cd)  # fmt: skip
    h_in, h_post, h_res, inv_rms, h_mix, h_pre = mhc_pre_forward(x, phi, alpha, bias, gamma, norm_eps=norm_eps,
                                                                 hc_eps=hc_eps, compute_dtype=cd)  # fmt: skip
    return h_in, h_post, h_res, h_pre, inv_rms, h_mix


def _branch(branch: Branch, h_in: torch.Tensor, x_dtype: torch.dtype) -> torch.Tensor:
    """h_out = F(h_in) [.., D], stored in x's dtype."""
    return h_in if branch is None else branch(h_in).to(x_dtype)


def _branch_with_vjp(branch: Branch, h_in: torch.Tensor, x_dtype: torch.dtype):
    """-> (h_out = F(h_in), dh_out -> dh_in): F's gradient of h_in by torch.autograd through F alone (F is
    the user's block, not an op of the contract)."""
    if branch is None:
        return h_in, lambda dh_out: dh_out
    with torch.enable_grad():
        leaf = h_in.detach().requires_grad_()
        h_out = _branch(branch, leaf, x_dtype)
    return h_out.detach(), lambda dh_out: torch.autograd.grad(h_out, leaf, dh_out)[0]


def layer_forward(x, phi, alpha, bias, gamma=None, branch: Branch = None, *, iters=20, eps=1e-6, norm_eps=1e-6,
                  hc_eps=1e-6, delayed=False, h_pre_prev=None, compute_dtype=torch.float32):  # fmt: skip
    """-> x_next [.., n, D] in x's dtype; with delayed, (x_next, h_pre [.., n] in the compute dtype).
    iters, eps: sinkhorn's; norm_eps, hc_eps: mhc_pre's."""
    cd = compute_dtype
    h_in, h_post, h_res, h_pre, _, _ = _pre_forward(x, phi, alpha, bias, gamma, delayed, h_pre_prev, norm_eps, hc_eps,
                                                    cd)  # fmt: skip
    P = sinkhorn_forward(h_res, iters, eps, compute_dtype=cd)
    x_next = mhc_post_forward(x, P, _branch(branch, h_in, x.dtype), h_post, compute_dtype=cd)
    return (x_next, h_pre) if delayed else x_next


def layer_backward(x, phi, alpha, bias, gamma, dout, branch: Branch = None, *, iters=20, eps=1e-6, norm_eps=1e-6,
                   hc_eps=1e-6, delayed=False, h_pre_prev=None, dh_pre=None, compute_dtype=torch.float32):  # fmt: skip
    """Gradients of <x_next, dout> (+ <h_pre, dh_pre> with delayed) -> (dx, dphi, dalpha, dbias, dgamma),
    and with delayed dh_pre_prev after them. dout [.., n, D] in x's dtype; dh_pre [.., n] fp32: the next
    sublayer's gradient of this h_pre (None: zero). dgamma is None without gamma, dh_pre_prev without
    h_pre_prev. F's own parameters get no gradient here."""
    cd = compute_dtype
    h_in, h_post, h_res, h_pre, inv_rms, h_mix = _pre_forward(x, phi, alpha, bias, gamma, delayed, h_pre_prev,
                                                              norm_eps, hc_eps, cd)  # fmt: skip
    P = sinkhorn_forward(h_res, iters, eps, compute_dtype=cd)
    h_out, branch_vjp = _branch_with_vjp(branch, h_in, x.dtype)
    grad_x_post, dP, dh_out, dh_post = mhc_post_backward(x, P, h_out, h_post, dout, compute_dtype=cd)
    dh_in = branch_vjp(dh_out)
    dh_res = sinkhorn_backward(h_res, dP, iters, eps, compute_dtype=cd)
    if delayed:
        return mhc_pre_delayed_backward(x, phi, alpha, dh_in, dh_post, dh_res, dh_pre, inv_rms, h_mix, h_pre, h_post,
                                        gamma, h_pre_prev, hc_eps=hc_eps, grad_x_post=grad_x_post,
                                        compute_dtype=cd)  # fmt: skip
    return mhc_pre_backward(x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma, hc_eps=hc_eps,
                            grad_x_post=grad_x_post, compute_dtype=cd)  # fmt: skip
