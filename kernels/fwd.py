"""Stage fwd: h_mix and inv_rms from one pass over x, the coefficients, then h_in.

One program owns BLOCK_T tokens. Pass 1 streams x in [BLOCK_T, BLOCK_D] tiles, stream by stream,
accumulating sum(x^2) and the GEMM h_mix = (x*gamma) @ phi^T into a [BLOCK_T, O_PAD] tile.
Pass 2 reads x again for h_in = sum_i h_pre[i] * x[i].
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
    default_block_d,
    fp32_dot,
    interpreting,
    o_pad,
    round_to,
    split_bf16_host,
    store_coeff_part,
    tokens,
)


@triton.jit
def mix_tile(
    x_ptr,
    phi_ptr,
    gamma_ptr,
    w_ptr,
    rows,
    row_mask,
    cols,
    n,
    D,
    sx_t,
    sx_i,
    sx_d,
    sphi_o,
    sphi_k,
    HAS_GAMMA: tl.constexpr,
    W_SPLIT: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    O_PAD: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """-> (h_mix [BLOCK_T, O_PAD] fp32, sum of x^2 [BLOCK_T] fp32) over the n*D elements of each token.

    W_SPLIT (bf16 x, which is exact in bf16): w_ptr holds (gamma*phi)^T as three bf16 parts
    [3, nD, O_PAD] (split_bf16_host), multiplied on bf16 tensor cores and summed in fp32. Otherwise
    phi and gamma are read in fp32 and multiplied by fp32_dot."""
    O = n * n + 2 * n
    h_mix = tl.zeros([BLOCK_T, O_PAD], dtype=tl.float32)
    sumsq = tl.zeros([BLOCK_T], dtype=tl.float32)
    for i in range(n):
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            d_mask = d < D
            xt = tl.load(
                x_ptr + rows[:, None] * sx_t + i * sx_i + d[None, :] * sx_d,
                mask=row_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            xf = xt.to(tl.float32)
            sumsq += tl.sum(xf * xf, axis=1)
            k = i * D + d
            if W_SPLIT:
                # A fresh accumulator per chunk, added in fp32 (see split_dot_rhs_bf16).
                w_offs = k[:, None] * O_PAD + cols[None, :]
                part = n * D * O_PAD
                chunk = tl.zeros([BLOCK_T, O_PAD], dtype=tl.float32)
                for p in tl.static_range(2, -1, -1):  # lo, mid, hi: the small parts first
                    w = tl.load(w_ptr + p * part + w_offs, mask=d_mask[:, None], other=0.0)
                    chunk = bf16_dot(xt, w, chunk, INTERPRET)
                h_mix += chunk
            else:
                w = tl.load(
                    phi_ptr + cols[None, :] * sphi_o + k[:, None] * sphi_k,
                    mask=d_mask[:, None] & (cols < O)[None, :],
                    other=0.0,
                ).to(tl.float32)
                if HAS_GAMMA:
                    w = w * tl.load(gamma_ptr + k, mask=d_mask, other=0.0).to(tl.float32)[:, None]
                h_mix += fp32_dot(xf, w)
    return h_mix, sumsq


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
def column(tile, cols, j):
    """Column j of a [BLOCK_T, O_PAD] tile as a [BLOCK_T] vector."""
    return tl.sum(tl.where(cols[None, :] == j, tile, 0.0), axis=1)


@triton.jit(do_not_specialize=["T"])
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
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_mask = rows < T
    cols = tl.arange(0, O_PAD)
    O = n * n + 2 * n
    h_mix, sumsq = mix_tile(
        x_ptr,
        phi_ptr,
        gamma_ptr,
        w_ptr,
        rows,
        row_mask,
        cols,
        n,
        D,
        sx_t,
        sx_i,
        sx_d,
        sphi_o,
        sphi_k,
        HAS_GAMMA,
        W_SPLIT,
        BLOCK_T,
        BLOCK_D,
        O_PAD,
        INTERPRET,
    )
    inv_rms = tl.rsqrt(sumsq / (n * D) + norm_eps)
    coef = coefficients(h_mix, inv_rms, alpha_ptr, bias_ptr, cols, n, hc_eps)
    tl.store(inv_rms_ptr + rows, inv_rms, mask=row_mask)
    store_coeff_part(h_mix_ptr, h_mix, rows, row_mask, cols, 0, O)
    store_coeff_part(h_pre_ptr, coef, rows, row_mask, cols, 0, n)
    store_coeff_part(h_post_ptr, coef, rows, row_mask, cols, n, n)
    store_coeff_part(h_res_ptr, coef, rows, row_mask, cols, 2 * n, n * n)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (d < D)[None, :]
        h_in = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        for i in range(n):
            xt = tl.load(x_ptr + rows[:, None] * sx_t + i * sx_i + d[None, :] * sx_d, mask=mask, other=0.0)
            h_in += column(coef, cols, i)[:, None] * xt.to(tl.float32)
        tl.store(h_in_ptr + rows[:, None] * D + d[None, :], round_to(h_in, h_in_ptr.dtype.element_ty), mask=mask)


def split_weights(phi: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
    """(gamma*phi)^T [nD, O_PAD] in three bf16 parts [3, nD, O_PAD] (split_bf16_host), for the bf16
    tensor cores; depends on the weights only, so the op caches it (kernels/_cache.py)."""
    O = phi.shape[0]
    n = (math.isqrt(O + 1)) - 1  # O = n*n + 2*n
    wg = phi.float() if gamma is None else phi.float() * gamma.reshape(1, -1).float()
    return split_bf16_host(torch.nn.functional.pad(wg.t(), (0, o_pad(n) - O)).contiguous())


def mhc_pre_fwd(*, x, phi, alpha, bias, gamma=None, norm_eps=1e-6, hc_eps=1e-6, **launch):
    """Triton stage fwd -> dict(h_in, h_post, h_res, inv_rms, h_mix, h_pre), shapes as the golden.
    Validates the inputs, then launch_fwd (launch: its tile options)."""
    check_inputs(x, phi=phi, alpha=alpha, bias=bias, gamma=gamma)
    names = ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre")
    return dict(zip(names, launch_fwd(x, phi, alpha, bias, gamma, norm_eps, hc_eps, **launch)))


def launch_fwd(x, phi, alpha, bias, gamma, norm_eps, hc_eps, block_t=64, block_d=None, num_warps=4, num_stages=None):
    """The forward on validated inputs, one launch -> (h_in, h_post, h_res, inv_rms, h_mix, h_pre)."""
    check_block("block_t", block_t, 16)
    n, D = x.shape[-2:]
    lead = x.shape[:-2]
    block_d = default_block_d(n, block_d)
    check_block("block_d", block_d, 16)
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
    if T > 0:
        alpha, bias = alpha.contiguous(), bias.contiguous()
        gamma_arg = gamma.contiguous() if gamma is not None else alpha  # never read without HAS_GAMMA
        w_split = x.dtype == torch.bfloat16
        # (gamma*phi)^T split for bf16 tensor cores, cached per weight version; never read without W_SPLIT
        w_arg = weight_derived("fwd.split_weights", split_weights, phi, gamma) if w_split else alpha
        _fwd_kernel[(cdiv(T, block_t),)](
            xt, phi, gamma_arg, w_arg, alpha, bias, h_in, h_post, h_res, inv_rms, h_mix, h_pre,
            T, n, D, *xt.stride(), *phi.stride(), float(norm_eps), float(hc_eps),
            HAS_GAMMA=gamma is not None, W_SPLIT=w_split, BLOCK_T=block_t, BLOCK_D=block_d, O_PAD=o_pad(n),
            INTERPRET=interpreting(), num_warps=num_warps, num_stages=num_stages,
        )  # fmt: skip
    return h_in, h_post, h_res, inv_rms, h_mix, h_pre
