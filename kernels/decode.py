"""One layer boundary's forward in one launch, for decode (a few tokens, a CUDA graph): post(l), the next
pre(l+1) (DeepSeek-V4.1's delayed pre, or the plain mhc_pre) and the Sinkhorn projection of its h_res
(golden/seam.py boundary_forward).

Grid (token blocks, SPLITS). Program (b, s) runs the seam's column pass (kernels/seam.py seam_columns)
over its chunk range of token block b: x(l+1) stored, the next pre's projection and sum of squares
from the stored tile, and for the delayed pre h_in of its columns. It stores its partials
(fwd.store_partials), then increments block b's arrival counter (acq_rel, GPU scope: its stores are
released, and the program that arrives last acquires every other program's). That last program sums
the partials in split order (fwd.reduce_partials: deterministic), computes the coefficients (the plain pre's
collapse needs this h_pre first: COLLAPSES), runs Sinkhorn on the next h_res in registers
(sinkhorn.sinkhorn_tile) and sets the counter back to 0, so the next launch (a CUDA-graph replay) starts from
zero with no memset.

The plain pre's collapse on a GPU ("wait", where the grid fits the SMs): every program reads its block's
signal flag (kernels/_arrive.py) before arriving; the last one stores h_pre and flips the flag's parity
(release), writing its own split with it; the others spin on the flag (acquire) until it flips, form h_in
over their own columns from the x(l+1) they stored (fwd.apply_tile), and the next split also over the last
one's, which goes on to Sinkhorn without a collapse of its own. Nothing to reset: the next launch reads the
parity afresh. Spinning is safe only if the last arrival is running, so every program of the grid must be
resident at once (auto_collapse); elsewhere _apply_kernel forms h_in in a second launch ("launch"), or the
last program over all D ("last").

The counters: kernels/_arrive.py. T and iters are runtime arguments (one compile per n, D and dtype);
token and workspace offsets are 64-bit. The projection reads phi (and gamma) in fp32 (fp32_dot; on token
blocks below 16, CUDA-core products summed after the column loop: seam.seam_columns): the bf16 weight
split of the pre forward would be rebuilt in every captured graph, one more launch.
"""

from __future__ import annotations

import os

import torch
import triton.language as tl

from mhc_ops._validate import check_post_inputs, check_sinkhorn_iters
from mhc_ops.golden.seam import BOUNDARY_OUTPUTS

from ._arrive import arrival_counters, signal_flags
from ._common import (
    cdiv,
    check_block,
    check_inputs,
    check_tile_span,
    interpreting,
    n_pad,
    next_power_of_2,
    o_pad,
    pre_columns,
    size_hint,
    sm_count,
    stamp,
    static_dims,
    stream64,
)
from ._launch import launched
from .fwd import apply_tile, coeff_tile, collapse_columns, reduce_partials, store_partials, store_saved
from .seam import seam_columns
from .sinkhorn import (
    MAX_N,
    ONE_A_THREAD,
    ORDERS,
    block_tile,
    launch_sinkhorn_fwd,
    live_tokens,
    load_matrices,
    sinkhorn_tile,
    store_matrices,
)

MAX_SPLITS = 64  # column-chunk ranges per token block: the last program's reduction reads them all
# Partials the last program loads per step (fwd.reduce_partials): 32 for blocks of fewer than 16 tokens, 16 for 16
# (H100, one token, n = 4: 32 a step 0.3-0.5 us faster than 16 at D = 4096 and 7168, 64 slower; 8 tokens alike;
# docs/perf.md, Performance XVIII)
UNROLL, UNROLL_SMALL_BLOCKS = 16, 32
# int64 slots per program of a timeline (launch_decode's timeline=): marks 0-8 (two each), then `arrived`
TIMELINE_SLOTS = tl.constexpr(20)
TIMELINE_MARKS = ("start", "columns", "partials stored", "arrived", "reduced", "coefficients", "logits loaded",
                  "sinkhorn", "end")  # fmt: skip
