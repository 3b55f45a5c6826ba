"""Golden of the seam with the delayed pre: mhc_post(l) and the delayed pre(l+1) at one layer boundary
(../shared/spec/mhc-math.md, "The seam"), as the composition of their goldens, per token::

    x_next = mhc_post(x, h_res, h_out, h_post)                      stored in x's dtype
    (h_in, h_post', h_res', h_pre', inv_rms, h_mix) = delayed pre of x_next, collapsed with h_pre_prev

h_pre_prev is pre(l)'s h_pre (the delayed pre collapses x(l+1) with it). The next pre reads x_next as
stored (rounded to x's dtype), as the unfused ops do.

The backward runs the delayed pre(l+1)'s backward, then post(l)'s with dout = dx(l+1): the gradient of
x_next is consumed where it is produced, in the compute dtype (the unfused ops store it in x's dtype
and read it back). Autograd reaches this point once F(l+1)'s backward has given dh_in(l+1) and post(l+1)'s
its dx (grad_x_next): both come before post(l)'s backward in any order autograd may take.

The boundary's forward at decode (``boundary_forward``, kernels/decode.py) adds the Sinkhorn projection
of the next h_res (the P that post(l+1) takes), and takes the plain mhc_pre(l+1) as well as the delayed one.
"""

from __future__ import annotations

import torch

from .mhc_post import mhc_post_backward, mhc_post_forward
from .mhc_pre import mhc_pre_delayed_backward, mhc_pre_delayed_forward, mhc_pre_forward
from .sinkhorn import sinkhorn_forward

__all__ = ["BOUNDARY_OUTPUTS", "SEAM_GRADS", "SEAM_OUTPUTS", "boundary_forward", "seam_backward", "seam_forward"]

# out (x_next), then the delayed pre's outputs for the next sublayer, in the launcher's order
SEAM_OUTPUTS = ("out", "h_in", "next_h_post", "next_h_res", "next_inv_rms", "next_h_mix", "next_h_pre")
# the seam's outputs, then sinkhorn(next_h_res) fp32 [.., n, n]: the P post(l+1) takes
BOUNDARY_OUTPUTS = (*SEAM_OUTPUTS, "next_P")
# post(l)'s input gradients, then the delayed pre(l+1)'s parameter gradients and the gradient of h_pre_prev
SEAM_GRADS = ("dx", "dh_res", "dh_out", "dh_post", "dphi", "dalpha", "dbias", "dgamma", "dh_pre_prev")


def seam_forward(x, h_res, h_out, h_post, h_pre_prev, phi, alpha, bias, gamma=None, *, norm_eps=1e-6, hc_eps=1e-6,
                 compute_dtype=torch.float32, store_dtype=None) -> tuple:  # fmt: skip
    """-> the SEAM_OUTPUTS tensors. store_dtype: the dtype x_next is stored in (x's, unless the inputs were
    upcast for the float64 reference: then the original x dtype)."""
    out = mhc_post_forward(x, h_res, h_out, h_post, compute_dtype=compute_dtype)
    stored = out.to(store_dtype or x.dtype).to(out.dtype)
    h_in, hp, hr, h_pre, inv_rms, h_mix = mhc_pre_delayed_forward(
        stored, phi, alpha, bias, gamma, h_pre_prev, norm_eps=norm_eps, hc_eps=hc_eps, compute_dtype=compute_dtype
    )
    return out, h_in, hp, hr, inv_rms, h_mix, h_pre


def boundary_forward(x, h_res, h_out, h_post, h_pre_prev, phi, alpha, bias, gamma=None, *, iters=20, eps=1e-6,
                     norm_eps=1e-6, hc_eps=1e-6, compute_dtype=torch.float32, store_dtype=None) -> tuple:  # fmt: skip
    """One layer boundary's forward -> the BOUNDARY_OUTPUTS tensors: post(l), pre(l+1) on x_next as
    stored, then sinkhorn(iters, eps) of pre(l+1)'s h_res. h_pre_prev [.., n] (pre(l)'s h_pre): the
    delayed pre(l+1), collapsed with it (seam_forward); None: the plain mhc_pre(l+1), collapsed with its
    own h_pre. store_dtype: as in seam_forward."""
    cd = compute_dtype
    if h_pre_prev is not None:
        outs = seam_forward(x, h_res, h_out, h_post, h_pre_prev, phi, alpha, bias, gamma, norm_eps=norm_eps,
                            hc_eps=hc_eps, compute_dtype=cd, store_dtype=store_dtype)  # fmt: skip
    else:
        out = mhc_post_forward(x, h_res, h_out, h_post, compute_dtype=cd)
        stored = out.to(store_dtype or x.dtype).to(out.dtype)
        h_in, hp, hr, inv_rms, h_mix, h_pre = mhc_pre_forward(stored, phi, alpha, bias, gamma, norm_eps=norm_eps,
                                                              hc_eps=hc_eps, compute_dtype=cd)  # fmt: skip
        outs = (out, h_in, hp, hr, inv_rms, h_mix, h_pre)
    return (*outs, sinkhorn_forward(outs[3], iters, eps, compute_dtype=cd))


def seam_backward(x, h_res, h_out, h_post, h_pre_prev, phi, alpha, bias, gamma, out, next_h_post, next_inv_rms,
                  next_h_mix, next_h_pre, dh_in, dh_next_post, dh_next_res, dh_next_pre=None, grad_x_next=None, *,
                  hc_eps=1e-6, compute_dtype=torch.float32) -> tuple:  # fmt: skip
    """-> the SEAM_GRADS tensors: dx [.., n, D] in x's dtype (pre(l)'s grad_x_post), dh_res [.., n, n] and
    dh_post [.., n] in the compute dtype, dh_out [.., D] in h_out's dtype; dphi, dalpha, dbias, dgamma
    (None without gamma) and dh_pre_prev (None without h_pre_prev) in the compute dtype.

    Saved: the forward's inputs, out (x_next as stored) and the next pre's h_post, inv_rms, h_mix and
    h_pre. Upstream: dh_in, dh_next_post, dh_next_res (after sinkhorn's backward) and dh_next_pre [.., n]
    (the sublayer after's gradient of next_h_pre, None: zero) of the next pre's outputs, and grad_x_next
    [.., n, D] (post(l+1)'s gradient of x_next, None: zero)."""
    cd = compute_dtype
    # out upcast (exact): dx_next comes back in the compute dtype, never rounded to x's
    dx_next, dphi, dalpha, dbias, dgamma, dh_pre_prev = mhc_pre_delayed_backward(
        out.to(cd), phi, alpha, dh_in, dh_next_post, dh_next_res, dh_next_pre, next_inv_rms, next_h_mix, next_h_pre,
        next_h_post, gamma, h_pre_prev, hc_eps=hc_eps, grad_x_post=grad_x_next, compute_dtype=cd,
    )  # fmt: skip
    dx, dh_res, dh_out, dh_post = mhc_post_backward(x, h_res, h_out, h_post, dx_next, compute_dtype=cd)
    return dx, dh_res, dh_out, dh_post, dphi, dalpha, dbias, dgamma, dh_pre_prev
