"""Kernel launches with Triton's per-call work done once per specialisation.

``@launched(...)`` (triton.jit's arguments) keeps the ``kernel[grid](...)`` syntax with a short path
once a specialisation has been seen: Triton's own binder gives the arguments' specialisation (its
rule, not a copy); with the launch options and the device it looks up the ``CompiledKernel`` that
``JITFunction.run`` returned the first time; that kernel's launcher runs on the current stream (so
CUDA-graph capture records it). ``JITFunction.run`` still serves the interpreter, a device's first
launch, launch hooks (Proton) and ``knobs.runtime.debug``. Not re-checked: the kernel's globals (ours
read none that change) and compilation knobs changed after the first call. In an op body that
torch.compile traces (``op_body(traced=True)``, mhc_ops/_opspec.py) the launch goes through
``torch.library.wrap_triton`` and Inductor launches it. Why: docs/perf.md, kernels/_launch.py.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading

import numpy as np
import triton
from triton import knobs
from triton.runtime import driver

from ._common import interpreting

# Triton 3.6's interpreter converts one-element arrays to int, an error from numpy 2.4 on; 3.7 squeezes
# them first (docs/bugs/numpy-interpreter-range.md).
INTERPRETER_NUMPY_CLASH = (
    tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 7) and np.lib.NumpyVersion(np.__version__) >= "2.4.0"
)


def _hooked(hook) -> bool:
    """A launch hook is installed: a non-empty HookChain (Triton 3.6), or any other callable set."""
    calls = getattr(hook, "calls", None)
    return bool(calls) if calls is not None else hook is not None


class _OpBody(threading.local):
    """Where the current launches come from: an eager call (both False), the body of a registered op
    run by the dispatcher on real tensors (``active``), or that body traced by torch.compile
    (``active`` and ``traced``: launches become graph nodes through ``torch.library.wrap_triton``)."""

    active = False
    traced = False


_OP_BODY = _OpBody()


@contextlib.contextmanager
def op_body(traced: bool):
    """Launches inside run as a registered op's body (see _OpBody); restores the previous state."""
    prev = _OP_BODY.active, _OP_BODY.traced
    _OP_BODY.active, _OP_BODY.traced = True, traced
    try:
        yield
    finally:
        _OP_BODY.active, _OP_BODY.traced = prev


def in_op_body() -> bool:
    """True inside a registered op's body: nothing computed there may outlive the call (a compiled
    graph's allocations can belong to a CUDA-graph pool, docs/bugs/weight-cache-in-graph-pool.md)."""
    return _OP_BODY.active


# Launch options that torch.compile's user-defined kernels do not take; only fp fusion is dropped
# (split_weights' exact split; a traced split may contract gamma*phi - hi into an FMA, a more exact
# residual that the accuracy rule still judges).
_UNTRACED_OPTIONS = ("enable_fp_fusion",)


def _traced_launch(jit, grid, *args, **kwargs):
    from torch.library import wrap_triton

    kwargs = {k: v for k, v in kwargs.items() if v is not None and k not in _UNTRACED_OPTIONS}
    return wrap_triton(jit)[grid](*args, **kwargs)


class LaunchedKernel:
    """A triton.jit kernel launched through a cache of its compiled specialisations (module doc).
    Attributes other than ``[grid]`` are the JITFunction's (``device_caches``, ``fn``, ...)."""

    def __init__(self, fn):
        self.jit = fn
        self._compiled: dict[tuple, object] = {}  # (device, specialisation, options) -> CompiledKernel

    def __getattr__(self, name):
        return getattr(self.jit, name)

    def __getitem__(self, grid):
        if interpreting():
            if INTERPRETER_NUMPY_CLASH:
                raise RuntimeError(
                    f"Triton {triton.__version__}'s interpreter (TRITON_INTERPRET=1) fails with numpy {np.__version__}: "
                    "install numpy<2.4 or triton>=3.7"
                )
            return self.jit[grid]
        if _OP_BODY.traced:
            return functools.partial(_traced_launch, self.jit, grid)
        return functools.partial(self._launch, grid)

    def _launch(self, grid, *args, **kwargs):
        device = driver.active.get_current_device()
        caches = self.jit.device_caches.get(device)  # a defaultdict: .get does not create the entry
        runtime = knobs.runtime
        if caches is None or runtime.debug or _hooked(runtime.launch_enter_hook) or _hooked(runtime.launch_exit_hook):
            return self.jit[grid](*args, **kwargs)
        bound, specialization, options = caches[4](*args, **kwargs)  # Triton's binder
        key = (device, *specialization, *options.items())
        kernel = self._compiled.get(key)
        if kernel is None:
            kernel = self.jit[grid](*args, **kwargs)  # compiles or finds it, and launches
            self._compiled[key] = kernel
            return kernel
        size = len(grid)
        kernel.run(
            grid[0], grid[1] if size > 1 else 1, grid[2] if size > 2 else 1, driver.active.get_current_stream(device),
            kernel.function, kernel.packed_metadata, None, None, None, *bound.values(),
        )  # fmt: skip
        return kernel

    def compiled_count(self) -> int:
        """Specialisations seen by the short path (a test's handle on recompilation)."""
        return len(self._compiled)


def launched(fn=None, **jit_kwargs):
    """``@launched`` or ``@launched(do_not_specialize=[...])``: triton.jit, launched through
    LaunchedKernel. A kernel parameter with a default is refused: torch 2.11's Inductor traces a kernel
    with the arguments of the call only and fails on a missing one (docs/bugs/kernel-argument-defaults.md)."""
    if fn is None:
        return lambda f: launched(f, **jit_kwargs)
    defaulted = [name for name, p in inspect.signature(fn).parameters.items() if p.default is not p.empty]
    if defaulted:
        raise TypeError(f"{fn.__name__}: kernel parameters {defaulted} have defaults; pass them at every launch")
    return LaunchedKernel(triton.jit(fn, **jit_kwargs))
