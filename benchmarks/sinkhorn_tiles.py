"""Sinkhorn's kernels by tile: tokens per program and warps, for tuning kernels/sinkhorn.py's defaults.

    python -m benchmarks.sinkhorn_tiles [--n 4,8] [--T 1,64,1024,16384] [--configs 16x1,32x4,...] [--quick]

For each n and token count, the forward and backward kernels' GPU time (a CUDA graph of one call
replayed back to back, benchmarks/host.py graph_gpu_us) at the library's default tile and at each
``BLOCK_TxWARPS`` of --configs (default: the tile before Performance VIII, 512 entries on 4 warps).
Every configuration's P and dlogits are judged against the float64 golden by the accuracy rule before
they are timed (iters 20, logits of spread 2). On CPU: the interpreter, wall time. One markdown table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from mhc_ops.golden import judge
from mhc_ops.golden.sinkhorn import sinkhorn_backward, sinkhorn_forward
from mhc_ops.kernels import sinkhorn as ks

from . import host

ITERS, EPS = 20, 1e-6


Tile = tuple[int, int]  # (tokens per program, warps)


def previous_tile(n: int) -> Tile:
    """The default before Performance VIII: 512 entries of [BLOCK_T, N_PAD, N_PAD] on 4 warps."""
    return max(1, 512 // ks._n_pad(n) ** 2), 4


def tile_name(tile: Tile) -> str:
    return f"{tile[0]}x{tile[1]}"


def launches(L, dP, tile: Tile):
    """(forward, backward) calls of the launchers at one tile -> (fwd, bwd, their outputs)."""
    kw = {"block_t": tile[0], "num_warps": tile[1]}
    out: dict = {}

    def fwd():
        out["P"] = ks.launch_sinkhorn_fwd(L, ITERS, EPS, **kw)

    def bwd():
        out["dlogits"] = ks.launch_sinkhorn_bwd(L, dP, ITERS, EPS, seg=max(1, math.isqrt(ITERS - 1)), **kw)

    return fwd, bwd, out


def timed(fn, device: torch.device, quick: bool) -> float:
    if device.type == "cuda":
        return host.graph_gpu_us(lambda: fn, device, quick)
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e6


def rows(n: int, T: int, configs: list[Tile], device: torch.device, quick: bool) -> list[str]:
    g = torch.Generator().manual_seed(n * 100003 + T)
    L = (2 * torch.randn(T, n, n, generator=g)).to(device)
    dP = torch.randn(T, n, n, generator=g).to(device)
    r64 = sinkhorn_forward(L.double(), ITERS, EPS, compute_dtype=torch.float64)
    g64 = sinkhorn_backward(L.double(), dP.double(), ITERS, EPS, compute_dtype=torch.float64)
    r32, g32 = sinkhorn_forward(L, ITERS, EPS), sinkhorn_backward(L, dP, ITERS, EPS)
    out = []
    default = (ks.default_block_t(n), ks.NUM_WARPS)
    for tile in [default, *(c for c in configs if c != default)]:
        fwd, bwd, got = launches(L, dP, tile)
        fwd(), bwd()
        verdicts = [judge("P", got["P"], r64, r32), judge("dlogits", got["dlogits"], g64, g32)]
        if not all(v.ok for v in verdicts):
            out.append(f"| {n} | {T} | {tile_name(tile)} | - | - | FAIL {'; '.join(map(str, verdicts))} |")
            continue
        tag = " (default)" if tile == default else ""
        f_us, b_us = timed(fwd, device, quick), timed(bwd, device, quick)
        out.append(f"| {n} | {T} | {tile_name(tile)}{tag} | {f_us:.2f} | {b_us:.2f} | ok |")
    return out


def parse_configs(text: str) -> list[Tile]:
    return [tuple(int(v) for v in c.split("x")) for c in text.split(",") if c]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sinkhorn_tiles", description=__doc__.split("\n")[0])
    p.add_argument("--n", default="4,8")
    p.add_argument("--T", default="1,64,1024,16384")
    p.add_argument("--configs", default="", help="BLOCK_TxWARPS,... (default: the previous default tile)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (interpreter, wall time)"
    print(f"Sinkhorn kernels by tile (BLOCK_T x warps) on {name}, iters {ITERS}; GPU us of one call\n")
    print("| n | T | tile | fwd us | bwd us | accuracy (P, dlogits) |\n|---|---|---|---|---|---|")
    failed = False
    for n in (int(v) for v in args.n.split(",")):
        configs = parse_configs(args.configs) or [previous_tile(n)]
        for T in (int(v) for v in args.T.split(",")):
            for line in rows(n, T, configs, device, args.quick):
                failed |= "FAIL" in line
                print(line, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
