"""How many bf16 parts the forward's projection weights need: the accuracy rule on 2 against 3 (CPU).

    python -m benchmarks.weight_parts [--tokens 32] [--seeds 3]

The bf16 forward multiplies x (exact in bf16) by (gamma*phi)^T split into bf16 parts on tensor cores
(kernels/fwd.py mix_dot, split_weights): three parts carry all 24 bits of an fp32 significand, two (hi +
mid) carry 16. A product with fewer parts is cheaper (the projection bounds the forward: docs/perf.md,
Performance IX); this asks whether the rule allows it. For each case (n, D, gamma or not, seeds, x at
scale 1 and 30, bf16 x, fixtures.make_inputs) the golden mhc_pre forward runs in fp32 with the weights
replaced by their k-part sum (exact in fp32; gamma folded in, as the kernel's split), and every output
is judged against the float64 golden of the true inputs (mhc_ops.golden.judge). The kernel sums its
products in another order; this isolates what the parts drop. One markdown table: per k and output,
the worst err / bound over the cases (above 1: the rule fails) and where.
"""

from __future__ import annotations

import argparse
import sys

import torch

from mhc_ops.golden import Case, judge
from mhc_ops.golden.fixtures import make_inputs
from mhc_ops.golden.mhc_pre import mhc_pre_forward

NAMES = ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre")
SHAPES = ((4, 4096), (4, 7168), (8, 2048), (6, 1024), (1, 4096))  # (n, D)
X_SCALES = (1.0, 30.0)


def parts_sum(phi: torch.Tensor, gamma: torch.Tensor | None, parts: int) -> torch.Tensor:
    """(gamma*phi) as the sum of its first `parts` bf16 parts (split_bf16_host's hi, mid, lo), in fp32."""
    w = phi * gamma.reshape(1, -1) if gamma is not None else phi
    total = torch.zeros_like(w)
    for _ in range(parts):
        part = (w - total).to(torch.bfloat16).float()
        total = total + part
    return total


def worst_ratios(tokens: int, seeds: int) -> dict:
    """(parts, output) -> (worst err / bound, err, bound, case) over the cases."""
    worst: dict = {}
    for n, D in SHAPES:
        for gamma in (True, False):
            for seed in range(seeds):
                for x_scale in X_SCALES:
                    case = Case(lead=(tokens,), n=n, D=D, dtype="bfloat16", seed=1000 + seed, gamma=gamma,
                                x_scale=x_scale)  # fmt: skip
                    t = make_inputs(case, "cpu")
                    args = [t[k] for k in ("x", "phi", "alpha", "bias", "gamma")]
                    up = [a.double() if a is not None else None for a in args]
                    r64 = dict(zip(NAMES, mhc_pre_forward(*up, compute_dtype=torch.float64)))
                    r32 = dict(zip(NAMES, mhc_pre_forward(*args)))
                    for parts in (3, 2):
                        w = parts_sum(t["phi"], t["gamma"], parts)
                        got = dict(zip(NAMES, mhc_pre_forward(t["x"], w, t["alpha"], t["bias"], None)))
                        for name in NAMES:
                            v = judge(name, got[name], r64[name], r32[name])
                            if v.err / v.bound > worst.get((parts, name), (-1.0,))[0]:
                                worst[(parts, name)] = (v.err / v.bound, v.err, v.bound, (n, D, gamma, seed, x_scale))
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.weight_parts", description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=32, help="tokens per case (default 32)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per shape, gamma and x scale (default 3)")
    args = parser.parse_args(argv)
    if args.tokens < 1:
        parser.error(f"--tokens: expected at least 1, got {args.tokens}")
    if args.seeds < 1:
        parser.error(f"--seeds: expected at least 1, got {args.seeds}")
    worst = worst_ratios(args.tokens, args.seeds)
    print("| parts | output | worst err / bound | err | bound | at (n, D, gamma, seed, x scale) |\n|---|---|---|---|---|---|")
    for (parts, name), (ratio, err, bound, where) in sorted(worst.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        print(f"| {parts} | {name} | {ratio:.3f} | {err:.2e} | {bound:.2e} | {where} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
