"""Stage dh_mix: dh_pre, dh_pre2, dh_post2, dh_mix, dinv_rms and dvecX_mm.

One program owns BLOCK_T tokens. Pass 1 streams x and dh_in for dh_pre = sum_d dh_in*x[i]; the
coefficient gradients are then [BLOCK_T, O_PAD] tiles in the layout [pre | post | res]; pass 2
writes dvecX_mm = dh_mix @ phi tile by tile. All three parts of dh_mix carry inv_rms.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    alpha_per_col,
    cdiv,
    check_block,
    check_inputs,
    fp32_dot,
    from_pre_columns,
    load_coeff_part,
    n_pad,
    o_pad,
    store_coeff_part,
    stream_tile,
    tokens,
)
from ._launch import launched


@triton.jit
def dh_pre_tile(x_ptr, dh_in_ptr, rows, row_mask, cols, n, D, d_start, d_end, sx_t, sx_i, sx_d, sdh_t, sdh_d,
                BLOCK_D: tl.constexpr, O_PAD: tl.constexpr, N_PAD: tl.constexpr,
                LOOP_STAGES: tl.constexpr = 0):  # fmt: skip
    """[BLOCK_T, O_PAD] tile with dh_pre[i] = sum_d dh_in[d] * x[i, d] over the columns d_start .. d_end - 1
    (d_start a multiple of BLOCK_D; all of D: 0, D) in pre column i. The products are summed elementwise
    into a [BLOCK_T, N_PAD, BLOCK_D] fp32 tile, one stream_tile per chunk, and reduced over d once at the
    end: no cross-thread reduction and no wait per stream in the loop. LOOP_STAGES (0: no pipelining, the
    loop has no product): the column loop pipelined, the next chunks' loads in flight (check_loop_stages)."""
    acc = tl.zeros([rows.shape[0], N_PAD, BLOCK_D], dtype=tl.float32)
    for d0 in tl.range(d_start, d_end, BLOCK_D, num_stages=LOOP_STAGES if LOOP_STAGES > 0 else None):
        d = d0 + tl.arange(0, BLOCK_D)
        d_mask = d < D
        dh_in = tl.load(dh_in_ptr + rows[:, None] * sdh_t + d[None, :] * sdh_d,
                        mask=row_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)  # fmt: skip
        xt = stream_tile(x_ptr, rows, row_mask, d, d_mask, n, sx_t, sx_i, sx_d, N_PAD)
        acc += dh_in[:, None, :] * xt.to(tl.float32)
    return from_pre_columns(tl.sum(acc, axis=2), cols, n, O_PAD)


@triton.jit
def act_grads(dh_pre, h_pre, h_post, dh_post, dh_res, cols, n, hc_eps):
    """[dh_pre2 | dh_post2 | dh_res] as one [BLOCK_T, O_PAD] tile (each input tile holds its part's
    columns): the gradient of the pre-activation logits before alpha, which is what dbias sums."""
    s = h_pre - hc_eps
    dh_pre2 = dh_pre * s * (1.0 - s)
    dh_post2 = dh_post * h_post * (1.0 - 0.5 * h_post)
    return tl.where(cols[None, :] < n, dh_pre2, tl.where(cols[None, :] < 2 * n, dh_post2, dh_res))


@triton.jit
def coeff_grads(
    x_ptr,
    dh_in_ptr,
    h_pre_ptr,
    h_post_ptr,
    dh_post_ptr,
    dh_res_ptr,
    h_mix_ptr,
    inv_rms_ptr,
    alpha_ptr,
    rows,
    row_mask,
    cols,
    n,
    D,
    sx_t,
    sx_i,
    sx_d,
    sdh_t,
    sdh_d,
    hc_eps,
    BLOCK_D: tl.constexpr,
    O_PAD: tl.constexpr,
    N_PAD: tl.constexpr,
):
    """-> (dh_pre, g2 = [dh_pre2 | dh_post2 | dh_res], dh_mix, dinv_rms) for a block of tokens."""
    dh_pre = dh_pre_tile(
        x_ptr, dh_in_ptr, rows, row_mask, cols, n, D, 0, D, sx_t, sx_i, sx_d, sdh_t, sdh_d, BLOCK_D, O_PAD, N_PAD
    )
    g2, dh_mix, dinv_rms = coeff_grads_of(
        dh_pre, h_pre_ptr, h_post_ptr, dh_post_ptr, dh_res_ptr, h_mix_ptr, inv_rms_ptr, alpha_ptr, rows, row_mask,
        cols, n, hc_eps,
    )  # fmt: skip
    return dh_pre, g2, dh_mix, dinv_rms


