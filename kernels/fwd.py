"""Stage fwd: h_mix and inv_rms from one pass over x, the coefficients, then h_in.

Two paths, chosen by launch_fwd's ``splits`` (auto_splits: by token blocks per SM):
- ``_fwd_kernel``, grid (cdiv(T, BLOCK_T),): mix_tile streams x for sum(x^2) and h_mix =
  (x*gamma) @ phi^T ([BLOCK_T, O_PAD] fp32), then apply_tile re-reads x for h_in.
- split-K: ``_fwd_partial_kernel``, grid (token blocks, splits), stores fp32 partials of a chunk range
  into one workspace (every element read is written: no zero fill); ``_fwd_finish_kernel``, grid
  (token blocks, D blocks), sums them in split order (deterministic, no atomics), computes the
  coefficients, stores the saved tensors (D block 0) and h_in. The delayed pre (COLLAPSE > 0) writes
  h_in in the projection's pass. T, splits, apply_cols are runtime arguments; x and the workspace use
  64-bit offsets (tile_offsets: 64-bit base, int32 within); sums in fp32, h_in in x's dtype.
Figures behind the choices: docs/perf.md, kernels/fwd.py.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._cache import weight_derived
from ._common import (
    alpha_per_col,
    bf16_dot,
    cdiv,
    check_block,
    check_inputs,
    check_maxnreg,
    check_tile_span,
    default_block_d,
    fp32_dot,
    interpreting,
    n_pad,
    o_pad,
    pre_columns,
    round_to,
    size_hint,
    sm_count,
    split3_bf16,
    split_bf16_host,
    static_dims,
    store_coeff_part,
    stream64,
    stream_offset,
    tile_offsets,
    tokens,
)
from ._launch import launched

# Split-K heuristic (auto_splits) and the finish kernel's shape; the sweeps behind each value:
# docs/perf.md, kernels/fwd.py.
SPLIT_BELOW_PROGRAMS_PER_SM = 1  # split when the token blocks are fewer than this many per SM
SPLIT_PROGRAMS_PER_SM = 2  # then aim the partial kernel at about this many programs per SM
MAX_SPLITS = 64  # bounds the workspace (splits * (O_PAD + 1) floats per token) and the finish's re-reads
# finish_cols: about FINISH_PROGRAMS_PER_SM programs per SM, but D blocks wide enough that a program's
# re-reads of the partials stay under FINISH_REREAD_LIMIT times the bytes of x it streams.
FINISH_PROGRAMS_PER_SM = 4
FINISH_REREAD_LIMIT = 2
FINISH_UNROLL = 8  # partials loaded per step: independent loads in flight, added in order s, s+1, ...
FINISH_BLOCK_T = 16  # tokens per finish program (at most block_t): a 64-row h_in tile spills registers
# h_in columns per step of the finish's apply (finish_block_d): the fastest of an H200 sweep, 64 up to
# n = 7 (n = 6: 128 spills), 128 from n = 8 (docs/perf.md, kernels/fwd.py).
FINISH_BLOCK_D = 64
FINISH_BLOCK_D_N8 = 128
# adjacent columns of one x row whose squares a thread sums per chunk (square_runs): a bf16 tile loads 8 a thread
SQ_RUN = tl.constexpr(8)
# launch_fwd(wide=True) up to this O_PAD: the product's [64, 4 * O_PAD] fp32 accumulator, 64 registers a thread
# at O_PAD 32 (n <= 4; the single kernel compiles to 222 registers, no spills, for sm_90)
WIDE_MAX_O_PAD = 32


@triton.jit
def mix_chunk(
    x_ptr, phi_ptr, gamma_ptr, w_ptr, rows, row_mask, cols, i, d, d_mask, n, D, sx_t, sx_i, sx_d, sphi_o, sphi_k,
    HAS_GAMMA: tl.constexpr, W_SPLIT: tl.constexpr, BLOCK_T: tl.constexpr, O_PAD: tl.constexpr,
    INTERPRET: tl.constexpr, STREAM64: tl.constexpr,
):  # fmt: skip
    """One chunk (stream i, columns d) of every token in rows -> (x tile in fp32, its h_mix terms
    [BLOCK_T, O_PAD] (mix_dot))."""
    # 64-bit offsets, not tile_offsets: slower here (docs/perf.md, kernels/fwd.py)
    xt = tl.load(
        x_ptr + rows[:, None] * sx_t + stream_offset(i, sx_i, STREAM64) + d[None, :] * sx_d,
        mask=row_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    xf = xt.to(tl.float32)
    chunk = mix_dot(xt, xf, phi_ptr, gamma_ptr, w_ptr, cols, i * D + d, d_mask, n, D, sphi_o, sphi_k, HAS_GAMMA,
                    W_SPLIT, BLOCK_T, O_PAD, INTERPRET)  # fmt: skip
    return xf, chunk


@triton.jit
def square_runs(xf):
    """Sums of squares of an fp32 tile [BLOCK_T, BLOCK_D] over runs of SQ_RUN adjacent columns ->
    [BLOCK_T, BLOCK_D // SQ_RUN]: the part of each row's sum of x^2 a thread holds. Added across chunks,
    summed across the threads once after the loop: no shuffles per chunk (docs/perf.md, Performance XIII)."""
    return tl.sum(tl.reshape(xf * xf, [xf.shape[0], xf.shape[1] // SQ_RUN, SQ_RUN]), axis=2)


@triton.jit
def mix_dot(xt, xf, phi_ptr, gamma_ptr, w_ptr, cols, k, d_mask, n, D, sphi_o, sphi_k, HAS_GAMMA: tl.constexpr,
            W_SPLIT: tl.constexpr, BLOCK_T: tl.constexpr, O_PAD: tl.constexpr, INTERPRET: tl.constexpr):  # fmt: skip
    """h_mix terms [BLOCK_T, O_PAD] of one [BLOCK_T, BLOCK_D] tile of x (xt in x's dtype, xf in fp32) at
    the flattened columns k of nD.

    W_SPLIT (bf16 x, which is exact in bf16): w_ptr holds (gamma*phi)^T as three bf16 parts
    [3, nD, O_PAD] (split_bf16_host), multiplied on bf16 tensor cores and summed in fp32: three products
    into one accumulator (W_SPLIT 1), or (W_SPLIT 2, O_PAD <= WIDE_MAX_O_PAD) one product against the
    parts side by side, [BLOCK_D, 4 * O_PAD] with a fourth of zeros, whose four column groups are summed
    per chunk: one group of tensor-core instructions and one wait for it a chunk instead of three
    (docs/perf.md, Performance XIV). Otherwise phi and gamma are read in fp32 (mix_weights) and
    multiplied by fp32_dot."""
    if W_SPLIT == 2:
        part = n * D * O_PAD
        p = tl.arange(0, 4)
        w = tl.load(w_ptr + (k[:, None, None] * O_PAD + (p * part)[None, :, None] + cols[None, None, :]),
                    mask=d_mask[:, None, None] & (p < 3)[None, :, None], other=0.0)  # fmt: skip
        wide = bf16_dot(xt, tl.reshape(w, [w.shape[0], 4 * O_PAD]), tl.zeros([BLOCK_T, 4 * O_PAD], dtype=tl.float32),
                        INTERPRET)  # fmt: skip
        chunk = tl.sum(tl.reshape(wide, [BLOCK_T, 4, O_PAD]), axis=1)
    elif W_SPLIT:
        # A fresh accumulator per chunk, added in fp32 (see split_dot_rhs_bf16).
        w_offs = k[:, None] * O_PAD + cols[None, :]
        part = n * D * O_PAD
        chunk = tl.zeros([BLOCK_T, O_PAD], dtype=tl.float32)
        for p in tl.static_range(2, -1, -1):  # lo, mid, hi: the small parts first
            w = tl.load(w_ptr + p * part + w_offs, mask=d_mask[:, None], other=0.0)
            chunk = bf16_dot(xt, w, chunk, INTERPRET)
    else:
        chunk = fp32_dot(xf, mix_weights(phi_ptr, gamma_ptr, cols, k, d_mask, n, sphi_o, sphi_k, HAS_GAMMA, False))
    return chunk


@triton.jit
def mix_weights(phi_ptr, gamma_ptr, cols, k, d_mask, n, sphi_o, sphi_k, HAS_GAMMA: tl.constexpr,
                COLUMNS_LAST: tl.constexpr):  # fmt: skip
    """(gamma*phi)^T at the flattened columns k of nD and the rows cols of O -> [BLOCK_D, O_PAD] fp32, or
    with COLUMNS_LAST its transpose [O_PAD, BLOCK_D], loaded so (0 past O and where masked)."""
    O = n * n + 2 * n
    if COLUMNS_LAST:
        w = tl.load(phi_ptr + cols[:, None] * sphi_o + k[None, :] * sphi_k, mask=(cols < O)[:, None] & d_mask[None, :],
                    other=0.0).to(tl.float32)  # fmt: skip
        if HAS_GAMMA:
            w = w * tl.load(gamma_ptr + k, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    else:
        w = tl.load(phi_ptr + cols[None, :] * sphi_o + k[:, None] * sphi_k, mask=d_mask[:, None] & (cols < O)[None, :],
                    other=0.0).to(tl.float32)  # fmt: skip
        if HAS_GAMMA:
            w = w * tl.load(gamma_ptr + k, mask=d_mask, other=0.0).to(tl.float32)[:, None]
    return w


@triton.jit
def mix_tile(
    x_ptr, phi_ptr, gamma_ptr, w_ptr, rows, row_mask, cols, c_start, c_end, n, D, sx_t, sx_i, sx_d, sphi_o, sphi_k,
    HAS_GAMMA: tl.constexpr, W_SPLIT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    O_PAD: tl.constexpr, INTERPRET: tl.constexpr, STREAM64: tl.constexpr,
):  # fmt: skip
    """-> (h_mix [BLOCK_T, O_PAD] fp32, sum of x^2 [BLOCK_T] fp32) over the chunks c_start .. c_end-1
    of each token's nD elements. Chunk c is stream i = c // d_chunks, columns d0 = (c % d_chunks) *
    BLOCK_D .. d0 + BLOCK_D (d_chunks = cdiv(D, BLOCK_D)); the chunks are added in order."""
    d_chunks = tl.cdiv(D, BLOCK_D)
    h_mix = tl.zeros([BLOCK_T, O_PAD], dtype=tl.float32)
    sq = tl.zeros([BLOCK_T, BLOCK_D // SQ_RUN], dtype=tl.float32)
    for c in range(c_start, c_end):
        i = c // d_chunks
        d = (c - i * d_chunks) * BLOCK_D + tl.arange(0, BLOCK_D)
        xf, chunk = mix_chunk(
            x_ptr, phi_ptr, gamma_ptr, w_ptr, rows, row_mask, cols, i, d, d < D, n, D, sx_t, sx_i, sx_d,
            sphi_o, sphi_k, HAS_GAMMA, W_SPLIT, BLOCK_T, O_PAD, INTERPRET, STREAM64,
        )  # fmt: skip
        sq += square_runs(xf)
        h_mix += chunk
    return h_mix, tl.sum(sq, axis=1)


@triton.jit
def collapse_columns(hpp_ptr, rows, row_mask, n, N_PAD: tl.constexpr, COLLAPSE: tl.constexpr):
    """[BLOCK_T, N_PAD] fp32 coefficients the delayed pre collapses with: h_pre_prev [T, n] (COLLAPSE
    1), or stream 0 alone (2: the first sublayer)."""
    j = tl.arange(0, N_PAD)
    if COLLAPSE == 1:
        coll = tl.load(hpp_ptr + rows[:, None] * n + j[None, :], mask=row_mask[:, None] & (j < n)[None, :],
                       other=0.0).to(tl.float32)  # fmt: skip
    else:
        coll = tl.where((rows[:, None] >= 0) & (j[None, :] == 0), 1.0, 0.0)
    return coll


@triton.jit
def mix_collapse_tile(
    x_ptr, phi_ptr, gamma_ptr, w_ptr, h_in_ptr, coll, rows, row_mask, cols, dc_start, dc_end, n, D, sx_t, sx_i,
    sx_d, sphi_o, sphi_k, HAS_GAMMA: tl.constexpr, W_SPLIT: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr, O_PAD: tl.constexpr, INTERPRET: tl.constexpr, STREAM64: tl.constexpr,
):  # fmt: skip
    """The delayed pre's one pass over x: mix_tile over the column chunks dc_start .. dc_end-1 of every
    stream (column-major: all n streams of a chunk, then the next), and h_in of those columns from
    the same tiles, h_in = sum_i coll[:, i] * x[i] (coll: collapse_columns), stored in h_in's dtype.
    -> (h_mix [BLOCK_T, O_PAD], sum of x^2 [BLOCK_T]) of those chunks."""
    h_mix = tl.zeros([BLOCK_T, O_PAD], dtype=tl.float32)
    sq = tl.zeros([BLOCK_T, BLOCK_D // SQ_RUN], dtype=tl.float32)
    j = tl.arange(0, coll.shape[1])
    for dc in range(dc_start, dc_end):
        d = dc * BLOCK_D + tl.arange(0, BLOCK_D)
        d_mask = d < D
        h_in = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        for i in range(0, n):
            xf, chunk = mix_chunk(
                x_ptr, phi_ptr, gamma_ptr, w_ptr, rows, row_mask, cols, i, d, d_mask, n, D, sx_t, sx_i, sx_d,
                sphi_o, sphi_k, HAS_GAMMA, W_SPLIT, BLOCK_T, O_PAD, INTERPRET, STREAM64,
            )  # fmt: skip
            sq += square_runs(xf)
            h_mix += chunk
            h_in += tl.sum(tl.where(j[None, :] == i, coll, 0.0), axis=1)[:, None] * xf
        tl.store(h_in_ptr + rows[:, None] * D + d[None, :], round_to(h_in, h_in_ptr.dtype.element_ty),
                 mask=row_mask[:, None] & d_mask[None, :])  # fmt: skip
    return h_mix, tl.sum(sq, axis=1)


@triton.jit
def coefficients(h_mix, inv_rms, alpha_ptr, bias_ptr, cols, n, hc_eps):
    """[BLOCK_T, O_PAD] tile: h_pre in pre columns, h_post in post columns, h_res in res columns."""
    O = n * n + 2 * n
    a = alpha_per_col(alpha_ptr, cols, n)
    b = tl.load(bias_ptr + cols, mask=cols < O, other=0.0).to(tl.float32)
    z = a[None, :] * (h_mix * inv_rms[:, None]) + b[None, :]
    sig = tl.sigmoid(z)
    return tl.where(cols[None, :] < n, sig + hc_eps, tl.where(cols[None, :] < 2 * n, 2.0 * sig, z))


@triton.jit
def coeff_tile(h_mix, sumsq, alpha_ptr, bias_ptr, cols, n, D, norm_eps, hc_eps):
    """(inv_rms [BLOCK_T], coefficient tile [BLOCK_T, O_PAD]) from a token block's full h_mix and sum(x^2)."""
    inv_rms = tl.rsqrt(sumsq / (n * D) + norm_eps)
    return inv_rms, coefficients(h_mix, inv_rms, alpha_ptr, bias_ptr, cols, n, hc_eps)


@triton.jit
def store_saved(
    inv_rms_ptr, h_mix_ptr, h_pre_ptr, h_post_ptr, h_res_ptr, inv_rms, h_mix, coef, rows, row_mask, cols, n
):
    """Store inv_rms, h_mix and the h_pre, h_post, h_res parts of the coefficient tile."""
    tl.store(inv_rms_ptr + rows, inv_rms, mask=row_mask)
    store_coeff_part(h_mix_ptr, h_mix, rows, row_mask, cols, 0, n * n + 2 * n)
    store_coeff_part(h_pre_ptr, coef, rows, row_mask, cols, 0, n)
    store_coeff_part(h_post_ptr, coef, rows, row_mask, cols, n, n)
    store_coeff_part(h_res_ptr, coef, rows, row_mask, cols, 2 * n, n * n)


@triton.jit
def apply_tile(
    x_ptr, h_in_ptr, h_pre, t0, rows, row_mask, d_start, d_end, n, D, sx_t, sx_i, sx_d,
    BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, STREAM64: tl.constexpr,
):  # fmt: skip
    """h_in[rows, d_start:min(d_end, D)] = sum_i h_pre[:, i] * x[rows, i, same columns] (h_pre [BLOCK_T, N_PAD]
    fp32, zero past n: pre_columns of a coefficient tile, or collapse_columns of a stored h_pre), summed in
    fp32 in stream order, BLOCK_D columns at a time, stored in h_in's dtype. d_end is not clamped to D by the
    caller: the masks compare columns with d_end and with D apart, so where both are multiples of 16 the
    compiler knows them constant over 16 columns and vectorises the loads and stores (a clamped min(d_end,
    D) compiled to one 16-bit element a load: docs/perf.md, Performance XIV). The stream loop is unrolled
    to N_PAD (past n masked), so a chunk's n loads are in flight together. Rows t0 + 0 .. BLOCK_T-1: a 64-bit
    base per chunk, stream_offset and loop-invariant int32 tile_offsets (fewer registers: docs/perf.md,
    kernels/fwd.py)."""
    j = tl.arange(0, N_PAD)
    off_x = tile_offsets(rows.shape[0], tl.arange(0, BLOCK_D), sx_t, sx_d)
    off_h = tile_offsets(rows.shape[0], tl.arange(0, BLOCK_D), D, 1)
    for d0 in range(d_start, tl.minimum(d_end, D), BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & ((d < d_end) & (d < D))[None, :]
        h_in = tl.zeros([rows.shape[0], BLOCK_D], dtype=tl.float32)
        x_base = x_ptr + (t0 * sx_t + d0 * sx_d)
        for i in tl.static_range(N_PAD):
            # where(i < n, True, False), not (i < n): a bool mask in the interpreter (docs/bugs/interpreter-scalar-mask.md)
            xt = tl.load(x_base + stream_offset(i, sx_i, STREAM64) + off_x, mask=mask & tl.where(i < n, True, False), other=0.0)
            h_in += tl.sum(tl.where(j[None, :] == i, h_pre, 0.0), axis=1)[:, None] * xt.to(tl.float32)
        tl.store(h_in_ptr + (t0 * D + d0) + off_h, round_to(h_in, h_in_ptr.dtype.element_ty), mask=mask)


@launched(do_not_specialize=["T"])
def _fwd_kernel(
    x_ptr,
    phi_ptr,
    gamma_ptr,
    w_ptr,
    alpha_ptr,
    bias_ptr,
    h_in_ptr,
    h_post_ptr,
    h_res_ptr,
    inv_rms_ptr,
    h_mix_ptr,
    h_pre_ptr,
    hpp_ptr,
    T,
    n,
    D,
    sx_t,
    sx_i,
    sx_d,
    sphi_o,
    sphi_k,
    norm_eps,
    hc_eps,
    HAS_GAMMA: tl.constexpr,
    W_SPLIT: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    O_PAD: tl.constexpr,
    INTERPRET: tl.constexpr,
    N_PAD: tl.constexpr,
    STREAM64: tl.constexpr,
    COLLAPSE: tl.constexpr,
):
    norm_eps, hc_eps = tl.cast(norm_eps, tl.float32), tl.cast(hc_eps, tl.float32)  # fp64 in Inductor's launches
    t0 = tl.program_id(0).to(tl.int64) * BLOCK_T
    rows = t0 + tl.arange(0, BLOCK_T)
    row_mask = rows < T
    cols = tl.arange(0, O_PAD)
    if COLLAPSE == 0:
        h_mix, sumsq = mix_tile(
            x_ptr, phi_ptr, gamma_ptr, w_ptr, rows, row_mask, cols, 0, n * tl.cdiv(D, BLOCK_D), n, D,
            sx_t, sx_i, sx_d, sphi_o, sphi_k, HAS_GAMMA, W_SPLIT, BLOCK_T, BLOCK_D, O_PAD, INTERPRET, STREAM64,
        )  # fmt: skip
    else:  # the delayed pre: h_in from the same pass (its coefficients are known before x is read)
        coll = collapse_columns(hpp_ptr, rows, row_mask, n, N_PAD, COLLAPSE)
        h_mix, sumsq = mix_collapse_tile(
            x_ptr, phi_ptr, gamma_ptr, w_ptr, h_in_ptr, coll, rows, row_mask, cols, 0, tl.cdiv(D, BLOCK_D), n, D,
            sx_t, sx_i, sx_d, sphi_o, sphi_k, HAS_GAMMA, W_SPLIT, BLOCK_T, BLOCK_D, O_PAD, INTERPRET, STREAM64,
        )  # fmt: skip
    inv_rms, coef = coeff_tile(h_mix, sumsq, alpha_ptr, bias_ptr, cols, n, D, norm_eps, hc_eps)
    store_saved(inv_rms_ptr, h_mix_ptr, h_pre_ptr, h_post_ptr, h_res_ptr, inv_rms, h_mix, coef, rows, row_mask, cols, n)
    if COLLAPSE == 0:
        # h_pre read back from what store_saved wrote (after a barrier: this program's stores, visible to all
        # its threads): from the products' accumulator layout, the compiler converted every x tile of the
        # apply to it instead (docs/perf.md, Performance XIII)
        tl.debug_barrier()
        h_pre = collapse_columns(h_pre_ptr, rows, row_mask, n, N_PAD, 1)
        apply_tile(x_ptr, h_in_ptr, h_pre, t0, rows, row_mask, 0, D, n, D, sx_t, sx_i, sx_d, BLOCK_D, N_PAD, STREAM64)


@launched(do_not_specialize=["T", "splits"])
def _fwd_partial_kernel(
    x_ptr,
    phi_ptr,
    gamma_ptr,
    w_ptr,
    ws_ptr,
    h_in_ptr,
    hpp_ptr,
    T,
    n,
    D,
    sx_t,
    sx_i,
    sx_d,
    sphi_o,
    sphi_k,
    splits,
    HAS_GAMMA: tl.constexpr,
    W_SPLIT: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    O_PAD: tl.constexpr,
    INTERPRET: tl.constexpr,
    STREAM64: tl.constexpr,
    N_PAD: tl.constexpr,
    COLLAPSE: tl.constexpr,
):
    """Program (b, s): chunks s*C//splits .. (s+1)*C//splits - 1 (C = n*cdiv(D, BLOCK_D), splits <= C)
    of token block b -> ws h_mix partials [splits, T, O_PAD] (columns < O), then sum(x^2) partials
    [splits, T]. The delayed pre (COLLAPSE > 0): the chunks are column chunks of all n streams
    (C = cdiv(D, BLOCK_D)), and h_in of those columns is written here (mix_collapse_tile)."""
    s = tl.program_id(1)
    t0 = tl.program_id(0).to(tl.int64) * BLOCK_T
    rows = t0 + tl.arange(0, BLOCK_T)
    row_mask = rows < T
    cols = tl.arange(0, O_PAD)
    if COLLAPSE == 0:
        chunks = n * tl.cdiv(D, BLOCK_D)
        h_mix, sumsq = mix_tile(
            x_ptr, phi_ptr, gamma_ptr, w_ptr, rows, row_mask, cols, s * chunks // splits, (s + 1) * chunks // splits,
            n, D, sx_t, sx_i, sx_d, sphi_o, sphi_k, HAS_GAMMA, W_SPLIT, BLOCK_T, BLOCK_D, O_PAD, INTERPRET, STREAM64,
        )  # fmt: skip
    else:
        chunks = tl.cdiv(D, BLOCK_D)
        coll = collapse_columns(hpp_ptr, rows, row_mask, n, N_PAD, COLLAPSE)
        h_mix, sumsq = mix_collapse_tile(
            x_ptr, phi_ptr, gamma_ptr, w_ptr, h_in_ptr, coll, rows, row_mask, cols, s * chunks // splits,
            (s + 1) * chunks // splits, n, D, sx_t, sx_i, sx_d, sphi_o, sphi_k, HAS_GAMMA, W_SPLIT, BLOCK_T, BLOCK_D,
            O_PAD, INTERPRET, STREAM64,
        )  # fmt: skip
    store_partials(ws_ptr, h_mix, sumsq, s, rows, row_mask, cols, T, n, splits, O_PAD)


@triton.jit
def store_partials(ws_ptr, h_mix, sumsq, s, rows, row_mask, cols, T, n, splits, O_PAD: tl.constexpr):
    """Split s's partials into the workspace: h_mix [splits, T, O_PAD] (every column: past O, the exact zeros
    of the zero-padded weights), then sum(x^2) [splits, T] (what _fwd_finish_kernel reduces). Whole rows, so
    the stores and reduce_partials' loads vectorise: a column mask of runtime O compiled to one 32-bit element
    a load (docs/perf.md, Performance XIV)."""
    T64 = tl.full([], T, tl.int64)  # s * T * O_PAD can exceed 2**31
    part_rows = s.to(tl.int64) * T64 + rows  # row of [splits * T]
    tl.store(ws_ptr + part_rows[:, None] * O_PAD + cols[None, :], h_mix, mask=row_mask[:, None])
    tl.store(ws_ptr + splits * T64 * O_PAD + part_rows, sumsq, mask=row_mask)


@triton.jit
def reduce_partials(ws_ptr, rows, row_mask, cols, T, n, splits, BLOCK_T: tl.constexpr, O_PAD: tl.constexpr,
                    UNROLL: tl.constexpr):  # fmt: skip
    """store_partials' workspace summed over s = 0 .. splits-1 in order -> (h_mix [BLOCK_T, O_PAD],
    sum(x^2) [BLOCK_T]) of rows: deterministic, no atomics."""
    T64 = tl.full([], T, tl.int64)
    sumsq_ptr = ws_ptr + splits * T64 * O_PAD
    h_mix = tl.zeros([BLOCK_T, O_PAD], dtype=tl.float32)
    sumsq = tl.zeros([BLOCK_T], dtype=tl.float32)
    for s0 in range(0, splits, UNROLL):
        # UNROLL independent loads in flight; a split past the end adds an exact 0.
        for u in tl.static_range(UNROLL):
            live = row_mask & tl.where(s0 + u < splits, True, False)  # as in apply_tile: a bool mask in the interpreter
            part_rows = (s0 + u) * T64 + rows
            h_mix += tl.load(ws_ptr + part_rows[:, None] * O_PAD + cols[None, :], mask=live[:, None], other=0.0)
            sumsq += tl.load(sumsq_ptr + part_rows, mask=live, other=0.0)
    return h_mix, sumsq


# apply_cols specialised: always a multiple of 16, so one specialisation, whose divisibility vectorises the apply
@launched(do_not_specialize=["T", "splits"])
def _fwd_finish_kernel(
    x_ptr,
    ws_ptr,
    alpha_ptr,
    bias_ptr,
    h_in_ptr,
    h_post_ptr,
    h_res_ptr,
    inv_rms_ptr,
    h_mix_ptr,
    h_pre_ptr,
    T,
    n,
    D,
    sx_t,
    sx_i,
    sx_d,
    splits,
    apply_cols,
    norm_eps,
    hc_eps,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    O_PAD: tl.constexpr,
    UNROLL: tl.constexpr,
    N_PAD: tl.constexpr,
    STREAM64: tl.constexpr,
    COLLAPSE: tl.constexpr,
):
    """Program (b, j): the partials of token block b summed over s = 0 .. splits-1 in order, the
    coefficients; j == 0 stores the saved tensors; h_in for columns j*apply_cols .. (j+1)*apply_cols - 1."""
    norm_eps, hc_eps = tl.cast(norm_eps, tl.float32), tl.cast(hc_eps, tl.float32)  # fp64 in Inductor's launches
    t0 = tl.program_id(0).to(tl.int64) * BLOCK_T
    rows = t0 + tl.arange(0, BLOCK_T)
    row_mask = rows < T
    cols = tl.arange(0, O_PAD)
    h_mix, sumsq = reduce_partials(ws_ptr, rows, row_mask, cols, T, n, splits, BLOCK_T, O_PAD, UNROLL)
    inv_rms, coef = coeff_tile(h_mix, sumsq, alpha_ptr, bias_ptr, cols, n, D, norm_eps, hc_eps)
    j = tl.program_id(1)
    if j == 0:
        store_saved(
            inv_rms_ptr, h_mix_ptr, h_pre_ptr, h_post_ptr, h_res_ptr, inv_rms, h_mix, coef, rows, row_mask, cols, n
        )
    if COLLAPSE == 0:  # the delayed pre's partial kernel wrote h_in
        d_start = j * apply_cols
        apply_tile(x_ptr, h_in_ptr, pre_columns(coef, cols, n, N_PAD), t0, rows, row_mask, d_start, d_start + apply_cols,
                   n, D, sx_t, sx_i, sx_d, BLOCK_D, N_PAD, STREAM64)  # fmt: skip


@launched(do_not_specialize=["nD"])
def _split_weights_kernel(phi_ptr, gamma_ptr, w_ptr, O, nD, sphi_o, sphi_k, HAS_GAMMA: tl.constexpr,
                          BLOCK_K: tl.constexpr, O_PAD: tl.constexpr):  # fmt: skip
    # w [3, nD, O_PAD] bf16: hi, mid, lo of (gamma*phi)^T, columns >= O zero; one launch (the torch
    # version, split_weights_host, takes about ten). Launched with enable_fp_fusion=False: an FMA in
    # phi*gamma - hi would split the unrounded product, not torch's rounded gamma*phi (docs/perf.md, kernels/fwd.py).
    k = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    cols = tl.arange(0, O_PAD)
    k_mask = k < nD
    wg = tl.load(phi_ptr + cols[None, :] * sphi_o + k[:, None] * sphi_k, mask=(cols < O)[None, :] & k_mask[:, None],
                 other=0.0).to(tl.float32)  # fmt: skip
    if HAS_GAMMA:
        wg = wg * tl.load(gamma_ptr + k, mask=k_mask, other=0.0).to(tl.float32)[:, None]
    hi, mid, lo = split3_bf16(wg)
    offs = k[:, None] * O_PAD + cols[None, :]
    tl.store(w_ptr + offs, hi, mask=k_mask[:, None])
    tl.store(w_ptr + nD * O_PAD + offs, mid, mask=k_mask[:, None])
    tl.store(w_ptr + 2 * nD * O_PAD + offs, lo, mask=k_mask[:, None])


# phi elements per program of _split_weights_kernel: BLOCK_K = this // O_PAD columns (128 at n <= 4; at O_PAD
# 128, 128 columns compiled to 255 registers and 176 B of spills for sm_90, 32 to none)
SPLIT_WEIGHTS_TILE = 4096


def split_weights(phi: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
    """(gamma*phi)^T [nD, O_PAD] in three bf16 parts [3, nD, O_PAD] (split3_bf16), for the bf16 tensor
    cores, in one launch; bitwise split_weights_host. Depends on the weights only, so the op caches it
    (kernels/_cache.py); a CUDA-graph capture or a changed weight rebuilds it."""
    O, nD = phi.shape
    n = math.isqrt(O + 1) - 1  # O = n*n + 2*n
    w = torch.empty((3, nD, o_pad(n)), device=phi.device, dtype=torch.bfloat16)
    block_k = SPLIT_WEIGHTS_TILE // o_pad(n)
    _split_weights_kernel[(cdiv(nD, block_k),)](
        phi, gamma.contiguous() if gamma is not None else phi, w, O, nD, *phi.stride(), HAS_GAMMA=gamma is not None,
        BLOCK_K=block_k, O_PAD=o_pad(n), enable_fp_fusion=False,
    )  # fmt: skip
    return w


def split_weights_host(phi: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
    """split_weights in torch (about ten launches): its reference."""
    O = phi.shape[0]
    n = math.isqrt(O + 1) - 1
    wg = phi.float() if gamma is None else phi.float() * gamma.reshape(1, -1).float()
    return split_bf16_host(torch.nn.functional.pad(wg.t(), (0, o_pad(n) - O)).contiguous())


def auto_splits(token_blocks: int, chunks: int, sms: int) -> int:
    """splits=None: 1 (the single kernel) while there are at least SPLIT_BELOW_PROGRAMS_PER_SM token
    blocks per SM; below that, as many chunk ranges as keep the partial programs at or under
    SPLIT_PROGRAMS_PER_SM per SM (rounded down: programs past it would start a tail wave), at most
    MAX_SPLITS and at most one per chunk."""
    if token_blocks >= SPLIT_BELOW_PROGRAMS_PER_SM * sms:
        return 1
    return max(1, min(SPLIT_PROGRAMS_PER_SM * sms // token_blocks, MAX_SPLITS, chunks))


def finish_cols(token_blocks: int, splits: int, n: int, D: int, itemsize: int, block_d: int, sms: int) -> int:
    """block_d_apply=None: h_in columns per finish program, a multiple of block_d. About
    FINISH_PROGRAMS_PER_SM programs per SM; once the grid has at least one program per SM, no more D
    blocks than keep each program's partial re-reads (splits * (O + 1) * 4 bytes per token) within
    FINISH_REREAD_LIMIT times its x bytes (n * columns * itemsize per token)."""
    d_chunks = cdiv(D, block_d)
    d_blocks = min(cdiv(FINISH_PROGRAMS_PER_SM * sms, token_blocks), d_chunks)
    reread_cap = FINISH_REREAD_LIMIT * n * D * itemsize // (splits * (n * n + 2 * n + 1) * 4)
    d_blocks = max(1, min(d_blocks, max(reread_cap, cdiv(sms, token_blocks))))
    return block_d * cdiv(d_chunks, d_blocks)


def mhc_pre_fwd(*, x, phi, alpha, bias, gamma=None, norm_eps=1e-6, hc_eps=1e-6, **launch):
    """Triton stage pre_fwd -> dict(h_in, h_post, h_res, inv_rms, h_mix, h_pre), shapes as the golden.
    Validates the inputs, then launch_fwd (launch: its tile options and ``splits``)."""
    check_inputs(x, phi=phi, alpha=alpha, bias=bias, gamma=gamma)
    names = ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre")
    return dict(zip(names, launch_fwd(x, phi, alpha, bias, gamma, norm_eps, hc_eps, **launch)))


def launch_fwd(
    x, phi, alpha, bias, gamma, norm_eps, hc_eps, block_t=64, block_d=None, num_warps=4, num_stages=None,
    splits=None, block_d_apply=None, delayed=False, h_pre_prev=None, finish_block_d=None, maxnreg=None, wide=False,
):  # fmt: skip
    """The forward on validated inputs -> (h_in, h_post, h_res, inv_rms, h_mix, h_pre).

    delayed: DeepSeek-V4.1's delayed pre, h_in collapsed with h_pre_prev [.., n] fp32 (stream 0 when
    it is None) instead of this x's h_pre.
    splits: 1 = the single kernel (one launch); an int > 1 = split-K over that many chunk ranges
    (clamped to the n * cdiv(D, block_d) chunks; two launches); None = auto_splits on CUDA, 1 on CPU
    (the interpreter). block_d_apply: h_in columns per finish program of the split path (a power of
    two >= 16; None = finish_cols). finish_block_d: columns per step of the finish's apply (a power of
    two >= 16; None = FINISH_BLOCK_D, FINISH_BLOCK_D_N8 from n = 8). maxnreg: the register cap of the
    projection's kernel (_fwd_kernel or _fwd_partial_kernel; check_maxnreg; None = the compiler's). wide: the
    bf16 projection as one product against the weight parts side by side (mix_dot's W_SPLIT 2) where
    o_pad(n) <= WIDE_MAX_O_PAD (n <= 4); ignored elsewhere and for other dtypes."""
    if splits is not None and (not isinstance(splits, int) or isinstance(splits, bool) or splits < 1):
        raise ValueError(f"splits: expected None or a positive int, got {splits!r}")
    check_block("block_t", block_t, 16)
    check_maxnreg(maxnreg)
    if not isinstance(wide, bool):
        raise ValueError(f"wide: expected True or False, got {wide!r}")
    n, D = static_dims(x, 2)
    lead = x.shape[:-2]
    block_d = default_block_d(n, block_d)
    check_block("block_d", block_d, 16)
    if block_d_apply is not None:
        check_block("block_d_apply", block_d_apply, 16)
    if finish_block_d is None:
        finish_block_d = FINISH_BLOCK_D_N8 if n >= 8 else FINISH_BLOCK_D
    check_block("finish_block_d", finish_block_d, 16)
    O = n * n + 2 * n
    xt = tokens(x, 2)
    T = xt.shape[0]
    dev, f32 = x.device, torch.float32
    h_in = torch.empty((*lead, D), device=dev, dtype=x.dtype)
    h_post = torch.empty((*lead, n), device=dev, dtype=f32)
    h_res = torch.empty((*lead, n, n), device=dev, dtype=f32)
    inv_rms = torch.empty(lead, device=dev, dtype=f32)
    h_mix = torch.empty((*lead, O), device=dev, dtype=f32)
    h_pre = torch.empty((*lead, n), device=dev, dtype=f32)
    if T == 0:
        return h_in, h_post, h_res, inv_rms, h_mix, h_pre
    check_tile_span(block_t, xt)
    alpha, bias = alpha.contiguous(), bias.contiguous()
    gamma_arg = gamma.contiguous() if gamma is not None else alpha  # never read without HAS_GAMMA
    w_split = (2 if wide and o_pad(n) <= WIDE_MAX_O_PAD else 1) if x.dtype == torch.bfloat16 else 0
    # (gamma*phi)^T split for bf16 tensor cores, cached per weight version; never read without W_SPLIT
    w_arg = weight_derived("fwd.split_weights", split_weights, phi, gamma) if w_split else alpha
    token_blocks = cdiv(T, block_t)
    chunks = cdiv(D, block_d) if delayed else n * cdiv(D, block_d)  # what the split path divides
    sms = sm_count(dev)
    if splits is None:
        splits = auto_splits(cdiv(size_hint(T), block_t), chunks, sms) if dev.type == "cuda" else 1
    split_path = splits > 1  # a forced split stays the split path even when clamped to one chunk range
    splits = min(splits, chunks)  # every split gets >= 1 chunk
    s64 = stream64(n, xt.stride(1))
    collapse = (2 if h_pre_prev is None else 1) if delayed else 0
    hpp = h_pre_prev.contiguous() if collapse == 1 else alpha  # never read unless COLLAPSE == 1
    common = dict(HAS_GAMMA=gamma is not None, W_SPLIT=w_split, BLOCK_T=block_t, BLOCK_D=block_d, O_PAD=o_pad(n),
                  INTERPRET=interpreting(), STREAM64=s64, num_warps=num_warps, num_stages=num_stages,
                  maxnreg=maxnreg)  # fmt: skip
    if not split_path:
        _fwd_kernel[(token_blocks,)](
            xt, phi, gamma_arg, w_arg, alpha, bias, h_in, h_post, h_res, inv_rms, h_mix, h_pre, hpp,
            T, n, D, *xt.stride(), *phi.stride(), float(norm_eps), float(hc_eps), **common,
            N_PAD=n_pad(n), COLLAPSE=collapse,
        )  # fmt: skip
        return h_in, h_post, h_res, inv_rms, h_mix, h_pre
    finish_t = min(block_t, FINISH_BLOCK_T)
    finish_blocks = cdiv(T, finish_t)
    if block_d_apply is None:
        block_d_apply = finish_cols(cdiv(size_hint(T), finish_t), splits, n, D, x.element_size(), block_d, sms)
    # One workspace: h_mix partials [splits, T, O_PAD], then sum(x^2) partials [splits, T]; each written
    # before it is read (no zero fill).
    ws = torch.empty(splits * T * (o_pad(n) + 1), device=dev, dtype=f32)
    _fwd_partial_kernel[(token_blocks, splits)](
        xt, phi, gamma_arg, w_arg, ws, h_in, hpp, T, n, D, *xt.stride(), *phi.stride(), splits, **common,
        N_PAD=n_pad(n), COLLAPSE=collapse,
    )  # fmt: skip
    _fwd_finish_kernel[(finish_blocks, 1 if collapse else cdiv(D, block_d_apply))](
        xt, ws, alpha, bias, h_in, h_post, h_res, inv_rms, h_mix, h_pre, T, n, D, *xt.stride(), splits,
        block_d_apply, float(norm_eps), float(hc_eps), BLOCK_T=finish_t, BLOCK_D=finish_block_d,
        O_PAD=o_pad(n), UNROLL=FINISH_UNROLL, N_PAD=n_pad(n), STREAM64=s64, COLLAPSE=collapse, num_warps=num_warps,
        num_stages=num_stages,
    )  # fmt: skip
    return h_in, h_post, h_res, inv_rms, h_mix, h_pre
