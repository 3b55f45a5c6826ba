"""What one Sinkhorn iteration costs on its serial chain, by reciprocal and tile, on the GPU (cycles).

    PYTHONPATH=. python -m benchmarks.sinkhorn_chain [--n 4,8] [--reps 30] [--kept-only]

A one-CTA kernel loads one token's logits into a Sinkhorn tile (kernels/sinkhorn.py's orders: tokens last or first,
one matrix a thread where the installed Triton lays it so, as the decode kernel's; or token-major, as the Sinkhorn
kernels'), runs iteration zero, reads
%clock64 and %globaltimer (kernels/_common.stamp), runs `iters` more iterations of a row and a column pass,
and reads them again. Per row: (cycles, ns) at iters = 21 less at iters = 1, over 20 (the stamps' own cost
cancels), medians of --reps launches; the SM clock is cycles over ns. The passes' reciprocal of (sum + eps):
- kept: kernels/sinkhorn.reciprocal (rcp.approx, then two Newton steps: bitwise div_rn for normal sums);
- one Newton step, rcp.approx alone, div_rn, the golden's division P / (sum + eps), and (n_pad 4 only) one
  MUFU a pass: the four lines' reciprocals from the reciprocal of their product (--kept-only: kept alone).
The variants other than `kept` round differently from the library's (not judged here): they measure what
the chain's reciprocal costs (docs/perf.md, Performance XIII). GPU only.
"""

from __future__ import annotations

import argparse
import sys

import torch
import triton
import triton.language as tl

from mhc_ops.kernels._common import n_pad, stamp
from mhc_ops.kernels.sinkhorn import (
    ORDERS,
    block_tile,
    iteration_zero,
    live_tokens,
    load_matrices,
    reciprocal,
    store_matrices,
)

RECIPROCALS = {"kept": 0, "one Newton step": 1, "rcp.approx": 2, "div_rn": 3, "P / (sum + eps)": 4,
               "one MUFU a pass": 5}  # fmt: skip
ONE_MUFU_N_PAD = 4  # "one MUFU a pass" is written for four lines
# (order, warps): the decode kernel's tiles (tokens last or first: one matrix a thread in one of them, by Triton
# release; 1 or 4 warps) and the Sinkhorn kernels' (16 tokens token-major, one warp), and that on 4 warps. The marks
# depend on the live token alone: summed whole, the tile kept 128 tokens' passes alive under Triton 3.6
# (docs/perf.md, Performance XVII)
TILES = (("tokens-last", 1), ("tokens-last", 4), ("tokens-first", 1), ("tokens-first", 4), ("token-major", 1),
         ("token-major", 4))  # fmt: skip
BLOCK_T = 16


@triton.jit
def _variant_reciprocal(s, eps, line_valid, MODE: tl.constexpr):
    """1 / (s + eps) by MODE (RECIPROCALS; 4 is not a reciprocal: the caller divides); 0 on padded lines."""
    if MODE == 0:
        r = reciprocal(s, eps, line_valid)
    elif MODE == 5:
        r = _one_mufu_reciprocals(s, eps, line_valid)
    else:
        d = s + eps
        if MODE == 3:
            r = tl.math.div_rn(1.0, d)
        else:
            r = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [d], dtype=tl.float32, is_pure=True,
                                          pack=1)  # fmt: skip
            if MODE == 1:
                r = tl.fma(r, tl.fma(-d, r, 1.0), r)
        r = tl.where(line_valid, r, 0.0)
    return r


@triton.jit
def _mul(a, b):
    return a * b


@triton.jit
def _one_mufu_reciprocals(s, eps, line_valid):
    """1 / (s + eps) of four lines [T, 4] from one reciprocal: r = 1 / (d0 d1 d2 d3) (rcp.approx and two
    Newton steps), then 1 / d_i = r * (the other three's product), from the pair products (d0 d1, d2 d3) and
    each pair flipped. A few ulps from div_rn; it asks whether the chain pays for its MUFUs' issue."""
    d = s + eps
    T: tl.constexpr = d.shape[0]
    pairs = tl.reshape(d, [T, 2, 2])
    pair_prod = tl.reduce(pairs, 2, _mul)  # [T, 2]: d0 d1, d2 d3
    whole = tl.reduce(pair_prod, 1, _mul)  # [T]
    r = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [whole], dtype=tl.float32, is_pure=True,
                                  pack=1)  # fmt: skip
    r = tl.fma(r, tl.fma(-whole, r, 1.0), r)
    r = tl.fma(r, tl.fma(-whole, r, 1.0), r)
    others = tl.flip(pairs, 2) * tl.flip(pair_prod, 1)[:, :, None]  # [T, 2, 2]: the other three's product
    return tl.where(line_valid, tl.reshape(others, [T, 4]) * r[:, None], 0.0)


