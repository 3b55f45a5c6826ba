"""Stage dparams: dbias, dalpha and dphi, sums over all tokens.

Deterministic: every program writes its own partial sums to a workspace, and a fixed-order reduce
(kernels/_reduce.py) adds them up. dphi = G*gamma with G = sum_t dh_mix^T v: programs own a
[O_PAD, BLOCK_D] slice of G and one of ``splits`` token ranges.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    cdiv,
    check_block,
    check_inputs,
    fp32_dot,
    g_split_cap,
    interpreting,
    load_coeff_part,
    o_pad,
    split_dot_bf16,
    token_splits,
    tokens,
)
from ._launch import launched
from ._reduce import sum_partials


@triton.jit
def store_dcoeff_partials(ws_ptr, pid, g2, h_mix_ptr, inv_rms, rows, row_mask, cols, n):
    """One program's partials of dbias and dalpha into row pid of the fp64 workspace ws [P, O + 3]:
    columns 0..O-1 sum_t g2 (dbias), columns O, O+1, O+2 sum_t g2*m over the pre, post and res columns
    (dalpha), with g2 = [dh_pre2 | dh_post2 | dh_res] and m = h_mix*inv_rms. The sums run in fp64:
    dalpha's cancels, and an fp32 sum missed the accuracy rule (docs/perf.md, kernels/dparams.py)."""
    O = n * n + 2 * n
    m = load_coeff_part(h_mix_ptr, rows, row_mask, cols, 0, O) * inv_rms[:, None]
    gm = tl.sum((g2 * m).to(tl.float64), axis=0)
    row = ws_ptr + pid.to(tl.int64) * (O + 3)
    tl.store(row + cols, tl.sum(g2.to(tl.float64), axis=0), mask=cols < O)
    tl.store(row + O, tl.sum(tl.where(cols < n, gm, 0.0), axis=0))
    tl.store(row + O + 1, tl.sum(tl.where((cols >= n) & (cols < 2 * n), gm, 0.0), axis=0))
    tl.store(row + O + 2, tl.sum(tl.where(cols >= 2 * n, gm, 0.0), axis=0))


@triton.jit
def g_update(acc, dh_mix, xt, INTERPRET: tl.constexpr):
    """acc [O_PAD, BLOCK_D] += dh_mix^T [O_PAD, BLOCK_T] @ x [BLOCK_T, BLOCK_D], fp32 grade; xt in
    x's dtype. bf16 x is exact in bf16, so dh_mix is split into bf16 parts (bf16 tensor cores)."""
    if xt.dtype == tl.bfloat16:
        acc += split_dot_bf16(tl.trans(dh_mix), xt, INTERPRET)
    else:
        acc += fp32_dot(tl.trans(dh_mix), xt.to(tl.float32))
    return acc


@launched(do_not_specialize=["T"])
def _dcoeff_partials_kernel(
    dh_pre2_ptr,
    dh_post2_ptr,
    dh_res_ptr,
    h_mix_ptr,
    inv_rms_ptr,
    ws_ptr,
    T,
    n,
    BLOCK_T: tl.constexpr,
    O_PAD: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_mask = rows < T
    cols = tl.arange(0, O_PAD)
    g2 = (
        load_coeff_part(dh_pre2_ptr, rows, row_mask, cols, 0, n)
        + load_coeff_part(dh_post2_ptr, rows, row_mask, cols, n, n)
        + load_coeff_part(dh_res_ptr, rows, row_mask, cols, 2 * n, n * n)
    )
    inv_rms = tl.load(inv_rms_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    store_dcoeff_partials(ws_ptr, pid, g2, h_mix_ptr, inv_rms, rows, row_mask, cols, n)


@launched(do_not_specialize=["T", "splits"])
def _g_partials_kernel(
    x_ptr,
    dh_mix_ptr,
    ws_ptr,
    T,
    n,
    D,
    sx_t,
    sx_i,
    sx_d,
    splits,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    O_PAD: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    d_blocks = tl.cdiv(D, BLOCK_D)
    i = tl.program_id(0) // d_blocks
    d = (tl.program_id(0) % d_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    split = tl.program_id(1)
    cols = tl.arange(0, O_PAD)
    O = n * n + 2 * n
    acc = tl.zeros([O_PAD, BLOCK_D], dtype=tl.float32)
    for tb in range(split, tl.cdiv(T, BLOCK_T), splits):
        rows = (tb * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        row_mask = rows < T
        dh_mix = load_coeff_part(dh_mix_ptr, rows, row_mask, cols, 0, O)
        xt = tl.load(
            x_ptr + rows[:, None] * sx_t + i.to(tl.int64) * sx_i + d[None, :] * sx_d,
            mask=row_mask[:, None] & d_mask[None, :],
            other=0.0,
        )
        acc = g_update(acc, dh_mix, xt, INTERPRET)
    nD = n * D
    offs = split.to(tl.int64) * O * nD + cols[:, None] * nD + (i * D + d)[None, :]
    tl.store(ws_ptr + offs, acc, mask=(cols < O)[:, None] & d_mask[None, :])


def mhc_pre_dparams(
    *, x, dh_pre2, dh_post2, dh_res, dh_mix, h_mix, inv_rms, gamma=None, block_t=16, block_d=64, splits=None
):
    """Triton stage dparams -> dict(dphi [O, nD], dalpha [3], dbias [O]), fp32."""
    lead, n, D = check_inputs(
        x, dh_pre2=dh_pre2, dh_post2=dh_post2, dh_res=dh_res, dh_mix=dh_mix, h_mix=h_mix, inv_rms=inv_rms, gamma=gamma
    )
    check_block("block_t", block_t, 16)
    check_block("block_d", block_d, 16)
    O, nD = n * n + 2 * n, n * D
    xt = tokens(x, 2)
    T = xt.shape[0]
    dev, f32 = x.device, torch.float32
    dcoeff = torch.empty(O + 3, device=dev, dtype=f32)  # [dbias (O) | dalpha (3)]
    out = {"dphi": torch.empty((O, nD), device=dev, dtype=f32), "dalpha": dcoeff[O:], "dbias": dcoeff[:O]}
    if T == 0:
        out["dphi"].zero_()
        dcoeff.zero_()
        return out
    p2, q2, r, hm, ir, dm = (t.contiguous() for t in (dh_pre2, dh_post2, dh_res, h_mix, inv_rms, dh_mix))
    token_blocks = cdiv(T, block_t)
    ws_dcoeff = torch.empty((token_blocks, O + 3), device=dev, dtype=torch.float64)
    _dcoeff_partials_kernel[(token_blocks,)](p2, q2, r, hm, ir, ws_dcoeff, T, n, BLOCK_T=block_t, O_PAD=o_pad(n))
    sum_partials(ws_dcoeff, dcoeff)
    col_programs = n * cdiv(D, block_d)
    cap = g_split_cap(T, x.element_size(), O, nD)
    splits = splits or token_splits(dev, col_programs, token_blocks, cap)
    ws_g = torch.empty((splits, O * nD), device=dev, dtype=f32)
    _g_partials_kernel[(col_programs, splits)](
        xt,
        dm,
        ws_g,
        T,
        n,
        D,
        *xt.stride(),
        splits,
        BLOCK_T=block_t,
        BLOCK_D=block_d,
        O_PAD=o_pad(n),
        INTERPRET=interpreting(),
    )
    sum_partials(ws_g, out["dphi"], scale=gamma.reshape(-1).contiguous() if gamma is not None else None)
    return out
