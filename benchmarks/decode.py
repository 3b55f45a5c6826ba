"""One layer boundary's forward at decode (issue 21 item 4): post(l), the next pre(l+1) and sinkhorn of its
h_res, as the ops of today and as kernels/decode.py's one launch, side by side.

    PYTHONPATH=. python -m benchmarks.decode [--shapes 1x4x4096,...] [--quick] [--variants] [--rows REGEX] [--out DIR]
        [--device cuda]

Rows per shape (bf16 x, fp32 parameters with gamma, sinkhorn iters 20):

- ops_delayed: launch_post_fwd, then the delayed pre's launch_fwd on its output, then launch_sinkhorn_fwd
  of the next h_res (the path HyperStack(delayed=True) takes today).
- seam_delayed: kernels/seam.py's launch_seam_fwd (post and the delayed pre), then launch_sinkhorn_fwd.
- decode_delayed: kernels/decode.py's launch_decode with h_pre_prev: the whole boundary in one launch.
- ops_plain / decode_plain: the same with the plain mhc_pre(l+1).
- with --variants, the decode rows at other tiles, split counts, unrolls and warps (VARIANTS), and
  sinkhorn_alone: launch_sinkhorn_fwd alone on [T, n, n] logits (what Sinkhorn's chain costs at this T).
- --rows: only the rows whose name this regular expression finds (re.search), e.g. 'ops_|collapse'.

gpu_us: GPU time of one call, a CUDA graph of it replayed back to back (benchmarks/host.graph_gpu_us:
each replay a graph launch of its own; it moves by a few µs between calls at one token). chain_us: per call, a
CUDA graph of CHAIN calls back to back replayed (what a boundary costs inside a decode step's graph, which holds a
model's boundaries one after another and pays one graph launch for all). kernel_us: the
sum of the replay's kernels' device times under torch.profiler (steadier); launches: its kernels (and memsets),
with each kernel's device time in the jsonl (the bf16 pre's weight split is rebuilt in every captured graph: it is counted).
A variant the device cannot launch (its launcher's ValueError: collapse "wait" past the SMs or in the
interpreter) is a row of status n/a with the reason. Every row is judged by the accuracy rule against the float64
golden first, every output (status FAIL: no time): x(l+1) against golden/seam.py, the rest against the goldens on the x(l+1) the row stored. With --out on
a GPU, also OUT/<gpu>-<date>-decode.png (benchmarks/plots.plot_decode: chain_us per shape and row).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import time

import torch

from mhc_ops.golden import judge
from mhc_ops.golden.fixtures import Case, make_inputs
from mhc_ops.golden.mhc_pre import mhc_pre_delayed_forward, mhc_pre_forward
from mhc_ops.golden.seam import BOUNDARY_OUTPUTS, boundary_forward
from mhc_ops.golden.sinkhorn import sinkhorn_forward
from mhc_ops.kernels.decode import launch_decode
from mhc_ops.kernels.fwd import launch_fwd
from mhc_ops.kernels.post import launch_post_fwd
from mhc_ops.kernels.seam import launch_seam_fwd
from mhc_ops.kernels.sinkhorn import launch_sinkhorn_fwd

from .host import GRAPH_REPLAYS, capture_graph, replay_us
from .report import gpu_tag
from .shapes import parsed_device, parsed_shapes

DEFAULT = "1x4x4096,8x4x4096,64x4x4096,1x4x7168,8x4x7168,64x4x7168"
ROWS = ("ops_delayed", "seam_delayed", "decode_delayed", "ops_plain", "decode_plain")
# --variants: (row, launch_decode's options); the first four are the delayed boundary's
VARIANTS = (
    ("decode_delayed", {"sink_order": "token-major"}),
    ("decode_delayed", {"sink_order": "tokens-last"}),
    ("decode_delayed", {"sink_order": "tokens-first"}),
    ("decode_delayed", {"block_d": 64, "splits": 32}),
    ("decode_delayed", {"block_d": 128}),
    ("decode_delayed", {"unroll": 32}),
    ("decode_delayed", {"unroll": 64}),
    ("decode_delayed", {"num_warps": 2}),
    ("decode_delayed", {"num_warps": 2, "unroll": 64}),
    ("decode_delayed", {"num_warps": 1}),
    ("decode_delayed", {"block_d": 32}),
    ("decode_delayed", {"block_d": 16}),
    ("decode_delayed", {"num_warps": 8}),
    ("decode_delayed", {"block_d": 32, "num_warps": 8}),
    ("decode_delayed", {"sinkhorn_launch": True}),
    ("decode_delayed", {"sinkhorn_launch": True, "num_warps": 8}),
    ("decode_delayed", {"block_t": 1}),
    ("decode_delayed", {"block_t": 1, "unroll": 64}),
    ("decode_delayed", {"block_t": 2, "unroll": 64}),
    ("decode_delayed", {"block_t": 4, "unroll": 64}),
    ("decode_delayed", {"block_t": 1, "block_d": 128, "unroll": 64}),
    ("decode_delayed", {"block_t": 1, "num_warps": 8, "unroll": 64}),
    ("decode_delayed", {"block_t": 1, "block_d": 16, "unroll": 64}),
    ("decode_delayed", {"block_t": 1, "block_d": 16, "unroll": 64, "sinkhorn_launch": True}),
    ("decode_delayed", {"block_t": 1, "block_d": 32, "num_warps": 8, "unroll": 64}),
    ("decode_delayed", {"block_t": 1, "block_d": 32, "num_warps": 8, "unroll": 64, "sinkhorn_launch": True}),
    ("decode_delayed", {"num_warps": 1, "block_d": 32}),
    ("decode_delayed", {"num_warps": 1, "block_d": 32, "splits": 128, "unroll": 32}),
    ("decode_plain", {"num_warps": 1}),
    ("decode_plain", {"block_t": 1, "unroll": 64}),
    ("decode_plain", {"collapse": "launch"}),
    ("decode_plain", {"collapse": "launch", "apply_block_d": 256}),
    ("decode_plain", {"collapse": "launch", "block_t": 1, "unroll": 64}),
    ("decode_plain", {"collapse": "launch", "block_t": 1}),
    ("decode_plain", {"collapse": "wait"}),
    ("decode_plain", {"collapse": "wait", "block_t": 1}),
    ("decode_plain", {"apply_block_d": 256}),
    ("decode_plain", {"apply_block_d": 512, "num_warps": 8}),
)
ITERS, EPS, NORM_EPS, HC_EPS = 20, 1e-6, 1e-6, 1e-6
CHAIN = 16  # calls in chain_us's graph
TARGET_US = 8.0  # issue 21's decode target: one boundary at one token, n = 4, D = 4096 (the plot's line)
POST = ("x", "h_res", "h_out", "h_post")


def _inputs(T, n, D, device) -> dict:
    t = make_inputs(Case(lead=(T,), n=n, D=D, dtype="bfloat16", seed=T + n + D), device)
    post = make_inputs(Case(op="mhc_post", lead=(T,), n=n, D=D, dtype="bfloat16", seed=T + 1), device)
    g = torch.Generator(device=device).manual_seed(1)
    hpp = torch.sigmoid(torch.randn(T, n, generator=g, device=device)) + HC_EPS
    return {k: post[k] for k in POST} | {k: t[k] for k in ("phi", "alpha", "bias", "gamma")} | {"h_pre_prev": hpp}


def variant_name(row: str, options: dict) -> str:
    """A --variants row's name: 'decode_plain[collapse=launch,block_t=1]'."""
    return row + "[" + ",".join(f"{k}={v}" for k, v in options.items()) + "]"


