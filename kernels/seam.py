"""Stage seam_fwd: mhc_post(l) and the delayed pre(l+1) in one pass over the streams.

Program (b, s) owns BLOCK_T tokens and the column chunks s*C//splits .. (s+1)*C//splits - 1 (C =
cdiv(D, BLOCK_D)). Per chunk and output stream j it forms x(l+1)[j] from the n input tiles and h_out,
stores it, and from the same tile, rounded to x's dtype as stored, accumulates the next pre's
projection (mix_dot, the forward's tile math) and sum of squares and h_in(l+1) = sum_j
h_pre_prev[j] * x(l+1)[j]. The partials go to the forward's workspace and _fwd_finish_kernel (kernels/
fwd.py) reduces them into the next pre's coefficients: two launches, x(l) read once, x(l+1) written
once and never read back.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._cache import weight_derived
from ._common import (
    cdiv,
    check_block,
    check_tile_span,
    interpreting,
    n_pad,
    o_pad,
    round_to,
    size_hint,
    sm_count,
    static_dims,
    stream_tile,
)
from ._launch import launched
from .fwd import (
    FINISH_BLOCK_T,
    FINISH_UNROLL,
    _fwd_finish_kernel,
    auto_splits,
    mix_dot,
    mix_weights,
    split_weights,
    store_partials,
)
from .post import load_tile


@triton.jit
def seam_columns(x_ptr, h_res_ptr, h_out_ptr, h_post_ptr, out_ptr, hpp_ptr, phi_ptr, gamma_ptr, w_ptr, h_in_ptr, rows,
                 row_mask, cols, dc_start, dc_end, D, sx_t, sx_i, sx_d, sr_t, sr_i, sr_j, sho_t, sho_d, shp_t, shp_j,
                 so_t, so_j, so_d, sphi_o, sphi_k, N: tl.constexpr, HAS_GAMMA: tl.constexpr, W_SPLIT: tl.constexpr,
                 BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, O_PAD: tl.constexpr, INTERPRET: tl.constexpr,
                 N_PAD: tl.constexpr, COLLAPSE: tl.constexpr):  # fmt: skip
    """post(l) over the column chunks dc_start .. dc_end-1 of rows: x(l+1) stored, and from it, rounded
    as stored, the next pre's projection and sum of squares -> (h_mix [BLOCK_T, O_PAD], sum of x^2
    [BLOCK_T]) fp32. COLLAPSE (the delayed pre): h_in of those columns, sum_j h_pre_prev[j] * x(l+1)[j]
    (hpp_ptr [T, N] fp32), stored in h_in's dtype."""
    # Per chunk the n input streams are one [BLOCK_T, N_PAD, BLOCK_D] tile; then output stream by output
    # stream, x(l+1)[j], its projection and its h_in term. Below 16 tokens (decode: tl.dot's smallest M)
    # the projection's and the sum of squares' products are added elementwise, [BLOCK_T, O_PAD, BLOCK_D]
    # (columns last, as the weights load) and [BLOCK_T, BLOCK_D] in fp32, and summed over the columns
    # once after the loop: no reduction across the program's threads per stream (docs/perf.md,
    # Performance XIII).
    streams = tl.arange(0, N_PAD)
    ELEMENTWISE: tl.constexpr = BLOCK_T < 16
    if ELEMENTWISE:
        tl.static_assert(not W_SPLIT, "the bf16 weight parts are tl.dot operands: at least 16 tokens")
        h_mix = tl.zeros([BLOCK_T, O_PAD, BLOCK_D], dtype=tl.float32)
        sumsq = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    else:
        h_mix = tl.zeros([BLOCK_T, O_PAD], dtype=tl.float32)
        sumsq = tl.zeros([BLOCK_T], dtype=tl.float32)
    for dc in range(dc_start, dc_end):
        d = dc * BLOCK_D + tl.arange(0, BLOCK_D)
        d_mask = d < D
        mask = row_mask[:, None] & d_mask[None, :]
        h_out = load_tile(h_out_ptr, rows, d, sho_t, sho_d, mask)
        h_in = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        xs = stream_tile(x_ptr, rows, row_mask, d, d_mask, N, sx_t, sx_i, sx_d, N_PAD).to(tl.float32)
        for j in tl.static_range(N):
            acc = tl.load(h_post_ptr + rows * shp_t + j * shp_j, mask=row_mask, other=0.0)[:, None] * h_out
            r_j = tl.load(h_res_ptr + rows[:, None] * sr_t + streams[None, :] * sr_i + j * sr_j,
                          mask=row_mask[:, None] & (streams < N)[None, :], other=0.0)  # h_res[:, i, j] over i
            acc += tl.sum(r_j[:, :, None] * xs, axis=1)
            nxt = round_to(acc, out_ptr.dtype.element_ty)  # x(l+1)[j] as stored: what the next pre reads
            tl.store(out_ptr + rows[:, None] * so_t + tl.cast(j, tl.int64) * so_j + d[None, :] * so_d, nxt, mask=mask)
            xf = nxt.to(tl.float32)
            if COLLAPSE:
                h_in += tl.load(hpp_ptr + rows * N + j, mask=row_mask, other=0.0)[:, None] * xf
            if ELEMENTWISE:
                sumsq += xf * xf
                w = mix_weights(phi_ptr, gamma_ptr, cols, j * D + d, d_mask, N, sphi_o, sphi_k, HAS_GAMMA, True)
                h_mix += xf[:, None, :] * w[None, :, :]
            else:
                sumsq += tl.sum(xf * xf, axis=1)
                h_mix += mix_dot(nxt, xf, phi_ptr, gamma_ptr, w_ptr, cols, j * D + d, d_mask, N, D, sphi_o, sphi_k,
                                 HAS_GAMMA, W_SPLIT, BLOCK_T, O_PAD, INTERPRET)  # fmt: skip
        if COLLAPSE:
            tl.store(h_in_ptr + rows[:, None] * D + d[None, :], round_to(h_in, h_in_ptr.dtype.element_ty), mask=mask)
    if ELEMENTWISE:
        h_mix = tl.sum(h_mix, axis=2)
        sumsq = tl.sum(sumsq, axis=1)
    return h_mix, sumsq


