"""Stages post_fwd and post_bwd: mhc_post forward and backward, one launch each (docs/math.md, mhc_post;
the first index of h_res is the input stream)::

    out[j] = h_post[j] * h_out + sum_i h_res[i, j] * x[i]                          (post_fwd)
    dx[i] = sum_j h_res[i, j] * dout[j],   dh_out = sum_j h_post[j] * dout[j]      (post_bwd)
    dh_res[i, j] = sum_d dout[j, d] * x[i, d],   dh_post[j] = sum_d dout[j, d] * h_out[d]

Programs hold ``[BLOCK_T, N_PAD, BLOCK_D]`` tiles (streams padded to a power of two and masked; n a
constexpr, so the stream loops are static). post_fwd: grid (token blocks, D blocks), every input
read once, the n output tiles stored once. post_bwd: grid (token blocks), a pipelined loop over D: dx
and dh_out per chunk, dh_res and dh_post summed in registers and stored at the end (no workspace, no
atomics, a sum order fixed by the block sizes). fp32 arithmetic, outputs rounded by ``round_to``;
int64 rows, runtime strides, T not specialised on. Why this shape: docs/perf.md, kernels/post.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mhc_ops._validate import check_post_inputs

from ._common import cdiv, check_block, next_power_of_2, round_to, static_dims, tokens
from ._launch import launched


@triton.jit
def mix_in(acc, coef, src):
    """acc [BLOCK_T, N_PAD, BLOCK_D] + coef [BLOCK_T, N_PAD] (x) src [BLOCK_T, BLOCK_D], all fp32: the
    input tile src, weighted per token and output stream by coef, added into every output stream."""
    return acc + coef[:, :, None] * src[:, None, :]


@triton.jit
def load_tile(ptr, rows, cols, s_t, s_c, mask):
    """[BLOCK_T, BLOCK_D] (or [BLOCK_T, N_PAD]) tile ptr[rows, cols] of a strided tensor, in fp32."""
    return tl.load(ptr + rows[:, None] * s_t + cols[None, :] * s_c, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def post_bwd_stream(dx, dh_out, dh_res, dh_post, x, h_out, g_j, j, h_res_ptr, h_post_ptr, rows, row_mask, s, mask_s, sr_t,
                    sr_i, sr_j, shp_t, shp_j):  # fmt: skip
    """post_bwd's accumulators after stream j of dout, g_j [BLOCK_T, BLOCK_D] fp32, over one column chunk:
    dx [t, i, d] += h_res[i, j] g_j, dh_out += h_post[j] g_j, and the chunk's part of dh_res[:, :, j]
    (sum_d x[i] g_j, x [t, i, d] fp32) and of dh_post[:, j] (sum_d g_j h_out). The post_bwd kernel's
    and the seam backward's (kernels/seam_bwd.py, where g_j is dx(l+1) as it is made)."""
    res_j = load_tile(h_res_ptr + j * sr_j, rows, s, sr_t, sr_i, mask_s)  # h_res[:, i, j] over i
    h_post_j = tl.load(h_post_ptr + rows * shp_t + j * shp_j, mask=row_mask, other=0.0).to(tl.float32)
    dx = mix_in(dx, res_j, g_j)
    dh_out += h_post_j[:, None] * g_j
    dh_res += tl.where(s[None, None, :] == j, tl.sum(x * g_j[:, None, :], axis=2)[:, :, None], 0.0)
    dh_post += tl.where(s[None, :] == j, tl.sum(g_j * h_out, axis=1)[:, None], 0.0)
    return dx, dh_out, dh_res, dh_post


@launched(do_not_specialize=["T"])
def _post_fwd_kernel(
    x_ptr,
    h_res_ptr,
    h_out_ptr,
    h_post_ptr,
    out_ptr,
    T,
    D,
    sx_t,
    sx_i,
    sx_d,
    sr_t,
    sr_i,
    sr_j,
    sho_t,
    sho_d,
    shp_t,
    shp_j,
    so_t,
    so_j,
    so_d,
    N: tl.constexpr,
    N_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BT] int64
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    s = tl.arange(0, N_PAD)  # output stream j
    row_mask = rows < T
    mask_d = row_mask[:, None] & (d < D)[None, :]  # [BT, BD]
    mask_s = row_mask[:, None] & (s < N)[None, :]  # [BT, N_PAD]
    h_out = load_tile(h_out_ptr, rows, d, sho_t, sho_d, mask_d)
    h_post = load_tile(h_post_ptr, rows, s, shp_t, shp_j, mask_s)
    acc = mix_in(tl.zeros([BLOCK_T, N_PAD, BLOCK_D], dtype=tl.float32), h_post, h_out)
    for i in tl.static_range(N):
        x_i = load_tile(x_ptr + tl.cast(i, tl.int64) * sx_i, rows, d, sx_t, sx_d, mask_d)  # input stream i
        res_i = load_tile(h_res_ptr + i * sr_i, rows, s, sr_t, sr_j, mask_s)  # h_res[:, i, j] over j
        acc = mix_in(acc, res_i, x_i)
    offs = rows[:, None, None] * so_t + s[None, :, None].to(tl.int64) * so_j + d[None, None, :] * so_d
    tl.store(out_ptr + offs, round_to(acc, out_ptr.dtype.element_ty), mask=mask_d[:, None, :] & (s < N)[None, :, None])