def _calls(t: dict, variants: bool) -> dict:
    """row -> (call -> the BOUNDARY_OUTPUTS tensors, delayed)."""
    post = [t[k] for k in POST]
    pre = [t[k] for k in ("phi", "alpha", "bias", "gamma")]
    hpp = t["h_pre_prev"]

    def ops(delayed):
        def call():
            out = launch_post_fwd(*post)
            h_in, hp, hr, inv_rms, h_mix, h_pre = launch_fwd(out, *pre, NORM_EPS, HC_EPS, delayed=delayed,
                                                             h_pre_prev=hpp if delayed else None)  # fmt: skip
            return out, h_in, hp, hr, inv_rms, h_mix, h_pre, launch_sinkhorn_fwd(hr, ITERS, EPS)

        return call

    def seam():
        o = launch_seam_fwd(*post, hpp, *pre, NORM_EPS, HC_EPS)
        return (*o, launch_sinkhorn_fwd(o[3], ITERS, EPS))

    def decode(delayed, **launch):
        return lambda: launch_decode(*post, hpp if delayed else None, *pre, NORM_EPS, HC_EPS, ITERS, EPS, **launch)

    calls = {"ops_delayed": (ops(True), True), "seam_delayed": (seam, True), "decode_delayed": (decode(True), True),
             "ops_plain": (ops(False), False), "decode_plain": (decode(False), False)}  # fmt: skip
    if variants:
        for row, v in VARIANTS:
            calls[variant_name(row, v)] = (decode(row == "decode_delayed", **v), row == "decode_delayed")
    return calls


