"""64-bit offsets: a token whose elements sit past 2**31 in x is computed right (GPU only; x is 4.3 GB).

Per-token outputs depend on that token alone, so the last tokens of the big run are checked against
the golden run on those tokens only."""

import pytest
import torch

from mhc_ops.golden import Case, judge, mhc_pre_backward, mhc_pre_forward
from mhc_ops.golden.fixtures import make_inputs
from mhc_ops.kernels.fused_bwd import mhc_pre_backward_fused
from mhc_ops.kernels.fwd import mhc_pre_fwd
from tests.helpers import HAS_CUDA, INTERPRETING

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA or INTERPRETING, reason="needs a GPU with 20 GB free")]
N, D = 4, 7168
T = 2**31 // (N * D) + 64  # the last 64 tokens start past element 2**31 of x
TAIL = 32
FWD = ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre")


def _up(t):
    return t.double() if t is not None else None


def test_tokens_past_two_to_the_31():
    t = make_inputs(Case(lead=(T,), n=N, D=D, seed=11, grad_x_post=True), "cuda")
    assert (T - TAIL) * N * D > 2**31
    fwd = mhc_pre_fwd(x=t["x"], phi=t["phi"], alpha=t["alpha"], bias=t["bias"], gamma=t["gamma"])
    tail = {k: v[-TAIL:] if v is not None and v.dim() and v.shape[0] == T else v for k, v in t.items()}
    ref64 = mhc_pre_forward(
        *(_up(tail[k]) for k in ("x", "phi", "alpha", "bias", "gamma")), compute_dtype=torch.float64
    )
    ref32 = mhc_pre_forward(*(tail[k] for k in ("x", "phi", "alpha", "bias", "gamma")))
    verdicts = [judge(k, fwd[k][-TAIL:], r64, r32) for k, r64, r32 in zip(FWD, ref64, ref32)]
    saved = {k: fwd[k] for k in ("inv_rms", "h_mix", "h_pre", "h_post")}
    args = ("x", "phi", "alpha", "dh_in", "dh_post", "dh_res")
    bwd = mhc_pre_backward_fused(**{k: t[k] for k in args}, **saved, gamma=t["gamma"], grad_x_post=t["grad_x_post"])
    saved_tail = [saved[k][-TAIL:] for k in ("inv_rms", "h_mix", "h_pre", "h_post")]
    targs = [tail[k] for k in args] + saved_tail + [tail["gamma"]]
    dx64 = mhc_pre_backward(*map(_up, targs), grad_x_post=_up(tail["grad_x_post"]), compute_dtype=torch.float64)[0]
    dx32 = mhc_pre_backward(*targs, grad_x_post=tail["grad_x_post"])[0]
    verdicts.append(judge("dx", bwd["dx"][-TAIL:], dx64, dx32))
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))
