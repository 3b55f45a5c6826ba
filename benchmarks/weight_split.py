"""What the forward's bf16 weight split costs, built by one Triton launch (kernels/fwd.split_weights)
or by torch (split_weights_host, about ten launches), where a forward rebuilds it.

    python -m benchmarks.weight_split [--shapes 1x4x4096,1024x4x4096] [--quick] [--device cuda]

An eager forward finds the split cached until a weight changes (kernels/_cache.py): the first
forward after each optimizer step rebuilds it. A CUDA-graph capture always rebuilds it (so that a
replay after an optimizer step sees the new weights), so a graph-captured forward pays it every
replay. Per shape and builder, one markdown row:

- split GPU us: a CUDA graph of the split alone, replayed (benchmarks/host.py's graph_gpu_us);
- forward GPU us: a CUDA graph of launch_fwd, which includes the split;
- host us, cached / rebuilt: launch_fwd in a host loop (host_loop_us) with the cache warm, and with
  it cleared before each call (a forward after a weight change).
On CPU (the interpreter's smoke test) there are no GPU columns.
"""

from __future__ import annotations

import argparse
import sys

import torch

from mhc_ops.kernels import _cache, fwd

from . import goldens, host
from .shapes import parsed_shapes

BUILDERS = {"triton": fwd.split_weights, "torch": fwd.split_weights_host}


def measure(shape, builder: str, device: torch.device, quick: bool) -> dict:
    t = goldens.shape_inputs(shape, device, ("fwd",))
    args = [t[k] for k in goldens.OP_ARGS["fwd"]]
    split = BUILDERS[builder]
    fwd_call = lambda: fwd.launch_fwd(*args, 1e-6, 1e-6)  # noqa: E731
    original = fwd.split_weights
    fwd.split_weights = split  # what launch_fwd's weight_derived builds with
    try:
        row = {"shape": shape.label, "builder": builder}
        if device.type == "cuda":
            row["split_gpu_us"] = host.graph_gpu_us(lambda: lambda: split(t["phi"], t["gamma"]), device, quick)
            row["fwd_gpu_us"] = host.graph_gpu_us(lambda: fwd_call, device, quick)
        _cache.clear()
        row["host_cached_us"] = host.host_loop_us(fwd_call, device, quick)[0]
        row["host_rebuilt_us"] = host.host_loop_us(lambda: (_cache.clear(), fwd_call()), device, quick)[0]
    finally:
        fwd.split_weights = original
        _cache.clear()
    return row


def format_row(row: dict) -> str:
    cells = [row.get(k) for k in ("split_gpu_us", "fwd_gpu_us", "host_cached_us", "host_rebuilt_us")]
    return f"| {row['shape']} | {row['builder']} | " + " | ".join("-" if c is None else f"{c:.1f}" for c in cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.weight_split", description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="1x4x4096,1024x4x4096,4096x4x4096", help="TxnxD, comma separated")
    parser.add_argument("--quick", action="store_true", help="fewer calls per loop")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    shapes = parsed_shapes(parser, args.shapes)
    device = torch.device(args.device)
    print("| shape | builder | split GPU us | forward GPU us | host us, cached | host us, rebuilt |")
    print("|---|---|---|---|---|---|")
    for shape in shapes:
        for builder in BUILDERS:
            print(format_row(measure(shape, builder, device, args.quick)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