@launched(do_not_specialize=["T", "splits"])
def _seam_partial_kernel(x_ptr, h_res_ptr, h_out_ptr, h_post_ptr, out_ptr, hpp_ptr, phi_ptr, gamma_ptr, w_ptr,
                         ws_ptr, h_in_ptr, T, D, sx_t, sx_i, sx_d, sr_t, sr_i, sr_j, sho_t, sho_d, shp_t, shp_j,
                         so_t, so_j, so_d, sphi_o, sphi_k, splits, N: tl.constexpr, HAS_GAMMA: tl.constexpr,
                         W_SPLIT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, O_PAD: tl.constexpr,
                         INTERPRET: tl.constexpr, N_PAD: tl.constexpr):  # fmt: skip
    s = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_mask = rows < T
    cols = tl.arange(0, O_PAD)
    chunks = tl.cdiv(D, BLOCK_D)
    h_mix, sumsq = seam_columns(
        x_ptr, h_res_ptr, h_out_ptr, h_post_ptr, out_ptr, hpp_ptr, phi_ptr, gamma_ptr, w_ptr, h_in_ptr, rows, row_mask,
        cols, s * chunks // splits, (s + 1) * chunks // splits, D, sx_t, sx_i, sx_d, sr_t, sr_i, sr_j, sho_t, sho_d,
        shp_t, shp_j, so_t, so_j, so_d, sphi_o, sphi_k, N, HAS_GAMMA, W_SPLIT, BLOCK_T, BLOCK_D, O_PAD, INTERPRET,
        N_PAD, True,
    )  # fmt: skip
    store_partials(ws_ptr, h_mix, sumsq, s, rows, row_mask, cols, T, N, splits, O_PAD)


