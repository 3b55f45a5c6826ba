"""Stage seam_bwd: the delayed pre(l+1)'s backward and mhc_post(l)'s in one pass over the streams, dx(l+1)
consumed where it is produced (golden/seam.py seam_backward; docs/math.md, "The seam's backward").

Pass A of the fused pre backward (kernels/fused_bwd.py) runs as it is, without reading x(l+1): with the
delayed pre, dh_pre comes from the next sublayer. Then one kernel, grid (D blocks, token splits). A
program's BLOCK_D columns are taken in every stream, N_PAD * BLOCK_D columns k = i*D + d of the pre's
[.., nD] view, so the pre backward's products are pass B's on a [BLOCK_T, N_PAD*BLOCK_D] tile
(dvecX_mm = dh_mix @ phi at fp32 grade: dx(l+1) is never rounded; G += dh_mix^T x(l+1)). The tile
dx(l+1) [BLOCK_T, N_PAD, BLOCK_D] is post(l)'s dout: dx(l) and dh_out are stored, and this D block's
parts of dh_res, dh_post and dh_pre_prev (sums over d) go to a [D blocks, T, n*n + 2n] workspace. The
finish kernel of the fused backward reduces G (dphi, dgamma) and pass A's dbias/dalpha partials; one
fixed-order sum over the D blocks gives dh_res, dh_post, dh_pre_prev. Four launches, as the unfused
pair (pass A, pass B, finish, post_bwd), with x(l+1) read once and dx(l+1) neither written nor read.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    cdiv,
    check_block,
    check_tile_span,
    fp32_dot,
    g_split_cap,
    interpreting,
    load_coeff_part,
    n_pad,
    o_groups,
    o_pad,
    round_to,
    size_hint,
    static_dims,
    token_splits,
    tokens,
)
from ._launch import launched
from ._reduce import sum_partials
from .dh_mix import phi_tile
from .dparams import g_update
from .dx import dx_tile
from .fused_bwd import _finish_kernel, _pass_a_kernel
from .post import load_tile


@triton.jit
def post_of_dout(dout, x_ptr, h_res_ptr, h_out_ptr, h_post_ptr, dx_ptr, dh_out_ptr, part_ptr, rows, row_mask, d, d_mask,
                 sx_t, sx_i, sx_d, sr_t, sr_i, sr_j, sho_t, sho_d, shp_t, shp_j, so_t, so_i, so_d, sdo_t, sdo_d,
                 N: tl.constexpr, N_PAD: tl.constexpr):  # fmt: skip
    """post(l)'s backward on one tile, dout [BLOCK_T, N_PAD, BLOCK_D] fp32 (stream j of dout in row j):
    stores dx(l) = sum_j h_res[i, j] dout[j] and dh_out = sum_j h_post[j] dout[j], and this tile's
    parts of dh_res[i, j] = sum_d dout[j] x[i] and dh_post[j] = sum_d dout[j] h_out at part_ptr
    (per token [n*n | n], row stride n*n + 2n)."""
    s = tl.arange(0, N_PAD)
    mask_s = row_mask[:, None] & (s < N)[None, :]
    mask_d = row_mask[:, None] & d_mask[None, :]
    W = N * N + 2 * N
    h_out = load_tile(h_out_ptr, rows, d, sho_t, sho_d, mask_d)
    h_post = load_tile(h_post_ptr, rows, s, shp_t, shp_j, mask_s)  # [t, j]
    dh_out = tl.sum(h_post[:, :, None] * dout, axis=1)
    tl.store(dh_out_ptr + rows[:, None] * sdo_t + d[None, :] * sdo_d, round_to(dh_out, dh_out_ptr.dtype.element_ty),
             mask=mask_d)  # fmt: skip
    tl.store(part_ptr + rows[:, None] * W + N * N + s[None, :], tl.sum(dout * h_out[:, None, :], axis=2), mask=mask_s)
    for i in tl.static_range(N):
        res_i = load_tile(h_res_ptr + i * sr_i, rows, s, sr_t, sr_j, mask_s)  # h_res[:, i, j] over j
        dx_i = tl.sum(res_i[:, :, None] * dout, axis=1)
        tl.store(dx_ptr + rows[:, None] * so_t + tl.cast(i, tl.int64) * so_i + d[None, :] * so_d,
                 round_to(dx_i, dx_ptr.dtype.element_ty), mask=mask_d)  # fmt: skip
        x_i = load_tile(x_ptr + tl.cast(i, tl.int64) * sx_i, rows, d, sx_t, sx_d, mask_d)
        tl.store(part_ptr + rows[:, None] * W + i * N + s[None, :], tl.sum(dout * x_i[:, None, :], axis=2), mask=mask_s)


@launched(do_not_specialize=["T", "splits"])
def _seam_bwd_kernel(x_ptr, h_res_ptr, h_out_ptr, h_post_ptr, xn_ptr, hpp_ptr, dh_in_ptr, gxn_ptr, phi_ptr, gamma_ptr,
                     dh_mix_ptr, rms_coef_ptr, dx_ptr, dh_out_ptr, ws_g_ptr, ws_p_ptr, T, D, sx_t, sx_i, sx_d, sr_t,
                     sr_i, sr_j, sho_t, sho_d, shp_t, shp_j, sn_t, sn_i, sn_d, sdh_t, sdh_d, sg_t, sg_i, sg_d, so_t,
                     so_i, so_d, sdo_t, sdo_d, sphi_o, sphi_k, splits, N: tl.constexpr, N_PAD: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, O_A: tl.constexpr, O_B: tl.constexpr,
                     HAS_HPP: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_GXN: tl.constexpr,
                     INTERPRET: tl.constexpr):  # fmt: skip
    # xn: x(l+1) as stored [T, n, D]; hpp: h_pre_prev [T, n] (HAS_HPP; else h_in(l+1) = stream 0);
    # gxn: post(l+1)'s gradient of x(l+1) (HAS_GXN). Column c of the program's tile is stream c // BLOCK_D,
    # d = d0 + c % BLOCK_D.
    O = N * N + 2 * N
    nD = N * D
    W = N * N + 2 * N
    db = tl.program_id(0)
    split = tl.program_id(1)
    d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    c = tl.arange(0, N_PAD * BLOCK_D)
    i_c = c // BLOCK_D
    d_c = db * BLOCK_D + c % BLOCK_D
    c_mask = (i_c < N) & (d_c < D)
    k = i_c * D + d_c
    xn_cols = i_c.to(tl.int64) * sn_i + d_c * sn_d  # i * (a stream stride) can pass 2**31
    gxn_cols = i_c.to(tl.int64) * sg_i + d_c * sg_d
    cols_a = tl.arange(0, O_A)
    phi_a = phi_tile(phi_ptr, cols_a, k, c_mask, N, sphi_o, sphi_k)
    acc_a = tl.zeros([O_A, N_PAD * BLOCK_D], dtype=tl.float32)
    if O_B > 0:
        cols_b = O_A + tl.arange(0, O_B)
        phi_b = phi_tile(phi_ptr, cols_b, k, c_mask, N, sphi_o, sphi_k)
        acc_b = tl.zeros([O_B, N_PAD * BLOCK_D], dtype=tl.float32)
    if HAS_GAMMA:
        g = tl.load(gamma_ptr + k, mask=c_mask, other=0.0).to(tl.float32)
    for tb in range(split, tl.cdiv(T, BLOCK_T), splits):
        t0 = (tb + tl.zeros([], tl.int64)) * BLOCK_T  # 64-bit (tb is an int in the interpreter)
        rows = t0 + tl.arange(0, BLOCK_T)
        row_mask = rows < T
        mask = row_mask[:, None] & c_mask[None, :]
        dh_mix_a = load_coeff_part(dh_mix_ptr, rows, row_mask, cols_a, 0, O)
        mm = fp32_dot(dh_mix_a, phi_a)
        if O_B > 0:
            dh_mix_b = load_coeff_part(dh_mix_ptr, rows, row_mask, cols_b, 0, O)
            mm += fp32_dot(dh_mix_b, phi_b)
        if HAS_GAMMA:
            mm = mm * g[None, :]
        rms_coef = tl.load(rms_coef_ptr + rows, mask=row_mask, other=0.0)
        if HAS_HPP:
            hpp = tl.load(hpp_ptr + rows[:, None] * N + i_c[None, :], mask=mask, other=0.0).to(tl.float32)
        else:
            hpp = tl.where(row_mask[:, None] & (i_c == 0)[None, :], 1.0, 0.0)
        xn = tl.load(xn_ptr + rows[:, None] * sn_t + xn_cols[None, :], mask=mask, other=0.0)
        xnf = xn.to(tl.float32)
        dh_in = tl.load(dh_in_ptr + rows[:, None] * sdh_t + d_c[None, :] * sdh_d, mask=mask, other=0.0).to(tl.float32)
        dout = dx_tile(mm, xnf, dh_in, rms_coef, hpp)  # dx(l+1) in fp32, never rounded
        if HAS_GXN:
            dout += tl.load(gxn_ptr + rows[:, None] * sg_t + gxn_cols[None, :], mask=mask, other=0.0).to(tl.float32)
        acc_a = g_update(acc_a, dh_mix_a, xn, INTERPRET)
        if O_B > 0:
            acc_b = g_update(acc_b, dh_mix_b, xn, INTERPRET)
        part = ws_p_ptr + db.to(tl.int64) * T * W
        dpp = tl.sum(tl.reshape(dh_in * xnf, [BLOCK_T, N_PAD, BLOCK_D]), axis=2)  # sum_d dh_in * x(l+1)[i]
        tl.store(part + rows[:, None] * W + (N * N + N) + tl.arange(0, N_PAD)[None, :], dpp,
                 mask=row_mask[:, None] & (tl.arange(0, N_PAD) < N)[None, :])  # fmt: skip
        post_of_dout(tl.reshape(dout, [BLOCK_T, N_PAD, BLOCK_D]), x_ptr, h_res_ptr, h_out_ptr, h_post_ptr, dx_ptr,
                     dh_out_ptr, part, rows, row_mask, d, d_mask, sx_t, sx_i, sx_d, sr_t, sr_i, sr_j, sho_t, sho_d,
                     shp_t, shp_j, so_t, so_i, so_d, sdo_t, sdo_d, N, N_PAD)  # fmt: skip
    ws = ws_g_ptr + split.to(tl.int64) * O * nD
    tl.store(ws + cols_a[:, None] * nD + k[None, :], acc_a, mask=(cols_a < O)[:, None] & c_mask[None, :])
    if O_B > 0:
        tl.store(ws + cols_b[:, None] * nD + k[None, :], acc_b, mask=(cols_b < O)[:, None] & c_mask[None, :])


# The tile's columns over all streams: N_PAD * BLOCK_D = SEAM_BWD_COLUMNS (pass B's 128-column tile).
SEAM_BWD_COLUMNS = 128


def seam_bwd_block_d(n: int) -> int:
    """BLOCK_D of the seam backward: SEAM_BWD_COLUMNS over the padded streams, at least 16."""
    return max(16, SEAM_BWD_COLUMNS // n_pad(n))


def launch_seam_bwd(x, h_res, h_out, h_post, h_pre_prev, phi, alpha, gamma, out, next_h_post, next_inv_rms,
                    next_h_mix, next_h_pre, dh_in, dh_next_post, dh_next_res, dh_next_pre=None, grad_x_next=None,
                    hc_eps=1e-6, block_t=32, block_d=None, splits=None, block_t_a=16, num_warps=4,
                    num_stages=2) -> tuple:  # fmt: skip
    """The seam backward on validated inputs (golden/seam.py seam_backward's, bias not needed) -> the
    SEAM_GRADS tensors: dx (x's dtype and shape), dh_res [.., n, n], dh_out (h_out's dtype), dh_post
    [.., n], dphi [O, nD], dalpha [3], dbias [O], dgamma [n, D] (None without gamma) and dh_pre_prev
    [.., n] (None without h_pre_prev), fp32 unless stated. dh_res, dh_post and dh_pre_prev are views of
    one [T, n*n + 2n] buffer, dalpha and dbias of one [O + 3]. block_t, block_d: the seam kernel's tile
    (tokens; columns per stream, default seam_bwd_block_d); splits: its token ranges (default
    token_splits); block_t_a: pass A's tokens per program."""
    n, D = static_dims(x, 2)
    O, nD, W = n * n + 2 * n, n * D, n * n + 2 * n
    lead, dev, f32 = x.shape[:-2], x.device, torch.float32
    T = x.numel() // nD
    block_d = block_d if block_d is not None else seam_bwd_block_d(n)
    for name, value in (("block_t", block_t), ("block_d", block_d), ("block_t_a", block_t_a)):
        check_block(name, value, 16)
    dcoeff = torch.empty(O + 3, device=dev, dtype=f32)  # [dbias (O) | dalpha (3)]
    post = torch.empty((T, W), device=dev, dtype=f32)  # [dh_res (n*n) | dh_post (n) | dh_pre_prev (n)]
    dx = torch.empty(x.shape, device=dev, dtype=x.dtype)
    dh_out = torch.empty(h_out.shape, device=dev, dtype=h_out.dtype)
    dphi = torch.empty((O, nD), device=dev, dtype=f32)
    dgamma = torch.empty((n, D), device=dev, dtype=f32) if gamma is not None else None
    grads = (dx, post[:, : n * n].view(*lead, n, n), dh_out, post[:, n * n : n * n + n].view(*lead, n), dphi,
             dcoeff[O:], dcoeff[:O], dgamma, post[:, n * n + n :].view(*lead, n) if h_pre_prev is not None else None)  # fmt: skip
    if T == 0:
        for t in (dphi, dgamma, dcoeff):
            if t is not None:
                t.zero_()
        return grads
    xt, rt, ht, pt, xn = tokens(x, 2), tokens(h_res, 2), tokens(h_out, 1), tokens(h_post, 1), tokens(out, 2)
    dh_in_t, dx_t, dh_out_t = tokens(dh_in, 1), dx.view(-1, n, D), dh_out.view(-1, D)
    gxn = tokens(grad_x_next, 2) if grad_x_next is not None else xn  # never read without HAS_GXN
    check_tile_span(block_t, xt, xn, dh_in_t, dx_t, gxn)
    alpha, dh_next_post, dh_next_res, next_inv_rms, next_h_mix, next_h_pre, next_h_post = (
        t.contiguous() for t in (alpha, dh_next_post, dh_next_res, next_inv_rms, next_h_mix, next_h_pre, next_h_post)
    )
    has_dh_pre = dh_next_pre is not None
    dh_pre = dh_next_pre.contiguous() if has_dh_pre else next_h_pre  # never read without HAS_DH_PRE
    hpp = h_pre_prev.contiguous() if h_pre_prev is not None else next_h_pre  # never read without HAS_HPP
    dh_mix = torch.empty((T, O), device=dev, dtype=f32)
    rms_coef = torch.empty(T, device=dev, dtype=f32)
    blocks_a = cdiv(T, block_t_a)
    ws_dcoeff = torch.empty((blocks_a, O + 3), device=dev, dtype=torch.float64)
    # COLLAPSE 2: the delayed pre's pass A without x (dh_pre_prev is this kernel's); no bf16 parts
    _pass_a_kernel[(blocks_a,)](
        xn, dh_in_t, alpha, dh_next_post, dh_next_res, next_inv_rms, next_h_mix, next_h_pre, next_h_post, dh_mix,
        rms_coef, ws_dcoeff, dh_pre, next_h_pre, next_h_pre, T, n, D, *xn.stride(), *dh_in_t.stride(), float(hc_eps),
        BLOCK_T=block_t_a, BLOCK_D=16, O_PAD=o_pad(n), N_PAD=n_pad(n), COLLAPSE=2, HAS_DH_PRE=has_dh_pre,
        PRESPLIT=False, num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    o_a, o_b = o_groups(n)
    blocks_d = cdiv(D, block_d)
    T_hint = size_hint(T)
    splits = splits or token_splits(dev, blocks_d, cdiv(T_hint, block_t), g_split_cap(T_hint, x.element_size(), O, nD))
    ws_g = torch.empty((splits, O * nD), device=dev, dtype=f32)
    ws_p = torch.empty((blocks_d, T * W), device=dev, dtype=f32)
    gamma_arg = gamma.contiguous() if gamma is not None else rms_coef  # never read without HAS_GAMMA
    _seam_bwd_kernel[(blocks_d, splits)](
        xt, rt, ht, pt, xn, hpp, dh_in_t, gxn, phi, gamma_arg, dh_mix, rms_coef, dx_t, dh_out_t, ws_g, ws_p, T, D,
        *xt.stride(), *rt.stride(), *ht.stride(), *pt.stride(), *xn.stride(), *dh_in_t.stride(), *gxn.stride(),
        *dx_t.stride(), *dh_out_t.stride(), *phi.stride(), splits, N=n, N_PAD=n_pad(n), BLOCK_T=block_t,
        BLOCK_D=block_d, O_A=o_a, O_B=o_b, HAS_HPP=h_pre_prev is not None, HAS_GAMMA=gamma is not None,
        HAS_GXN=grad_x_next is not None, INTERPRET=interpreting(), num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    block_k = 128
    _finish_kernel[(cdiv(nD, block_k) + 1,)](
        ws_g, phi, gamma_arg, dphi, dgamma if gamma is not None else ws_g, ws_dcoeff, dcoeff, splits, blocks_a, n, D,
        *phi.stride(), HAS_GAMMA=gamma is not None, BLOCK_K=block_k, O_PAD=o_pad(n), BLOCK_P=64,
    )  # fmt: skip
    sum_partials(ws_p, post)
    return grads
