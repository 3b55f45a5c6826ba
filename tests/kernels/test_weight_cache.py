"""The cache of weight-derived tensors (kernels/_cache.py): recomputed whenever a weight changes."""

import gc

import torch

from mhc_ops.kernels import _cache


def _counting():
    calls = []

    def fn(phi, gamma):
        calls.append(1)
        return phi * 2 if gamma is None else phi * gamma

    return fn, calls


def test_hit_until_an_in_place_change_or_new_storage():
    _cache.clear()
    fn, calls = _counting()
    phi = torch.randn(3, 4)
    a = _cache.weight_derived("t", fn, phi, None)
    assert _cache.weight_derived("t", fn, phi, None) is a and len(calls) == 1
    with torch.no_grad():
        phi.add_(1.0)  # an optimizer step: the version counter moves
    assert torch.equal(_cache.weight_derived("t", fn, phi, None), phi * 2) and len(calls) == 2
    phi.data = torch.randn(3, 4)  # new storage, same tensor object
    assert torch.equal(_cache.weight_derived("t", fn, phi, None), phi * 2) and len(calls) == 3


def test_each_weight_of_the_key_counts():
    _cache.clear()
    fn, calls = _counting()
    phi, gamma = torch.randn(3, 4), torch.randn(3, 4)
    _cache.weight_derived("t", fn, phi, gamma)
    with torch.no_grad():
        gamma.mul_(3.0)
    assert torch.equal(_cache.weight_derived("t", fn, phi, gamma), phi * gamma) and len(calls) == 2


def test_freed_weights_leave_the_cache_and_inference_tensors_bypass_it():
    _cache.clear()
    fn, calls = _counting()
    phi = torch.randn(3, 4)
    _cache.weight_derived("t", fn, phi, None)
    assert len(_cache._ENTRIES) == 1
    del phi
    gc.collect()
    assert len(_cache._ENTRIES) == 0
    with torch.inference_mode():
        w = torch.randn(2, 2)
    _cache.weight_derived("t", fn, w, None)
    _cache.weight_derived("t", fn, w, None)
    assert len(calls) == 3 and len(_cache._ENTRIES) == 0
