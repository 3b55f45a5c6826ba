"""Stage seam_bwd: the delayed pre(l+1)'s backward and mhc_post(l)'s with dx(l+1) consumed where it is made,
never stored (golden/seam.py seam_backward; docs/math.md, "The seam with the delayed pre").

Four launches, as the unfused pair (pass A, pass B, finish, post_bwd):

1. Pass A of the fused pre backward (kernels/fused_bwd.py) as it is, without reading x(l+1): with the
   delayed pre, dh_pre comes from the next sublayer. dh_mix [T, O], rms_coef [T] (and, for bf16 x on
   pass B's 32-row tile, dh_mix's bf16 parts).
2. The seam kernel, post_bwd's shape (grid: token blocks; a pipelined loop over D; [BLOCK_T, N_PAD,
   BLOCK_D] tiles): per column chunk and stream j, dx(l+1)[j] = dh_mix @ phi[:, jD + d] (fp32 grade:
   never rounded) * gamma + rms_coef * x(l+1)[j] + h_pre_prev[j] * dh_in (+ grad_x_next[j]), then
   post_bwd's tile math with it as dout[j] (post.post_bwd_stream): dx(l), dh_out stored per chunk;
   dh_res, dh_post and dh_pre_prev = sum_d dh_in * x(l+1) summed in registers over D, stored once.
3. Pass B with DX=False: G = sum_t dh_mix^T x(l+1) alone (a second read of x(l+1)).
4. The fused backward's finish: dphi, dgamma from G; dbias, dalpha from pass A's partials.

x(l+1) is read twice (the seam kernel, G) and dx(l+1) neither written nor read: 5 s*nD a token against
the two ops' 6 and the floor's 4. Yet it is slower than the two ops at every measured shape: the seam
kernel loads and splits phi's fp32 columns for every 16-token tile (docs/perf.md, Performance XII, with
the first design, one program over all streams' columns of a D block, slower still). The exact reference
kernel of the seam's backward, not wired into training.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    cdiv,
    check_block,
    check_maxnreg,
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
    stream_tile,
    token_splits,
    tokens,
)
from ._launch import launched
from .dh_mix import phi_tile
from .dx import dx_tile
from .fused_bwd import (
    PRESPLIT_BELOW_BLOCK_T,
    _finish_kernel,
    _pass_a_kernel,
    _pass_b_kernel,
    finish_tile,
    pass_b_tile,
)
from .post import load_tile, post_bwd_stream


@triton.jit
def dx_next_stream(dh_mix_a, dh_mix_b, cols_a, cols_b, phi_ptr, gamma_ptr, xn_ptr, hpp_ptr, gxn_ptr, dh_in, rms_coef,
                   j, rows, row_mask, d, d_mask, mask_d, D, sn_t, sn_i, sn_d, sg_t, sg_i, sg_d, sphi_o, sphi_k,
                   N: tl.constexpr, O_B: tl.constexpr, HAS_HPP: tl.constexpr, HAS_GAMMA: tl.constexpr,
                   HAS_GXN: tl.constexpr):  # fmt: skip
    """(dx(l+1)[j], x(l+1)[j]) [BLOCK_T, BLOCK_D] fp32 over columns d: the delayed pre's dx (kernels/dx.py
    dx_tile) with dvecX_mm = dh_mix @ phi[:, jD + d] at fp32 grade (fp32_dot), never rounded."""
    k = j * D + d
    mm = fp32_dot(dh_mix_a, phi_tile(phi_ptr, cols_a, k, d_mask, N, sphi_o, sphi_k))
    if O_B > 0:
        mm += fp32_dot(dh_mix_b, phi_tile(phi_ptr, cols_b, k, d_mask, N, sphi_o, sphi_k))
    if HAS_GAMMA:
        mm = mm * tl.load(gamma_ptr + k, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_HPP:
        hpp_j = tl.load(hpp_ptr + rows * N + j, mask=row_mask, other=0.0).to(tl.float32)
    else:  # the first sublayer: h_in(l+1) is stream 0
        hpp_j = tl.where(row_mask, 1.0 if j == 0 else 0.0, 0.0)
    xn_j = load_tile(xn_ptr + tl.cast(j, tl.int64) * sn_i, rows, d, sn_t, sn_d, mask_d)
    dout = dx_tile(mm, xn_j, dh_in, rms_coef, hpp_j[:, None])
    if HAS_GXN:
        dout += load_tile(gxn_ptr + tl.cast(j, tl.int64) * sg_i, rows, d, sg_t, sg_d, mask_d)
    return dout, xn_j


@launched(do_not_specialize=["T"])
def _seam_bwd_kernel(x_ptr, h_res_ptr, h_out_ptr, h_post_ptr, xn_ptr, hpp_ptr, dh_in_ptr, gxn_ptr, phi_ptr, gamma_ptr,
                     dh_mix_ptr, rms_coef_ptr, dx_ptr, dh_res_ptr, dh_out_ptr, dh_post_ptr, dpp_ptr, T, D, sx_t, sx_i,
                     sx_d, sr_t, sr_i, sr_j, sho_t, sho_d, shp_t, shp_j, sn_t, sn_i, sn_d, sdh_t, sdh_d, sg_t, sg_i,
                     sg_d, sdx_t, sdx_i, sdx_d, sdo_t, sdo_d, sphi_o, sphi_k, N: tl.constexpr, N_PAD: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, O_A: tl.constexpr, O_B: tl.constexpr,
                     HAS_HPP: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_GXN: tl.constexpr,
                     NUM_STAGES: tl.constexpr):  # fmt: skip
    # x: x(l) [T, n, D]; xn: x(l+1) as stored; hpp: h_pre_prev [T, n] contiguous (HAS_HPP); gxn: post(l+1)'s
    # gradient of x(l+1) (HAS_GXN). dh_res [T, n, n], dh_post and dh_pre_prev (dpp) [T, n]: contiguous fp32.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_mask = rows < T
    s = tl.arange(0, N_PAD)  # stream index: i for x(l), dx(l) and the rows of dh_res; j for dx(l+1)
    s_mask = s < N
    mask_s = row_mask[:, None] & s_mask[None, :]
    O = N * N + 2 * N
    cols_a = tl.arange(0, O_A)
    dh_mix_a = load_coeff_part(dh_mix_ptr, rows, row_mask, cols_a, 0, O)
    cols_b = O_A + tl.arange(0, max(O_B, 16))  # not read when O_B == 0
    dh_mix_b = load_coeff_part(dh_mix_ptr, rows, row_mask, cols_b, 0, O) if O_B > 0 else dh_mix_a
    rms_coef = tl.load(rms_coef_ptr + rows, mask=row_mask, other=0.0)
    dh_res = tl.zeros([BLOCK_T, N_PAD, N_PAD], dtype=tl.float32)  # [t, i, j]
    dh_post = tl.zeros([BLOCK_T, N_PAD], dtype=tl.float32)  # [t, j]
    dpp = tl.zeros([BLOCK_T, N_PAD], dtype=tl.float32)  # [t, j]: dh_pre_prev
    for d0 in tl.range(0, D, BLOCK_D, num_stages=NUM_STAGES):
        d = d0 + tl.arange(0, BLOCK_D)
        d_mask = d < D
        mask_d = row_mask[:, None] & d_mask[None, :]
        x = stream_tile(x_ptr, rows, row_mask, d, d_mask, N, sx_t, sx_i, sx_d, N_PAD).to(tl.float32)  # [t, i, d]
        h_out = load_tile(h_out_ptr, rows, d, sho_t, sho_d, mask_d)
        dh_in = load_tile(dh_in_ptr, rows, d, sdh_t, sdh_d, mask_d)
        dx = tl.zeros([BLOCK_T, N_PAD, BLOCK_D], dtype=tl.float32)  # [t, i, d]
        dh_out = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        for j in tl.static_range(N):
            dout, xn_j = dx_next_stream(dh_mix_a, dh_mix_b, cols_a, cols_b, phi_ptr, gamma_ptr, xn_ptr, hpp_ptr,
                                        gxn_ptr, dh_in, rms_coef, j, rows, row_mask, d, d_mask, mask_d, D, sn_t, sn_i,
                                        sn_d, sg_t, sg_i, sg_d, sphi_o, sphi_k, N, O_B, HAS_HPP, HAS_GAMMA,
                                        HAS_GXN)  # fmt: skip
            dpp += tl.where(s[None, :] == j, tl.sum(dh_in * xn_j, axis=1)[:, None], 0.0)
            dx, dh_out, dh_res, dh_post = post_bwd_stream(dx, dh_out, dh_res, dh_post, x, h_out, dout, j, h_res_ptr,
                                                          h_post_ptr, rows, row_mask, s, mask_s, sr_t, sr_i, sr_j,
                                                          shp_t, shp_j)  # fmt: skip
        dx_offs = rows[:, None, None] * sdx_t + s[None, :, None].to(tl.int64) * sdx_i + d[None, None, :] * sdx_d
        tl.store(dx_ptr + dx_offs, round_to(dx, dx_ptr.dtype.element_ty), mask=mask_d[:, None, :] & s_mask[None, :, None])
        tl.store(dh_out_ptr + rows[:, None] * sdo_t + d[None, :] * sdo_d, round_to(dh_out, dh_out_ptr.dtype.element_ty),
                 mask=mask_d)  # fmt: skip
    tl.store(dh_res_ptr + rows[:, None, None] * (N * N) + s[None, :, None] * N + s[None, None, :], dh_res,
             mask=mask_s[:, :, None] & s_mask[None, None, :])  # fmt: skip
    tl.store(dh_post_ptr + rows[:, None] * N + s[None, :], dh_post, mask=mask_s)
    if HAS_HPP:
        tl.store(dpp_ptr + rows[:, None] * N + s[None, :], dpp, mask=mask_s)


def launch_seam_bwd(x, h_res, h_out, h_post, h_pre_prev, phi, alpha, gamma, out, next_h_post, next_inv_rms,
                    next_h_mix, next_h_pre, dh_in, dh_next_post, dh_next_res, dh_next_pre=None, grad_x_next=None,
                    hc_eps=1e-6, block_t=16, block_d=32, num_warps=4, num_stages=None, block_t_a=16, g_tile=None,
                    splits=None, presplit=None, maxnreg=None) -> tuple:  # fmt: skip
    """The seam backward on validated inputs (golden/seam.py seam_backward's, bias not needed) -> the
    SEAM_GRADS tensors: dx (x's dtype and shape), dh_res [.., n, n], dh_out (h_out's dtype), dh_post
    [.., n], dphi [O, nD], dalpha [3], dbias [O] (views of one [O + 3]), dgamma [n, D] (None without
    gamma) and dh_pre_prev [.., n] (None without h_pre_prev), fp32 unless stated.

    block_t, block_d, num_warps, num_stages: the seam kernel's tile (tokens, columns) and launch (num_stages
    None: 3 up to n = 4, else 2, as much as shared memory holds); block_t_a:
    pass A's tokens per program; g_tile, splits, presplit: pass B's (block_t, block_d) for G, its token
    ranges and whether it reads pass A's bf16 parts of dh_mix (None: launch_backward_fused's choices);
    maxnreg: the seam kernel's register cap (check_maxnreg; None = the compiler's)."""
    n, D = static_dims(x, 2)
    O, nD = n * n + 2 * n, n * D
    lead, dev, f32 = x.shape[:-2], x.device, torch.float32
    T = x.numel() // nD
    for name, value in (("block_t", block_t), ("block_d", block_d), ("block_t_a", block_t_a)):
        check_block(name, value, 16)
    check_maxnreg(maxnreg)
    num_stages = num_stages or (3 if n_pad(n) <= 4 else 2)
    dcoeff = torch.empty(O + 3, device=dev, dtype=f32)  # [dbias (O) | dalpha (3)]
    dx = torch.empty(x.shape, device=dev, dtype=x.dtype)
    dh_res = torch.empty((*lead, n, n), device=dev, dtype=f32)
    dh_out = torch.empty(h_out.shape, device=dev, dtype=h_out.dtype)
    dh_post = torch.empty((*lead, n), device=dev, dtype=f32)
    dphi = torch.empty((O, nD), device=dev, dtype=f32)
    dgamma = torch.empty((n, D), device=dev, dtype=f32) if gamma is not None else None
    dpp = torch.empty((*lead, n), device=dev, dtype=f32) if h_pre_prev is not None else None
    grads = (dx, dh_res, dh_out, dh_post, dphi, dcoeff[O:], dcoeff[:O], dgamma, dpp)
    if T == 0:
        for t in (dphi, dgamma, dcoeff):
            if t is not None:
                t.zero_()
        return grads
    xt, rt, ht, pt, xn = tokens(x, 2), tokens(h_res, 2), tokens(h_out, 1), tokens(h_post, 1), tokens(out, 2)
    dh_in_t, dx_t, dh_out_t = tokens(dh_in, 1), dx.view(-1, n, D), dh_out.view(-1, D)
    gxn = tokens(grad_x_next, 2) if grad_x_next is not None else xn  # never read without HAS_GXN
    alpha, dh_next_post, dh_next_res, next_inv_rms, next_h_mix, next_h_pre, next_h_post = (
        t.contiguous() for t in (alpha, dh_next_post, dh_next_res, next_inv_rms, next_h_mix, next_h_pre, next_h_post)
    )
    has_dh_pre = dh_next_pre is not None
    dh_pre = dh_next_pre.contiguous() if has_dh_pre else next_h_pre  # never read without HAS_DH_PRE
    hpp = h_pre_prev.contiguous() if h_pre_prev is not None else next_h_pre  # never read without HAS_HPP
    # pass B (G alone): launch_backward_fused's tile, token ranges and use of pass A's parts
    T_hint = size_hint(T)
    o_a, o_b = o_groups(n)
    split_cap = g_split_cap(T_hint, x.element_size(), O, nD)
    bf16 = x.dtype == torch.bfloat16
    g_tile = g_tile or pass_b_tile(o_a + o_b, n, D, T_hint, dev, split_cap, bf16 and presplit is not False)
    check_tile_span(max(block_t, g_tile[0]), xt, xn, dh_in_t, dx_t, gxn)
    presplit = bf16 and (g_tile[0] < PRESPLIT_BELOW_BLOCK_T if presplit is None else presplit)
    dh_mix = torch.empty((T, O), device=dev, dtype=f32)
    dh3 = torch.empty((3, T, o_pad(n)), device=dev, dtype=torch.bfloat16) if presplit else dh_mix  # written first
    rms_coef = torch.empty(T, device=dev, dtype=f32)
    blocks_a = cdiv(T, block_t_a)
    ws_dcoeff = torch.empty((blocks_a, O + 3), device=dev, dtype=torch.float64)
    # the delayed pre's pass A: no x (dh_pre_prev is the seam kernel's)
    _pass_a_kernel[(blocks_a, 1)](
        xn, dh_in_t, alpha, dh_next_post, dh_next_res, next_inv_rms, next_h_mix, next_h_pre, next_h_post, dh_mix,
        rms_coef, ws_dcoeff, dh_pre, dh3, rms_coef, rms_coef, T, n, D, *xn.stride(), *dh_in_t.stride(),
        float(hc_eps), 1, BLOCK_T=block_t_a, BLOCK_D=16, O_PAD=o_pad(n), N_PAD=n_pad(n), DELAYED=True,
        HAS_DH_PRE=has_dh_pre, PRESPLIT=presplit, SPLIT_A=False, LOOP_STAGES=0, num_warps=4, num_stages=2,
    )  # fmt: skip
    gamma_arg = gamma.contiguous() if gamma is not None else rms_coef  # never read without HAS_GAMMA
    dpp_arg = dpp if dpp is not None else dh_post  # never written without HAS_HPP
    _seam_bwd_kernel[(cdiv(T, block_t),)](
        xt, rt, ht, pt, xn, hpp, dh_in_t, gxn, phi, gamma_arg, dh_mix, rms_coef, dx_t, dh_res, dh_out_t, dh_post,
        dpp_arg, T, D, *xt.stride(), *rt.stride(), *ht.stride(), *pt.stride(), *xn.stride(), *dh_in_t.stride(),
        *gxn.stride(), *dx_t.stride(), *dh_out_t.stride(), *phi.stride(), N=n, N_PAD=n_pad(n), BLOCK_T=block_t,
        BLOCK_D=block_d, O_A=o_a, O_B=o_b, HAS_HPP=h_pre_prev is not None, HAS_GAMMA=gamma is not None,
        HAS_GXN=grad_x_next is not None, NUM_STAGES=num_stages, num_warps=num_warps, maxnreg=maxnreg,
    )  # fmt: skip
    col_programs = n * cdiv(D, g_tile[1])
    splits = splits or token_splits(dev, col_programs, cdiv(T_hint, g_tile[0]), split_cap)
    ws_g = torch.empty((splits, O * nD), device=dev, dtype=f32)
    _pass_b_kernel[(col_programs, splits)](
        xn, dh_in_t, xn, xn, phi, gamma_arg, dh_mix, rms_coef, hpp, ws_g, dh3, ws_g, ws_g, T, n, D, *xn.stride(),
        *dh_in_t.stride(), *xn.stride(), *xn.stride(), *phi.stride(), splits, HAS_GAMMA=False, HAS_GXP=False,
        BLOCK_T=g_tile[0], BLOCK_D=g_tile[1], O_A=o_a, O_B=o_b, INTERPRET=interpreting(), COLLAPSE=2,
        PRESPLIT=presplit, O_PAD=o_pad(n), DX=False, MM_SCRATCH=False, LOOP_STAGES=0, num_warps=4, num_stages=2,
    )  # fmt: skip
    block_k, block_p = finish_tile(n)
    _finish_kernel[(cdiv(nD, block_k) + 1,)](
        ws_g, phi, gamma_arg, dphi, dgamma if gamma is not None else ws_g, ws_dcoeff, dcoeff, ws_g, ws_g, splits,
        blocks_a, 0, 0, n, D, *phi.stride(), HAS_GAMMA=gamma is not None, BLOCK_K=block_k, O_PAD=o_pad(n),
        BLOCK_P=block_p, BLOCK_DPP=512,
    )  # fmt: skip
    return grads
