"""Deterministic reduction of per-program partials: a fixed-order sum over the partials axis.

The sum runs in fp64: with a thousand partials (one per token block) an fp32 running sum loses
enough to fail the accuracy rule for dalpha at T = 16384 (benchmark run on an H100).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["P"])
def _sum_partials_kernel(ws_ptr, scale_ptr, out_ptr, P, M, period, HAS_SCALE: tl.constexpr, BLOCK_M: tl.constexpr):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = cols < M
    acc = tl.zeros([BLOCK_M], dtype=tl.float64)
    for p in range(P):
        acc += tl.load(ws_ptr + p * M + cols, mask=mask, other=0.0).to(tl.float64)
    if HAS_SCALE:
        acc *= tl.load(scale_ptr + cols % period, mask=mask, other=0.0).to(tl.float64)
    tl.store(out_ptr + cols, acc.to(tl.float32), mask=mask)


def sum_partials(ws: torch.Tensor, out: torch.Tensor, scale: torch.Tensor | None = None, block_m: int = 1024) -> None:
    """out[m] = sum_p ws[p, m] (times scale[m % len(scale)]), summed in the order p = 0, 1, ...

    ws: [P, M] fp32 contiguous; out: contiguous with M elements; scale: 1-D, contiguous."""
    P, M = ws.shape
    scale_arg = scale if scale is not None else ws
    period = scale.numel() if scale is not None else 1
    _sum_partials_kernel[(triton.cdiv(M, block_m),)](
        ws, scale_arg, out, P, M, period, HAS_SCALE=scale is not None, BLOCK_M=block_m
    )