@launched(do_not_specialize=["T"])
def _post_bwd_kernel(
    x_ptr,
    h_res_ptr,
    h_out_ptr,
    h_post_ptr,
    dout_ptr,
    dx_ptr,
    dh_res_ptr,
    dh_out_ptr,
    dh_post_ptr,
    T,
    D,
    sx_t,
    sx_i,
    sx_d,
    sr_t,
    sr_i,
    sr_j,
    sho_t,
    sho_d,
    shp_t,
    shp_j,
    sg_t,
    sg_j,
    sg_d,
    sdx_t,
    sdx_i,
    sdx_d,
    sdr_t,
    sdr_i,
    sdr_j,
    sdo_t,
    sdo_d,
    sdp_t,
    sdp_j,
    N: tl.constexpr,
    N_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BT] int64
    s = tl.arange(0, N_PAD)  # stream index: i for x, dx and the rows of dh_res; j for dout
    row_mask = rows < T
    s_mask = s < N
    mask_s = row_mask[:, None] & s_mask[None, :]  # [BT, N_PAD]
    dh_res = tl.zeros([BLOCK_T, N_PAD, N_PAD], dtype=tl.float32)  # [t, i, j]
    dh_post = tl.zeros([BLOCK_T, N_PAD], dtype=tl.float32)  # [t, j]
    for d0 in tl.range(0, D, BLOCK_D, num_stages=NUM_STAGES):  # loads of the next chunks in flight
        d = d0 + tl.arange(0, BLOCK_D)
        mask_d = row_mask[:, None] & (d < D)[None, :]  # [BT, BD]
        mask3 = mask_d[:, None, :] & s_mask[None, :, None]  # [BT, N_PAD, BD]
        x = tl.load(
            x_ptr + rows[:, None, None] * sx_t + s[None, :, None].to(tl.int64) * sx_i + d[None, None, :] * sx_d,
            mask=mask3,
            other=0.0,
        ).to(tl.float32)  # [t, i, d]
        h_out = load_tile(h_out_ptr, rows, d, sho_t, sho_d, mask_d)
        dx = tl.zeros([BLOCK_T, N_PAD, BLOCK_D], dtype=tl.float32)  # [t, i, d]
        dh_out = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        for j in tl.static_range(N):
            g_j = load_tile(dout_ptr + tl.cast(j, tl.int64) * sg_j, rows, d, sg_t, sg_d, mask_d)  # dout[:, j, d]
            dx, dh_out, dh_res, dh_post = post_bwd_stream(dx, dh_out, dh_res, dh_post, x, h_out, g_j, j, h_res_ptr,
                                                          h_post_ptr, rows, row_mask, s, mask_s, sr_t, sr_i, sr_j,
                                                          shp_t, shp_j)  # fmt: skip
        dx_offs = rows[:, None, None] * sdx_t + s[None, :, None].to(tl.int64) * sdx_i + d[None, None, :] * sdx_d
        tl.store(dx_ptr + dx_offs, round_to(dx, dx_ptr.dtype.element_ty), mask=mask3)
        dh_out_offs = rows[:, None] * sdo_t + d[None, :] * sdo_d
        tl.store(dh_out_ptr + dh_out_offs, round_to(dh_out, dh_out_ptr.dtype.element_ty), mask=mask_d)
    res_offs = rows[:, None, None] * sdr_t + s[None, :, None] * sdr_i + s[None, None, :] * sdr_j
    res_mask = mask_s[:, :, None] & s_mask[None, None, :]
    tl.store(dh_res_ptr + res_offs, dh_res, mask=res_mask)
    tl.store(dh_post_ptr + rows[:, None] * sdp_t + s[None, :] * sdp_j, dh_post, mask=mask_s)


