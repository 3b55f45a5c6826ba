"""The delayed pre (DeepSeek-V4.1) against mhc_pre, kernel by kernel, and the layer boundary with it,
each against its memory floor (../shared/spec/mhc-math.md, docs/perf.md "The delayed pre").

    PYTHONPATH=. python -m benchmarks.delayed [--shapes 1x4x4096,...] [--rows seam,...] [--seam-grid GRID]
                                              [--seam-bwd-grid GRID] [--delayed-grid GRID] [--delayed-bwd-grid GRID]
                                              [--quick] [--out DIR] [--device cuda]

Rows per shape (bf16 x, fp32 parameters with gamma):

- pre_fwd / delayed_fwd: mhc_pre's forward and the delayed pre's (h_pre_prev given), one call of the
  launcher. The delayed forward reads x once (its h_in is collapsed in the projection's pass).
  ``--delayed-grid 'block_d=64,128;wide=False,True'`` adds a delayed_fwd row per combination of launch_fwd's
  options, with the single kernel's registers / spills / shared KB as compiled.
- pre_bwd / delayed_bwd: the fused backward of each (dh_in, dh_post, dh_res random; the delayed one
  also takes dh_pre and writes dh_pre_prev). ``--delayed-bwd-grid 'loop_stages=None,2,3'`` adds a delayed_bwd
  row per combination of launch_backward_fused's options, with pass B's registers / spills / shared KB.
- boundary: mhc_post(l) then the delayed pre(l+1) on its output, two ops, against the seam floor with
  delayed pre (read x(l) and h_out once, write x(l+1) and h_in(l+1) once) and against the sum of the
  two ops' floors.
- seam: the same boundary as one pass (kernels/seam.py: the seam partial kernel and the forward's
  finish kernel), against the same two floors. ``--seam-grid 'block_t=32,64;num_warps=4,8'`` adds a
  seam row per combination of launch_seam_fwd's options (``seam[block_t=64, num_warps=8]``), each with
  the partial kernel's registers / spills / shared KB (/wgmma) as compiled.
- boundary_bwd: the boundary's backward as two ops, the delayed pre(l+1)'s fused backward adding post(l+1)'s
  grad_x_next (it writes dx(l+1) in x's dtype), then post(l)'s backward reading it; against the seam
  backward's floor and the two ops' floors.
- seam_bwd: the same backward in one pass (kernels/seam_bwd.py; dx(l+1) kept in fp32, neither written nor
  read), against the same floors; ``--seam-bwd-grid`` as ``--seam-grid`` for launch_seam_bwd's options.

gpu_us: the GPU time of one call, a CUDA graph of it replayed (benchmarks/host.graph_gpu_us). floor_us:
bytes / the device-to-device copy bandwidth measured in the same run. Every row is checked by the
accuracy rule against the float64 golden first (status FAIL: no time).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

from mhc_ops.golden import judge
from mhc_ops.golden.fixtures import Case, make_inputs
from mhc_ops.golden.mhc_post import mhc_post_backward, mhc_post_forward
from mhc_ops.golden.mhc_pre import mhc_pre_backward, mhc_pre_delayed_backward, mhc_pre_delayed_forward, mhc_pre_forward
from mhc_ops.golden.seam import seam_backward
from mhc_ops.kernels.fused_bwd import _pass_b_kernel, launch_backward_fused
from mhc_ops.kernels.fwd import _fwd_kernel, launch_fwd
from mhc_ops.kernels.post import launch_post_bwd, launch_post_fwd
from mhc_ops.kernels.seam import _seam_partial_kernel, launch_seam_fwd
from mhc_ops.kernels.seam_bwd import _seam_bwd_kernel, launch_seam_bwd

from .floors import op_bytes
from .host import graph_gpu_us
from .kernel_breakdown import configs, kernel_info, parse_grid
from .report import gpu_tag
from .shapes import parsed_device, parsed_shapes
from .timing import copy_bandwidth_GBps

DEFAULT = "1x4x4096,1024x4x4096,4096x4x4096,16384x4x7168,8192x8x2048"
ROWS = ("pre_fwd", "delayed_fwd", "pre_bwd", "delayed_bwd", "boundary", "seam", "boundary_bwd", "seam_bwd")
# rows with a launch-option grid -> the kernel whose compiled registers / spills / shared memory they report
GRID_KERNELS = {"seam": _seam_partial_kernel, "seam_bwd": _seam_bwd_kernel, "delayed_fwd": _fwd_kernel,
                "delayed_bwd": _pass_b_kernel}


# row -> (its floor's op in benchmarks/floors.py, the unfused floor it is also compared with, or None)
FLOORS = {
    "pre_fwd": ("fwd", None),
    "delayed_fwd": ("delayed_fwd", None),
    "pre_bwd": ("bwd", None),
    "delayed_bwd": ("delayed_bwd", None),
    "boundary": ("seam", "boundary_unfused"),
    "seam": ("seam", "boundary_unfused"),
    "boundary_bwd": ("seam_bwd", "boundary_bwd_unfused"),
    "seam_bwd": ("seam_bwd", "boundary_bwd_unfused"),
}


def floor_bytes(row: str, T: int, n: int, D: int, s: int) -> tuple[int, int | None]:
    """-> (bytes of the row's floor, bytes of the unfused floor it is compared with or None)."""
    op, unfused = FLOORS[row]
    return op_bytes(op, T, n, D, s), (op_bytes(unfused, T, n, D, s) if unfused is not None else None)


def _inputs(T, n, D, device):
    case = Case(lead=(T,), n=n, D=D, dtype="bfloat16", seed=T + n + D)
    t = make_inputs(case, device)
    g = torch.Generator(device=device).manual_seed(1)
    t["h_pre_prev"] = torch.sigmoid(torch.randn(T, n, generator=g, device=device)) + 1e-6
    t["dh_pre"] = torch.randn(T, n, generator=g, device=device)
    t["grad_x_next"] = torch.randn(T, n, D, generator=g, device=device).to(t["x"].dtype)  # post(l+1)'s, for *_bwd
    post = make_inputs(Case(op="mhc_post", lead=(T,), n=n, D=D, dtype="bfloat16", seed=T + 1), device)
    return t, post


def _cast(cd):
    """The golden's inputs for compute dtype cd: as stored for fp32, upcast for the fp64 reference."""
    if cd == torch.float32:
        return lambda v: v
    return lambda v: v.double() if isinstance(v, torch.Tensor) else v


def _calls(t, post, seam_options=({},), seam_bwd_options=({},), delayed_options=({},), delayed_bwd_options=({},)):
    """row -> (call, its outputs' names, reference(compute dtype) -> the same outputs); a seam row per
    entry of seam_options (launch_seam_fwd's keyword arguments), a seam_bwd row per entry of
    seam_bwd_options (launch_seam_bwd's), a delayed_fwd row per entry of delayed_options (launch_fwd's), a
    delayed_bwd row per entry of delayed_bwd_options (launch_backward_fused's). The
    boundary's backward takes x as x(l+1) and post's x as x(l)."""
    x, phi, alpha, bias, gamma, hpp = (t[k] for k in ("x", "phi", "alpha", "bias", "gamma", "h_pre_prev"))
    f = mhc_pre_forward(x, phi, alpha, bias, gamma)  # the saved tensors the backwards take, fp32
    d = mhc_pre_delayed_forward(x, phi, alpha, bias, gamma, hpp)
    up = (t["dh_in"], t["dh_post"], t["dh_res"])
    pre_saved = (f[3], f[4], f[5], f[1])  # inv_rms, h_mix, h_pre, h_post
    delayed_saved = (d[4], d[5], d[3], d[1])
    fwd_names = ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre")  # the launcher's order
    bwd_names = ("dx", "dphi", "dalpha", "dbias", "dgamma")

    def pre_fwd_ref(cd):
        return mhc_pre_forward(*map(_cast(cd), (x, phi, alpha, bias, gamma)), compute_dtype=cd)

    def delayed_fwd_ref(cd):
        o = mhc_pre_delayed_forward(*map(_cast(cd), (x, phi, alpha, bias, gamma, hpp)), compute_dtype=cd)
        return o[0], o[1], o[2], o[4], o[5], o[3]

    def pre_bwd_ref(cd):
        return mhc_pre_backward(*map(_cast(cd), (x, phi, alpha, *up, *pre_saved, gamma)), compute_dtype=cd)

    def delayed_bwd_ref(cd):
        args = (x, phi, alpha, *up, t["dh_pre"], *delayed_saved, gamma, hpp)
        return mhc_pre_delayed_backward(*map(_cast(cd), args), compute_dtype=cd)

    last = {}

    def boundary():
        out = launch_post_fwd(post["x"], post["h_res"], post["h_out"], post["h_post"])
        last["out"] = out
        return (out, *launch_fwd(out, phi, alpha, bias, gamma, 1e-6, 1e-6, delayed=True, h_pre_prev=hpp)[:3])

    def boundary_ref(cd):
        # each op on the inputs it was given (the accuracy rule's "same rounded inputs"): the pre on the
        # kernel's x(l+1), whose bf16 rounding may differ from the golden's in the last bit
        c = _cast(cd)
        out = mhc_post_forward(*(c(post[k]) for k in ("x", "h_res", "h_out", "h_post")), compute_dtype=cd)
        nxt = mhc_pre_delayed_forward(c(last["out"]), *map(c, (phi, alpha, bias, gamma, hpp)), compute_dtype=cd)
        return (out, *nxt[:3])

    def seam(options):
        def call():
            o = launch_seam_fwd(*(post[k] for k in ("x", "h_res", "h_out", "h_post")), hpp, phi, alpha, bias, gamma,
                                1e-6, 1e-6, **options)  # fmt: skip
            last["out"] = o[0]
            return o[:4]

        return call

    def pre_bwd():
        o = launch_backward_fused(x, phi, alpha, *up, *pre_saved, gamma, None, 1e-6)
        return tuple(o[k] for k in bwd_names)

    def delayed_bwd(options):
        def call():
            o = launch_backward_fused(x, phi, alpha, *up, *delayed_saved, gamma, None, 1e-6, delayed=True,
                                      h_pre_prev=hpp, dh_pre=t["dh_pre"], **options)  # fmt: skip
            return tuple(o[k] for k in (*bwd_names, "dh_pre_prev"))

        return call

    gxn = t["grad_x_next"]
    pre_grads = ("dphi", "dalpha", "dbias", "dgamma", "dh_pre_prev")
    seam_names = ("dx", "dh_res", "dh_out", "dh_post", *pre_grads)  # golden/seam.py SEAM_GRADS
    post_in = tuple(post[k] for k in ("x", "h_res", "h_out", "h_post"))
    seam_saved = (x, d[1], d[4], d[5], d[3])  # out = x(l+1), next h_post, inv_rms, h_mix, h_pre

    def boundary_bwd():
        o = launch_backward_fused(x, phi, alpha, *up, *delayed_saved, gamma, gxn, 1e-6, delayed=True, h_pre_prev=hpp,
                                  dh_pre=t["dh_pre"])  # fmt: skip
        last["dx_next"] = o["dx"]
        return (*launch_post_bwd(*post_in, o["dx"]), *(o[k] for k in pre_grads))

    def boundary_bwd_ref(cd):
        # each op on its own inputs: post(l)'s backward on the dx(l+1) the pre's kernel stored
        c = _cast(cd)
        pre = mhc_pre_delayed_backward(*map(c, (x, phi, alpha, *up, t["dh_pre"], *delayed_saved, gamma, hpp)),
                                       grad_x_post=c(gxn), compute_dtype=cd)  # fmt: skip
        return (*mhc_post_backward(*map(c, post_in), c(last["dx_next"]), compute_dtype=cd), *pre[1:])

    def seam_bwd(options):
        return lambda: launch_seam_bwd(*post_in, hpp, phi, alpha, gamma, *seam_saved, *up, t["dh_pre"], gxn,
                                       **options)  # fmt: skip

    def seam_bwd_ref(cd):
        return seam_backward(*map(_cast(cd), (*post_in, hpp, phi, alpha, bias, gamma, *seam_saved, *up, t["dh_pre"],
                                              gxn)), compute_dtype=cd)  # fmt: skip

    return {
        "pre_fwd": (lambda: launch_fwd(x, phi, alpha, bias, gamma, 1e-6, 1e-6), fwd_names, pre_fwd_ref),
        **{seam_row(o, "delayed_fwd"): (lambda o=o: launch_fwd(x, phi, alpha, bias, gamma, 1e-6, 1e-6, delayed=True,
                                                                h_pre_prev=hpp, **o), fwd_names, delayed_fwd_ref)
           for o in delayed_options},  # fmt: skip
        "pre_bwd": (pre_bwd, bwd_names, pre_bwd_ref),
        **{seam_row(o, "delayed_bwd"): (delayed_bwd(o), (*bwd_names, "dh_pre_prev"), delayed_bwd_ref)
           for o in delayed_bwd_options},
        "boundary": (boundary, ("out", "h_in", "h_post", "h_res"), boundary_ref),
        **{seam_row(o): (seam(o), ("out", "h_in", "h_post", "h_res"), boundary_ref) for o in seam_options},
        "boundary_bwd": (boundary_bwd, seam_names, boundary_bwd_ref),
        **{seam_row(o, "seam_bwd"): (seam_bwd(o), seam_names, seam_bwd_ref) for o in seam_bwd_options},
    }


def seam_row(options: dict, base: str = "seam") -> str:
    return base + (f"[{', '.join(f'{k}={v}' for k, v in options.items())}]" if options else "")


def run(shapes, device, quick, out_dir, rows_wanted=ROWS, seam_options=({},), seam_bwd_options=({},),
        delayed_options=({},), delayed_bwd_options=({},)):  # fmt: skip
    bw = copy_bandwidth_GBps(device, quick) if device.type == "cuda" else None
    rows = []
    for shape in shapes:
        t, post = _inputs(shape.T, shape.n, shape.D, device)
        for name, (call, names, ref) in _calls(t, post, seam_options, seam_bwd_options, delayed_options,
                                                   delayed_bwd_options).items():
            base = name.partition("[")[0]
            if base not in rows_wanted:
                continue
            if base in GRID_KERNELS:
                GRID_KERNELS[base]._compiled.clear()  # so that kernel_info sees this configuration's
            got = call()
            r64, r32 = ref(torch.float64), ref(torch.float32)
            verdicts = [judge(k, g, a, b) for k, g, a, b in zip(names, got, r64, r32)]
            ok = all(v.ok for v in verdicts)
            row = {"shape": shape.label, "row": name, "status": "ok" if ok else "FAIL",
                   "worst": max(verdicts, key=lambda v: v.err / max(v.bound, 1e-30)).name}  # fmt: skip
            fb, unfused = floor_bytes(base, shape.T, shape.n, shape.D, 2)
            if ok and device.type == "cuda":
                us = graph_gpu_us(lambda call=call: call, device, quick)
                row |= {"gpu_us": round(us, 2), "floor_us": round(fb / (bw * 1e3), 2), "x_floor": round(us / (fb / (bw * 1e3)), 2)}
                if unfused is not None:
                    row["x_unfused_floor"] = round(us / (unfused / (bw * 1e3)), 2)
                if base in GRID_KERNELS:
                    row["compiled"] = kernel_info(GRID_KERNELS[base]) or ""
            rows.append(row)
            print(_fmt(row), flush=True)
    if out_dir is not None and device.type == "cuda":
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{gpu_tag(torch.cuda.get_device_name(device))}-{time.strftime('%Y-%m-%d')}-delayed.jsonl"
        with path.open("a") as fh:
            for row in rows:
                fh.write(json.dumps(row | {"copy_GBps": bw}) + "\n")
    return rows


def _fmt(row):
    cells = [row["shape"], row["row"], row["status"], row.get("gpu_us", ""), row.get("floor_us", ""),
             row.get("x_floor", ""), row.get("x_unfused_floor", ""), row.get("compiled", "")]  # fmt: skip
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.delayed", description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=DEFAULT)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"a subset of {','.join(ROWS)} (default all)")
    parser.add_argument("--seam-grid", default=None,
                        help="also a seam row per combination of launch_seam_fwd options, e.g. 'block_t=32,64;num_warps=4,8'")  # fmt: skip
    parser.add_argument("--seam-bwd-grid", default=None,
                        help="also a seam_bwd row per combination of launch_seam_bwd options, e.g. 'block_t=16,32'")  # fmt: skip
    parser.add_argument("--delayed-grid", default=None,
                        help="also a delayed_fwd row per combination of launch_fwd options, e.g. 'block_d=64,128'")  # fmt: skip
    parser.add_argument("--delayed-bwd-grid", default=None,
                        help="also a delayed_bwd row per combination of launch_backward_fused options, e.g. 'loop_stages=None,2,3'")  # fmt: skip
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    shapes = parsed_shapes(parser, args.shapes)
    device = parsed_device(parser, args.device, "the interpreter smoke test")
    rows_wanted = tuple(r for r in args.rows.split(",") if r)
    if not rows_wanted or any(r not in ROWS for r in rows_wanted):
        parser.error(f"--rows: expected a subset of {','.join(ROWS)}, got {args.rows!r}")
    options = {}
    grids = (("--seam-grid", args.seam_grid), ("--seam-bwd-grid", args.seam_bwd_grid),
             ("--delayed-grid", args.delayed_grid), ("--delayed-bwd-grid", args.delayed_bwd_grid))  # fmt: skip
    for flag, grid in grids:
        try:
            options[flag] = configs("seam", True, parse_grid(grid)) if grid else [{}]
        except ValueError as e:
            parser.error(f"{flag}: {e}")
    print("| shape | row | status | gpu_us | floor_us | x floor | x unfused floor | grid kernel regs/spills/KB |")
    print("|---|---|---|---|---|---|---|---|")
    rows = run(shapes, device, args.quick, args.out, rows_wanted, options["--seam-grid"], options["--seam-bwd-grid"],
               options["--delayed-grid"], options["--delayed-bwd-grid"])  # fmt: skip
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
