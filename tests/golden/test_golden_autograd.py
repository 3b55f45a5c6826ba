"""The golden backward is proven in float64 against torch.autograd through the golden forward."""

import pytest
import torch

from mhc_ops.golden import Case, mhc_pre_backward, mhc_pre_forward, rel_err
from mhc_ops.golden.fixtures import make_inputs
from tests.cases import AUTOGRAD_CASES, GRADCHECK_CASES

F64_TOL = 1e-10
PARAM_GRADS = {"dx": "x", "dphi": "phi", "dalpha": "alpha", "dbias": "bias", "dgamma": "gamma"}
STAGE_OF = {"dx": "dx", "dphi": "dparams", "dalpha": "dparams", "dbias": "dparams", "dgamma": "dgamma"}


def _f64_inputs(case: Case) -> dict:
    return {k: None if v is None else v.double() for k, v in make_inputs(case).items()}


def _autograd(case: Case, t: dict) -> dict:
    """Autograd through the golden forward, with the spec's intermediates exposed by retain_grad."""
    leaves = {k: t[k].clone().requires_grad_() for k in ("x", "phi", "alpha", "bias")}
    gamma = None if t["gamma"] is None else t["gamma"].clone().requires_grad_()
    x, phi, alpha, bias = leaves["x"], leaves["phi"], leaves["alpha"], leaves["bias"]
    n, D = case.n, case.D
    v = x.reshape(-1, n * D)
    vg = v.clone() if gamma is None else v * gamma.reshape(-1)  # its own node: v also feeds inv_rms, h_in
    vg.retain_grad()
    h_mix = vg @ phi.t()
    h_mix.retain_grad()
    inv_rms = torch.rsqrt(v.square().mean(-1) + case.norm_eps)
    inv_rms.retain_grad()
    m = h_mix * inv_rms[:, None]
    h_pre = torch.sigmoid(alpha[0] * m[:, :n] + bias[:n]) + case.hc_eps
    h_pre.retain_grad()
    h_post = 2 * torch.sigmoid(alpha[1] * m[:, n : 2 * n] + bias[n : 2 * n])
    h_res = alpha[2] * m[:, 2 * n :] + bias[2 * n :]
    h_in = (h_pre[:, :, None] * v.view(-1, n, D)).sum(1)
    loss = (h_in * t["dh_in"].reshape(-1, D)).sum()
    loss = loss + (h_post * t["dh_post"].reshape(-1, n)).sum() + (h_res * t["dh_res"].reshape(-1, n * n)).sum()
    if t["grad_x_post"] is not None:
        loss = loss + (x * t["grad_x_post"]).sum()
    loss.backward()
    out = {g: leaves[p].grad for g, p in PARAM_GRADS.items() if p in leaves}
    out["dgamma"] = None if gamma is None else gamma.grad
    out |= {"dvecX_mm": vg.grad, "dh_mix": h_mix.grad, "dinv_rms": inv_rms.grad, "dh_pre": h_pre.grad}
    return out


def _golden(case: Case, t: dict):
    fwd = mhc_pre_forward(
        t["x"],
        t["phi"],
        t["alpha"],
        t["bias"],
        t["gamma"],
        norm_eps=case.norm_eps,
        hc_eps=case.hc_eps,
        compute_dtype=torch.float64,
    )
    _, h_post, _, inv_rms, h_mix, h_pre = fwd
    return mhc_pre_backward(
        t["x"],
        t["phi"],
        t["alpha"],
        t["dh_in"],
        t["dh_post"],
        t["dh_res"],
        inv_rms,
        h_mix,
        h_pre,
        h_post,
        t["gamma"],
        hc_eps=case.hc_eps,
        grad_x_post=t["grad_x_post"],
        compute_dtype=torch.float64,
        return_intermediates=True,
    )


@pytest.mark.parametrize("case", AUTOGRAD_CASES, ids=str)
@pytest.mark.parametrize("grad", [pytest.param(g, marks=pytest.mark.stage(s)) for g, s in STAGE_OF.items()])
def test_backward_output_matches_autograd(case, grad):
    t = _f64_inputs(case)
    (outs, _) = _golden(case, t)
    got = dict(zip(("dx", "dphi", "dalpha", "dbias", "dgamma"), outs))[grad]
    want = _autograd(case, t)[grad]
    if want is None:
        assert got is None and case.gamma is False
        return
    assert got.shape == want.shape and got.dtype == torch.float64
    assert rel_err(got, want) < F64_TOL


@pytest.mark.stage("dh_mix")
@pytest.mark.parametrize("case", AUTOGRAD_CASES, ids=str)
@pytest.mark.parametrize("name", ["dh_pre", "dh_mix", "dinv_rms", "dvecX_mm"])
def test_dh_mix_intermediates_match_autograd(case, name):
    t = _f64_inputs(case)
    _, inter = _golden(case, t)
    want = _autograd(case, t)[name]
    assert rel_err(inter[name].reshape(want.shape), want) < F64_TOL


@pytest.mark.stage("dparams")
@pytest.mark.parametrize("case", AUTOGRAD_CASES[:6], ids=str)
def test_identity_gives_dphi_and_dgamma_from_G(case):
    """dphi = G*gamma and dgamma[j] = sum_k phi[k, j] G[k, j] (the identity the fused plan uses)."""
    t = _f64_inputs(case)
    (outs, inter) = _golden(case, t)
    G = inter["G"]
    g = torch.ones(case.n * case.D, dtype=torch.float64) if t["gamma"] is None else t["gamma"].reshape(-1)
    assert rel_err(outs[1], G * g) < F64_TOL
    if t["gamma"] is not None:
        assert rel_err(outs[4].reshape(-1), (t["phi"] * G).sum(0)) < F64_TOL


class _GoldenMhcPre(torch.autograd.Function):
    """The golden forward with the golden manual backward, for gradcheck against finite differences."""

    @staticmethod
    def forward(ctx, x, phi, alpha, bias, gamma):
        h_in, h_post, h_res, inv_rms, h_mix, h_pre = mhc_pre_forward(
            x, phi, alpha, bias, gamma, compute_dtype=torch.float64
        )
        ctx.save_for_backward(x, phi, alpha, gamma, inv_rms, h_mix, h_pre, h_post)
        return h_in, h_post, h_res

    @staticmethod
    def backward(ctx, dh_in, dh_post, dh_res):
        x, phi, alpha, gamma, inv_rms, h_mix, h_pre, h_post = ctx.saved_tensors
        return mhc_pre_backward(
            x,
            phi,
            alpha,
            dh_in,
            dh_post,
            dh_res,
            inv_rms,
            h_mix,
            h_pre,
            h_post,
            gamma,
            compute_dtype=torch.float64,
        )


@pytest.mark.stage("dx")
@pytest.mark.stage("dparams")
@pytest.mark.stage("dgamma")
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_gradcheck(case):
    t = _f64_inputs(case)
    args = [t[k] if t[k] is None else t[k].requires_grad_() for k in ("x", "phi", "alpha", "bias", "gamma")]
    assert torch.autograd.gradcheck(_GoldenMhcPre.apply, args)