def fwd_blocks(n: int, D: int, block_t: int | None = None, block_d: int | None = None) -> tuple[int, int]:
    """(BLOCK_T, BLOCK_D) of post_fwd: the caller's, or a [BLOCK_T, N_PAD, BLOCK_D] tile of 4096 elements
    (64 fp32 accumulators per thread with 2 warps) whose last D block is at most 1/8 padding (docs/perf.md,
    kernels/post.py)."""
    n_pad = next_power_of_2(n)
    if block_d is None:
        block_d = min(next_power_of_2(D), 4096 // n_pad)
        while block_d > 64 and cdiv(D, block_d) * block_d - D > D // 8:
            block_d //= 2
    if block_t is None:
        block_t = max(1, 4096 // (n_pad * block_d))
    return block_t, block_d


def bwd_blocks(n: int, D: int, block_t: int | None = None, block_d: int | None = None) -> tuple[int, int]:
    """(BLOCK_T, BLOCK_D) of post_bwd: the caller's, or a [BLOCK_T, N_PAD, BLOCK_D] tile of 2048 elements
    per loop step, 256 columns (128 from n = 5 on), the rest tokens: the best of a sweep (docs/perf.md,
    kernels/post.py)."""
    n_pad = next_power_of_2(n)
    if block_d is None:
        block_d = min(next_power_of_2(D), 256 if n_pad <= 4 else 128)
    if block_t is None:
        block_t = max(1, 2048 // (n_pad * block_d))
    return block_t, block_d


def _views(x, h_res, h_out, h_post):
    """Token views [T, n, D], [T, n, n], [T, D], [T, n] of the inputs (views whenever the strides allow)."""
    return tokens(x, 2), tokens(h_res, 2), tokens(h_out, 1), tokens(h_post, 1)


def launch_post_fwd(x, h_res, h_out, h_post, block_t=None, block_d=None, num_warps=2) -> torch.Tensor:
    """post_fwd on validated inputs -> out (x's shape and dtype): the allocation, the grid and one launch,
    nothing else (the library's hot path). T = 0 launches nothing."""
    n, D = static_dims(x, 2)
    xt, rt, ht, pt = _views(x, h_res.contiguous(), h_out, h_post.contiguous())
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    ot = out.view(-1, n, D)
    T = xt.shape[0]
    if T == 0:
        return out
    block_t, block_d = fwd_blocks(n, D, block_t, block_d)
    _post_fwd_kernel[(cdiv(T, block_t), cdiv(D, block_d))](
        xt, rt, ht, pt, ot, T, D,
        *xt.stride(), *rt.stride(), *ht.stride(), *pt.stride(), *ot.stride(),
        N=n, N_PAD=next_power_of_2(n), BLOCK_T=block_t, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return out


def launch_post_bwd(x, h_res, h_out, h_post, dout, block_t=None, block_d=None, num_warps=2, num_stages=3) -> tuple:
    """post_bwd on validated inputs -> (dx: x's shape and dtype, dh_res [.., n, n] fp32, dh_out [.., D]
    in h_out's dtype, dh_post [.., n] fp32): the allocations, the grid and one launch, nothing else.
    T = 0 launches nothing."""
    n, D = static_dims(x, 2)
    xt, rt, ht, pt = _views(x, h_res.contiguous(), h_out, h_post.contiguous())
    gt = tokens(dout, 2)
    lead, dev, f32 = x.shape[:-2], x.device, torch.float32
    dx = torch.empty(x.shape, device=dev, dtype=x.dtype)
    dh_res = torch.empty((*lead, n, n), device=dev, dtype=f32)
    dh_out = torch.empty((*lead, D), device=dev, dtype=h_out.dtype)
    dh_post = torch.empty((*lead, n), device=dev, dtype=f32)
    dxt, drt, dot, dpt = dx.view(-1, n, D), dh_res.view(-1, n, n), dh_out.view(-1, D), dh_post.view(-1, n)
    T = xt.shape[0]
    if T == 0:
        return dx, dh_res, dh_out, dh_post
    block_t, block_d = bwd_blocks(n, D, block_t, block_d)
    _post_bwd_kernel[(cdiv(T, block_t),)](
        xt, rt, ht, pt, gt, dxt, drt, dot, dpt, T, D,
        *xt.stride(), *rt.stride(), *ht.stride(), *pt.stride(), *gt.stride(),
        *dxt.stride(), *drt.stride(), *dot.stride(), *dpt.stride(),
        N=n, N_PAD=next_power_of_2(n), BLOCK_T=block_t, BLOCK_D=block_d, NUM_STAGES=num_stages,
        num_warps=num_warps,
    )  # fmt: skip
    return dx, dh_res, dh_out, dh_post


def _check_blocks(block_t, block_d) -> None:
    for name, value in (("block_t", block_t), ("block_d", block_d)):
        if value is not None:
            check_block(name, value, 1)


def post_fwd(*, x, h_res, h_out, h_post, block_t=None, block_d=None) -> dict[str, torch.Tensor]:
    """Triton stage post_fwd -> dict(out), x's shape and dtype. Validates, then one launch."""
    check_post_inputs(x, h_res, h_out, h_post)
    _check_blocks(block_t, block_d)
    return {"out": launch_post_fwd(x, h_res, h_out, h_post, block_t, block_d)}


def post_bwd(*, x, h_res, h_out, h_post, dout, block_t=None, block_d=None) -> dict[str, torch.Tensor]:
    """Triton stage post_bwd -> dict(dx, dh_res, dh_out, dh_post): dx and dh_out in x's dtype, dh_res
    and dh_post in fp32. Validates, then one launch."""
    if not isinstance(dout, torch.Tensor):  # check_post_inputs takes None for "no dout" (the forward)
        raise TypeError(f"dout: expected a torch.Tensor, got {type(dout).__name__}")
    check_post_inputs(x, h_res, h_out, h_post, dout)
    _check_blocks(block_t, block_d)
    grads = launch_post_bwd(x, h_res, h_out, h_post, dout, block_t, block_d)
    return dict(zip(("dx", "dh_res", "dh_out", "dh_post"), grads))
