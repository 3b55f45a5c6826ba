"""Stage seam_fwd: mhc_post(l) and the delayed pre(l+1) in one pass over the streams.

Program (b, s) owns BLOCK_T tokens and the column chunks s*C//splits .. (s+1)*C//splits - 1 (C =
cdiv(D, BLOCK_D)). Per chunk it reads x(l) (all n streams) and h_out once, forms x(l+1) with mhc_post's
tile math (post_tile), stores it, and from the same tile, rounded to x's dtype as stored, accumulates
the next pre's projection (mix_dot per stream) and sum of squares and writes h_in(l+1) = sum_i
h_pre_prev[i] * x(l+1)[i]. The partials go to the forward's workspace and _fwd_finish_kernel (kernels/
fwd.py) reduces them into the next pre's coefficients: two launches, x(l) read once, x(l+1) written
once and never read back.
"""

from __future__ import annotations

import torch
import triton.language as tl

from ._cache import weight_derived
from ._common import cdiv, check_tile_span, interpreting, n_pad, o_pad, round_to, size_hint, sm_count, static_dims
from ._launch import launched
from .fwd import (
    FINISH_BLOCK_T,
    FINISH_UNROLL,
    _fwd_finish_kernel,
    auto_splits,
    collapse_columns,
    mix_dot,
    split_weights,  # fmt: skip
    store_partials,
)
from .post import post_tile, store_streams


@launched(do_not_specialize=["T", "splits"])
def _seam_partial_kernel(x_ptr, h_res_ptr, h_out_ptr, h_post_ptr, out_ptr, hpp_ptr, phi_ptr, gamma_ptr, w_ptr,
                         ws_ptr, h_in_ptr, T, D, sx_t, sx_i, sx_d, sr_t, sr_i, sr_j, sho_t, sho_d, shp_t, shp_j,
                         so_t, so_j, so_d, sphi_o, sphi_k, splits, N: tl.constexpr, N_PAD: tl.constexpr,
                         HAS_GAMMA: tl.constexpr, W_SPLIT: tl.constexpr, BLOCK_T: tl.constexpr,
                         BLOCK_D: tl.constexpr, O_PAD: tl.constexpr, INTERPRET: tl.constexpr):  # fmt: skip
    s = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_mask = rows < T
    cols = tl.arange(0, O_PAD)
    j = tl.arange(0, N_PAD)
    coll = collapse_columns(hpp_ptr, rows, row_mask, N, N_PAD, 1)  # [BT, N_PAD]
    h_mix = tl.zeros([BLOCK_T, O_PAD], dtype=tl.float32)
    sumsq = tl.zeros([BLOCK_T], dtype=tl.float32)
    chunks = tl.cdiv(D, BLOCK_D)
    for dc in range(s * chunks // splits, (s + 1) * chunks // splits):
        d = dc * BLOCK_D + tl.arange(0, BLOCK_D)
        d_mask = d < D
        acc = post_tile(x_ptr, h_res_ptr, h_out_ptr, h_post_ptr, rows, row_mask, d, D, sx_t, sx_i, sx_d, sr_t, sr_i,
                        sr_j, sho_t, sho_d, shp_t, shp_j, N, N_PAD)  # fmt: skip
        nxt = round_to(acc, out_ptr.dtype.element_ty)  # x(l+1) as stored: what the next pre reads
        store_streams(out_ptr, nxt, rows, row_mask, d, D, so_t, so_j, so_d, N, N_PAD)
        xf = nxt.to(tl.float32)  # [BT, N_PAD, BD]
        sumsq += tl.sum(tl.sum(xf * xf, axis=2), axis=1)
        h_in = tl.sum(coll[:, :, None] * xf, axis=1)
        tl.store(h_in_ptr + rows[:, None] * D + d[None, :], round_to(h_in, h_in_ptr.dtype.element_ty),
                 mask=row_mask[:, None] & d_mask[None, :])  # fmt: skip
        for i in tl.static_range(N):
            xi = tl.sum(tl.where(j[None, :, None] == i, xf, 0.0), axis=1)  # stream i, exact
            h_mix += mix_dot(xi.to(out_ptr.dtype.element_ty), xi, phi_ptr, gamma_ptr, w_ptr, cols, i * D + d, d_mask,
                             N, D, sphi_o, sphi_k, HAS_GAMMA, W_SPLIT, BLOCK_T, O_PAD, INTERPRET)  # fmt: skip
    store_partials(ws_ptr, h_mix, sumsq, s, rows, row_mask, cols, T, N, splits, O_PAD)


def launch_seam_fwd(x, h_res, h_out, h_post, h_pre_prev, phi, alpha, bias, gamma, norm_eps, hc_eps, block_t=16,
                    block_d=64, splits=None, num_warps=4):  # fmt: skip
    """The seam forward on validated inputs (mhc_post's and the delayed pre's) -> (out, h_in, next
    h_post, next h_res, next inv_rms, next h_mix, next h_pre) (golden/seam.py SEAM_OUTPUTS).
    splits: column-chunk ranges per token block (None: kernels/fwd.auto_splits on CUDA, 1 on CPU)."""
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
        *rt.stride(), *ot.stride(), *pt.stride(), *ov.stride(), *phi.stride(), splits, N=n, N_PAD=n_pad(n),
        HAS_GAMMA=gamma is not None, W_SPLIT=w_split, BLOCK_T=block_t, BLOCK_D=block_d, O_PAD=o_pad(n),
        INTERPRET=interpreting(), num_warps=num_warps,
    )  # fmt: skip
    finish_t = min(block_t, FINISH_BLOCK_T)
    _fwd_finish_kernel[(cdiv(T, finish_t), 1)](
        ov, ws, alpha.contiguous(), bias.contiguous(), h_in, h_post_n, h_res_n, inv_rms, h_mix, h_pre, T, n, D,
        *ov.stride(), splits, D, float(norm_eps), float(hc_eps), BLOCK_T=finish_t, BLOCK_D=block_d, O_PAD=o_pad(n),
        UNROLL=FINISH_UNROLL, N_PAD=n_pad(n), STREAM64=False, COLLAPSE=1, num_warps=num_warps,
    )  # fmt: skip
    return out, h_in, h_post_n, h_res_n, inv_rms, h_mix, h_pre
