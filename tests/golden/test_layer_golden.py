"""The layer's golden (golden/layer.py), forward and backward, proven in float64: layer_backward against
torch.autograd through layer_forward, plain and with the delayed pre, around the identity and a linear
branch; and the delayed layer collapsed with this x's own h_pre is the plain layer."""

import pytest
import torch

from mhc_ops.golden import rel_err
from mhc_ops.golden.layer import layer_backward, layer_forward
from tests.cases import LAYER_AUTOGRAD_CASES
from tests.helpers import delayed_inputs

F64_TOL = 1e-10
INPUTS = ("x", "phi", "alpha", "bias", "gamma", "h_pre_prev")
GRADS = ("dx", "dphi", "dalpha", "dbias", "dgamma", "dh_pre_prev")
# plain mhc_pre; the delayed pre of a first sublayer (stream 0); the delayed pre after another sublayer
MODES = {"plain": (False, True), "delayed-first": (True, True), "delayed": (True, False)}


def _inputs(case, first, linear):
    """Float64 layer inputs, dout [.., n, D] and dh_pre [.., n] (fresh random), and the branch: the
    identity or h_in -> h_in @ W^T with a random W [D, D]."""
    t = {k: None if v is None else v.double() for k, v in delayed_inputs(case, first).items()}
    g = torch.Generator().manual_seed(case.seed + 11)
    t["dout"] = torch.randn(t["x"].shape, generator=g, dtype=torch.float64)
    w = torch.randn(case.D, case.D, generator=g, dtype=torch.float64) / case.D**0.5
    return t, (lambda h: h @ w.t()) if linear else None


def _options(case, delayed, t):
    opts = dict(iters=case.iters, eps=case.eps, norm_eps=case.norm_eps, hc_eps=case.hc_eps, compute_dtype=torch.float64)
    return opts | (dict(delayed=True, h_pre_prev=t["h_pre_prev"]) if delayed else {})


@pytest.mark.parametrize("linear", [False, True], ids=["identity", "linear"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", LAYER_AUTOGRAD_CASES, ids=str)
def test_layer_backward_matches_autograd(case, mode, linear):
    delayed, first = MODES[mode]
    t, branch = _inputs(case, first, linear)
    leaves = {k: None if t[k] is None else t[k].clone().requires_grad_() for k in INPUTS}
    x, phi, alpha, bias, gamma, _ = (leaves[k] for k in INPUTS)
    out = layer_forward(x, phi, alpha, bias, gamma, branch, **_options(case, delayed, leaves))
    if delayed:
        x_next, h_pre = out
        loss = (x_next * t["dout"]).sum() + (h_pre * t["dh_pre"]).sum()
    else:
        loss = (out * t["dout"]).sum()
    loss.backward()
    kw = _options(case, delayed, t) | ({"dh_pre": t["dh_pre"]} if delayed else {})
    grads = dict(zip(GRADS, layer_backward(*(t[k] for k in INPUTS[:5]), t["dout"], branch, **kw)))
    assert len(grads) == (6 if delayed else 5)
    for name, leaf in zip(grads, INPUTS):
        want = None if leaves[leaf] is None else leaves[leaf].grad
        assert (grads[name] is None) == (want is None), name
        if want is not None:
            assert grads[name].dtype == torch.float64 and rel_err(grads[name], want) < F64_TOL, name


@pytest.mark.parametrize("case", LAYER_AUTOGRAD_CASES, ids=str)
def test_delayed_layer_with_its_own_h_pre_is_the_plain_layer(case):
    t, branch = _inputs(case, True, linear=True)
    args = (t["x"], t["phi"], t["alpha"], t["bias"], t["gamma"], branch)
    plain = layer_forward(*args, **_options(case, False, t))
    first, h_pre = layer_forward(*args, **_options(case, True, t))
    delayed, _ = layer_forward(*args, **_options(case, True, t | {"h_pre_prev": h_pre}))
    assert rel_err(delayed, plain) < F64_TOL
    assert case.n == 1 or rel_err(first, plain) > 1e-3  # stream 0 alone is another layer
