"""Stages sinkhorn_fwd and sinkhorn_bwd: DeepSeek's Sinkhorn-Knopp projection of per-token logits
``[T, n, n]`` (or ``[B, S, n, n]``), forward and its exact reverse-mode gradient (docs/sinkhorn.md).

One program owns BLOCK_T tokens as a ``[BLOCK_T, N_PAD, N_PAD]`` fp32 tile in registers. Entries
outside ``[n, n]`` are masked (-inf before the softmax's max, exactly 0 in every P; a padded line's
divisor reciprocal is 0). Logits are read in their dtype and upcast; P is fp32; dlogits is rounded to
logits' dtype (``round_to``). Each pass multiplies by the n reciprocals of ``sum + eps``, rounded to
nearest (``reciprocal``: div_rn's value, without its branch). ``iters`` and ``T`` are runtime arguments. The backward keeps no
history: it recomputes the forward from the logits in registers with one checkpoint tile (segments
of ``isqrt(iters - 1)`` iterations, about iters**1.5 passes), through the forward's helpers, so it
sees bitwise the forward's values. Why this shape: docs/perf.md, kernels/sinkhorn.py.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from mhc_ops import _validate

from ._common import cdiv, check_block, interpreting, next_power_of_2, round_to, static_dims
from ._launch import launched

MAX_N = 8  # one token's n x n matrix lives in registers
# One warp per program over a [BLOCK_T, N_PAD, N_PAD] tile of at least TILE_ELEMENTS entries (and 8
# tokens): 16 tokens at n = 4, 8 at n = 8. The iteration is a serial chain of row and column sums, and
# this tile ran the chain fastest of those measured (docs/perf.md, Performance VIII).
TILE_ELEMENTS = 256
MIN_BLOCK_T = 8
NUM_WARPS = 1
RCP_PTX = tl.constexpr(not interpreting())  # reciprocal() in PTX on the GPU, div_rn in the interpreter
# block_tile's orders of a [T, N, N] tensor's tokens (ORDERS[k] is order k): token-major (matrix_tile), or one
# token's matrix in one thread with the tokens last or first (tokens_tile)
ORDERS = ("token-major", "tokens-last", "tokens-first")
TOKEN_MAJOR = tl.constexpr(0)
TOKENS_LAST = tl.constexpr(1)
TOKENS_FIRST = tl.constexpr(2)
# Where Triton's coalescing puts the lanes of a load with no contiguous dimension: the first dimension up to 3.6
# (the GPU image's), the last from 3.7 (compiled for sm_90 with 3.6, 3.7, 3.8, 3.9). tokens_tile lays one matrix
# a thread with its tokens there.
TIE_FIRST = tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 7)
ONE_A_THREAD = "tokens-first" if TIE_FIRST else "tokens-last"


@triton.jit
def token_tile(T, N: tl.constexpr, N_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    """This program's tile of a contiguous [T, N, N] tensor: matrix_tile of its BLOCK_T tokens."""
    return matrix_tile(tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T), T, N, N_PAD)


@triton.jit
def matrix_tile(tok, T, N: tl.constexpr, N_PAD: tl.constexpr):
    """The tile of tokens tok [BLOCK_T] int64 of a contiguous [T, N, N] tensor -> (offsets [BLOCK_T,
    N_PAD, N_PAD] int64, load/store mask, valid [1, N_PAD, N_PAD] (entry inside [N, N]), row_valid
    [1, N_PAD] (i < N), col_valid [1, N_PAD] (j < N))."""
    i = tl.arange(0, N_PAD)
    j = tl.arange(0, N_PAD)
    row_valid = (i < N)[None, :]
    col_valid = (j < N)[None, :]
    valid = row_valid[:, :, None] & col_valid[:, None, :]
    offs = tok[:, None, None] * (N * N) + (i * N)[None, :, None] + j[None, None, :]
    mask = (tok < T)[:, None, None] & valid
    return offs, mask, valid, row_valid, col_valid


