"""The fused backward plan: dx, dparams and dgamma in two passes over x, no [T, nD] fp32 tensor.

Pass A (grid: token blocks; with splits_a, token blocks x column-chunk ranges, the last program of a block
to arrive finishing it) reads x and dh_in for dh_pre (all n streams of a chunk as one stream
tile; the delayed pre's dh_pre is an input, so there it reads no x) and writes dh_mix [T, O], rms_coef =
-dinv_rms*inv_rms^3/nD [T], per-program dbias/dalpha partials and (presplit: bf16 x, pass B's 32-row
tile) dh_mix's three bf16 parts [3, T, O_PAD]. Pass B (grid: n * D blocks, ``splits`` token ranges)
recomputes dvecX_mm = dh_mix @ phi per tile, writes dx (+ grad_x_post) and accumulates G = sum_t
dh_mix^T v for its slice, over the coefficient columns in one or two power-of-two groups (o_groups);
with the parts its products load their operands (G's transposed) instead of splitting dh_mix in every
tile. With h_pre_prev it also stores each tile's part of dh_pre_prev = sum_d dh_in*x[i] (per column
block). The finish kernel reduces the G partials in a fixed order (no atomics), applies dphi = G*gamma,
dgamma[k] = sum_o phi[o, k]*G[o, k] (docs/math.md); one more program reduces the dbias/dalpha partials
and any after it dh_pre_prev's parts. Three launches; the tile math is the staged kernels' own
(imported). Figures behind the choices: docs/perf.md, kernels/fused_bwd.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._arrive import arrival_counters
from ._common import (
    cdiv,
    check_block,
    check_inputs,
    check_loop_stages,
    check_maxnreg,
    check_tile_span,
    fp32_dot,
    g_split_cap,
    interpreting,
    load_coeff_part,
    n_pad,
    o_groups,
    o_pad,
    parts_dot,
    round_to,
    size_hint,
    sm_count,
    split2_bf16,
    split3_bf16,
    split_dot_16bit,
    static_dims,
    store_coeff_part,
    stream_block_d,
    tile_offsets,
    token_splits,
    tokens,
)
from ._launch import launched
from ._reduce import column_sums
from .dh_mix import coeff_grads_of, dh_pre_tile, phi_tile
from .dparams import g_update, store_dcoeff_partials
from .dx import dx_tile, rms_coef_of


@launched(do_not_specialize=["T", "splits_a"])
def _pass_a_kernel(x_ptr, dh_in_ptr, alpha_ptr, dh_post_ptr, dh_res_ptr, inv_rms_ptr, h_mix_ptr, h_pre_ptr,
                   h_post_ptr, dh_mix_ptr, rms_coef_ptr, ws_dcoeff_ptr, dh_pre_ptr, dh3_ptr, ws_dpre_ptr, count_ptr,
                   T, n, D, sx_t, sx_i, sx_d, sdh_t, sdh_d, hc_eps, splits_a,
                   BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, O_PAD: tl.constexpr, N_PAD: tl.constexpr,
                   DELAYED: tl.constexpr, HAS_DH_PRE: tl.constexpr, PRESPLIT: tl.constexpr,
                   SPLIT_A: tl.constexpr, LOOP_STAGES: tl.constexpr):  # fmt: skip
    # DELAYED: the delayed pre, whose dh_pre is an input (the next sublayer's): x is not read (dh_pre_prev =
    # sum_d dh_in*x[i] is pass B's, from the tiles it loads). Else mhc_pre: dh_pre from x and dh_in.
    # SPLIT_A (mhc_pre): program (b, s) sums dh_pre over its share of the column chunks into ws_dpre [splits_a,
    # T, n]; the last of block b's programs to arrive (count_ptr: decode's protocol, kernels/_arrive.py) adds
    # the splits_a parts in split order (deterministic) and finishes the block as one program would.
    hc_eps = tl.cast(hc_eps, tl.float32)  # a float argument is fp64 in Inductor's launches
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_mask = rows < T
    cols = tl.arange(0, O_PAD)
    last = True  # this program finishes its token block (not SPLIT_A: its only program)
    if DELAYED:
        if HAS_DH_PRE:
            dh_pre = load_coeff_part(dh_pre_ptr, rows, row_mask, cols, 0, n)
        else:  # the next sublayer did not use this h_pre
            dh_pre = tl.zeros([BLOCK_T, O_PAD], dtype=tl.float32)
    elif SPLIT_A:
        s = tl.program_id(1)
        chunks = tl.cdiv(D, BLOCK_D)
        dh_pre = dh_pre_tile(x_ptr, dh_in_ptr, rows, row_mask, cols, n, D, s * chunks // splits_a * BLOCK_D,
                             (s + 1) * chunks // splits_a * BLOCK_D, sx_t, sx_i, sx_d, sdh_t, sdh_d, BLOCK_D, O_PAD,
                             N_PAD, LOOP_STAGES)  # fmt: skip
        ws_rows = s.to(tl.int64) * T + rows
        store_coeff_part(ws_dpre_ptr, dh_pre, ws_rows, row_mask, cols, 0, n)
        tl.debug_barrier()  # every thread's stores come before the release by the thread that increments
        last = tl.atomic_add(count_ptr + pid, 1, sem="acq_rel", scope="gpu") == splits_a - 1
        if last:  # every part of block pid is visible
            dh_pre = tl.zeros([BLOCK_T, O_PAD], dtype=tl.float32)
            for p in range(splits_a):
                dh_pre += load_coeff_part(ws_dpre_ptr, p * T + rows, row_mask, cols, 0, n)
            tl.store(count_ptr + pid, 0)  # for the next launch
    else:
        dh_pre = dh_pre_tile(x_ptr, dh_in_ptr, rows, row_mask, cols, n, D, 0, D, sx_t, sx_i, sx_d, sdh_t, sdh_d,
                             BLOCK_D, O_PAD, N_PAD, LOOP_STAGES)  # fmt: skip
    if last:
        pass_a_finish(dh_pre, h_pre_ptr, h_post_ptr, dh_post_ptr, dh_res_ptr, h_mix_ptr, inv_rms_ptr, alpha_ptr,
                      dh_mix_ptr, rms_coef_ptr, ws_dcoeff_ptr, dh3_ptr, pid, rows, row_mask, cols, T, n, D, hc_eps,
                      O_PAD, PRESPLIT)  # fmt: skip


@triton.jit
def pass_a_finish(dh_pre, h_pre_ptr, h_post_ptr, dh_post_ptr, dh_res_ptr, h_mix_ptr, inv_rms_ptr, alpha_ptr,
                  dh_mix_ptr, rms_coef_ptr, ws_dcoeff_ptr, dh3_ptr, pid, rows, row_mask, cols, T, n, D, hc_eps,
                  O_PAD: tl.constexpr, PRESPLIT: tl.constexpr):  # fmt: skip
    """Pass A of a token block given its dh_pre tile: dh_mix, rms_coef, (PRESPLIT) dh_mix's bf16 parts and
    this block's dbias/dalpha partials (row pid of ws_dcoeff)."""
    O = n * n + 2 * n
    g2, dh_mix, dinv_rms = coeff_grads_of(dh_pre, h_pre_ptr, h_post_ptr, dh_post_ptr, dh_res_ptr, h_mix_ptr,
                                          inv_rms_ptr, alpha_ptr, rows, row_mask, cols, n, hc_eps)  # fmt: skip
    inv_rms = tl.load(inv_rms_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    tl.store(rms_coef_ptr + rows, rms_coef_of(dinv_rms, inv_rms, n * D), mask=row_mask)
    store_coeff_part(dh_mix_ptr, dh_mix, rows, row_mask, cols, 0, O)
    if PRESPLIT:  # dh_mix's bf16 parts [3, T, O_PAD] (hi, mid, lo; zero past O) for pass B's products
        hi, mid, lo = split3_bf16(dh_mix)
        offs = rows[:, None] * O_PAD + cols[None, :]
        part = tl.full([], T, tl.int64) * O_PAD
        tl.store(dh3_ptr + offs, hi, mask=row_mask[:, None])
        tl.store(dh3_ptr + part + offs, mid, mask=row_mask[:, None])
        tl.store(dh3_ptr + 2 * part + offs, lo, mask=row_mask[:, None])
    store_dcoeff_partials(ws_dcoeff_ptr, pid, g2, h_mix_ptr, inv_rms, rows, row_mask, cols, n)


@triton.jit
def dvecX_mm_part(dh_mix, phi, phi_hi, phi_lo, F32: tl.constexpr, INTERPRET: tl.constexpr):
    """dh_mix [BLOCK_T, G] @ phi [G, BLOCK_D] over one column group: fp32_dot for an fp32 or fp16 dx,
    else three bf16 products of the 16-bit splits (phi_hi, phi_lo: phi's, split once per program),
    enough for a dx rounded to bf16."""
    if F32:
        mm = fp32_dot(dh_mix, phi)
    else:
        dh_hi, dh_lo = split2_bf16(dh_mix)
        mm = split_dot_16bit(dh_hi, dh_lo, phi_hi, phi_lo, INTERPRET)
    return mm


@triton.jit
def phi_parts(phi, F32: tl.constexpr):
    """(hi, lo) bf16 splits of a loop-invariant phi tile for dvecX_mm_part; phi itself twice with F32."""
    if F32:
        hi, lo = phi, phi
    else:
        hi, lo = split2_bf16(phi)
    return hi, lo


@triton.jit
def dh_part(dh3_ptr, p, rows, row_mask, cols, T, O_PAD: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Part p (0 hi, 1 mid, 2 lo) of pass A's bf16 split of dh_mix at rows x cols: a [BLOCK_T, G] tile, or
    [G, BLOCK_T] with TRANSPOSED (loaded so, for G's products)."""
    # if/else with one return: Triton compiles the code after an early return for either branch, and the
    # two tiles' shapes differ unless BLOCK_T == G
    base = dh3_ptr + p * (tl.full([], T, tl.int64) * O_PAD)
    if TRANSPOSED:
        part = tl.load(base + rows[None, :] * O_PAD + cols[:, None], mask=row_mask[None, :], other=0.0)
    else:
        part = tl.load(base + rows[:, None] * O_PAD + cols[None, :], mask=row_mask[:, None], other=0.0)
    return part


@triton.jit
def presplit_mm(dh3_ptr, rows, row_mask, cols, T, phi_hi, phi_lo, O_PAD: tl.constexpr, INTERPRET: tl.constexpr):
    """dvecX_mm_part from pass A's parts: split2_bf16(dh_mix) is (hi, mid) of its three-part split."""
    hi = dh_part(dh3_ptr, 0, rows, row_mask, cols, T, O_PAD, False)
    mid = dh_part(dh3_ptr, 1, rows, row_mask, cols, T, O_PAD, False)
    return split_dot_16bit(hi, mid, phi_hi, phi_lo, INTERPRET)


@triton.jit
def presplit_g(dh3_ptr, rows, row_mask, cols, T, xt, O_PAD: tl.constexpr, INTERPRET: tl.constexpr):
    """g_update's product from pass A's parts, loaded transposed: the same parts_dot as split_dot_bf16's."""
    hi = dh_part(dh3_ptr, 0, rows, row_mask, cols, T, O_PAD, True)
    mid = dh_part(dh3_ptr, 1, rows, row_mask, cols, T, O_PAD, True)
    lo = dh_part(dh3_ptr, 2, rows, row_mask, cols, T, O_PAD, True)
    return parts_dot(hi, mid, lo, xt, INTERPRET)


@launched(do_not_specialize=["T", "splits"])
def _pass_b_kernel(x_ptr, dh_in_ptr, gxp_ptr, dx_ptr, phi_ptr, gamma_ptr, dh_mix_ptr, rms_coef_ptr, h_pre_ptr,
                   ws_ptr, dh3_ptr, ws_dpp_ptr, mm_ptr, T, n, D, sx_t, sx_i, sx_d, sdh_t, sdh_d, sg_t, sg_i, sg_d, so_t, so_i, so_d,
                   sphi_o, sphi_k, splits, HAS_GAMMA: tl.constexpr, HAS_GXP: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, O_A: tl.constexpr, O_B: tl.constexpr,
                   INTERPRET: tl.constexpr, COLLAPSE: tl.constexpr, PRESPLIT: tl.constexpr,
                   O_PAD: tl.constexpr, DX: tl.constexpr, MM_SCRATCH: tl.constexpr,
                   LOOP_STAGES: tl.constexpr):  # fmt: skip
    # The n programs of one D chunk are adjacent in launch order, so they read each dh_in tile at
    # about the same time and all but the first find it in L2. The coefficient columns run in two
    # groups, O_A then O_B (o_groups; O_B = 0: one group), so no product pads O far past its width.
    # h_pre_ptr: the coefficients h_in was collapsed with (COLLAPSE 2: stream 0 alone, not read).
    # DX False: G alone (the seam backward makes dx itself, kernels/seam_bwd.py); dx, dh_in, phi not touched.
    # COLLAPSE 1 (with DX): this tile's part of dh_pre_prev[:, i] = sum_d dh_in*x[i] into ws_dpp [D blocks, T, n].
    # MM_SCRATCH: the dvecX_mm tile goes through this program's [BLOCK_T, BLOCK_D] fp32 slot of mm_ptr (L2) and
    # back, so dx is formed in the loads' layout: the compiler otherwise moves x, dh_in and grad_x_post into the
    # product's layout and dx back, each through shared memory in four rounds of two CTA barriers (36 barriers
    # a tile at n = 4; 9 this way; docs/perf.md, Performance XIV).
    # LOOP_STAGES > 0: the token loop pipelined with every load of the next tiles in flight (cp.async into shared
    # memory, read back in each use's layout: no conversion rounds either; 36 -> 9 barriers a tile at n = 4,
    # docs/perf.md, Performance XV). 0: the compiler's choice (the products' operands alone); 0, not None,
    # because Inductor's launches failed on a None constexpr.
    i = tl.program_id(0) % n
    i64 = i.to(tl.int64)  # i * (a stream stride) can pass 2**31 (a [n, T, D] storage)
    d = (tl.program_id(0) // n) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    k = i * D + d
    split = tl.program_id(1)
    O = n * n + 2 * n
    # dvecX_mm at fp32 grade unless dx is bf16: the 16-bit product's ~2^-16 is far below a bf16 step (2^-8),
    # not below an fp16 one (2^-11): fp16 dx off by a step (docs/bugs/fused-dx-fp16-split-product.md)
    F32: tl.constexpr = dx_ptr.dtype.element_ty != tl.bfloat16
    cols_a = tl.arange(0, O_A)
    acc_a = tl.zeros([O_A, BLOCK_D], dtype=tl.float32)
    if DX:
        phi_a = phi_tile(phi_ptr, cols_a, k, d_mask, n, sphi_o, sphi_k)
        phi_a_hi, phi_a_lo = phi_parts(phi_a, F32)
    if O_B > 0:
        cols_b = O_A + tl.arange(0, O_B)
        acc_b = tl.zeros([O_B, BLOCK_D], dtype=tl.float32)
        if DX:
            phi_b = phi_tile(phi_ptr, cols_b, k, d_mask, n, sphi_o, sphi_k)
            phi_b_hi, phi_b_lo = phi_parts(phi_b, F32)
    if HAS_GAMMA and DX:
        g = tl.load(gamma_ptr + k, mask=d_mask, other=0.0).to(tl.float32)
    off_x = tile_offsets(BLOCK_T, d, sx_t, sx_d)
    off_dh = tile_offsets(BLOCK_T, d, sdh_t, sdh_d)
    off_o = tile_offsets(BLOCK_T, d, so_t, so_d)
    for tb in tl.range(split, tl.cdiv(T, BLOCK_T), splits, num_stages=LOOP_STAGES if LOOP_STAGES > 0 else None):
        t0 = (tb + tl.zeros([], tl.int64)) * BLOCK_T  # 64-bit (tb is an int in the interpreter)
        rows = t0 + tl.arange(0, BLOCK_T)
        row_mask = rows < T
        mask = row_mask[:, None] & d_mask[None, :]
        if not PRESPLIT:
            dh_mix_a = load_coeff_part(dh_mix_ptr, rows, row_mask, cols_a, 0, O)
            if O_B > 0:
                dh_mix_b = load_coeff_part(dh_mix_ptr, rows, row_mask, cols_b, 0, O)
        xt = tl.load(x_ptr + (t0 * sx_t + i64 * sx_i) + off_x, mask=mask, other=0.0)
        if DX:
            rms_coef = tl.load(rms_coef_ptr + rows, mask=row_mask, other=0.0)
            if COLLAPSE == 2:
                h_pre_i = tl.where((rows >= 0) & (i == 0), 1.0, 0.0)
            else:
                h_pre_i = tl.load(h_pre_ptr + rows * n + i, mask=row_mask, other=0.0).to(tl.float32)
            dh_in = tl.load(dh_in_ptr + t0 * sdh_t + off_dh, mask=mask, other=0.0).to(tl.float32)
            # The dvecX_mm slice, never stored: it only feeds dx. dx is stored before the G products: fewer
            # tiles live across them, faster (docs/perf.md, kernels/fused_bwd.py).
            if PRESPLIT:
                mm = presplit_mm(dh3_ptr, rows, row_mask, cols_a, T, phi_a_hi, phi_a_lo, O_PAD, INTERPRET)
                if O_B > 0:
                    mm += presplit_mm(dh3_ptr, rows, row_mask, cols_b, T, phi_b_hi, phi_b_lo, O_PAD, INTERPRET)
            else:
                mm = dvecX_mm_part(dh_mix_a, phi_a, phi_a_hi, phi_a_lo, F32, INTERPRET)
                if O_B > 0:
                    mm += dvecX_mm_part(dh_mix_b, phi_b, phi_b_hi, phi_b_lo, F32, INTERPRET)
            if HAS_GAMMA:
                mm = mm * g[None, :]
            if MM_SCRATCH:
                slot = mm_ptr + (tl.program_id(0) * tl.num_programs(1) + split).to(tl.int64) * (BLOCK_T * BLOCK_D)
                slot_offs = tl.arange(0, BLOCK_T)[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
                tl.store(slot + slot_offs, mm)
                tl.debug_barrier()  # every thread's part stored before any thread reads another's
                mm = tl.load(slot + slot_offs)
                tl.debug_barrier()  # read before the next tile overwrites the slot
            dx = dx_tile(mm, xt.to(tl.float32), dh_in, rms_coef, h_pre_i[:, None])
            if COLLAPSE == 1:
                dpp = tl.sum(dh_in * xt.to(tl.float32), axis=1)
                block = (tl.program_id(0) // n).to(tl.int64)  # this column block's [T, n] part (64-bit)
                tl.store(ws_dpp_ptr + (block * T + rows) * n + i, dpp, mask=row_mask)
            if HAS_GXP:
                dx += tl.load(gxp_ptr + (t0 * sg_t + i64 * sg_i) + tile_offsets(BLOCK_T, d, sg_t, sg_d), mask=mask,
                              other=0.0).to(tl.float32)  # fmt: skip
            tl.store(dx_ptr + (t0 * so_t + i64 * so_i) + off_o, round_to(dx, dx_ptr.dtype.element_ty), mask=mask)
        if PRESPLIT and DX:
            # x loaded again (from L1/L2), for the products alone: no layout conversion of the dx tile's x
            # (pass B 1301 -> 1124 us at 16384 x 4 x 7168; docs/perf.md, kernels/fused_bwd.py)
            xg = tl.load(x_ptr + (t0 * sx_t + i64 * sx_i) + off_x, mask=mask, other=0.0)
        else:
            xg = xt
        if PRESPLIT:
            acc_a += presplit_g(dh3_ptr, rows, row_mask, cols_a, T, xg, O_PAD, INTERPRET)
            if O_B > 0:
                acc_b += presplit_g(dh3_ptr, rows, row_mask, cols_b, T, xg, O_PAD, INTERPRET)
        else:
            acc_a = g_update(acc_a, dh_mix_a, xt, INTERPRET)
            if O_B > 0:
                acc_b = g_update(acc_b, dh_mix_b, xt, INTERPRET)
    nD = n * D
    ws = ws_ptr + split.to(tl.int64) * O * nD
    tl.store(ws + cols_a[:, None] * nD + k[None, :], acc_a, mask=(cols_a < O)[:, None] & d_mask[None, :])
    if O_B > 0:
        tl.store(ws + cols_b[:, None] * nD + k[None, :], acc_b, mask=(cols_b < O)[:, None] & d_mask[None, :])


@launched(do_not_specialize=["splits", "blocks_a", "dpp_blocks", "dpp_m"])
def _finish_kernel(ws_ptr, phi_ptr, gamma_ptr, dphi_ptr, dgamma_ptr, ws_dcoeff_ptr, dcoeff_ptr, ws_dpp_ptr, dpp_ptr,
                   splits, blocks_a, dpp_blocks, dpp_m, n, D, sphi_o, sphi_k, HAS_GAMMA: tl.constexpr,
                   BLOCK_K: tl.constexpr, O_PAD: tl.constexpr, BLOCK_P: tl.constexpr,
                   BLOCK_DPP: tl.constexpr):  # fmt: skip
    # Programs 0 .. cdiv(nD, BLOCK_K)-1 reduce a column slice of G; the next one reduces pass A's
    # [blocks_a, O + 3] dbias/dalpha partials (one launch fewer than a separate reduce); any after it,
    # BLOCK_DPP elements each of dh_pre_prev [T, n] (dpp_m = T*n) from pass B's [dpp_blocks, T*n] parts.
    nD = n * D
    O = n * n + 2 * n
    cols = tl.arange(0, O_PAD)
    g_programs = tl.cdiv(nD, BLOCK_K)
    if tl.program_id(0) > g_programs:
        m = (tl.program_id(0) - g_programs - 1).to(tl.int64) * BLOCK_DPP + tl.arange(0, BLOCK_DPP)
        acc = column_sums(ws_dpp_ptr, dpp_blocks, dpp_m, m, m < dpp_m, 8, BLOCK_DPP)  # 8 column blocks a step
        tl.store(dpp_ptr + m, acc.to(tl.float32), mask=m < dpp_m)
    elif tl.program_id(0) == g_programs:
        m = tl.arange(0, 2 * O_PAD)  # O + 3 <= 2 * O_PAD columns
        acc = column_sums(ws_dcoeff_ptr, blocks_a, O + 3, m, m < O + 3, BLOCK_P, 2 * O_PAD)
        tl.store(dcoeff_ptr + m, acc.to(tl.float32), mask=m < O + 3)
    else:
        k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
        k_mask = k < nD
        mask = (cols < O)[:, None] & k_mask[None, :]
        G = tl.zeros([O_PAD, BLOCK_K], dtype=tl.float32)
        for s in range(splits):
            G += tl.load(ws_ptr + s * O * nD + cols[:, None] * nD + k[None, :], mask=mask, other=0.0)
        if HAS_GAMMA:
            g = tl.load(gamma_ptr + k, mask=k_mask, other=0.0).to(tl.float32)
            tl.store(dphi_ptr + cols[:, None] * nD + k[None, :], G * g[None, :], mask=mask)
            phi = phi_tile(phi_ptr, cols, k, k_mask, n, sphi_o, sphi_k)
            tl.store(dgamma_ptr + k, tl.sum(phi * G, axis=0), mask=k_mask)
        else:
            tl.store(dphi_ptr + cols[:, None] * nD + k[None, :], G, mask=mask)


def finish_tile(n: int) -> tuple[int, int]:
    """(BLOCK_K, BLOCK_P) of the finish kernel: G's columns per program and dbias/dalpha partial rows per step.
    Its registers are the largest of its roles': at O_PAD 128 (n = 8) the [O_PAD, 128] G tiles and the
    [64, 2 * O_PAD] fp64 partials tile compile to 255 registers and 316 B of spills for sm_90; 64 columns
    and 16 rows, to 148 and none (docs/perf.md, Performance XIV). G's sums do not depend on either."""
    return (128, 64) if o_pad(n) <= 64 else (64, 16)


# presplit=None: pass A's bf16 parts of dh_mix for pass B tiles of fewer tokens than this (measured faster
# there; neutral or slower on the 64 x 64 tile: docs/perf.md, kernels/fused_bwd.py).
PRESPLIT_BELOW_BLOCK_T = 64
# Pass B's 32 x 128 tile needs this many programs per SM; below it the 64 x 64 tile's doubled grid wins.
# Measured at n = 4 (1 program per SM: 64 x 64 faster) and, with pass A's parts, at n = 8 (2 per SM:
# 32 x 128 faster), where the wide coefficient groups take it from one wave on.
PASS_B_MIN_PROGRAMS_PER_SM = 2
PASS_B_WIDE_MIN_PROGRAMS_PER_SM = 1


# Pass B's token loop and pass A's column loop pipelined with all their loads by default (loop_stages="auto";
# H200, bf16, mhc_pre: pass B 1060 -> 835 us and pass A 348 -> 275 at 16384 x 4 x 7168; docs/perf.md,
# Performance XV): three stages for pass B's 32-token tiles up to n = 4, two elsewhere (n = 8: 653 us at three
# against 449 at two; the 64 x 64 tile 57.2 against 55.1), three for pass A. 16-bit x only (measured there; fp32
# doubles the stages' shared memory). The delayed pre's pass B: two stages from n = 8 (747 -> 654 us at
# 8192 x 8 x 2048), none at n = 4 (1204 -> 1443 with three at 16384 x 4 x 7168; Performance XVI); its pass A reads
# no x.
def auto_loop_stages(n: int, block_t: int, x: torch.Tensor, delayed: bool) -> tuple[int | None, int | None]:
    """(loop_stages, loop_stages_a) of loop_stages="auto": None where not measured or slower (the compiler's
    choice)."""
    if x.element_size() != 2:
        return None, None
    if delayed:
        return (2 if n >= 8 else None), None
    return (3 if n <= 4 and block_t == 32 else 2), 3


# Pass A's column split by default (splits_a="auto"): where its token blocks leave SMs idle (fewer than the
# SMs), each block's columns over the smallest power of two of programs that fills them, at most
# PASS_A_MAX_SPLITS (H200, bf16, three loop stages: 22.4 -> 16.6 us at 1024 x 4 x 4096 with 4; docs/perf.md,
# Performance XV and XVI).
PASS_A_MAX_SPLITS = 8


def auto_splits_a(blocks_a: int, chunks: int, device: torch.device) -> int:
    """splits_a of splits_a="auto" for blocks_a pass-A token blocks of ``chunks`` column chunks each."""
    sms, splits = sm_count(device), 1
    while blocks_a * splits < sms and splits < PASS_A_MAX_SPLITS:
        splits *= 2
    return min(splits, chunks)


def pass_b_tile(width: int, n: int, D: int, T: int, device: torch.device, max_splits: int,
                presplit_ok: bool) -> tuple[int, int]:  # fmt: skip
    """(block_t, block_d) of pass B for coefficient groups ``width`` columns wide in all, the fastest
    tiles of benchmarks/kernel_breakdown.py --sweep (4 warps): 32 x 128 unless its grid has fewer than
    PASS_B_MIN_PROGRAMS_PER_SM programs per SM, else 64 x 64. Groups wider than 48 columns (n = 8) take
    32 x 128 only with pass A's parts of dh_mix (presplit_ok: bf16 x), from PASS_B_WIDE_MIN_PROGRAMS_PER_SM
    programs per SM (docs/perf.md, kernels/fused_bwd.py)."""
    wide = width > 48
    if wide and not presplit_ok:
        return 64, 64
    col_programs = n * cdiv(D, 128)
    programs = col_programs * token_splits(device, col_programs, cdiv(T, 32), max_splits)
    per_sm = PASS_B_WIDE_MIN_PROGRAMS_PER_SM if wide else PASS_B_MIN_PROGRAMS_PER_SM
    return (32, 128) if programs >= per_sm * sm_count(device) else (64, 64)


def mhc_pre_backward_fused(*, x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma=None,
                           grad_x_post=None, hc_eps=1e-6, **launch):  # fmt: skip
    """-> dict(dx, dphi, dalpha, dbias, dgamma, dh_mix); dgamma is None without gamma. Validates the
    inputs, then launch_backward_fused (launch: its tile options)."""
    check_inputs(x, phi=phi, alpha=alpha, dh_in=dh_in, dh_post=dh_post, dh_res=dh_res, inv_rms=inv_rms, h_mix=h_mix,
                 h_pre=h_pre, h_post=h_post, gamma=gamma, grad_x_post=grad_x_post)  # fmt: skip
    return launch_backward_fused(x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma,
                                 grad_x_post, hc_eps, **launch)  # fmt: skip


def launch_backward_fused(x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma, grad_x_post,
                          hc_eps, block_t=None, block_d=None, splits=None, block_t_a=16, block_d_a=None,
                          num_warps=4, num_stages=2, delayed=False, h_pre_prev=None, dh_pre=None,
                          presplit=None, maxnreg=None, splits_a="auto", mm_scratch=False, loop_stages="auto",
                          loop_stages_a="auto"):  # fmt: skip
    """The fused backward on validated inputs: three launches (pass A, pass B, finish).

    delayed: DeepSeek-V4.1's delayed pre (h_in collapsed with h_pre_prev [.., n], stream 0 when None);
    dh_pre [.., n] fp32 is the gradient of this h_pre (None: zero), and out["dh_pre_prev"] the gradient
    of h_pre_prev (None without it).

    block_t_a, block_d_a: the pass-A tile (tokens per program; columns of its stream tiles, default
    stream_block_d); block_t, block_d: the pass-B tile (default pass_b_tile); splits: token ranges of
    pass B (default: token_splits). 16 tokens per pass-A program: enough programs at small T.
    presplit: pass A stores dh_mix's three bf16 parts and pass B's products read them (bf16 x only: G's
    bf16 products need x exact in bf16; None: where pass B's tile has fewer than PRESPLIT_BELOW_BLOCK_T
    tokens; False: pass B splits dh_mix itself). maxnreg: pass B's register cap (check_maxnreg; None = the
    compiler's). splits_a: column-chunk ranges per pass-A token block (mhc_pre; at most its chunks; the
    delayed pre's pass A reads no x): 1, one program per block; more, the blocks' sums of dh_in*x spread over
    as many programs and the last to arrive finishes the block (for grids of few token blocks); "auto":
    auto_splits_a. mm_scratch: pass B's dvecX_mm tile through a per-program fp32 slot in global memory (L2)
    so dx is formed in the loads' layout (_pass_b_kernel's MM_SCRATCH). loop_stages: pass B's token loop pipelined in that many
    stages with all its loads (check_loop_stages; None: the compiler's choice, which pipelines the products'
    operands alone; "auto": auto_loop_stages). loop_stages_a: pass A's column loop likewise (None: not
    pipelined; mhc_pre only, the delayed pre's pass A reads no x). Compiled, these change the code around the
    same arithmetic, and ptxas may contract a multiply and an add differently: the same values to rounding."""
    check_maxnreg(maxnreg)
    check_loop_stages(loop_stages, auto=True)
    check_loop_stages(loop_stages_a, "loop_stages_a", auto=True)
    if not isinstance(mm_scratch, bool):
        raise ValueError(f"mm_scratch: expected True or False, got {mm_scratch!r}")
    if splits_a != "auto" and (not isinstance(splits_a, int) or isinstance(splits_a, bool) or splits_a < 1):
        raise ValueError(f'splits_a: expected a positive int or "auto", got {splits_a!r}')
    if presplit is not None and not isinstance(presplit, bool):
        raise ValueError(f"presplit: expected None, True or False, got {presplit!r}")
    n, D = static_dims(x, 2)
    O, nD = n * n + 2 * n, n * D
    T = x.numel() // nD  # validated: n, D >= 1
    T_hint = size_hint(T)  # launch choices (size_hint); shapes and grids use T
    o_a, o_b = o_groups(n)
    split_cap = g_split_cap(T_hint, x.element_size(), O, nD)
    bf16 = x.dtype == torch.bfloat16  # G's bf16 products of pass A's parts need x exact in bf16
    if block_t is None or block_d is None:
        tile = pass_b_tile(o_a + o_b, n, D, T_hint, x.device, split_cap, bf16 and presplit is not False)
        block_t = block_t if block_t is not None else tile[0]
        block_d = block_d if block_d is not None else tile[1]
    check_block("block_t", block_t, 16)
    check_block("block_t_a", block_t_a, 16)
    auto_b, auto_a = auto_loop_stages(n, block_t, x, delayed)
    loop_stages = auto_b if loop_stages == "auto" else loop_stages
    loop_stages_a = auto_a if loop_stages_a == "auto" else loop_stages_a
    block_d_a = block_d_a if block_d_a is not None else stream_block_d(block_t_a, n)
    check_block("block_d_a", block_d_a, 16)
    check_block("block_d", block_d, 16)
    dev, f32 = x.device, torch.float32
    dcoeff = torch.empty(O + 3, device=dev, dtype=f32)  # [dbias (O) | dalpha (3)]
    dx = torch.empty(x.shape, device=dev, dtype=x.dtype)
    out = {
        "dx": dx,
        "dphi": torch.empty((O, nD), device=dev, dtype=f32),
        "dalpha": dcoeff[O:],
        "dbias": dcoeff[:O],
        "dgamma": torch.empty((n, D), device=dev, dtype=f32) if gamma is not None else None,
        "dh_mix": torch.empty((*x.shape[:-2], O), device=dev, dtype=f32),
    }
    collapse = (2 if h_pre_prev is None else 1) if delayed else 0
    if delayed:
        out["dh_pre_prev"] = torch.empty(h_pre.shape, device=dev, dtype=f32) if collapse == 1 else None
    xt, dh_in_t, dx_t = tokens(x, 2), tokens(dh_in, 1), dx.view(-1, n, D)
    if T == 0:
        for k in ("dphi", "dgamma"):
            if out[k] is not None:
                out[k].zero_()
        dcoeff.zero_()
        return out
    alpha, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post = (
        t.contiguous() for t in (alpha, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post)
    )
    gxp = tokens(grad_x_post, 2) if grad_x_post is not None else xt  # never read without HAS_GXP
    check_tile_span(block_t, xt, dh_in_t, dx_t, gxp)
    has_dh_pre = collapse > 0 and dh_pre is not None
    dh_pre = dh_pre.contiguous() if has_dh_pre else h_pre  # never read without HAS_DH_PRE
    h_coll = h_pre_prev.contiguous() if collapse == 1 else h_pre  # pass B's collapse coefficients
    blocks_a = cdiv(T, block_t_a)
    # the parts pay on pass B's 32-row tiles (mma.sync), not on the 64-row ones (docs/perf.md, kernels/fused_bwd.py)
    presplit = bf16 and (block_t < PRESPLIT_BELOW_BLOCK_T if presplit is None else presplit)
    dh3 = torch.empty((3, T, o_pad(n)), device=dev, dtype=torch.bfloat16) if presplit else h_pre  # written first
    rms_coef = torch.empty(T, device=dev, dtype=f32)
    ws_dcoeff = torch.empty((blocks_a, O + 3), device=dev, dtype=torch.float64)
    if splits_a == "auto":
        splits_a = auto_splits_a(cdiv(T_hint, block_t_a), cdiv(D, block_d_a), dev)
    splits_a = 1 if delayed else min(splits_a, cdiv(D, block_d_a))
    # dh_pre's [splits_a, T, n] parts and the blocks' arrival counters (never touched without SPLIT_A)
    ws_dpre = torch.empty((splits_a, T, n), device=dev, dtype=f32) if splits_a > 1 else rms_coef
    counters = arrival_counters(dev, blocks_a) if splits_a > 1 else rms_coef
    _pass_a_kernel[(blocks_a, splits_a)](
        xt, dh_in_t, alpha, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, out["dh_mix"], rms_coef, ws_dcoeff,
        dh_pre, dh3, ws_dpre, counters, T, n, D, *xt.stride(), *dh_in_t.stride(), float(hc_eps), splits_a,
        BLOCK_T=block_t_a, BLOCK_D=block_d_a, O_PAD=o_pad(n), N_PAD=n_pad(n), DELAYED=delayed,
        HAS_DH_PRE=has_dh_pre, PRESPLIT=presplit, SPLIT_A=splits_a > 1, LOOP_STAGES=loop_stages_a or 0,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    col_programs = n * cdiv(D, block_d)
    splits = splits or token_splits(dev, col_programs, cdiv(T_hint, block_t), split_cap)
    ws_g = torch.empty((splits, O * nD), device=dev, dtype=f32)
    # dh_pre_prev's parts, one per pass-B column block (never read unless COLLAPSE == 1)
    dpp_blocks = cdiv(D, block_d) if collapse == 1 else 0
    ws_dpp = torch.empty((dpp_blocks, T * n), device=dev, dtype=f32) if collapse == 1 else ws_g
    gamma_arg = gamma.contiguous() if gamma is not None else inv_rms  # never read without HAS_GAMMA
    # one [block_t, block_d] fp32 slot per pass-B program (never touched without MM_SCRATCH)
    mm_slots = torch.empty((col_programs * splits, block_t * block_d), device=dev, dtype=f32) if mm_scratch else ws_g
    _pass_b_kernel[(col_programs, splits)](
        xt, dh_in_t, gxp, dx_t, phi, gamma_arg, out["dh_mix"], rms_coef, h_coll, ws_g, dh3, ws_dpp, mm_slots, T, n, D,
        *xt.stride(), *dh_in_t.stride(), *gxp.stride(), *dx_t.stride(), *phi.stride(), splits, HAS_GAMMA=gamma is not None,
        HAS_GXP=grad_x_post is not None, BLOCK_T=block_t, BLOCK_D=block_d, O_A=o_a, O_B=o_b,
        INTERPRET=interpreting(), COLLAPSE=collapse, PRESPLIT=presplit, O_PAD=o_pad(n), DX=True,
        MM_SCRATCH=mm_scratch, LOOP_STAGES=loop_stages or 0, num_warps=num_warps, num_stages=num_stages, maxnreg=maxnreg,
    )  # fmt: skip
    (block_k, block_p), block_dpp = finish_tile(n), 512
    dpp_programs = cdiv(T * n, block_dpp) if collapse == 1 else 0
    _finish_kernel[(cdiv(nD, block_k) + 1 + dpp_programs,)](
        ws_g, phi, gamma_arg, out["dphi"], out["dgamma"] if gamma is not None else ws_g, ws_dcoeff, dcoeff, ws_dpp,
        out["dh_pre_prev"] if collapse == 1 else ws_g, splits, blocks_a, dpp_blocks, T * n, n, D, *phi.stride(),
        HAS_GAMMA=gamma is not None, BLOCK_K=block_k, O_PAD=o_pad(n), BLOCK_P=block_p, BLOCK_DPP=block_dpp,
    )  # fmt: skip
    return out