def _up(v):
    return v.double() if isinstance(v, torch.Tensor) else v


def _verdicts(t: dict, got, delayed: bool) -> list:
    """The accuracy rule on every output: out against the boundary's golden, the rest against the next pre's
    and sinkhorn's goldens on the out the row stored."""
    hpp = t["h_pre_prev"] if delayed else None
    args = [*(t[k] for k in POST), hpp, *(t[k] for k in ("phi", "alpha", "bias", "gamma"))]
    kw = dict(iters=ITERS, eps=EPS, norm_eps=NORM_EPS, hc_eps=HC_EPS)
    out64 = boundary_forward(*map(_up, args), compute_dtype=torch.float64, store_dtype=t["x"].dtype, **kw)[0]
    verdicts = [judge("out", got[0], out64, boundary_forward(*args, **kw)[0])]
    refs = []
    for cd, c in ((torch.float64, _up), (torch.float32, lambda v: v)):
        pre = [c(got[0]), *(c(t[k]) for k in ("phi", "alpha", "bias", "gamma"))]
        ekw = dict(norm_eps=NORM_EPS, hc_eps=HC_EPS, compute_dtype=cd)
        if delayed:
            h_in, hp, hr, h_pre, inv_rms, h_mix = mhc_pre_delayed_forward(*pre, c(hpp), **ekw)
        else:
            h_in, hp, hr, inv_rms, h_mix, h_pre = mhc_pre_forward(*pre, **ekw)
        refs.append((h_in, hp, hr, inv_rms, h_mix, h_pre, sinkhorn_forward(hr, ITERS, EPS, compute_dtype=cd)))
    return verdicts + [judge(k, g, a, b) for k, g, a, b in zip(BOUNDARY_OUTPUTS[1:], got[1:], *refs)]


def _sinkhorn_alone(T, n, device):
    """(call, check): the Sinkhorn kernel alone on fresh [T, n, n] logits, judged against its golden."""
    logits = torch.randn(T, n, n, generator=torch.Generator(device=device).manual_seed(2), device=device)
    ref64 = sinkhorn_forward(logits.double(), ITERS, EPS, compute_dtype=torch.float64)
    ref32 = sinkhorn_forward(logits, ITERS, EPS)
    return (lambda: launch_sinkhorn_fwd(logits, ITERS, EPS)), (lambda got: [judge("P", got, ref64, ref32)])