@triton.jit
def tokens_tile(t0, T, BLOCK_T: tl.constexpr, sm_j, N: tl.constexpr, N_PAD: tl.constexpr, TILE_T: tl.constexpr,
                ORDER: tl.constexpr):  # fmt: skip
    """matrix_tile's (offsets, mask, valid, row_valid, col_valid) of a contiguous [T, N, N] tensor for tokens
    t0 .. t0 + BLOCK_T - 1 (TILE_T >= BLOCK_T of them, past BLOCK_T masked), for one token's matrix in one thread
    (no shuffles in the chain of passes; TILE_T = 32 x warps). sm_j is the column stride (1), passed unspecialised:
    then no dimension of the load looks contiguous, and Triton gives its lanes to the dimension it breaks the tie
    toward (TIE_FIRST), where ORDER puts the tokens: TOKENS_FIRST, offsets [TILE_T, N_PAD, N_PAD] (the tokens'
    stride sm_j * N * N, unspecialised too); TOKENS_LAST, [N_PAD, N_PAD, TILE_T], which load_matrices /
    store_matrices permute to and from the helpers' order. In the other order Triton spreads a matrix over 16
    lanes (3.6: 193 cycles an iteration on the GPU; docs/perf.md, Performance XVII, XVIII)."""
    tok = t0 + tl.arange(0, TILE_T)
    i = tl.arange(0, N_PAD)
    j = tl.arange(0, N_PAD)
    live = (tok < T) & (tok < t0 + BLOCK_T)
    if ORDER == TOKENS_FIRST:
        offs = tok[:, None, None] * (sm_j * (N * N)) + (i * N)[None, :, None] + (j * sm_j)[None, None, :]
        mask = live[:, None, None] & (i < N)[None, :, None] & (j < N)[None, None, :]
    else:
        offs = tok[None, None, :] * (N * N) + (i * N)[:, None, None] + (j * sm_j)[None, :, None]
        mask = live[None, None, :] & (i < N)[:, None, None] & (j < N)[None, :, None]
    row_valid = (i < N)[None, :]
    col_valid = (j < N)[None, :]
    valid = row_valid[:, :, None] & col_valid[:, None, :]
    return offs, mask, valid, row_valid, col_valid


@triton.jit
def block_tile(t0, T, BLOCK_T: tl.constexpr, sm_j, N: tl.constexpr, N_PAD: tl.constexpr, TILE_T: tl.constexpr,
               ORDER: tl.constexpr):  # fmt: skip
    """Tokens t0 .. t0 + BLOCK_T - 1 of a contiguous [T, N, N] tensor in order ORDER (ORDERS' index): matrix_tile's
    [BLOCK_T, N_PAD, N_PAD] tile (TOKEN_MAJOR), or tokens_tile's (TILE_T tokens)."""
    if ORDER == TOKEN_MAJOR:
        tile = matrix_tile(t0 + tl.arange(0, BLOCK_T), T, N, N_PAD)
    else:
        tile = tokens_tile(t0, T, BLOCK_T, sm_j, N, N_PAD, TILE_T, ORDER)
    return tile


@triton.jit
def live_tokens(t0, T, BLOCK_T: tl.constexpr, TILE_T: tl.constexpr):
    """[TILE_T, 1, 1] bool: which of a block_tile's tokens (in the helpers' [TILE_T, N_PAD, N_PAD] order) are this
    block's and below T, the ones its store keeps. A timer's dependency masked by it keeps no other token's passes
    alive (summed whole, a 128-token tile's dead tokens stay in the loop: 27 -> 387 instructions an iteration under
    Triton 3.6, docs/perf.md, Performance XVII)."""
    idx = tl.arange(0, TILE_T)
    return (((t0 + idx) < T) & (idx < BLOCK_T))[:, None, None]


@triton.jit
def load_matrices(ptr, offs, mask, ORDER: tl.constexpr):
    """The [BLOCK_T, N_PAD, N_PAD] fp32 tile at block_tile's offsets in ORDER (0 where masked)."""
    tile = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if ORDER == TOKENS_LAST:
        tile = tl.permute(tile, (2, 0, 1))
    return tile


@triton.jit
def store_matrices(ptr, offs, tile, mask, ORDER: tl.constexpr):
    """Store a [BLOCK_T, N_PAD, N_PAD] tile at block_tile's offsets in ORDER."""
    if ORDER == TOKENS_LAST:
        tile = tl.permute(tile, (1, 2, 0))
    tl.store(ptr + offs, tile, mask=mask)


@triton.jit
def reciprocal(s, eps, line_valid):
    """1 / (s + eps) rounded to nearest, for each row (or column) sum s [BLOCK_T, N_PAD]; 0 on padded lines.

    On the GPU: the fast path of CUDA's div.rn.f32 for a numerator of 1 (MUFU.RCP, then two FMA
    corrections), written out so that independent reciprocals overlap: div_rn compiles each division
    to that path behind a branch to its slow path, so a pass ran its n reciprocals one after another
    (docs/perf.md, Performance XI). Bitwise div_rn(1, d) for d = s + eps in [2**-126, 2**126]; outside
    (never for a Sinkhorn sum with eps >= 2**-126 and entries below 2**126) it flushes to 0 or inf (or
    NaN at d = 0, where div_rn gives inf and the line's P is 0 * inf = NaN either way). The
    interpreter runs no PTX: there div_rn."""
    d = s + eps
    if RCP_PTX:
        r = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [d], dtype=tl.float32, is_pure=True, pack=1)
        r = tl.fma(r, tl.fma(-d, r, 1.0), r)
        r = tl.fma(r, tl.fma(-d, r, 1.0), r)
    else:
        r = tl.math.div_rn(1.0, d)
    return tl.where(line_valid, r, 0.0)


