"""Hypothesis fuzzing of the public ops sinkhorn and mhc_post through autograd: Triton (the
interpreter on CPU) against the golden backend, over n 1..8, odd D, BSND/TND and x dtypes."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mhc_ops
from tests.helpers import KERNEL_DEVICE

pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
LEADS = st.sampled_from([(0,), (1,), (3,), (2, 3), (1, 2)])
DTYPES = st.sampled_from([torch.float32, torch.bfloat16, torch.float16])
FUZZ = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _run(op, tensors, upstream, backend):
    leaves = [t.detach().clone().to(KERNEL_DEVICE).requires_grad_() for t in tensors]
    out = op(*leaves, backend=backend)
    out.backward(upstream.to(KERNEL_DEVICE))
    return out.detach().cpu(), [t.grad.cpu() for t in leaves]


def _close(a, b, dtype):
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    return torch.allclose(a.float(), b.float(), rtol=tol, atol=tol)


@FUZZ
@given(lead=LEADS, n=st.integers(1, 8), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_sinkhorn_triton_matches_golden(lead, n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(*lead, n, n, generator=g)).to(dtype)
    dP = torch.randn(*lead, n, n, generator=g)
    (P, (dl,)), (P_ref, (dl_ref,)) = (_run(mhc_ops.sinkhorn, [logits], dP, b) for b in ("triton", "golden"))
    assert P.dtype == torch.float32 and dl.dtype == dtype
    assert _close(P, P_ref, torch.float32) and _close(dl, dl_ref, dtype)


@FUZZ
@given(lead=LEADS, n=st.integers(1, 8), D=st.sampled_from([1, 5, 13, 33]), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_mhc_post_triton_matches_golden(lead, n, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, n, D, generator=g).to(dtype)
    h_res = torch.softmax(torch.randn(*lead, n, n, generator=g), dim=-1)
    h_out = torch.randn(*lead, D, generator=g).to(dtype)
    h_post = 2 * torch.sigmoid(torch.randn(*lead, n, generator=g))
    dout = torch.randn(*lead, n, D, generator=g).to(dtype)
    tri, ref = (_run(mhc_ops.mhc_post, [x, h_res, h_out, h_post], dout, b) for b in ("triton", "golden"))
    assert tri[0].dtype == dtype and _close(tri[0], ref[0], dtype)
    for a, b in zip(tri[1], ref[1]):
        assert a.dtype == b.dtype and _close(a, b, dtype if a.dtype != torch.float32 else torch.float32)
