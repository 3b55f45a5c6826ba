"""The delayed pre's golden (DeepSeek-V4.1), forward and backward, proven in float64 against torch.autograd
through a direct transcription of the contract (../shared/spec/mhc-math.md, "Delayed pre")."""

import pytest
import torch

from mhc_ops.golden import mhc_pre_forward, rel_err
from mhc_ops.golden.mhc_pre import mhc_pre_delayed_backward, mhc_pre_delayed_forward
from tests.cases import DELAYED_AUTOGRAD_CASES
from tests.helpers import contract_coefficients, delayed_inputs

F64_TOL = 1e-10
INPUTS = ("x", "phi", "alpha", "bias", "gamma", "h_pre_prev")
GRADS = ("dx", "dphi", "dalpha", "dbias", "dgamma", "dh_pre_prev")


def _f64(case, first):
    return {k: None if v is None else v.double() for k, v in delayed_inputs(case, first).items()}


def _autograd(case, t):
    """The contract written out in torch; its outputs and every input gradient by autograd."""
    leaves = {k: None if t[k] is None else t[k].clone().requires_grad_() for k in INPUTS}
    x, phi, alpha, bias, gamma, hpp = (leaves[k] for k in INPUTS)
    n, D = case.n, case.D
    v = x.reshape(-1, n * D)
    c = contract_coefficients(v, phi, alpha, bias, gamma, n, case.norm_eps, case.hc_eps)
    h_pre, h_post, h_res = c["h_pre"], c["h_post"], c["h_res"]
    streams = v.view(-1, n, D)
    h_in = streams[:, 0] if hpp is None else (hpp.reshape(-1, n, 1) * streams).sum(1)
    loss = (h_in * t["dh_in"].reshape(-1, D)).sum() + (h_post * t["dh_post"].reshape(-1, n)).sum()
    loss = loss + (h_res * t["dh_res"].reshape(-1, n * n)).sum() + (h_pre * t["dh_pre"].reshape(-1, n)).sum()
    if t["grad_x_post"] is not None:
        loss = loss + (x * t["grad_x_post"]).sum()
    loss.backward()
    outs = {"h_in": h_in, "h_post": h_post, "h_res": h_res, "h_pre": h_pre}
    return outs, {g: None if leaves[i] is None else leaves[i].grad for g, i in zip(GRADS, INPUTS)}


def _golden(case, t):
    h_in, h_post, h_res, h_pre, inv_rms, h_mix = mhc_pre_delayed_forward(
        t["x"], t["phi"], t["alpha"], t["bias"], t["gamma"], t["h_pre_prev"], norm_eps=case.norm_eps,
        hc_eps=case.hc_eps, compute_dtype=torch.float64,
    )  # fmt: skip
    grads = mhc_pre_delayed_backward(
        t["x"], t["phi"], t["alpha"], t["dh_in"], t["dh_post"], t["dh_res"], t["dh_pre"], inv_rms, h_mix, h_pre,
        h_post, t["gamma"], t["h_pre_prev"], hc_eps=case.hc_eps, grad_x_post=t["grad_x_post"],
        compute_dtype=torch.float64,
    )  # fmt: skip
    return {"h_in": h_in, "h_post": h_post, "h_res": h_res, "h_pre": h_pre}, dict(zip(GRADS, grads))


@pytest.mark.parametrize("first", [False, True], ids=["h_pre_prev", "first"])
@pytest.mark.parametrize("case", DELAYED_AUTOGRAD_CASES, ids=str)
def test_delayed_golden_matches_autograd(case, first):
    t = _f64(case, first)
    outs, grads = _golden(case, t)
    want_outs, want_grads = _autograd(case, t)
    for k, want in want_outs.items():
        assert rel_err(outs[k].reshape(want.shape), want) < F64_TOL, k
    for k, want in want_grads.items():
        if want is None:
            assert grads[k] is None, k
            continue
        assert grads[k].shape == want.shape, k
        assert rel_err(grads[k], want) < F64_TOL, k


@pytest.mark.parametrize("case", DELAYED_AUTOGRAD_CASES[:2], ids=str)
def test_first_sublayer_takes_stream_zero(case):
    t = _f64(case, first=True)
    outs, _ = _golden(case, t)
    assert torch.equal(outs["h_in"], t["x"][..., 0, :])


@pytest.mark.parametrize("case", DELAYED_AUTOGRAD_CASES[:2], ids=str)
def test_delayed_differs_from_mhc_pre(case):
    """The collapse uses the previous coefficients, not this x's: a test that could not tell them apart
    would pass a kernel that ignores h_pre_prev."""
    t = _f64(case, first=False)
    outs, _ = _golden(case, t)
    h_in = mhc_pre_forward(t["x"], t["phi"], t["alpha"], t["bias"], t["gamma"], compute_dtype=torch.float64)[0]
    assert rel_err(outs["h_in"], h_in) > 1e-3
