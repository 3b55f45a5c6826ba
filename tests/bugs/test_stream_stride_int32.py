"""Regression: a stream stride past 2**31 / (n - 1) elements: x (and grad_x_post, dout) as a [T, n, D] view of an
[n, T_STORAGE, D] storage, so that stream i starts i * T_STORAGE * D elements in. The kernels must
multiply the stream index by that stride in 64 bits: an int32 product wraps for stream n - 1 and reads
2**32 elements too low. Only the view's few tokens are written; the 5.7 GB storage is address space
(the CPU allocates pages when touched; a GPU needs the memory free)."""

import pytest
import torch

import mhc_ops
from mhc_ops.golden import Case, judge, mhc_pre_backward, mhc_pre_forward
from mhc_ops.golden.fixtures import make_inputs
from mhc_ops.golden.mhc_post import mhc_post_backward, mhc_post_forward
from mhc_ops.kernels import post as kp
from mhc_ops.kernels._common import stream64
from tests.helpers import KERNEL_DEVICE

RECORD = "docs/bugs/stream-stride-int32.md"
pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
N, D, T = 4, 16, 5
T_STORAGE = 2**31 // ((N - 1) * D) + 1  # (N - 1) * stream stride >= 2**31
FWD = ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre")
BWD = ("dx", "dphi", "dalpha", "dbias", "dgamma")


def _stream_major(t: torch.Tensor) -> torch.Tensor:
    """t [T, N, D] -> the same values as a view of an [N, T_STORAGE, D] buffer."""
    storage = torch.empty((N, T_STORAGE, D), dtype=t.dtype, device=t.device)
    view = storage[:, :T].permute(1, 0, 2)
    view.copy_(t)
    assert view.stride(1) * (N - 1) >= 2**31
    return view


def _f64(*ts):
    return [t.double() if t is not None else None for t in ts]


@pytest.mark.parametrize("plan", ["fused", "staged"])
def test_mhc_pre_with_a_stream_stride_past_int32(plan):
    t = make_inputs(Case(lead=(T,), n=N, D=D, dtype="bfloat16", seed=901, grad_x_post=True), KERNEL_DEVICE)
    x, gxp = _stream_major(t["x"]), _stream_major(t["grad_x_post"])
    params = (t["phi"], t["alpha"], t["bias"], t["gamma"])
    fwd = mhc_ops.mhc_pre_forward(x, *params, backend="triton")
    fwd64 = mhc_pre_forward(*_f64(t["x"], *params), compute_dtype=torch.float64)
    fwd32 = mhc_pre_forward(t["x"], *params)
    verdicts = [judge(k, a, b, c) for k, a, b, c in zip(FWD, fwd, fwd64, fwd32)]
    saved = dict(zip(FWD, fwd32))
    rest = (t["dh_in"], t["dh_post"], t["dh_res"], *(saved[k] for k in ("inv_rms", "h_mix", "h_pre", "h_post")))
    bwd = mhc_ops.mhc_pre_backward(x, t["phi"], t["alpha"], *rest, t["gamma"], grad_x_post=gxp, backend="triton",
                                   plan=plan)  # fmt: skip
    args = (t["x"], t["phi"], t["alpha"], *rest, t["gamma"])
    bwd64 = mhc_pre_backward(*_f64(*args), grad_x_post=t["grad_x_post"].double(), compute_dtype=torch.float64)
    bwd32 = mhc_pre_backward(*args, grad_x_post=t["grad_x_post"])
    verdicts += [judge(k, a, b, c) for k, a, b, c in zip(BWD, bwd, bwd64, bwd32)]
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))


def test_mhc_post_with_a_stream_stride_past_int32():
    t = make_inputs(Case(lead=(T,), n=N, D=D, dtype="bfloat16", seed=902, op="mhc_post"), KERNEL_DEVICE)
    x, dout = _stream_major(t["x"]), _stream_major(t["dout"])
    args = (t["h_res"], t["h_out"], t["h_post"])
    out = kp.post_fwd(x=x, h_res=args[0], h_out=args[1], h_post=args[2])["out"]
    verdicts = [judge("out", out, mhc_post_forward(*_f64(t["x"], *args), compute_dtype=torch.float64),
                      mhc_post_forward(t["x"], *args))]  # fmt: skip
    grads = kp.post_bwd(x=x, h_res=args[0], h_out=args[1], h_post=args[2], dout=dout)
    ref64 = mhc_post_backward(*_f64(t["x"], *args, t["dout"]), compute_dtype=torch.float64)
    ref32 = mhc_post_backward(t["x"], *args, t["dout"])
    names = ("dx", "dh_res", "dh_out", "dh_post")
    verdicts += [judge(k, grads[k], a, b) for k, a, b in zip(names, ref64, ref32)]
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))


def test_the_forward_takes_64_bit_stream_offsets_exactly_where_int32_would_wrap():
    """stream64 chooses the forward's STREAM64 path: i * s_i for i <= n - 1 must stay below 2**31."""
    s = (2**31 - 1) // (N - 1)
    assert not stream64(N, s) and stream64(N, s + 1) and not stream64(1, 2**40)
    assert stream64(N, _stream_major(torch.zeros(T, N, D)).stride(1))
