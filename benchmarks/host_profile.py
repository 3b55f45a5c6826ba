"""Where the host time of one training-path call goes: a diagnostic, not a benchmark row.

    python -m benchmarks.host_profile [--ops pre,post,sinkhorn,layer,stack] [--shape 1x4x4096] [--top 25] [--calls 200]

For each op of benchmarks/host.py (at T = 1 by default, where the GPU is never the bottleneck), each
call (fwd_nograd, fwd, bwd, step) is measured three ways, per call:

- ``call``: the call as training makes it (host.make_call), timed in a loop; and the same call
  with kernels/_launch.py's short path turned off (every launch through ``JITFunction.run``);
- ``launches``: every Triton launch the call made, recorded once (by wrapping ``JITFunction.run``)
  and replayed alone with the same arguments through ``JITFunction``'s ``kernel[grid](...)``, and
  through the compiled kernel's own launcher (``CompiledKernel.run``, the floor of a launch from
  Python, which the short path calls after Triton's binder);
- a cProfile of the call (``--top`` functions by own time), which names the Python that is left.

The difference ``call (Triton's launch) - launches`` is ours (autograd, allocations, Python);
``launches - compiled launcher`` is Triton's per-call work, which the short path mostly saves. Prints a table and the profiles; on CPU
(the interpreter) it runs, but the numbers describe the interpreter.

    python -m benchmarks.host_profile --no-launch [--ops ref,pre,post,sinkhorn,layer,stack] [--shape 1x4x4096]

``--no-launch``: ours alone, on any machine: CPU tensors, every Triton launch recorded and none run
(compile_check.recording: the launchers' GPU tile choices, no interpreter), so a call's time is its
validation, allocations, autograd and launchers' Python without the launches. The ref op's row is the
host's yardstick (a CPU's speed differs from the GPU host's: compare ``over ref``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import statistics
import sys
import time
from collections.abc import Callable

import torch
from triton.runtime.jit import JITFunction

from mhc_ops.kernels._launch import LaunchedKernel

from . import host
from .shapes import parsed_shapes

CALLS = ("fwd_nograd", "fwd", "bwd", "step")  # host.VARIANTS: fwd_nograd under torch.no_grad


@contextlib.contextmanager
def recorded_launches(into: list):
    """Within it, every JITFunction launch appends (kernel, args, kwargs, grid) to ``into``."""
    original = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        if not warmup:
            into.append((self, args, dict(kwargs), grid))
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    JITFunction.run = run
    try:
        yield into
    finally:
        JITFunction.run = original


@contextlib.contextmanager
def triton_launch_only():
    """Within it, LaunchedKernel launches go through JITFunction.run (the short path off)."""
    original = LaunchedKernel._launch

    def launch(self, grid, *args, **kwargs):
        return self.jit[grid](*args, **kwargs)

    LaunchedKernel._launch = launch
    try:
        yield
    finally:
        LaunchedKernel._launch = original


def _per_call_us(fn: Callable[[], object], device: torch.device, calls: int = 200, loops: int = 5) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(loops):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / calls * 1e6


def _replays(launches: list) -> tuple[Callable[[], None], Callable[[], None] | None]:
    """-> (replay through kernel[grid](...), replay through CompiledKernel.run or None on CPU)."""

    def via_jit():
        for kernel, args, kwargs, grid in launches:
            kernel[grid](*args, **kwargs)

    if not torch.cuda.is_available():
        return via_jit, None
    from triton import knobs
    from triton.runtime import driver

    compiled = []
    for kernel, args, kwargs, grid in launches:
        ck = kernel[grid](*args, **kwargs)  # returns the CompiledKernel it launched
        # the launcher takes every parameter, constexprs included, in order (as JITFunction.run passes them)
        bound = dict(zip([p.name for p in kernel.params], args)) | kwargs
        values = [bound[p.name] if p.name in bound else p.default for p in kernel.params]
        g = tuple(grid) + (1,) * (3 - len(grid))
        compiled.append((ck, g, values))

    def via_compiled():
        device = driver.active.get_current_device()
        stream = driver.active.get_current_stream(device)
        for ck, g, values in compiled:
            ck.run(g[0], g[1], g[2], stream, ck.function, ck.packed_metadata, None,
                   knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *values)  # fmt: skip

    return via_jit, via_compiled


def profile(fn: Callable[[], object], top: int, calls: int = 200) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


@contextlib.contextmanager
def launches_recorded_not_run():
    """compile_check.recording, with the ops' device check off as well (CPU tensors on the triton backend
    without the interpreter): the host path of every call, its launches recorded, none run."""
    from mhc_ops import _impl

    from .compile_check import recording

    check = _impl.require_kernel_device
    _impl.require_kernel_device = lambda *args: None
    try:
        with recording(arguments=False) as records:
            yield records
    finally:
        _impl.require_kernel_device = check


def no_launch_rows(ops: list[str], shape, calls: int, top: int) -> tuple[list[tuple], list[tuple]]:
    """(call, launches per call, us per call, over ref's) per op and call, and the cProfiles (--no-launch)."""
    rows, profiles, ref = [], [], {}
    with launches_recorded_not_run() as records:
        for name in ops:
            training = host.OPS[name](shape, torch.device("cpu"))
            for variant in CALLS:
                with torch.set_grad_enabled(variant != "fwd_nograd"):
                    call = host.make_call(training, variant)
                    call()
                    del records[:]
                    call()
                    launches = len(records)

                    def fn(call=call):
                        call()
                        records.clear()

                    us = _per_call_us(fn, torch.device("cpu"), calls)
                    if name == "ref":
                        ref[variant] = us
                    rows.append((f"{name}.{variant}", launches, us, us / ref[variant] if variant in ref else None))
                    if top:
                        profiles.append((f"{name}.{variant}", profile(fn, top, calls)))
    return rows, profiles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.host_profile", description=__doc__.split("\n")[0])
    parser.add_argument("--ops", default=None,
                        help=f"comma separated, of {list(host.OPS)} (default pre,post,sinkhorn,layer; ref first with "
                        "--no-launch)")  # fmt: skip
    parser.add_argument("--shape", default="1x4x4096", help="one TxnxD")
    parser.add_argument("--top", type=int, default=25, help="functions per cProfile listing (0: no profiles)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-launch", action="store_true",
                        help="ours alone on CPU tensors: every launch recorded, none run (any machine)")  # fmt: skip
    parser.add_argument("--calls", type=int, default=200, help="calls per timed loop (CUDA and --no-launch)")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error(f"--calls: expected a positive int, got {args.calls}")
    if args.ops is None:
        args.ops = ("ref," if args.no_launch else "") + "pre,post,sinkhorn,layer"
    ops = [o for o in args.ops.split(",") if o]
    for o in ops:
        if o not in host.OPS:
            parser.error(f"--ops: expected names in {list(host.OPS)}, got {o!r}")
    shapes = parsed_shapes(parser, args.shape, "--shape")
    if len(shapes) != 1:
        parser.error(f"--shape: expected one shape, got {args.shape!r}")
    (shape,) = shapes
    if args.no_launch:
        rows, profiles = no_launch_rows(ops, shape, args.calls, args.top)
        print(f"# host time per call without its launches (recorded, not run), {shape.label}, CPU tensors, "
              f"torch {torch.__version__}\n")  # fmt: skip
        print("| call | launches | ours us | over ref |\n|---|---|---|---|")
        for call, k, us, over in rows:
            print(f"| {call} | {k} | {us:.1f} | {'-' if over is None else format(over, '.1f')} |")
        for call, text in profiles:
            print(f"\n## cProfile of {call} ({args.calls} calls), by own time\n")
            print(text)
        return 0
    device = torch.device(args.device)
    calls = args.calls if device.type == "cuda" else 1
    rows, profiles = [], []
    for name in ops:
        training = host.OPS[name](shape, device)
        for variant in CALLS:
            with torch.set_grad_enabled(variant != "fwd_nograd"):
                fn = host.make_call(training, variant)
                call_us = _per_call_us(fn, device, calls)
                with triton_launch_only():
                    jit_call_us = _per_call_us(fn, device, calls)
                    with recorded_launches([]) as launches:
                        fn()
                via_jit, via_compiled = _replays(launches)
                jit_us = _per_call_us(via_jit, device, calls)
                compiled_us = _per_call_us(via_compiled, device, calls) if via_compiled else float("nan")
                rows.append((f"{name}.{variant}", len(launches), call_us, jit_call_us, jit_us, compiled_us))
                if args.top:
                    profiles.append((f"{name}.{variant}", profile(fn, args.top, calls)))
    print(f"# host time per call, {shape.label}, {device}, torch {torch.__version__}\n")
    print(
        "| call | launches | call us | call us, Triton's launch | its launches via JITFunction us "
        "| via CompiledKernel.run us | ours (call with Triton's launch - its launches) us |"
    )
    print("|---|---|---|---|---|---|---|")
    for call, k, c, cj, j, ck in rows:
        print(f"| {call} | {k} | {c:.1f} | {cj:.1f} | {j:.1f} | {ck:.1f} | {cj - j:.1f} |")
    for call, text in profiles:
        print(f"\n## cProfile of {call} ({calls} calls), by own time\n")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
