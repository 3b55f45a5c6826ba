"""Timing: the median time of a call (do_bench on CUDA, perf_counter on CPU), the copy bandwidth a
floor is taken against, and the extra device memory of a call."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import triton.testing

from .goldens import OpFn, Tensors

# Timing: triton.testing.do_bench (warmup_ms, rep_ms) on CUDA; timed calls of the CPU fallback.
DO_BENCH_MS = {False: (25, 200), True: (10, 50)}
# The ops added with the whole layer run at the quick setting's warm-up and half the full
# repetitions: the default run's time goes mostly to torch.compile of the goldens (about 30 s per
# shape on an H200), so the timing is kept short where it can be.
SHORT_DO_BENCH_MS = {False: (10, 100), True: (10, 50)}
CPU_REPS = {False: 3, True: 1}  # the interpreter takes seconds per call: a smoke test, not a measurement
# The copy that measures bandwidth: large enough that L2 plays no part on a GPU.
COPY_BYTES = {"cuda": 1 << 30, "cpu": 64 << 20}


def median_ms(fn: Callable[[], object], device: torch.device, quick: bool, short: bool = False) -> float:
    """Median time of one call in ms, fn called once before (warm). CUDA: do_bench, L2 flushed before
    every call (short: the SHORT_DO_BENCH_MS lengths). CPU: perf_counter around each call."""
    if device.type == "cuda":
        warmup, rep = (SHORT_DO_BENCH_MS if short else DO_BENCH_MS)[quick]
        return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    times = []
    for _ in range(CPU_REPS[quick]):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def copy_bandwidth_GBps(device: torch.device, quick: bool) -> float:
    """Device-to-device copy bandwidth, counting bytes read + written, in GB/s."""
    nbytes = COPY_BYTES[device.type]
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    ms = median_ms(lambda: dst.copy_(src), device, quick)
    return 2 * nbytes / (ms * 1e6)


def extra_memory_bytes(fn: OpFn, args: Tensors, device: torch.device) -> int:
    """Peak device memory of one call above what was allocated before it (the inputs), less the
    outputs' own storage."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    outs = fn(args)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    storages = {o.untyped_storage().data_ptr(): o.untyped_storage().nbytes() for o in outs if o is not None}
    return peak - before - sum(storages.values())
