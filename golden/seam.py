"""Golden of the seam with the delayed pre: mhc_post(l) and the delayed pre(l+1) at one layer boundary
(../shared/spec/mhc-math.md, "The seam"), as the composition of their goldens, per token::

    x_next = mhc_post(x, h_res, h_out, h_post)                      stored in x's dtype
    (h_in, h_post', h_res', h_pre', inv_rms, h_mix) = delayed pre of x_next, collapsed with h_pre_prev

h_pre_prev is pre(l)'s h_pre (the delayed pre collapses x(l+1) with it). The next pre reads x_next as
stored (rounded to x's dtype), as the unfused ops do.
"""

from __future__ import annotations

import torch

from .mhc_post import mhc_post_forward
from .mhc_pre import mhc_pre_delayed_forward

__all__ = ["SEAM_OUTPUTS", "seam_forward"]

# out (x_next), then the delayed pre's outputs for the next sublayer, in the launcher's order
SEAM_OUTPUTS = ("out", "h_in", "next_h_post", "next_h_res", "next_inv_rms", "next_h_mix", "next_h_pre")


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
