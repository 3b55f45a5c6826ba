"""The memory-traffic floor of every benchmarked op: the one place its bytes are counted (docs/perf.md
cites these formulas; tests/test_benchmarks.py checks its figures against them)."""

from __future__ import annotations

from .goldens import OPS

# Composite ops move the bytes of their parts.
COMPOSITE_FLOORS = {
    "step": ("fwd", "bwd"),
    "layer_fwd": ("fwd", "sinkhorn_fwd", "post_fwd"),
    "layer_bwd": ("bwd_gxp", "sinkhorn_bwd", "post_bwd"),
}
COMPOSITE_FLOORS["layer_step"] = COMPOSITE_FLOORS["layer_fwd"] + COMPOSITE_FLOORS["layer_bwd"]
# The delayed pre and the layer boundary (benchmarks/delayed.py); boundary_unfused: post then the
# delayed pre at their own floors.
COMPOSITE_FLOORS["boundary_unfused"] = ("post_fwd", "delayed_fwd")
# The boundary's backward: the delayed pre(l+1)'s (adding post(l+1)'s grad_x_next) writes dx(l+1), post(l)'s
# reads it back; seam_bwd (one pass) does neither.
COMPOSITE_FLOORS["boundary_bwd_unfused"] = ("delayed_bwd_gxp", "post_bwd")


def bytes_per_token(op: str, n: int, D: int, x_bytes: int, grad_x_post: bool = False) -> int:
    """Minimal device-memory bytes per token: each input read once, each output written once
    (../shared/spec/mhc-math.md, docs/perf.md). s = x_bytes, bytes per element of x.

    fwd: read x (nD), write h_in (D), both in x's dtype, and write the fp32 side outputs. bwd: read x
    and write dx (nD each), read dh_in (D), read the fp32 side inputs; grad_x_post (or op bwd_gxp)
    adds one more nD read. Both count 2n² + 4n + 1 fp32 side values, as the contract's floor table
    does. sinkhorn (fp32 logits whatever x's dtype): fwd reads logits and writes P, 4·2n²; bwd reads
    logits and dP and writes dlogits, 4·3n². post fwd: read x, write out (s·nD each), read h_out
    (s·D), read h_res and h_post (4·(n² + n)). post bwd: read dout and x, write dx (3·s·nD), read
    h_out, write dh_out (2·s·D), read h_res, h_post and write dh_res, dh_post (4·(2n² + 2n)).
    The delayed pre: delayed_fwd adds the read of h_pre_prev (4·n) to fwd, delayed_bwd the reads of
    h_pre_prev and dh_pre and the write of dh_pre_prev (4·3n) to bwd (delayed_bwd_gxp: to bwd_gxp). seam (the boundary with the
    delayed pre, one pass): read x(l), write x(l+1) (2·s·nD), read h_out, write h_in (2·s·D), and the
    contract's side, 4·(3n² + 5n + 1). seam_bwd (its backward, one pass): read x(l+1), grad_x_next and
    x(l), write dx(l) (4·s·nD), read dh_in and h_out, write dh_out (3·s·D), and the side values of
    delayed_bwd and post_bwd: dx(l+1) is neither written nor read. Composite ops (step, layer_*, boundary_unfused) sum their parts
    (COMPOSITE_FLOORS).
    """
    s, nD = x_bytes, n * D
    side = 4 * (2 * n * n + 4 * n + 1)
    if op in COMPOSITE_FLOORS:
        return sum(bytes_per_token(part, n, D, x_bytes) for part in COMPOSITE_FLOORS[op])
    if op == "fwd":
        return s * nD + s * D + side
    if op in ("bwd", "bwd_gxp"):
        return (3 if grad_x_post or op == "bwd_gxp" else 2) * s * nD + s * D + side
    if op == "delayed_fwd":
        return s * nD + s * D + side + 4 * n
    if op in ("delayed_bwd", "delayed_bwd_gxp"):
        return (3 if op == "delayed_bwd_gxp" else 2) * s * nD + s * D + side + 12 * n
    if op == "seam":
        return 2 * s * nD + 2 * s * D + 4 * (3 * n * n + 5 * n + 1)
    if op == "seam_bwd":
        return 4 * s * nD + 3 * s * D + side + 12 * n + 4 * (2 * n * n + 2 * n)
    if op == "sinkhorn_fwd":
        return 4 * 2 * n * n
    if op == "sinkhorn_bwd":
        return 4 * 3 * n * n
    if op == "post_fwd":
        return 2 * s * nD + s * D + 4 * (n * n + n)
    if op == "post_bwd":
        return 3 * s * nD + 2 * s * D + 4 * (2 * n * n + 2 * n)
    known = (*OPS, "delayed_fwd", "delayed_bwd", "delayed_bwd_gxp", "seam", "seam_bwd", *COMPOSITE_FLOORS)
    raise ValueError(f"op: expected one of {known}, got {op!r}")


def op_bytes(op: str, T: int, n: int, D: int, x_bytes: int, grad_x_post: bool = False) -> int:
    return T * bytes_per_token(op, n, D, x_bytes, grad_x_post)


def floor_ms(nbytes: int, copy_bw_GBps: float) -> float:
    """Time to move nbytes at the measured copy bandwidth (GB/s = 1e9 bytes/s, read + written)."""
    return nbytes / (copy_bw_GBps * 1e6)