@triton.jit
def _chain_kernel(L_ptr, P_ptr, tim_ptr, T, iters, eps, sm_j, N: tl.constexpr, N_PAD: tl.constexpr,
                  BLOCK_T: tl.constexpr, SINK_T: tl.constexpr, ORDER: tl.constexpr, MODE: tl.constexpr):  # fmt: skip
    offs, mask, valid, row_valid, col_valid = block_tile(0, T, BLOCK_T, sm_j, N, N_PAD, SINK_T, ORDER)
    L = load_matrices(L_ptr, offs, mask, ORDER)
    S, P, inv_c = iteration_zero(L, valid, col_valid, eps)
    live = live_tokens(0, T, BLOCK_T, SINK_T)  # the marks keep no dead token alive
    stamp(tim_ptr, 0, tl.where(live, P, 0.0), True)
    for _ in range(iters):
        if MODE == 4:
            P = tl.where(valid, P / (tl.sum(P, axis=2)[:, :, None] + eps), 0.0)
            P = tl.where(valid, P / (tl.sum(P, axis=1)[:, None, :] + eps), 0.0)
        else:
            P = P * _variant_reciprocal(tl.sum(P, axis=2), eps, row_valid, MODE)[:, :, None]
            P = P * _variant_reciprocal(tl.sum(P, axis=1), eps, col_valid, MODE)[:, None, :]
    stamp(tim_ptr, 1, tl.where(live, P, 0.0), True)
    store_matrices(P_ptr, offs, P, mask, ORDER)


def chain(n: int, order: str, warps: int, mode: int, reps: int) -> tuple[float, float]:
    """(cycles, ns) of one iteration: medians over reps launches at iters 21 less iters 1, over 20."""
    dev = torch.device("cuda")
    L = torch.randn(1, n, n, device=dev)
    P = torch.empty_like(L)
    sink_t = BLOCK_T if order == "token-major" else max(BLOCK_T, 32 * warps)
    med = {}
    for iters in (1, 21):
        tim = torch.zeros(4, dtype=torch.int64, device=dev)
        runs = []
        for _ in range(reps):
            _chain_kernel[(1,)](L, P, tim, 1, iters, 1e-6, 1, N=n, N_PAD=n_pad(n), BLOCK_T=BLOCK_T, SINK_T=sink_t,
                                ORDER=ORDERS.index(order), MODE=mode, num_warps=warps, num_stages=1,
                                enable_fp_fusion=False)  # fmt: skip
            t = tim.tolist()  # a sync: each launch alone
            runs.append((t[3] - t[1], t[2] - t[0]))
        med[iters] = (sorted(r[0] for r in runs)[reps // 2], sorted(r[1] for r in runs)[reps // 2])
    return (med[21][0] - med[1][0]) / 20, (med[21][1] - med[1][1]) / 20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sinkhorn_chain", description=__doc__.split("\n")[0])
    parser.add_argument("--n", default="4,8", help="streams, comma separated (at most 8)")
    parser.add_argument("--reps", type=int, default=30, help="launches per median (default 30)")
    parser.add_argument("--kept-only", action="store_true", help="the library's reciprocal alone")
    args = parser.parse_args(argv)
    try:
        ns = [int(v) for v in args.n.split(",")]
    except ValueError:
        parser.error(f"--n: expected integers 1..8, comma separated, got {args.n!r}")
    if not all(1 <= n <= 8 for n in ns):
        parser.error(f"--n: expected integers 1..8, got {args.n!r}")
    if args.reps < 3:
        parser.error(f"--reps: expected at least 3, got {args.reps}")
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU: the marks are PTX timers (the interpreter runs no PTX)")
    print(f"Sinkhorn's chain on {torch.cuda.get_device_name()}: one iteration (a row and a column pass), one token\n")
    print("| n | tile | warps | reciprocal | cycles | ns | SM GHz | 20 iterations, µs |\n|---|---|---|---|---|---|---|---|")
    for n in ns:
        for order, warps in TILES:
            for name, mode in RECIPROCALS.items():
                if (mode == 5 and n_pad(n) != ONE_MUFU_N_PAD) or (args.kept_only and mode != 0):
                    continue
                cycles, ns_ = chain(n, order, warps, mode, args.reps)
                tile = f"token-major x{BLOCK_T}" if order == "token-major" else order
                print(f"| {n} | {tile} | {warps} | {name} | {cycles:.0f} | {ns_:.1f} | {cycles / ns_ if ns_ else 0:.2f} | "
                      f"{20 * ns_ / 1000:.2f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
