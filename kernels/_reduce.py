"""Deterministic reduction of per-program partials: a fixed-order sum over the partials axis.

The sum runs in fp64 (an fp32 running sum over a thousand partials fails the accuracy rule for
dalpha: docs/perf.md, kernels/_reduce.py). Each step adds a [BLOCK_P, BLOCK_M] tile's column sums (a
tree of fixed shape), so the order depends only on the block sizes, which depend only on M.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cdiv, next_power_of_2
from ._launch import launched


@triton.jit
def column_sums(ws_ptr, P, M, cols, col_mask, BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr):
    """[BLOCK_M] fp64: sum over the P rows of a [P, M] workspace (fp32 or fp64) in columns ``cols``,
    BLOCK_P rows at a time (an order fixed by the block sizes)."""
    acc = tl.zeros([BLOCK_M], dtype=tl.float64)
    for p0 in range(0, P, BLOCK_P):
        p = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
        tile = tl.load(ws_ptr + p[:, None] * M + cols[None, :], mask=(p < P)[:, None] & col_mask[None, :], other=0.0)
        acc += tl.sum(tile.to(tl.float64), axis=0)
    return acc


@launched(do_not_specialize=["P"])
def _sum_partials_kernel(
    ws_ptr, scale_ptr, out_ptr, P, M, period, HAS_SCALE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr
):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    col_mask = cols < M
    acc = column_sums(ws_ptr, P, M, cols, col_mask, BLOCK_P, BLOCK_M)
    if HAS_SCALE:
        acc *= tl.load(scale_ptr + cols % period, mask=col_mask, other=0.0).to(tl.float64)
    tl.store(out_ptr + cols, acc.to(tl.float32), mask=col_mask)


def sum_partials(ws: torch.Tensor, out: torch.Tensor, scale: torch.Tensor | None = None) -> None:
    """out[m] = sum_p ws[p, m] (times scale[m % len(scale)]), in an order fixed by M.

    ws: [P, M] fp32 or fp64, contiguous; out: contiguous with M elements; scale: 1-D, contiguous."""
    P, M = ws.shape
    block_m = min(1024, next_power_of_2(M))
    block_p = max(1, 4096 // block_m)
    scale_arg = scale if scale is not None else ws
    period = scale.numel() if scale is not None else 1
    _sum_partials_kernel[(cdiv(M, block_m),)](
        ws, scale_arg, out, P, M, period, HAS_SCALE=scale is not None, BLOCK_P=block_p, BLOCK_M=block_m
    )
