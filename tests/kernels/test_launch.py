"""The launch path of kernels/_launch.py: every launched kernel goes through it, the short path gives
the results of Triton's own launch, a new specialisation is a new entry (never a kernel compiled for
another alignment or divisibility), a token count is not, and launch hooks fall back to Triton."""

import importlib
import pkgutil

import pytest
import torch
from triton import knobs
from triton.runtime.jit import JITFunction

from mhc_ops import kernels
from mhc_ops.golden import Case, build
from mhc_ops.kernels import post
from mhc_ops.kernels._launch import LaunchedKernel
from tests.helpers import HAS_CUDA, INTERPRETING, assert_stage_accurate, nan_filled_outputs


def gpu(test):
    """GPU only: the interpreter launches through Triton's interpreted function, not this path."""
    test = pytest.mark.skipif(not HAS_CUDA or INTERPRETING, reason="compiled kernels need a GPU")(test)
    return pytest.mark.gpu(test)


def _kernel_attributes():
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"mhc_ops.kernels.{info.name}")
        for name, value in vars(module).items():
            if name.endswith("_kernel") and not name.startswith("__"):
                yield f"{info.name}.{name}", value


def test_every_launched_kernel_takes_the_short_path():
    found = dict(_kernel_attributes())
    assert len(found) >= 14, sorted(found)
    assert [name for name, k in found.items() if not isinstance(k, LaunchedKernel)] == []


class _JitRuns:
    """Counts JITFunction.run calls (Triton's own launch path) while patched in."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = JITFunction.run

        def run(jit, *args, **kwargs):
            self.count += 1
            return original(jit, *args, **kwargs)

        monkeypatch.setattr(JITFunction, "run", run)


def _post_fwd(x, h_res, h_out, h_post):
    with nan_filled_outputs():
        return post.launch_post_fwd(x, h_res, h_out, h_post)


def _post_bundle(T, D, seed):
    return build(Case(lead=(T,), n=4, D=D, seed=seed, op="mhc_post"), "cuda")


@gpu
@pytest.mark.parametrize("D", [64, 72])  # D is specialised (72 is not a multiple of 16)
def test_the_short_path_gives_triton_launch_results(D, monkeypatch):
    t = _post_bundle(37, D, seed=D).tensors
    args = (t["x"], t["h_res"], t["h_out"], t["h_post"])
    _post_fwd(*args)  # a device's first launch of the kernel goes through Triton
    runs = _JitRuns(monkeypatch)
    first = _post_fwd(*args)  # Triton's launch: the first time the short path sees this specialisation
    entries = post._post_fwd_kernel.compiled_count()
    again = _post_fwd(*args)  # the short path
    assert entries >= 1 and post._post_fwd_kernel.compiled_count() == entries
    assert runs.count <= 1  # the second call did not go through JITFunction.run
    assert torch.equal(first, again)
    assert_stage_accurate("post_fwd", _post_bundle(37, D, seed=D), {"out": again})


@gpu
def test_a_misaligned_tensor_is_a_new_specialisation():
    bundle = _post_bundle(21, 64, seed=3)
    t = bundle.tensors
    aligned = _post_fwd(t["x"], t["h_res"], t["h_out"], t["h_post"])
    before = post._post_fwd_kernel.compiled_count()
    # the same values one element into a larger buffer: x's pointer is no longer 16-byte aligned
    storage = torch.empty(t["x"].numel() + 1, device="cuda", dtype=t["x"].dtype)
    x_shifted = storage[1:].view(t["x"].shape)
    x_shifted.copy_(t["x"])
    assert x_shifted.data_ptr() % 16 != 0
    shifted = _post_fwd(x_shifted, t["h_res"], t["h_out"], t["h_post"])
    assert post._post_fwd_kernel.compiled_count() == before + 1
    assert torch.equal(aligned, shifted)
    assert_stage_accurate("post_fwd", bundle, {"out": shifted})


@gpu
def test_token_counts_share_one_entry():
    counts = []
    for T in (1, 37, 64, 1000):
        bundle = _post_bundle(T, 96, seed=T)
        t = bundle.tensors
        out = _post_fwd(t["x"], t["h_res"], t["h_out"], t["h_post"])
        assert_stage_accurate("post_fwd", bundle, {"out": out})
        counts.append(post._post_fwd_kernel.compiled_count())
    assert len(set(counts[1:])) == 1, counts  # T = 1 may add one: Triton specialises an int equal to 1


@gpu
def test_a_launch_hook_sees_every_launch(monkeypatch):
    bundle = _post_bundle(9, 64, seed=5)
    t = bundle.tensors
    args = (t["x"], t["h_res"], t["h_out"], t["h_post"])
    _post_fwd(*args)
    _post_fwd(*args)  # the short path from here on
    seen = []
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda metadata: seen.append(metadata))
    out = _post_fwd(*args)
    assert len(seen) == 1
    assert_stage_accurate("post_fwd", bundle, {"out": out})
