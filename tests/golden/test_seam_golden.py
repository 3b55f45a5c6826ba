"""The seam's golden (golden/seam.py: mhc_post(l), then the delayed pre(l+1)), forward and backward,
proven in float64 against torch.autograd through a direct transcription of the contract; and its
backward is the unfused ops' backwards chained, up to where dx(l+1) is rounded."""


import pytest
import torch

from mhc_ops.golden import rel_err
from mhc_ops.golden.mhc_post import mhc_post_backward
from mhc_ops.golden.mhc_pre import mhc_pre_delayed_backward
from mhc_ops.golden.seam import SEAM_GRADS, SEAM_OUTPUTS, seam_backward, seam_forward
from tests.cases import SEAM_CASES
from tests.helpers import SEAM_POST as POST
from tests.helpers import SEAM_PRE as PRE
from tests.helpers import SEAM_UPSTREAM as UPSTREAM
from tests.helpers import contract_coefficients, contract_post, seam_inputs

F64_TOL = 1e-10
LEAVES = ("x", "h_res", "h_out", "h_post", "phi", "alpha", "bias", "gamma", "h_pre_prev")  # SEAM_GRADS' order


def _autograd(case, t: dict) -> tuple[dict, dict]:
    """x_next = post(x, h_res, h_out, h_post), then the delayed pre of x_next, written out from the contract;
    the loss pairs each output with its upstream gradient (grad_x_next with x_next)."""
    leaves = {k: None if t[k] is None else t[k].clone().requires_grad_() for k in LEAVES}
    x, h_res, h_out, h_post, phi, alpha, bias, gamma, hpp = (leaves[k] for k in LEAVES)
    n, D = case.n, case.D
    x_next = contract_post(x, h_res, h_out, h_post, n, D)
    c = contract_coefficients(x_next.reshape(-1, n * D), phi, alpha, bias, gamma, n, case.norm_eps, case.hc_eps)
    h_pre, next_h_post, next_h_res = c["h_pre"], c["h_post"], c["h_res"]
    h_in = x_next[:, 0] if hpp is None else (hpp.reshape(-1, n, 1) * x_next).sum(1)
    loss = (h_in * t["dh_in"].reshape(-1, D)).sum() + (next_h_post * t["dh_next_post"].reshape(-1, n)).sum()
    loss = loss + (next_h_res * t["dh_next_res"].reshape(-1, n * n)).sum()
    loss = loss + (h_pre * t["dh_next_pre"].reshape(-1, n)).sum()
    if t["grad_x_next"] is not None:
        loss = loss + (x_next * t["grad_x_next"].reshape(-1, n, D)).sum()
    loss.backward()
    outs = {"out": x_next, "h_in": h_in, "next_h_post": next_h_post, "next_h_res": next_h_res, "next_h_pre": h_pre}
    return outs, {gr: None if leaves[k] is None else leaves[k].grad for gr, k in zip(SEAM_GRADS, LEAVES)}


def _golden(case, t: dict, cd) -> tuple[dict, dict]:
    fwd = dict(zip(SEAM_OUTPUTS, seam_forward(*(t[k] for k in (*POST, *PRE)), norm_eps=case.norm_eps,
                                              hc_eps=case.hc_eps, compute_dtype=cd)))  # fmt: skip
    saved = [fwd[k] for k in ("out", "next_h_post", "next_inv_rms", "next_h_mix", "next_h_pre")]
    grads = seam_backward(*(t[k] for k in (*POST, *PRE)), *saved, *(t[k] for k in UPSTREAM), hc_eps=case.hc_eps,
                          compute_dtype=cd)  # fmt: skip
    return fwd, dict(zip(SEAM_GRADS, grads))


@pytest.mark.parametrize("gxp", [False, True], ids=["", "gxp"])
@pytest.mark.parametrize("first", [False, True], ids=["h_pre_prev", "first"])
@pytest.mark.parametrize("case", SEAM_CASES, ids=str)
def test_seam_golden_matches_autograd(case, first, gxp):
    t = seam_inputs(case, first, gxp, torch.float64)
    ref_outs, ref_grads = _autograd(case, t)
    outs, grads = _golden(case, t, torch.float64)
    for k, ref in ref_outs.items():
        assert rel_err(outs[k].reshape(ref.shape), ref) < F64_TOL, k
    for k in SEAM_GRADS:
        if ref_grads[k] is None:
            assert grads[k] is None, k
        else:
            assert grads[k].dtype == torch.float64 and rel_err(grads[k], ref_grads[k]) < F64_TOL, k


@pytest.mark.parametrize("case", SEAM_CASES, ids=str)
def test_seam_backward_is_the_unfused_backwards_with_dx_next_unrounded(case):
    """The pre's backward on x_next as stored, then post's with its dx as dout: exactly the seam's when dx
    is not rounded (fp32 x); with a 16-bit x the seam keeps dx(l+1) in fp32, the ops round it."""
    t = seam_inputs(case, first=False, gxp=True)
    fwd, grads = _golden(case, t, torch.float32)
    dx_next, *pre_grads = mhc_pre_delayed_backward(
        fwd["out"], t["phi"], t["alpha"], t["dh_in"], t["dh_next_post"], t["dh_next_res"], t["dh_next_pre"],
        fwd["next_inv_rms"], fwd["next_h_mix"], fwd["next_h_pre"], fwd["next_h_post"], t["gamma"], t["h_pre_prev"],
        grad_x_post=t["grad_x_next"],
    )  # fmt: skip
    unfused = (*mhc_post_backward(t["x"], t["h_res"], t["h_out"], t["h_post"], dx_next), *pre_grads)
    exact = t["x"].dtype == torch.float32
    for k, a, b in zip(SEAM_GRADS, (grads[k] for k in SEAM_GRADS), unfused):
        if b is None:
            assert a is None, k
        elif exact or k in ("dphi", "dalpha", "dbias", "dgamma", "dh_pre_prev"):
            assert torch.equal(a, b), k
        else:  # post's gradients from dx(l+1) in fp32 against dx(l+1) rounded to x's dtype
            assert 0 < rel_err(a, b) < 2 * torch.finfo(t["x"].dtype).eps, k