def launches(graph: torch.cuda.CUDAGraph) -> dict:
    """Kernels and memsets of one replay under torch.profiler -> {name: [count, their device us]}."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    names: dict[str, list] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in e.name.lower():
            entry = names.setdefault(e.name, [0, 0.0])
            entry[0] += 1
            entry[1] = round(entry[1] + e.device_time, 2)
    return names


def run(shapes, device, quick, variants, out_dir, rows_re=None):
    rows = []
    path = None
    if out_dir is not None and device.type == "cuda":
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{gpu_tag(torch.cuda.get_device_name(device))}-{time.strftime('%Y-%m-%d')}-decode.jsonl"
    for shape in shapes:
        t = _inputs(shape.T, shape.n, shape.D, device)
        calls = {k: (c, lambda got, d=d, t=t: _verdicts(t, got, d)) for k, (c, d) in _calls(t, variants).items()}
        if variants:
            calls["sinkhorn_alone"] = _sinkhorn_alone(shape.T, shape.n, device)
        if rows_re is not None:
            calls = {k: v for k, v in calls.items() if rows_re.search(k)}
        for name, (call, check) in calls.items():
            try:
                got = call()
            except ValueError as e:  # a variant this device cannot run (collapse "wait" past its SMs, the interpreter)
                if "[" not in name:
                    raise
                rows.append(row := {"shape": shape.label, "row": name, "status": "n/a", "worst": str(e)})
                print(_fmt(row), flush=True)
                continue
            verdicts = check(got)
            ok = all(v.ok for v in verdicts)
            worst = max(verdicts, key=lambda v: v.err / max(v.bound, 1e-30))
            row = {"shape": shape.label, "row": name, "status": "ok" if ok else "FAIL",
                   "worst": f"{worst.name} {worst.err:.2e} / {worst.bound:.2e}"}  # fmt: skip
            if ok and device.type == "cuda":
                graph = capture_graph(lambda call=call: call, device)
                row["gpu_us"] = round(replay_us(graph, device, GRAPH_REPLAYS[quick]), 2)
                chain = capture_graph(lambda call=call: lambda: [call() for _ in range(CHAIN)], device)
                row["chain_us"] = round(replay_us(chain, device, max(GRAPH_REPLAYS[quick] // CHAIN, 3)) / CHAIN, 2)
                try:
                    names = launches(graph)
                    row["launches"] = sum(c for c, _ in names.values())
                    row["kernel_us"] = round(sum(us for _, us in names.values()), 2)
                    row["kernels"] = names
                except Exception as e:  # the profiler is a report, not the measurement
                    row["launches"] = f"profiler: {type(e).__name__}: {e}"
            rows.append(row)
            print(_fmt(row), flush=True)
            if path is not None:  # row by row: a run cut short keeps what it measured
                with path.open("a") as fh:
                    fh.write(json.dumps(row | {"device": torch.cuda.get_device_name(device)}) + "\n")
    return rows


def _fmt(row):
    cells = [row["shape"], row["row"], row["status"], row.get("gpu_us", ""), row.get("chain_us", ""), row.get("kernel_us", ""),
             row.get("launches", ""), row["worst"]]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=DEFAULT)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--variants", action="store_true", help="decode_delayed at other tiles and split counts too")
    parser.add_argument("--rows", default=None, help="only rows whose name this regular expression finds")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    shapes = parsed_shapes(parser, args.shapes)
    try:
        rows_re = re.compile(args.rows) if args.rows is not None else None
    except re.error as e:
        parser.error(f"--rows: expected a regular expression, got {args.rows!r} ({e})")
    names = [*ROWS, *(variant_name(r, v) for r, v in VARIANTS), "sinkhorn_alone"]
    if rows_re is not None and not any(rows_re.search(k) for k in names):
        parser.error(f"--rows: {args.rows!r} finds no row (rows: {', '.join(ROWS)}, their --variants, sinkhorn_alone)")
    device = parsed_device(parser, args.device, "the interpreter smoke test")
    print("| shape | row | status | gpu_us | chain_us | kernel_us | launches | worst error / bound |\n"
          "|---|---|---|---|---|---|---|---|")
    rows = run(shapes, device, args.quick, args.variants, args.out, rows_re)
    if args.out is not None and device.type == "cuda":
        from .plots import plot_decode

        name = f"{gpu_tag(torch.cuda.get_device_name(device))}-{time.strftime('%Y-%m-%d')}-decode.png"
        named = [r | {"device": torch.cuda.get_device_name(device)} for r in rows]
        print(f"plot: {plot_decode(named, args.out / name, TARGET_US)}")
    return 0 if all(r["status"] in ("ok", "n/a") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