# Sinkhorn one matrix a thread (sinkhorn.tokens_tile) up to this N_PAD: 1.2 to 2.1 us faster at n = 4; at n = 8 2.3x
# slower than token-major (docs/perf.md, Performance XI; the order that lays it depends on the Triton release,
# Performance XVII, XVIII)
SINK_ONE_A_THREAD_MAX_N_PAD = 4
# Where the plain pre's h_in is formed (launch_decode's collapse=): "launch", _apply_kernel after the boundary's launch;
# "last", the last program over all D (slower: docs/perf.md, Performance XVI); "wait", every program over its own
# columns once the last one has stored h_pre (one launch; a GPU's, every program resident: auto_collapse)
COLLAPSES = ("launch", "last", "wait")
# MHC_OPS_DECODE_WAIT=0 in the environment: collapse=None never waits (GPUs whose SMs other work may hold for good while
# a boundary runs, e.g. persistent communication kernels on another stream, or MPS limits below the device's SMs)
WAIT_ALLOWED = os.environ.get("MHC_OPS_DECODE_WAIT", "1") != "0"


# sm_j (1) unspecialised: sinkhorn.tokens_tile
@launched(do_not_specialize=["T", "iters", "sm_j"])
def _decode_kernel(x_ptr, h_res_ptr, h_out_ptr, h_post_ptr, out_ptr, hpp_ptr, phi_ptr, gamma_ptr, alpha_ptr,
                   bias_ptr, ws_ptr, count_ptr, flag_ptr, h_in_ptr, nh_post_ptr, nh_res_ptr, inv_rms_ptr, h_mix_ptr, h_pre_ptr,
                   P_ptr, tim_ptr, T, D, sx_t, sx_i, sx_d, sr_t, sr_i, sr_j, sho_t, sho_d, shp_t, shp_j, so_t, so_j, so_d,
                   sphi_o, sphi_k, sm_j, norm_eps, hc_eps, iters, eps, N: tl.constexpr,
                   HAS_GAMMA: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, APPLY_BLOCK_D: tl.constexpr,
                   O_PAD: tl.constexpr, N_PAD: tl.constexpr, SPLITS: tl.constexpr, UNROLL: tl.constexpr,
                   SINK_T: tl.constexpr, SINK_ORDER: tl.constexpr, DELAYED: tl.constexpr, STREAM64: tl.constexpr,
                   INTERPRET: tl.constexpr, TIMELINE: tl.constexpr, SINKHORN: tl.constexpr, COLLAPSE: tl.constexpr):  # fmt: skip
    # SINKHORN False: the last program runs no Sinkhorn (the launcher runs it on its own). COLLAPSE (the plain pre's
    # h_in, COLLAPSES' index): 0 none here (the delayed pre's is in the column pass; or _apply_kernel's launch), 1 the
    # last program over all D, 2 (SPLITS > 1) the other programs over the columns once the last one has stored h_pre.
    # fp64 in Inductor's launches
    norm_eps, hc_eps, eps = tl.cast(norm_eps, tl.float32), tl.cast(hc_eps, tl.float32), tl.cast(eps, tl.float32)
    b = tl.program_id(0)
    s = tl.program_id(1)
    tim = tim_ptr + (b * SPLITS + s) * TIMELINE_SLOTS  # TIMELINE: this program's marks (_common.stamp)
    stamp(tim, 0, s, TIMELINE)
    t0 = b.to(tl.int64) * BLOCK_T
    rows = t0 + tl.arange(0, BLOCK_T)
    row_mask = rows < T
    cols = tl.arange(0, O_PAD)
    chunks = tl.cdiv(D, BLOCK_D)
    # COLLAPSE 2: block b's flag's parity before arriving (read first: in flight during the column pass), which
    # the last program flips once h_pre is stored
    parity = tl.load(flag_ptr + b, volatile=True) & 1 if COLLAPSE == 2 else 0
    h_mix, sumsq = seam_columns(
        x_ptr, h_res_ptr, h_out_ptr, h_post_ptr, out_ptr, hpp_ptr, phi_ptr, gamma_ptr, phi_ptr, h_in_ptr, rows, row_mask,
        cols, s * chunks // SPLITS, (s + 1) * chunks // SPLITS, D, sx_t, sx_i, sx_d, sr_t, sr_i, sr_j, sho_t, sho_d,
        shp_t, shp_j, so_t, so_j, so_d, sphi_o, sphi_k, N, HAS_GAMMA, False, BLOCK_T, BLOCK_D, O_PAD, INTERPRET,
        N_PAD, DELAYED,
    )  # fmt: skip
    stamp(tim, 1, h_mix, TIMELINE)
    store_partials(ws_ptr, h_mix, sumsq, s, rows, row_mask, cols, T, N, SPLITS, O_PAD)
    tl.debug_barrier()  # every thread's stores come before the release by the thread that increments
    stamp(tim, 2, s, TIMELINE)
    arrived = tl.atomic_add(count_ptr + b, 1, sem="acq_rel", scope="gpu")
    stamp(tim, 3, arrived, TIMELINE)
    if TIMELINE:
        tl.store(tim + TIMELINE_SLOTS - 1, arrived.to(tl.int64))  # the last slot: which program was last
    last = arrived == SPLITS - 1
    if last:  # the last of block b's programs: every partial and x(l+1) tile is visible
        h_mix, sumsq = reduce_partials(ws_ptr, rows, row_mask, cols, T, N, SPLITS, BLOCK_T, O_PAD, UNROLL)
        stamp(tim, 4, h_mix, TIMELINE)
        inv_rms, coef = coeff_tile(h_mix, sumsq, alpha_ptr, bias_ptr, cols, N, D, norm_eps, hc_eps)
        store_saved(inv_rms_ptr, h_mix_ptr, h_pre_ptr, nh_post_ptr, nh_res_ptr, inv_rms, h_mix, coef, rows, row_mask,
                    cols, N)  # fmt: skip
        stamp(tim, 5, coef, TIMELINE)
        if COLLAPSE == 1:  # the plain pre collapses with this h_pre: all D here
            apply_tile(out_ptr, h_in_ptr, pre_columns(coef, cols, N, N_PAD), t0, rows, row_mask, 0, D, N, D, so_t, so_j,
                       so_d, APPLY_BLOCK_D, N_PAD, STREAM64)  # fmt: skip
        if COLLAPSE == 2:  # h_pre stored by every thread, then released with the flipped parity and
            tl.debug_barrier()  # this program's split, whose columns the next split collapses
            tl.atomic_xchg(flag_ptr + b, 1 - parity + 2 * s, sem="release", scope="gpu")
        if SINKHORN:
            tl.debug_barrier()  # the h_res logits just stored (a [BLOCK_T, O_PAD] layout), read back per matrix
            offs, mask, valid, row_valid, col_valid = block_tile(t0, T, BLOCK_T, sm_j, N, N_PAD, SINK_T,
                                                                 SINK_ORDER)  # fmt: skip
            L = load_matrices(nh_res_ptr, offs, mask, SINK_ORDER)
            live = live_tokens(t0, T, BLOCK_T, SINK_T)  # the marks depend on the stored tokens alone
            stamp(tim, 6, tl.where(live, L, 0.0), TIMELINE)
            P = sinkhorn_tile(L, iters, valid, row_valid, col_valid, eps)
            stamp(tim, 7, tl.where(live, P, 0.0), TIMELINE)
            store_matrices(P_ptr, offs, P, mask, SINK_ORDER)
        tl.store(count_ptr + b, 0)  # for the next launch
        stamp(tim, 8, b, TIMELINE)
    elif COLLAPSE == 2:  # the others (all resident: the launcher's rule) wait for the flip, collapse
        v = tl.atomic_add(flag_ptr + b, 0, sem="acquire", scope="gpu")
        while (v & 1) == parity:
            v = tl.atomic_add(flag_ptr + b, 0, sem="acquire", scope="gpu")
        h_pre = collapse_columns(h_pre_ptr, rows, row_mask, N, N_PAD, 1)
        apply_tile(out_ptr, h_in_ptr, h_pre, t0, rows, row_mask, s * chunks // SPLITS * BLOCK_D,
                   (s + 1) * chunks // SPLITS * BLOCK_D, N, D, so_t, so_j, so_d, BLOCK_D, N_PAD, STREAM64)  # fmt: skip
        s_last = v >> 1
        if s == (s_last + 1) % SPLITS:  # and the last program's, which goes on to Sinkhorn
            apply_tile(out_ptr, h_in_ptr, h_pre, t0, rows, row_mask, s_last * chunks // SPLITS * BLOCK_D,
                       (s_last + 1) * chunks // SPLITS * BLOCK_D, N, D, so_t, so_j, so_d, BLOCK_D, N_PAD,
                       STREAM64)  # fmt: skip


@launched(do_not_specialize=["T"])
def _apply_kernel(out_ptr, h_pre_ptr, h_in_ptr, T, D, so_t, so_j, so_d, N: tl.constexpr, BLOCK_T: tl.constexpr,
                  BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, STREAM64: tl.constexpr):  # fmt: skip
    """The plain pre's collapse after the boundary's launch: program (b, c) forms h_in of token block b over
    columns c*BLOCK_D .. from x(l+1) and h_pre [T, N] (both the boundary's outputs), fwd.apply_tile."""
    t0 = tl.program_id(0).to(tl.int64) * BLOCK_T
    rows = t0 + tl.arange(0, BLOCK_T)
    row_mask = rows < T
    h_pre = collapse_columns(h_pre_ptr, rows, row_mask, N, N_PAD, 1)
    d_start = tl.program_id(1) * BLOCK_D
    apply_tile(out_ptr, h_in_ptr, h_pre, t0, rows, row_mask, d_start, d_start + BLOCK_D, N, D, so_t, so_j,
               so_d, BLOCK_D, N_PAD, STREAM64)  # fmt: skip


def grid(T: int, D: int, block_t: int, block_d: int, splits: int | None) -> tuple[int, int]:
    """(token blocks, column-chunk ranges per block) of a launch: splits None = auto_splits, at most the chunks."""
    return cdiv(T, block_t), min(splits or auto_splits(D, block_d), cdiv(D, block_d))


def auto_splits(D: int, block_d: int) -> int:
    """Column-chunk ranges per token block: one or a few chunks each, at most MAX_SPLITS, equal shares."""
    chunks = cdiv(D, block_d)
    return cdiv(chunks, cdiv(chunks, MAX_SPLITS))


# One token at up to six streams: one-token blocks (the projection on the CUDA cores) by default (H200, delayed
# 1 x 4 x 4096: 12.6 -> 9.5 us; plain 1 x 6 x 4096: 17.8 -> 10.7 us the boundary's kernel); elsewhere 16 (n = 8:
# 44.1 -> 64.9 us, spilled; 8 and 64 tokens slower; docs/perf.md, Performance XVI, XVII).
SINGLE_TOKEN_MAX_N = 6


def auto_block_t(T: int, n: int) -> int:
    """launch_decode's block_t=None: 1 for a single token at n <= SINGLE_TOKEN_MAX_N, else 16."""
    return 1 if T == 1 and n <= SINGLE_TOKEN_MAX_N else 16


def auto_collapse(programs: int, device: torch.device) -> str:
    """launch_decode's collapse=None: "wait" on a GPU whose SMs hold the whole grid at one program each (the waiting
    programs spin until the last one arrives, so it must be running: 64 of them at one token and D = 4096 against an
    H100's 132 SMs) unless WAIT_ALLOWED is off, else "launch". The interpreter runs programs one after another:
    never "wait"."""
    return "wait" if WAIT_ALLOWED and waits_safely(programs, device) else "launch"


def waits_safely(programs: int, device: torch.device) -> bool:
    """Whether collapse "wait" can run: no interpreter, and the grid's programs at most the device's SMs."""
    return not interpreting() and programs <= sm_count(device)


def launch_decode(x, h_res, h_out, h_post, h_pre_prev, phi, alpha, bias, gamma, norm_eps, hc_eps, iters, eps, *,
                  block_t=None, block_d=64, apply_block_d=128, splits=None, unroll=None, num_warps=4,
                  sink_order=None, sinkhorn_launch=False, collapse=None, timeline=None):  # fmt: skip
    """The boundary on validated inputs (mhc_post's, then the next pre's; h_pre_prev [.., n] fp32: the
    delayed pre, None: the plain one) -> (out, h_in, next h_post, next h_res, next inv_rms, next h_mix,
    next h_pre, next P) (golden/seam.py BOUNDARY_OUTPUTS). One launch (one more with sinkhorn_launch, one more
    for the plain pre's collapse "launch"; none for zero tokens).
    block_t: tokens per program, a power of two (None: auto_block_t); below 16 (one to a few tokens) the
    projection's products run on the CUDA cores (seam.seam_columns).
    splits: column-chunk ranges per token block (None: auto_splits); apply_block_d: the plain pre's
    collapse columns per step; unroll: partials the last program loads per step (None: UNROLL_SMALL_BLOCKS
    below 16 tokens a block, else UNROLL); sink_order: the Sinkhorn tile's order, one of sinkhorn.ORDERS (None:
    one matrix a thread in the installed Triton's order, sinkhorn.ONE_A_THREAD, up to
    SINK_ONE_A_THREAD_MAX_N_PAD; token-major above); sinkhorn_launch: Sinkhorn
    in a launch of its own after the boundary's (kernels/sinkhorn.py, its one-warp tile), so the column pass
    can take more warps than Sinkhorn wants (n = 8: docs/perf.md, Performance XII); collapse: where the plain
    pre's h_in is formed, one of COLLAPSES (None: auto_collapse; ignored for
    the delayed pre, which collapses in the column pass: docs/perf.md, Performance XIII); timeline: an int64 tensor of
    at least (token blocks x splits x TIMELINE_SLOTS) elements that receives each program's marks
    (TIMELINE_MARKS; GPU only, benchmarks/decode_timeline.py reads them)."""
    n, D = static_dims(x, 2)
    if block_t is None:
        block_t = auto_block_t(size_hint(x.numel() // max(n * D, 1)), n)
    check_block("block_t", block_t, 1)  # below 16 (tl.dot's smallest M): seam.seam_columns' CUDA-core path
    check_block("block_d", block_d, 16)
    check_block("apply_block_d", apply_block_d, 16)
    if collapse is not None and collapse not in COLLAPSES:
        raise ValueError(f"collapse: expected one of {', '.join(COLLAPSES)} or None, got {collapse!r}")
    if n > MAX_N:
        raise ValueError(f"n: expected at most {MAX_N} streams (Sinkhorn in registers), got {n}")
    lead = x.shape[:-2]
    O = n * n + 2 * n
    xt, rt, ot, pt = x.reshape(-1, n, D), h_res.reshape(-1, n, n), h_out.reshape(-1, D), h_post.reshape(-1, n)
    T = xt.shape[0]
    dev, f32 = x.device, torch.float32
    out = torch.empty(x.shape, device=dev, dtype=x.dtype)
    h_in = torch.empty((*lead, D), device=dev, dtype=x.dtype)
    nxt = [torch.empty((*lead, *shape), device=dev, dtype=f32) for shape in ((n,), (n, n), (), (O,), (n,))]
    # P: this kernel's output, or launch_sinkhorn_fwd's (sinkhorn_launch)
    P = torch.empty((*lead, n, n), device=dev, dtype=f32) if T == 0 or not sinkhorn_launch else None
    if T == 0:
        return out, h_in, *nxt, P
    nh_post, nh_res, inv_rms, h_mix, h_pre = nxt
    ov = out.view(-1, n, D)
    check_tile_span(block_t, xt, ov)
    blocks, splits = grid(T, D, block_t, block_d, splits)
    ws = torch.empty(splits * T * (o_pad(n) + 1), device=dev, dtype=f32)  # every element read is written first
    if timeline is not None:
        need = blocks * splits * TIMELINE_SLOTS.value
        if interpreting() or timeline.device != dev or timeline.dtype != torch.int64 or timeline.numel() < need:
            raise ValueError(f"timeline: expected an int64 tensor of at least {need} elements on {dev} (a GPU; "
                             f"not the interpreter), got {timeline.dtype} {tuple(timeline.shape)} on {timeline.device}")  # fmt: skip
    delayed = h_pre_prev is not None
    if sink_order is None:
        sink_order = ONE_A_THREAD if n_pad(n) <= SINK_ONE_A_THREAD_MAX_N_PAD else "token-major"
    if sink_order not in ORDERS:
        raise ValueError(f"sink_order: expected one of {', '.join(ORDERS)} or None, got {sink_order!r}")
    order = ORDERS.index(sink_order)
    if unroll is None:
        unroll = UNROLL_SMALL_BLOCKS if block_t < 16 else UNROLL
    if collapse == "wait" and not delayed and not waits_safely(blocks * splits, dev):
        raise ValueError(f'collapse: "wait" needs at least {blocks * splits} SMs (the grid\'s programs, all resident) '
                         f"and no interpreter, got {sm_count(dev)} on {dev}{' (interpreted)' if interpreting() else ''}")  # fmt: skip
    collapse = 0 if delayed else COLLAPSES.index(collapse or auto_collapse(blocks * splits, dev))  # the kernel's
    if collapse == 2 and splits == 1:  # the one program is the last: nobody to wait for
        collapse = 1
    _decode_kernel[(blocks, splits)](
        xt, rt, ot, pt, ov, h_pre_prev.contiguous() if delayed else alpha, phi, gamma.contiguous() if gamma is not None
        else alpha, alpha.contiguous(), bias.contiguous(), ws, arrival_counters(dev, blocks),
        signal_flags(dev, blocks) if collapse == 2 else ws, h_in, nh_post, nh_res, inv_rms,
        h_mix, h_pre, P if P is not None else nh_res, timeline if timeline is not None else ws, T, D, *xt.stride(), *rt.stride(), *ot.stride(), *pt.stride(), *ov.stride(), *phi.stride(),
        1, float(norm_eps), float(hc_eps), int(iters), float(eps), N=n, HAS_GAMMA=gamma is not None, BLOCK_T=block_t,
        BLOCK_D=block_d, APPLY_BLOCK_D=apply_block_d, O_PAD=o_pad(n), N_PAD=n_pad(n), SPLITS=splits,
        UNROLL=min(unroll, next_power_of_2(splits)), SINK_T=max(block_t, 32 * num_warps) if order else block_t,
        SINK_ORDER=order, DELAYED=delayed, STREAM64=stream64(n, ov.stride(1)),
        INTERPRET=interpreting(), TIMELINE=timeline is not None, SINKHORN=not sinkhorn_launch,
        COLLAPSE=collapse, num_warps=num_warps, num_stages=1, enable_fp_fusion=False,
    )  # fmt: skip
    if collapse == 0 and not delayed:
        # no FMA contraction, as the boundary's kernel: the same h_in as its last program's collapse, bit for bit
        _apply_kernel[(blocks, cdiv(D, apply_block_d))](
            ov, h_pre, h_in, T, D, *ov.stride(), N=n, BLOCK_T=block_t, BLOCK_D=apply_block_d, N_PAD=n_pad(n),
            STREAM64=stream64(n, ov.stride(1)), num_warps=4, enable_fp_fusion=False,
        )  # fmt: skip
    if sinkhorn_launch:
        P = launch_sinkhorn_fwd(nh_res, iters, eps)
    return out, h_in, nh_post, nh_res, inv_rms, h_mix, h_pre, P


def boundary_decode(*, x, h_res, h_out, h_post, phi, alpha, bias, gamma=None, h_pre_prev=None, iters=20, eps=1e-6,
                    norm_eps=1e-6, hc_eps=1e-6, **launch) -> dict[str, torch.Tensor]:  # fmt: skip
    """One layer boundary's forward, validated: x(l+1) = mhc_post(x, h_res, h_out, h_post) (h_res: this
    layer's Sinkhorn output), the next pre on it (delayed with h_pre_prev, this layer's h_pre; plain
    without), and sinkhorn(iters, eps) of its h_res -> dict of golden/seam.py BOUNDARY_OUTPUTS. launch:
    launch_decode's options."""
    check_post_inputs(x, h_res, h_out, h_post)
    check_inputs(x, phi=phi, alpha=alpha, bias=bias, gamma=gamma, h_pre_prev=h_pre_prev)
    check_sinkhorn_iters(iters, eps)
    outs = launch_decode(x, h_res, h_out, h_post, h_pre_prev, phi, alpha, bias, gamma, norm_eps, hc_eps, iters, eps,
                         **launch)  # fmt: skip
    return dict(zip(BOUNDARY_OUTPUTS, outs))
