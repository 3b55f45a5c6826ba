"""Stage dgamma: dgamma = sum_t v * dvecX_mm, reshaped [n, D].

Programs own a BLOCK_D slice of one stream and one of ``splits`` token ranges; their partials are
reduced in a fixed order (deterministic).
"""

from __future__ import annotations

import torch
import triton.language as tl

from ._common import cdiv, check_block, check_inputs, token_splits, tokens
from ._launch import launched
from ._reduce import sum_partials


@launched(do_not_specialize=["T", "splits"])
def _dgamma_partials_kernel(
    x_ptr, dvecX_mm_ptr, ws_ptr, T, n, D, sx_t, sx_i, sx_d, splits, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr
):
    d_blocks = tl.cdiv(D, BLOCK_D)
    i = tl.program_id(0) // d_blocks
    d = (tl.program_id(0) % d_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    split = tl.program_id(1)
    nD = n * D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for tb in range(split, tl.cdiv(T, BLOCK_T), splits):
        rows = (tb * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        mask = (rows < T)[:, None] & d_mask[None, :]
        xt = tl.load(x_ptr + rows[:, None] * sx_t + i.to(tl.int64) * sx_i + d[None, :] * sx_d, mask=mask, other=0.0)
        mm = tl.load(dvecX_mm_ptr + rows[:, None] * nD + (i * D + d)[None, :], mask=mask, other=0.0)
        acc += tl.sum(xt.to(tl.float32) * mm.to(tl.float32), axis=0)
    tl.store(ws_ptr + split.to(tl.int64) * nD + i * D + d, acc, mask=d_mask)


def mhc_pre_dgamma(*, x, dvecX_mm, block_t=16, block_d=64, splits=None):
    """Triton stage dgamma -> dict(dgamma [n, D] fp32)."""
    lead, n, D = check_inputs(x, dvecX_mm=dvecX_mm)
    check_block("block_t", block_t, 1)
    check_block("block_d", block_d, 1)
    xt = tokens(x, 2)
    T = xt.shape[0]
    dgamma = torch.empty((n, D), device=x.device, dtype=torch.float32)
    if T == 0:
        return {"dgamma": dgamma.zero_()}
    token_blocks = cdiv(T, block_t)
    col_programs = n * cdiv(D, block_d)
    splits = splits or token_splits(x.device, col_programs, token_blocks)
    ws = torch.empty((splits, n * D), device=x.device, dtype=torch.float32)
    _dgamma_partials_kernel[(col_programs, splits)](
        xt, dvecX_mm.contiguous(), ws, T, n, D, *xt.stride(), splits, BLOCK_T=block_t, BLOCK_D=block_d
    )
    sum_partials(ws, dgamma)
    return {"dgamma": dgamma}