@triton.jit
def row_pass(P, row_valid, eps):
    """Q = P / (rowsum(P) + eps) -> (Q, the reciprocals [BLOCK_T, N_PAD, 1])."""
    inv = reciprocal(tl.sum(P, axis=2), eps, row_valid)[:, :, None]
    return P * inv, inv


@triton.jit
def col_pass(P, col_valid, eps):
    """Q = P / (colsum(P) + eps) -> (Q, the reciprocals [BLOCK_T, 1, N_PAD])."""
    inv = reciprocal(tl.sum(P, axis=1), eps, col_valid)[:, None, :]
    return P * inv, inv


@triton.jit
def row_pass_adjoint(dQ, Q, inv, valid):
    """Gradient of the row pass's input: (dQ - sum_j dQ*Q) / (rowsum + eps); 0 outside [n, n]."""
    return tl.where(valid, (dQ - tl.sum(dQ * Q, axis=2)[:, :, None]) * inv, 0.0)


@triton.jit
def col_pass_adjoint(dQ, Q, inv, valid):
    """Gradient of the column pass's input: (dQ - sum_i dQ*Q) / (colsum + eps); 0 outside [n, n]."""
    return tl.where(valid, (dQ - tl.sum(dQ * Q, axis=1)[:, None, :]) * inv, 0.0)


@triton.jit
def iteration_zero(L, valid, col_valid, eps):
    """S = softmax(L) over each row (max-subtracted, padded columns excluded), then
    X1 = (S + eps) / (colsum + eps) -> (S, X1, the column pass's reciprocals). Padded rows of L are 0
    (masked loads), so their softmax stays finite; it is dropped by the mask before any sum."""
    Lm = tl.where(col_valid[:, None, :], L, float("-inf"))
    e = tl.exp(Lm - tl.max(Lm, axis=2)[:, :, None])
    S = e * tl.math.div_rn(1.0, tl.sum(e, axis=2))[:, :, None]
    X1, inv_c = col_pass(tl.where(valid, S + eps, 0.0), col_valid, eps)
    return S, X1, inv_c


@triton.jit
def iterations(P, count, row_valid, col_valid, eps):
    """``count`` Sinkhorn iterations of P: a row pass, then a column pass, each."""
    for _ in range(count):
        P, inv_r = row_pass(P, row_valid, eps)
        P, inv_c = col_pass(P, col_valid, eps)
    return P


@triton.jit
def sinkhorn_tile(L, iters, valid, row_valid, col_valid, eps):
    """P [BLOCK_T, N_PAD, N_PAD] fp32 of a logits tile L (fp32, 0 outside [n, n]): iteration zero, then
    iters - 1 iterations (the forward kernel's, and the decode boundary's in kernels/decode.py)."""
    S, P, inv_c = iteration_zero(L, valid, col_valid, eps)
    return iterations(P, iters - 1, row_valid, col_valid, eps)