@triton.jit
def coeff_grads_of(dh_pre, h_pre_ptr, h_post_ptr, dh_post_ptr, dh_res_ptr, h_mix_ptr, inv_rms_ptr, alpha_ptr, rows,
                   row_mask, cols, n, hc_eps):  # fmt: skip
    """coeff_grads given the dh_pre tile (pre columns) -> (g2, dh_mix, dinv_rms). The delayed pre's
    dh_pre is the next sublayer's gradient of h_pre, not sum_d dh_in*x[i]."""
    O = n * n + 2 * n
    h_pre = load_coeff_part(h_pre_ptr, rows, row_mask, cols, 0, n)
    h_post = load_coeff_part(h_post_ptr, rows, row_mask, cols, n, n)
    dh_post = load_coeff_part(dh_post_ptr, rows, row_mask, cols, n, n)
    dh_res = load_coeff_part(dh_res_ptr, rows, row_mask, cols, 2 * n, n * n)
    h_mix = load_coeff_part(h_mix_ptr, rows, row_mask, cols, 0, O)
    inv_rms = tl.load(inv_rms_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    g2 = act_grads(dh_pre, h_pre, h_post, dh_post, dh_res, cols, n, hc_eps)
    dh_mix_tmp = alpha_per_col(alpha_ptr, cols, n)[None, :] * g2
    dinv_rms = tl.sum(dh_mix_tmp * h_mix, axis=1)
    dh_mix = dh_mix_tmp * inv_rms[:, None]
    return g2, dh_mix, dinv_rms


@triton.jit
def phi_tile(phi_ptr, cols, k, k_mask, n, sphi_o, sphi_k):
    """[O_PAD, BLOCK_D] tile phi[:, k] in fp32 (rows past O are zero): the right operand of
    dvecX_mm = dh_mix @ phi."""
    O = n * n + 2 * n
    return tl.load(phi_ptr + cols[:, None] * sphi_o + k[None, :] * sphi_k,
                   mask=(cols < O)[:, None] & k_mask[None, :], other=0.0).to(tl.float32)  # fmt: skip


@launched(do_not_specialize=["T"])
def _dh_mix_kernel(
    x_ptr,
    phi_ptr,
    alpha_ptr,
    dh_in_ptr,
    dh_post_ptr,
    dh_res_ptr,
    inv_rms_ptr,
    h_mix_ptr,
    h_pre_ptr,
    h_post_ptr,
    dh_pre_ptr,
    dh_pre2_ptr,
    dh_post2_ptr,
    dh_mix_ptr,
    dinv_rms_ptr,
    dvecX_mm_ptr,
    T,
    n,
    D,
    sx_t,
    sx_i,
    sx_d,
    sdh_t,
    sdh_d,
    sphi_o,
    sphi_k,
    hc_eps,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    O_PAD: tl.constexpr,
    N_PAD: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_mask = rows < T
    cols = tl.arange(0, O_PAD)
    dh_pre, g2, dh_mix, dinv_rms = coeff_grads(
        x_ptr,
        dh_in_ptr,
        h_pre_ptr,
        h_post_ptr,
        dh_post_ptr,
        dh_res_ptr,
        h_mix_ptr,
        inv_rms_ptr,
        alpha_ptr,
        rows,
        row_mask,
        cols,
        n,
        D,
        sx_t,
        sx_i,
        sx_d,
        sdh_t,
        sdh_d,
        hc_eps,
        BLOCK_D,
        O_PAD,
        N_PAD,
    )
    store_coeff_part(dh_pre_ptr, dh_pre, rows, row_mask, cols, 0, n)
    store_coeff_part(dh_pre2_ptr, g2, rows, row_mask, cols, 0, n)
    store_coeff_part(dh_post2_ptr, g2, rows, row_mask, cols, n, n)
    store_coeff_part(dh_mix_ptr, dh_mix, rows, row_mask, cols, 0, n * n + 2 * n)
    tl.store(dinv_rms_ptr + rows, dinv_rms, mask=row_mask)
    nD = n * D
    for i in range(n):
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            d_mask = d < D
            mm = fp32_dot(dh_mix, phi_tile(phi_ptr, cols, i * D + d, d_mask, n, sphi_o, sphi_k))
            tl.store(
                dvecX_mm_ptr + rows[:, None] * nD + (i * D + d)[None, :], mm, mask=row_mask[:, None] & d_mask[None, :]
            )


def mhc_pre_dh_mix(
    *,
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
    hc_eps=1e-6,
    block_t=16,
    block_d=64,
):
    """Triton stage dh_mix -> dict(dh_pre, dh_pre2, dh_post2, dh_mix, dinv_rms, dvecX_mm).

    gamma is accepted for a uniform stage signature: dvecX_mm is the gradient of v*gamma, so gamma
    does not enter this stage."""
    lead, n, D = check_inputs(
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
    )
    check_block("block_t", block_t, 16)
    check_block("block_d", block_d, 16)
    O = n * n + 2 * n
    xt, dh_in_t = tokens(x, 2), tokens(dh_in, 1)
    T = xt.shape[0]
    dev, f32 = x.device, torch.float32
    out = {
        "dh_pre": torch.empty((*lead, n), device=dev, dtype=f32),
        "dh_pre2": torch.empty((*lead, n), device=dev, dtype=f32),
        "dh_post2": torch.empty((*lead, n), device=dev, dtype=f32),
        "dh_mix": torch.empty((*lead, O), device=dev, dtype=f32),
        "dinv_rms": torch.empty(lead, device=dev, dtype=f32),
        "dvecX_mm": torch.empty((*lead, n * D), device=dev, dtype=f32),
    }
    if T == 0:
        return out
    small = [t.contiguous() for t in (alpha, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post)]
    alpha, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post = small
    _dh_mix_kernel[(cdiv(T, block_t),)](
        xt, phi, alpha, dh_in_t, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post,
        out["dh_pre"], out["dh_pre2"], out["dh_post2"], out["dh_mix"], out["dinv_rms"], out["dvecX_mm"],
        T, n, D, *xt.stride(), *dh_in_t.stride(), *phi.stride(), float(hc_eps),
        BLOCK_T=block_t, BLOCK_D=block_d, O_PAD=o_pad(n), N_PAD=n_pad(n),
    )  # fmt: skip
    return out
