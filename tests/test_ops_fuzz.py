"""Hypothesis fuzzing of the public ops sinkhorn and mhc_post, and of the whole layer, through autograd:
Triton (the interpreter on CPU) against the golden backend, over n 1..8, odd D, BSND/TND and x dtypes."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mhc_ops
from mhc_ops.golden import judge
from mhc_ops.golden.mhc_post import mhc_post_forward
from mhc_ops.golden.sinkhorn import sinkhorn_forward
from tests.helpers import KERNEL_DEVICE, fuzz_settings, layer_golden64, layer_grads, random_layer

pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
LEADS = st.sampled_from([(0,), (1,), (3,), (2, 3), (1, 2)])
DTYPES = st.sampled_from([torch.float32, torch.bfloat16, torch.float16])
FUZZ = fuzz_settings(8)


def _run(op, tensors, upstream, backend, device=KERNEL_DEVICE):
    leaves = [t.detach().clone().to(device).requires_grad_() for t in tensors]
    out = op(*leaves, backend=backend)
    out.backward(upstream.to(device))
    return out.detach().cpu(), [t.grad.cpu() for t in leaves]


def _assert_accurate(names, tri, fp32, fp64):
    """Triton's output and gradients against the float64 golden, the golden backend's fp32 run setting
    the bound (golden.accuracy)."""
    verdicts = [judge(k, a, c, b) for k, a, b, c in zip(names, [tri[0], *tri[1]], [fp32[0], *fp32[1]], [fp64[0], *fp64[1]])]
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))


@FUZZ
@given(lead=LEADS, n=st.integers(1, 8), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_sinkhorn_triton_matches_golden(lead, n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(*lead, n, n, generator=g)).to(dtype)
    dP = torch.randn(*lead, n, n, generator=g)
    tri, fp32 = (_run(mhc_ops.sinkhorn, [logits], dP, b) for b in ("triton", "golden"))
    l64 = logits.double().requires_grad_()
    P64 = sinkhorn_forward(l64, 20, 1e-6, compute_dtype=torch.float64)
    P64.backward(dP.double())
    assert tri[0].dtype == torch.float32 and tri[1][0].dtype == dtype
    _assert_accurate(("P", "dlogits"), tri, fp32, (P64.detach(), [l64.grad]))


@FUZZ
@given(lead=LEADS, n=st.integers(1, 8), D=st.sampled_from([1, 5, 13, 33]), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_mhc_post_triton_matches_golden(lead, n, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, n, D, generator=g).to(dtype)
    h_res = torch.softmax(torch.randn(*lead, n, n, generator=g), dim=-1)
    h_out = torch.randn(*lead, D, generator=g).to(dtype)
    h_post = 2 * torch.sigmoid(torch.randn(*lead, n, generator=g))
    dout = torch.randn(*lead, n, D, generator=g).to(dtype)
    tri, fp32 = (_run(mhc_ops.mhc_post, [x, h_res, h_out, h_post], dout, b) for b in ("triton", "golden"))
    leaves = [t.double().requires_grad_() for t in (x, h_res, h_out, h_post)]
    out64 = mhc_post_forward(*leaves, compute_dtype=torch.float64)
    out64.backward(dout.double())
    assert tri[0].dtype == dtype and [g.dtype for g in tri[1]] == [dtype, torch.float32, dtype, torch.float32]
    _assert_accurate(("out", "dx", "dh_res", "dh_out", "dh_post"), tri, fp32, (out64.detach(), [t.grad for t in leaves]))


@FUZZ
@given(
    T=st.integers(1, 6), n=st.integers(1, 8), D=st.sampled_from([5, 47, 69]), dtype=DTYPES,
    iters=st.sampled_from([3, 25]), logit_scale=st.sampled_from([1.0, 4.0]), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_layer_triton_matches_golden(T, n, D, dtype, iters, logit_scale, seed):
    """The whole layer (HyperConnection around a linear branch) with sharpened logits (alpha and bias x4:
    saturated sigmoids, a peaked Sinkhorn), fp16 included: the regime of issue 21's precision report."""

    def layer(backend):
        hc = random_layer(n, D, seed, backend=backend, sinkhorn_iters=iters)
        with torch.no_grad():
            hc.alpha.mul_(logit_scale)
            hc.bias.mul_(logit_scale)
        return hc.to(dtype)

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, n, D, generator=g).to(dtype)
    dout = torch.randn(T, n, D, generator=g).to(dtype)
    ref_out, ref = layer_golden64(layer(None), x, dout)
    gold_out, gold = layer_grads(layer("golden"), x, dout)
    tri_out, tri = layer_grads(layer("triton").to(KERNEL_DEVICE), x.to(KERNEL_DEVICE), dout.to(KERNEL_DEVICE))
    verdicts = [judge("x_next", tri_out.cpu(), ref_out, gold_out)]
    verdicts += [judge(k, tri[k].cpu(), ref[k], gold[k]) for k in ref]
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))