@launched(do_not_specialize=["T", "iters"])
def _sinkhorn_fwd_kernel(
    logits_ptr,
    P_ptr,
    T,
    iters,
    eps,
    N: tl.constexpr,
    N_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    eps = tl.cast(eps, tl.float32)  # a float argument is fp64 in Inductor's launches
    offs, mask, valid, row_valid, col_valid = token_tile(T, N, N_PAD, BLOCK_T)
    L = tl.load(logits_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(P_ptr + offs, sinkhorn_tile(L, iters, valid, row_valid, col_valid, eps), mask=mask)


@launched(do_not_specialize=["T", "iters", "seg"])
def _sinkhorn_bwd_kernel(
    logits_ptr,
    dP_ptr,
    dlogits_ptr,
    T,
    iters,
    seg,
    eps,
    N: tl.constexpr,
    N_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    eps = tl.cast(eps, tl.float32)  # a float argument is fp64 in Inductor's launches
    offs, mask, valid, row_valid, col_valid = token_tile(T, N, N_PAD, BLOCK_T)
    L = tl.load(logits_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    G = tl.load(dP_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # gradient of the current P
    S, X1, inv_c0 = iteration_zero(L, valid, col_valid, eps)
    # Iterations 1 .. iters-1 in segments of seg, the last segment first (see the module docstring).
    num_segs = (iters - 1 + seg - 1) // seg
    for s in range(num_segs):
        lo = 1 + (num_segs - 1 - s) * seg  # the segment's first iteration
        hi = tl.minimum(lo + seg, iters)  # one past its last
        Xs = iterations(X1, lo - 1, row_valid, col_valid, eps)  # the input of iteration lo
        for t in range(hi - lo):
            X = iterations(Xs, hi - 1 - t - lo, row_valid, col_valid, eps)  # input of iteration hi-1-t
            M, inv_r = row_pass(X, row_valid, eps)
            Q, inv_c = col_pass(M, col_valid, eps)
            G = col_pass_adjoint(G, Q, inv_c, valid)
            G = row_pass_adjoint(G, M, inv_r, valid)
    G = col_pass_adjoint(G, X1, inv_c0, valid)  # now the gradient of S + eps, i.e. of S
    dL = S * (G - tl.sum(G * S, axis=2)[:, :, None])  # the row softmax's adjoint
    tl.store(dlogits_ptr + offs, round_to(dL, dlogits_ptr.dtype.element_ty), mask=mask)


def _n_pad(n: int) -> int:
    return next_power_of_2(n)


def default_block_t(n: int) -> int:
    """Tokens per program: TILE_ELEMENTS entries of [BLOCK_T, N_PAD, N_PAD], at least MIN_BLOCK_T (8 tokens
    at n = 8, 16 at n = 4)."""
    return max(MIN_BLOCK_T, TILE_ELEMENTS // _n_pad(n) ** 2)


def check_sinkhorn_inputs(logits, dP=None, iters=20, eps=1e-6, max_n=MAX_N) -> tuple[tuple[int, ...], int]:
    """The stages' validation (mhc_ops/_validate.py's sinkhorn table) with the kernel's bound on n
    -> (leading dims, n)."""
    return _validate.check_sinkhorn_inputs(logits, dP, iters=iters, eps=eps, max_n=max_n)


def launch_sinkhorn_fwd(logits, iters, eps, *, block_t=None, num_warps=NUM_WARPS) -> torch.Tensor:
    """Unchecked: logits [..., n, n] (fp32/bf16/fp16) -> P fp32 of its shape. Computes the grid and
    launches one kernel (none for zero tokens)."""
    (n,) = static_dims(logits, 1)
    logits = logits.contiguous()
    P = torch.empty(logits.shape, device=logits.device, dtype=torch.float32)
    T = logits.numel() // (n * n)
    if T == 0:
        return P
    block_t = block_t or default_block_t(n)
    _sinkhorn_fwd_kernel[(cdiv(T, block_t),)](
        logits, P, T, int(iters), float(eps), N=n, N_PAD=_n_pad(n), BLOCK_T=block_t, num_warps=num_warps,
    )  # fmt: skip
    return P


def launch_sinkhorn_bwd(logits, dP, iters, eps, *, block_t=None, seg=None, num_warps=NUM_WARPS) -> torch.Tensor:
    """Unchecked: logits and dP [..., n, n] -> dlogits in logits' shape and dtype. Computes the grid and
    the checkpoint segment length (``seg``, default isqrt(iters - 1); any seg >= 1 gives bitwise the
    same dlogits, only the recomputation's cost changes), and launches one kernel (none for zero tokens)."""
    (n,) = static_dims(logits, 1)
    logits, dP = logits.contiguous(), dP.contiguous()
    dlogits = torch.empty(logits.shape, device=logits.device, dtype=logits.dtype)
    T = logits.numel() // (n * n)
    if T == 0:
        return dlogits
    block_t = block_t or default_block_t(n)
    seg = seg or max(1, math.isqrt(int(iters) - 1))
    _sinkhorn_bwd_kernel[(cdiv(T, block_t),)](
        logits, dP, dlogits, T, int(iters), seg, float(eps), N=n, N_PAD=_n_pad(n), BLOCK_T=block_t,
        num_warps=num_warps,
    )  # fmt: skip
    return dlogits


def _block_t(n: int, block_t: int | None) -> int:
    block_t = default_block_t(n) if block_t is None else block_t
    check_block("block_t", block_t, 1)
    return block_t


def sinkhorn_fwd(*, logits, iters=20, eps=1e-6, block_t=None) -> dict[str, torch.Tensor]:
    """Triton stage sinkhorn_fwd -> dict(P): fp32, logits' shape."""
    _, n = check_sinkhorn_inputs(logits, iters=iters, eps=eps)
    block_t = _block_t(n, block_t)
    return {"P": launch_sinkhorn_fwd(logits, iters, eps, block_t=block_t)}


def sinkhorn_bwd(*, logits, dP, iters=20, eps=1e-6, block_t=None) -> dict[str, torch.Tensor]:
    """Triton stage sinkhorn_bwd -> dict(dlogits): logits' shape and dtype."""
    if not isinstance(dP, torch.Tensor):  # check_sinkhorn_inputs takes dP=None to mean the forward
        raise TypeError(f"dP: expected a torch.Tensor, got {type(dP).__name__}")
    _, n = check_sinkhorn_inputs(logits, dP, iters=iters, eps=eps)
    block_t = _block_t(n, block_t)
    return {"dlogits": launch_sinkhorn_bwd(logits, dP, iters, eps, block_t=block_t)}