def launch_seam_fwd(x, h_res, h_out, h_post, h_pre_prev, phi, alpha, bias, gamma, norm_eps, hc_eps, block_t=None,
                    block_d=64, splits=None, num_warps=4, num_stages=1):  # fmt: skip
    """The seam forward on validated inputs (mhc_post's and the delayed pre's) -> (out, h_in, next
    h_post, next h_res, next inv_rms, next h_mix, next h_pre) (golden/seam.py SEAM_OUTPUTS).
    splits: column-chunk ranges per token block (None: kernels/fwd.auto_splits on CUDA, 1 on CPU).
    block_t: None = 32 tokens up to n = 4, 16 above (the fastest). num_stages=1: pipelined, the loop's
    loads overflow shared memory. Compiled without FMA contraction, so the x(l+1) tile the projection
    multiplies is the one stored (docs/perf.md, kernels/seam.py)."""
    block_t = block_t if block_t is not None else (32 if x.shape[-2] <= 4 else 16)
    check_block("block_t", block_t, 16)  # seam_columns' tl.dot tile (below 16 rows: decode's path alone)
    check_block("block_d", block_d, 16)
    n, D = static_dims(x, 2)
    lead = x.shape[:-2]
    O = n * n + 2 * n
    xt, rt, ot, pt = x.reshape(-1, n, D), h_res.reshape(-1, n, n), h_out.reshape(-1, D), h_post.reshape(-1, n)
    T = xt.shape[0]
    dev, f32 = x.device, torch.float32
    out = torch.empty(x.shape, device=dev, dtype=x.dtype)
    h_in = torch.empty((*lead, D), device=dev, dtype=x.dtype)
    nxt = [torch.empty((*lead, *shape), device=dev, dtype=f32) for shape in ((n,), (n, n), (), (O,), (n,))]
    if T == 0:
        return out, h_in, *nxt
    h_post_n, h_res_n, inv_rms, h_mix, h_pre = nxt
    check_tile_span(block_t, xt, out.view(-1, n, D))
    w_split = x.dtype == torch.bfloat16
    gamma_arg = gamma.contiguous() if gamma is not None else alpha  # never read without HAS_GAMMA
    w_arg = weight_derived("fwd.split_weights", split_weights, phi, gamma) if w_split else alpha
    chunks = cdiv(D, block_d)
    token_blocks = cdiv(T, block_t)
    if splits is None:
        splits = auto_splits(cdiv(size_hint(T), block_t), chunks, sm_count(dev)) if dev.type == "cuda" else 1
    splits = min(splits, chunks)
    ws = torch.empty(splits * T * (o_pad(n) + 1), device=dev, dtype=f32)
    ov = out.view(-1, n, D)
    _seam_partial_kernel[(token_blocks, splits)](
        xt, rt, ot, pt, ov, h_pre_prev.contiguous(), phi, gamma_arg, w_arg, ws, h_in, T, D, *xt.stride(),
        *rt.stride(), *ot.stride(), *pt.stride(), *ov.stride(), *phi.stride(), splits, N=n,
        HAS_GAMMA=gamma is not None, W_SPLIT=w_split, BLOCK_T=block_t, BLOCK_D=block_d, O_PAD=o_pad(n),
        INTERPRET=interpreting(), N_PAD=n_pad(n), num_warps=num_warps, num_stages=num_stages,
        enable_fp_fusion=False,
    )  # fmt: skip
    finish_t = min(block_t, FINISH_BLOCK_T)
    _fwd_finish_kernel[(cdiv(T, finish_t), 1)](
        ov, ws, alpha.contiguous(), bias.contiguous(), h_in, h_post_n, h_res_n, inv_rms, h_mix, h_pre, T, n, D,
        *ov.stride(), splits, D, float(norm_eps), float(hc_eps), BLOCK_T=finish_t, BLOCK_D=block_d, O_PAD=o_pad(n),
        UNROLL=FINISH_UNROLL, N_PAD=n_pad(n), STREAM64=False, COLLAPSE=1, num_warps=num_warps,
    )  # fmt: skip
    return out, h_in, h_post_n, h_res_n, inv_rms, h_mix, h_pre
