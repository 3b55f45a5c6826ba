"""The weight cache kept a tensor made inside a compiled graph's run: under
torch.compile(mode="reduce-overhead") it lived in the CUDA-graph pool untracked
(docs/bugs/weight-cache-in-graph-pool.md). The GPU sequence users run is
tests/test_compile.py::test_reduce_overhead_training_steps_see_every_weight_update."""

import pytest
import torch

from mhc_ops.kernels import _cache
from mhc_ops.kernels._launch import op_body
from tests.helpers import KERNEL_DEVICE

RECORD = "docs/bugs/weight-cache-in-graph-pool.md"
needs_kernels = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")


def _weights():
    return torch.randn(24, 64, device=KERNEL_DEVICE or "cpu"), torch.randn(4, 16, device=KERNEL_DEVICE or "cpu")


def _kept_across_op_bodies() -> bool:
    """Two calls of weight_derived inside op bodies on the same weights: was anything kept?"""
    _cache.clear()
    phi, gamma = _weights()
    calls = []

    def fn(phi, gamma):
        calls.append(1)
        return phi.sum() + gamma.sum()

    for _ in range(2):
        with op_body(traced=False):
            _cache.weight_derived("test.split", fn, phi, gamma)
    kept = len(_cache._ENTRIES) > 0 or len(calls) < 2
    _cache.clear()
    return kept


def test_nothing_is_cached_inside_an_op_body():
    assert not _kept_across_op_bodies()


def test_the_check_fails_the_old_cache(monkeypatch):
    """The old cache did not look at the op body: the same check sees the kept entry."""
    monkeypatch.setattr(_cache, "in_op_body", lambda: False)
    assert _kept_across_op_bodies()


@needs_kernels
def test_the_registered_op_leaves_the_cache_empty():
    """The compiled path's op (run by the dispatcher, as a compiled graph runs it) on bf16 x, whose
    forward needs the weight split: nothing is left in the cache; an eager call still caches."""
    n, D, T = 4, 16, 5
    O = n * n + 2 * n
    x = torch.randn(T, n, D, device=KERNEL_DEVICE).bfloat16()
    phi = torch.randn(O, n * D, device=KERNEL_DEVICE) / (n * D) ** 0.5
    alpha, bias = torch.rand(3, device=KERNEL_DEVICE) + 0.5, torch.randn(O, device=KERNEL_DEVICE)
    gamma = 1 + 0.5 * torch.randn(n, D, device=KERNEL_DEVICE)
    from mhc_ops._impl import resolve_route
    from mhc_ops.ops import MHC_PRE

    route = resolve_route("triton", None, x)
    fwd, _ = MHC_PRE.traced if route.traced else MHC_PRE.opaque
    _cache.clear()
    fwd(x, phi, alpha, bias, gamma, 1e-6, 1e-6, route.key)
    assert len(_cache._ENTRIES) == 0
    MHC_PRE.forward_raw(route, (x, phi, alpha, bias, gamma), (1e-6, 1e-6))
    assert len(_cache._ENTRIES) == 1
    _cache.clear()
