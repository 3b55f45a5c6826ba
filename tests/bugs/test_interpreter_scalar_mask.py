"""Regression: under Triton's interpreter, `mask & (i < n)` with a scalar test reaches tl.load as an
integer mask, which Triton 3.9 refuses; every kernel's masks stay bool."""

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from triton.runtime import interpreter

import mhc_ops
from mhc_ops.kernels.fwd import launch_fwd
from mhc_ops.stages import Pipeline
from tests.helpers import INTERPRETING

RECORD = "docs/bugs/interpreter-scalar-mask.md"
pytestmark = pytest.mark.skipif(not INTERPRETING, reason="compiled kernels do not go through the interpreter")


@pytest.fixture
def mask_dtypes(monkeypatch):
    """The numpy dtype of every mask handed to a masked load or store while active."""
    seen = set()
    builder = interpreter.InterpreterBuilder
    load, store = builder.create_masked_load, builder.create_masked_store

    def spy_load(self, ptrs, mask, *rest):
        seen.add(mask.data.dtype)
        return load(self, ptrs, mask.__class__(mask.data.astype(bool), mask.dtype), *rest)

    def spy_store(self, ptrs, value, mask, *rest):
        seen.add(mask.data.dtype)
        return store(self, ptrs, value, mask.__class__(mask.data.astype(bool), mask.dtype), *rest)

    monkeypatch.setattr(builder, "create_masked_load", spy_load)
    monkeypatch.setattr(builder, "create_masked_store", spy_store)
    return seen


def _layer_inputs(T, n, D):
    O = n * n + 2 * n
    x = torch.randn(T, n, D, requires_grad=True)
    phi = (torch.randn(O, n * D) / (n * D) ** 0.5).requires_grad_()
    alpha = (0.5 + torch.rand(3)).requires_grad_()
    bias = (0.1 * torch.randn(O)).requires_grad_()
    gamma = (1 + 0.1 * torch.randn(n, D)).requires_grad_()
    return x, phi, alpha, bias, gamma


@pytest.mark.parametrize("n", [3, 4])  # n = 3: streams padded to N_PAD = 4, the i < n test masks one
def test_every_kernel_masks_with_bools(mask_dtypes, n):
    T, D = 5, 32
    x, phi, alpha, bias, gamma = _layer_inputs(T, n, D)
    # The op's step: fwd, sinkhorn and post forward and backward, the fused mhc_pre backward.
    h_in, h_post, h_res = mhc_ops.mhc_pre(x, phi, alpha, bias, gamma, backend="triton")
    out = mhc_ops.mhc_post(x, mhc_ops.sinkhorn(h_res, backend="triton"), torch.tanh(h_in), h_post, backend="triton")
    out.square().sum().backward()
    # The staged backward (dh_mix, dx, dparams, dgamma) and the split forward (partial + finish kernels).
    with torch.no_grad():
        Pipeline("triton").run(x=x, phi=phi, alpha=alpha, bias=bias, gamma=gamma, dh_in=torch.randn(T, D),
                               dh_post=torch.randn(T, n), dh_res=torch.randn(T, n, n))  # fmt: skip
        launch_fwd(x, phi, alpha, bias, gamma, 1e-6, 1e-6, splits=2)
    assert mask_dtypes == {np.dtype(bool)}, f"masks reached tl.load/tl.store as {sorted(map(str, mask_dtypes))}"


@triton.jit
def _copy_streams_kernel(src_ptr, dst_ptr, n, D, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, SCALAR_AND: tl.constexpr):
    """dst[i, :D] = src[i, :D] for the streams i < n of N_PAD, masked as the forward's apply_tile is."""
    d = tl.arange(0, BLOCK_D)
    mask = d < D
    for i in tl.static_range(N_PAD):
        if SCALAR_AND:
            live = mask & (i < n)  # the idiom the record is about
        else:
            live = mask & tl.where(i < n, True, False)
        tl.store(dst_ptr + i * D + d, tl.load(src_ptr + i * D + d, mask=live, other=0.0), mask=live)


@pytest.mark.parametrize("scalar_and", [False, True])
def test_check_catches_a_scalar_test_in_a_mask(mask_dtypes, scalar_and):
    n, N_PAD, D = 3, 4, 20
    src = torch.randn(N_PAD, D)
    dst = torch.zeros(N_PAD, D)
    _copy_streams_kernel[(1,)](src, dst, n, D, N_PAD=N_PAD, BLOCK_D=32, SCALAR_AND=scalar_and)
    assert torch.equal(dst[:n], src[:n]) and not dst[n:].any()
    # The fixture's spy hands the kernel bool masks, so the old idiom runs here on every Triton; the
    # dtype it would have handed in is what the first test looks at.
    assert (mask_dtypes == {np.dtype(bool)}) != scalar_and, sorted(map(str, mask_dtypes))
