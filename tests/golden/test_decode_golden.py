"""The boundary's golden at decode (golden/seam.py boundary_forward: post(l), the delayed or plain pre(l+1)
on x(l+1) as stored, sinkhorn of the next h_res), proven in float64 against a direct transcription of the
contract, and consistent with the layer's golden (golden.layer) that consumes its outputs."""

import dataclasses

import pytest
import torch

from mhc_ops.golden import rel_err
from mhc_ops.golden.fixtures import make_inputs
from mhc_ops.golden.layer import layer_forward
from mhc_ops.golden.mhc_post import mhc_post_forward
from mhc_ops.golden.seam import BOUNDARY_OUTPUTS, boundary_forward
from tests.cases import SEAM_CASES
from tests.helpers import contract_coefficients, contract_post, delayed_inputs

F64_TOL = 1e-10
POST = ("x", "h_res", "h_out", "h_post")
PRE = ("h_pre_prev", "phi", "alpha", "bias", "gamma")
DELAYED = pytest.mark.parametrize("delayed", [True, False], ids=["delayed", "plain"])
ITERS = pytest.mark.parametrize("iters", [1, 3, 20])


def _inputs(case, delayed: bool) -> dict:
    pre = delayed_inputs(case, first=not delayed)  # h_pre_prev None: the plain pre
    post = make_inputs(dataclasses.replace(case, op="mhc_post"))
    return {k: post[k] for k in POST} | {k: pre[k] for k in PRE}


def _up(v):
    return v.double() if isinstance(v, torch.Tensor) else v


def _contract(case, t: dict, iters: int, eps: float) -> dict:
    """The boundary written out from the contract in float64 (x(l+1) rounded to x's dtype before the pre)."""
    n, D = case.n, case.D
    x, h_res, h_out, h_post, hpp, phi, alpha, bias, gamma = (_up(t[k]) for k in (*POST, *PRE))
    x_next = contract_post(x, h_res, h_out, h_post, n, D)
    stored = x_next.to(t["x"].dtype).double()
    c = contract_coefficients(stored.reshape(-1, n * D), phi, alpha, bias, gamma, n, case.norm_eps, case.hc_eps)
    h_mix, inv_rms, h_pre = c["h_mix"], c["inv_rms"], c["h_pre"]
    coll = h_pre if hpp is None else hpp.reshape(-1, n)
    L = c["h_res"].reshape(-1, n, n)
    P = torch.softmax(L, dim=-1) + eps
    P = P / (P.sum(-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        P = P / (P.sum(-1, keepdim=True) + eps)
        P = P / (P.sum(-2, keepdim=True) + eps)
    lead = case.lead
    return {
        "out": x_next.reshape(*lead, n, D),
        "h_in": (coll[:, :, None] * stored).sum(1).reshape(*lead, D),
        "next_h_post": c["h_post"].reshape(*lead, n),
        "next_h_res": L.reshape(*lead, n, n),
        "next_inv_rms": inv_rms.reshape(lead),
        "next_h_mix": h_mix.reshape(*lead, -1),
        "next_h_pre": h_pre.reshape(*lead, n),
        "next_P": P.reshape(*lead, n, n),
    }


@ITERS
@DELAYED
@pytest.mark.parametrize("case", SEAM_CASES, ids=str)
def test_boundary_forward_against_contract(case, delayed, iters):
    t = _inputs(case, delayed)
    got = boundary_forward(*(_up(t[k]) for k in (*POST, *PRE)), iters=iters, eps=1e-6, norm_eps=case.norm_eps,
                           hc_eps=case.hc_eps, compute_dtype=torch.float64, store_dtype=t["x"].dtype)  # fmt: skip
    ref = _contract(case, t, iters, 1e-6)
    # h_in is stored in x's dtype: compare it in that dtype, the rest exactly in float64
    errs = {k: rel_err(g.double(), ref[k].to(g.dtype).double()) for k, g in zip(BOUNDARY_OUTPUTS, got)}
    assert all(e <= F64_TOL for e in errs.values()), errs


@DELAYED
@pytest.mark.parametrize("case", SEAM_CASES, ids=str)
def test_boundary_feeds_the_next_layer(case, delayed):
    """The layer golden of sublayer l+1 on x(l+1) (pre, sinkhorn and post around a branch F) equals post(l+1)
    applied to the boundary's h_in, next_h_post and next_P: the boundary computes that layer's prefix."""
    t = _inputs(case, delayed)
    args = [_up(t[k]) for k in (*POST, *PRE)]
    got = dict(zip(BOUNDARY_OUTPUTS, boundary_forward(*args, compute_dtype=torch.float64, store_dtype=t["x"].dtype)))
    x_next = got["out"].to(t["x"].dtype).double()
    w = torch.linspace(-1, 1, case.D * case.D, dtype=torch.float64).reshape(case.D, case.D)
    branch = lambda h: torch.tanh(h @ w)  # noqa: E731
    phi, alpha, bias, gamma, hpp = (_up(t[k]) for k in ("phi", "alpha", "bias", "gamma", "h_pre_prev"))
    layer = layer_forward(x_next, phi, alpha, bias, gamma, branch, delayed=delayed, h_pre_prev=hpp,
                          compute_dtype=torch.float64)  # fmt: skip
    layer = layer[0] if delayed else layer
    composed = mhc_post_forward(x_next, got["next_P"], branch(got["h_in"]), got["next_h_post"],
                                compute_dtype=torch.float64)  # fmt: skip
    assert rel_err(layer, composed) <= F64_TOL
    P = got["next_P"]
    assert torch.allclose(P.sum(-2), torch.ones_like(P.sum(-2)), atol=1e-5)  # the last pass: columns
