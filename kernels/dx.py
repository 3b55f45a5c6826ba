"""Stage dx: dx = dvecX_mm*gamma + dvecX_inv + dvecX_hin (+ grad_x_post), stored in x's dtype.

Grid (token blocks, n): axis 1 is the stream index, so the grid covers every stream
(docs/bugs/dx-grid-one-stream.md). Each program loops over D in BLOCK_D chunks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cdiv, check_block, check_inputs, round_to, tokens
from ._launch import launched


@triton.jit
def dx_tile(mm, xt, dh_in, rms_coef, h_pre):
    """dx slice in fp32 from dvecX_mm*gamma [BT, BD], x [BT, BD], dh_in [BT, BD],
    rms_coef = -dinv_rms*inv_rms^3/nD [BT] and the collapse coefficients of its columns, h_pre[:, i]
    [BT, 1] (one stream) or [BT, BD] (a column's own stream, kernels/seam_bwd.py)."""
    return mm + rms_coef[:, None] * xt + h_pre * dh_in


@triton.jit
def rms_coef_of(dinv_rms, inv_rms, nD):
    """rms_coef = -dinv_rms*inv_rms^3/nD per token: dvecX_inv = rms_coef * v."""
    return -dinv_rms * inv_rms * inv_rms * inv_rms / nD


@launched(do_not_specialize=["T"])
def _dx_kernel(
    x_ptr,
    dvecX_mm_ptr,
    dinv_rms_ptr,
    inv_rms_ptr,
    h_pre_ptr,
    dh_in_ptr,
    gamma_ptr,
    gxp_ptr,
    dx_ptr,
    T,
    n,
    D,
    sx_t,
    sx_i,
    sx_d,
    sdh_t,
    sdh_d,
    sg_t,
    sg_i,
    sg_d,
    so_t,
    so_i,
    so_d,
    HAS_GAMMA: tl.constexpr,
    HAS_GXP: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    i = tl.program_id(1)
    i64 = i.to(tl.int64)  # i * (a stream stride) can pass 2**31 (a [n, T, D] storage)
    row_mask = rows < T
    nD = n * D
    inv_rms = tl.load(inv_rms_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    dinv_rms = tl.load(dinv_rms_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    rms_coef = rms_coef_of(dinv_rms, inv_rms, nD)
    h_pre_i = tl.load(h_pre_ptr + rows * n + i, mask=row_mask, other=0.0).to(tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_mask = d < D
        mask = row_mask[:, None] & d_mask[None, :]
        mm = tl.load(dvecX_mm_ptr + rows[:, None] * nD + (i * D + d)[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_GAMMA:
            mm = mm * tl.load(gamma_ptr + i * D + d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
        xt = tl.load(x_ptr + rows[:, None] * sx_t + i64 * sx_i + d[None, :] * sx_d, mask=mask, other=0.0)
        dh_in = tl.load(dh_in_ptr + rows[:, None] * sdh_t + d[None, :] * sdh_d, mask=mask, other=0.0)
        dx = dx_tile(mm, xt.to(tl.float32), dh_in.to(tl.float32), rms_coef, h_pre_i[:, None])
        if HAS_GXP:
            dx += tl.load(gxp_ptr + rows[:, None] * sg_t + i64 * sg_i + d[None, :] * sg_d, mask=mask, other=0.0).to(
                tl.float32
            )
        tl.store(
            dx_ptr + rows[:, None] * so_t + i64 * so_i + d[None, :] * so_d,
            round_to(dx, dx_ptr.dtype.element_ty),
            mask=mask,
        )


def mhc_pre_dx(*, x, dvecX_mm, dinv_rms, inv_rms, h_pre, dh_in, gamma=None, grad_x_post=None, block_t=16, block_d=64):
    """Triton stage dx -> dict(dx), dx in x's dtype and shape."""
    lead, n, D = check_inputs(
        x,
        dvecX_mm=dvecX_mm,
        dinv_rms=dinv_rms,
        inv_rms=inv_rms,
        h_pre=h_pre,
        dh_in=dh_in,
        gamma=gamma,
        grad_x_post=grad_x_post,
    )
    check_block("block_t", block_t, 1)
    check_block("block_d", block_d, 1)
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    xt, dh_in_t, dx_t = tokens(x, 2), tokens(dh_in, 1), dx.view(-1, n, D)
    T = xt.shape[0]
    if T == 0:
        return {"dx": dx}
    gxp = tokens(grad_x_post, 2) if grad_x_post is not None else xt  # never read without HAS_GXP
    mm, dinv, inv, hp = (t.contiguous() for t in (dvecX_mm, dinv_rms, inv_rms, h_pre))
    gamma_arg = gamma.contiguous() if gamma is not None else inv  # never read without HAS_GAMMA
    _dx_kernel[(cdiv(T, block_t), n)](
        xt, mm, dinv, inv, hp, dh_in_t, gamma_arg, gxp, dx_t,
        T, n, D, *xt.stride(), *dh_in_t.stride(), *gxp.stride(), *dx_t.stride(),
        HAS_GAMMA=gamma is not None, HAS_GXP=grad_x_post is not None, BLOCK_T=block_t, BLOCK_D=block_d,
    )  # fmt: skip
    return {"dx": dx}
