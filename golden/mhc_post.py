"""Golden PyTorch reference of mhc_post, forward and backward, in the contract's names.

mhc_post writes the block's output back into the n residual streams (../shared/spec/mhc-math.md,
section mhc_post), per token::

    out[j, :] = h_post[j] * h_out[:] + sum_i h_res[i, j] * x[i, :]

The FIRST index of h_res is the input stream i, the second the output stream j (a transposed h_res
is a different function: h_res is doubly stochastic but not symmetric). Backward, given dout::

    dx[i]        = sum_j h_res[i, j] * dout[j]
    dh_res[i, j] = sum_d dout[j, d] * x[i, d]
    dh_post[j]   = sum_d dout[j, d] * h_out[d]
    dh_out       = sum_j h_post[j] * dout[j]

Shapes: x and dout ``[B, S, n, D]`` (BSND) or ``[T, n, D]`` (TND); h_res ``[.., n, n]``, h_out
``[.., D]``, h_post ``[.., n]`` with the same leading dims. All arithmetic runs in ``compute_dtype``
(float32, or float64 for the verification golden); out, dx and dh_out are stored in x's (h_out's)
dtype, dh_res and dh_post in the compute dtype.
"""

from __future__ import annotations

import torch

from .mhc_pre import _dims

__all__ = ["mhc_post_forward", "mhc_post_backward", "stage_post_fwd", "stage_post_bwd"]


def _token_views(x, h_res, h_out, h_post, cd):
    """-> (lead, n, D, v [T, n (i), D], r [T, n (i), n (j)], ho [T, D], hp [T, n (j)]) in cd."""
    lead, n, D = _dims(x)
    v, r = x.reshape(-1, n, D).to(cd), h_res.reshape(-1, n, n).to(cd)
    return lead, n, D, v, r, h_out.reshape(-1, D).to(cd), h_post.reshape(-1, n).to(cd)


def stage_post_fwd(*, x, h_res, h_out, h_post, compute_dtype=torch.float32) -> dict[str, torch.Tensor]:
    """out = h_post (outer) h_out + h_res^T-mix of the streams, stored in x's dtype."""
    cd = compute_dtype
    lead, n, D, v, r, ho, hp = _token_views(x, h_res, h_out, h_post, cd)
    out = hp[:, :, None] * ho[:, None, :] + torch.einsum("tij,tid->tjd", r, v)  # [T, n (j), D]
    return {"out": out.to(x.dtype).reshape(*lead, n, D)}


def stage_post_bwd(*, x, h_res, h_out, h_post, dout, compute_dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Gradients of all four inputs; dx and dh_out in x's (h_out's) dtype, dh_res and dh_post in the
    compute dtype."""
    cd = compute_dtype
    lead, n, D, v, r, ho, hp = _token_views(x, h_res, h_out, h_post, cd)
    g = dout.reshape(-1, n, D).to(cd)  # [T, n (j), D]
    dx = torch.einsum("tij,tjd->tid", r, g)
    dh_res = torch.einsum("tjd,tid->tij", g, v)
    dh_post = torch.einsum("tjd,td->tj", g, ho)
    dh_out = torch.einsum("tj,tjd->td", hp, g)
    return {
        "dx": dx.to(x.dtype).reshape(*lead, n, D),
        "dh_res": dh_res.reshape(*lead, n, n),
        "dh_out": dh_out.to(h_out.dtype).reshape(*lead, D),
        "dh_post": dh_post.reshape(*lead, n),
    }


def mhc_post_forward(x, h_res, h_out, h_post, *, compute_dtype=torch.float32) -> torch.Tensor:
    """-> out, x's shape and dtype."""
    return stage_post_fwd(x=x, h_res=h_res, h_out=h_out, h_post=h_post, compute_dtype=compute_dtype)["out"]


def mhc_post_backward(x, h_res, h_out, h_post, dout, *, compute_dtype=torch.float32):
    """-> (dx, dh_res, dh_out, dh_post), in the order of the forward's inputs."""
    t = stage_post_bwd(x=x, h_res=h_res, h_out=h_out, h_post=h_post, dout=dout, compute_dtype=compute_dtype)
    return tuple(t[k] for k in ("dx", "dh_res", "dh_out", "dh_post"))


# The two stages of mhc_post: the op they belong to, the named tensors each one reads and writes, and
# its golden implementation (golden.registry merges this table with the other ops').
STAGE_IO = {
    "post_fwd": {
        "op": "mhc_post",
        "inputs": ("x", "h_res", "h_out", "h_post"),
        "options": (),
        "outputs": ("out",),
        "golden": stage_post_fwd,
    },
    "post_bwd": {
        "op": "mhc_post",
        "inputs": ("x", "h_res", "h_out", "h_post", "dout"),
        "options": (),
        "outputs": ("dx", "dh_res", "dh_out", "dh_post"),
        "golden": stage_post_bwd,
    },
}
