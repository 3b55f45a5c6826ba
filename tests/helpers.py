"""Shared test machinery: NaN-prefilled outputs, devices, any registered stage run on Triton and judged
by the accuracy rule, and the layer's golden gradients."""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import pytest
import torch

from mhc_ops.diagnose import prefilled_empty
from mhc_ops.golden import Bundle, build, judge
from mhc_ops.golden.fixtures import make_inputs
from mhc_ops.golden.layer import layer_forward
from mhc_ops.nn import HyperConnection
from mhc_ops.stages import STAGES

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()
# Where the Triton kernels can run in this process: CPU tensors through the interpreter, or the GPU.
KERNEL_DEVICE = "cpu" if INTERPRETING else ("cuda" if HAS_CUDA else None)
# Hypothesis tests draw the same examples every run (a CI that fails one run in a few is a defect);
# MHC_FUZZ=N draws N fresh ones per test instead (`nox -s fuzz -- N`: looking for new failures).
FUZZ_EXPLORE = int(os.environ.get("MHC_FUZZ", "0"))


def fuzz_settings(examples: int, *health_checks):
    """hypothesis settings: `examples` derandomized examples, or MHC_FUZZ fresh ones; no deadline, no
    example database; too_slow (and the given health checks) suppressed."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=FUZZ_EXPLORE or examples, derandomize=not FUZZ_EXPLORE, deadline=None,
                    database=None, suppress_health_check=[HealthCheck.too_slow, *health_checks])  # fmt: skip


def nan_filled_outputs():
    """Every torch.empty of a float dtype returns NaN-filled memory while active, so an output element
    (or a per-program partial) that a kernel forgets to write shows up as NaN."""
    return prefilled_empty(math.nan)


def stage_params(stages) -> list:
    """pytest parameters of the named stages, each marked with its stage (nox -s test_stage -- NAME)."""
    return [pytest.param(s, marks=pytest.mark.stage(s)) for s in stages]


@functools.cache
def cached_bundle(case, device) -> Bundle:
    """The fixture bundle of ``case`` on ``device``, built once per test process (tests only read it)."""
    return build(case, device)


def run_triton_stage(stage: str, inputs: dict, **launch) -> dict:
    """The registered stage's Triton implementation (STAGES[stage]) on named inputs, options and launch
    options, with every torch.empty NaN-filled: an output element it does not write shows up."""
    with nan_filled_outputs():
        return STAGES[stage].run("triton", **inputs, **launch)


def assert_accurate(stage: str, inputs: dict, out: dict, *, ref64: dict | None = None, label: str = "") -> None:
    """Every output of the registered stage (STAGES[stage].outputs) has the fp64 golden's shape and the
    dtype the fp32 golden stores it in (x's or the logits' for h_in, dx, out, dh_out, dlogits; fp32 else),
    and passes the accuracy rule (golden.judge) against the stage's golden in float64 on the same
    (rounded) inputs. ref64: those float64 outputs when already computed (a fixture bundle's)."""
    golden = STAGES[stage].golden
    ref32 = golden(**inputs, compute_dtype=torch.float32)
    if ref64 is None:
        inputs64 = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        ref64 = golden(**inputs64, compute_dtype=torch.float64)
    verdicts = []
    for k in STAGES[stage].outputs:
        assert out[k].shape == ref64[k].shape, (k, out[k].shape, ref64[k].shape)
        assert out[k].dtype == ref32[k].dtype, (k, out[k].dtype, ref32[k].dtype)
        verdicts.append(judge(k, out[k], ref64[k], ref32[k]))
    assert all(v.ok for v in verdicts), f"{label or stage}:\n" + "\n".join(map(str, verdicts))


def assert_stage_accurate(stage: str, bundle: Bundle, out: dict) -> None:
    """assert_accurate on a fixture bundle's inputs of the stage, against the bundle's float64 outputs."""
    inputs, ref64 = bundle.stage_view(stage)
    assert_accurate(stage, inputs, out, ref64=ref64, label=f"{stage} on {bundle.case}")


def capture_graph(fn, warmup=3):
    """Warm fn() up on a side stream (as torch.cuda.graphs asks), then capture it -> (graph, its static
    outputs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = fn()
    return graph, outs


# --- the layer: a HyperConnection around a linear branch, its float64 golden and its gradients ----------------

PARAMS = ("phi", "alpha", "bias", "gamma")


def random_layer(n, D, seed, *, use_gamma=True, linear=True, **kw):
    """A HyperConnection around a random linear branch (linear=False: the identity), with parameters
    moved off their init so every gradient is order one (the identity init makes h_pre one-hot and
    sinkhorn(h_res) nearly I)."""
    g = torch.Generator().manual_seed(seed)
    branch = torch.nn.Linear(D, D, bias=False) if linear else None
    hc = HyperConnection(D, n, branch, use_gamma=use_gamma, **kw)
    with torch.no_grad():
        if linear:
            branch.weight.copy_(torch.randn(D, D, generator=g) / D**0.5)
        hc.phi.copy_(torch.randn(hc.phi.shape, generator=g) / (n * D) ** 0.5)
        hc.alpha.copy_(0.5 + torch.rand(3, generator=g))
        hc.bias.copy_(0.5 * torch.randn(hc.bias.shape, generator=g))
        if use_gamma:
            hc.gamma.copy_(1 + 0.5 * torch.randn(n, D, generator=g))
    return hc


def random_stack(D, n, blocks, seed, **kw):
    """A HyperStack of blocks (None: the identity) with every layer's phi, alpha and bias moved off their
    zero init (phi ~ N(0, 1), alpha in [0.5, 1.5], bias ~ N(0, 0.5)), so each boundary mixes for real."""
    from mhc_ops.nn import HyperStack

    torch.manual_seed(seed)
    stack = HyperStack(D, n, blocks, init="zero", **kw)
    with torch.no_grad():
        for layer in stack.layers:
            layer.phi.normal_(0, 1.0)
            layer.alpha.uniform_(0.5, 1.5)
            layer.bias.normal_(0, 0.5)
    return stack


def count_launch_decode(monkeypatch) -> list:
    """A list that grows by one at each _impl.launch_decode call (one decode boundary) from now on."""
    from mhc_ops import _impl

    calls = []
    real = _impl.launch_decode
    monkeypatch.setattr(_impl, "launch_decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def layer_golden64(hc, x, dout):
    """Every gradient of <x_next, dout> by torch.autograd through the float64 layer golden."""
    p = {k: getattr(hc, k).detach().double().requires_grad_() for k in PARAMS if getattr(hc, k) is not None}
    w = hc.branch.weight.detach().double().requires_grad_() if hc.branch is not None else None
    x64 = x.detach().double().requires_grad_()
    branch = None if w is None else lambda h: h @ w.t()
    out = layer_forward(x64, p["phi"], p["alpha"], p["bias"], p.get("gamma"), branch, iters=hc.sinkhorn_iters,
                        compute_dtype=torch.float64)  # fmt: skip
    (out * dout.double()).sum().backward()
    grads = {"x": x64.grad} | ({"weight": w.grad} if w is not None else {})
    return out.detach(), grads | {k: v.grad for k, v in p.items()}


def layer_grads(hc, x, dout):
    x = x.detach().clone().requires_grad_()
    out = hc(x)
    out.backward(dout)
    grads = {"x": x.grad} | ({"weight": hc.branch.weight.grad} if hc.branch is not None else {})
    grads |= {k: getattr(hc, k).grad for k in PARAMS if getattr(hc, k) is not None}
    return out.detach(), grads


def delayed_inputs(case, first: bool, device="cpu") -> dict:
    """make_inputs(case) plus the delayed pre's: h_pre_prev [.., n] fp32 (a previous sublayer's
    coefficients, in (hc_eps, 1 + hc_eps); None for the first sublayer) and dh_pre [.., n] fp32 (the
    next sublayer's gradient of this h_pre)."""
    t = make_inputs(case, device)
    g = torch.Generator(device=device).manual_seed(case.seed + 7)
    shape = (*case.lead, case.n)
    t["h_pre_prev"] = None if first else torch.sigmoid(torch.randn(shape, generator=g, device=device)) + case.hc_eps
    t["dh_pre"] = torch.randn(shape, generator=g, device=device)
    return t


SEAM_POST = ("x", "h_res", "h_out", "h_post")  # the seam's inputs: post(l)'s, then the delayed pre(l+1)'s
SEAM_PRE = ("h_pre_prev", "phi", "alpha", "bias", "gamma")
SEAM_UPSTREAM = ("dh_in", "dh_next_post", "dh_next_res", "dh_next_pre", "grad_x_next")


def seam_inputs(case, first: bool, gxp: bool, dtype=None, device="cpu") -> dict:
    """The seam's inputs (SEAM_POST, SEAM_PRE) and upstream gradients (SEAM_UPSTREAM), fresh random (never
    zeros); first: no h_pre_prev; gxp: a grad_x_next; dtype: every float tensor cast."""
    pre = delayed_inputs(case, first=first, device=device)
    post = make_inputs(dataclasses.replace(case, op="mhc_post"), device)
    g = torch.Generator(device=device).manual_seed(case.seed + 11)
    t = {k: post[k] for k in SEAM_POST} | {k: pre[k] for k in SEAM_PRE}
    t |= {"dh_in": pre["dh_in"], "dh_next_post": pre["dh_post"], "dh_next_res": pre["dh_res"], "dh_next_pre": pre["dh_pre"]}
    grad = torch.randn(*case.lead, case.n, case.D, generator=g, device=device).to(post["x"].dtype) if gxp else None
    t["grad_x_next"] = grad
    return {k: v if v is None or dtype is None else v.to(dtype) for k, v in t.items()}


# --- the contract written out in torch (independent of golden/), for the goldens' autograd tests ---------------


def contract_post(x, h_res, h_out, h_post, n, D):
    """mhc_post per the contract -> x_next [T, n, D]: h_post[j]*h_out + sum_i h_res[i, j]*x[i]."""
    xs = x.reshape(-1, n, D)
    return h_post.reshape(-1, n, 1) * h_out.reshape(-1, 1, D) + torch.einsum("tij,tid->tjd", h_res.reshape(-1, n, n), xs)


def contract_coefficients(v, phi, alpha, bias, gamma, n, norm_eps, hc_eps) -> dict:
    """mhc_pre's coefficients per the contract, v [T, nD] -> dict of h_mix, inv_rms [T], h_pre, h_post
    [T, n] and the h_res logits [T, n*n]."""
    vg = v if gamma is None else v * gamma.reshape(-1)
    h_mix = vg @ phi.t()
    inv_rms = torch.rsqrt(v.square().mean(-1) + norm_eps)
    m = h_mix * inv_rms[:, None]
    return {
        "h_mix": h_mix,
        "inv_rms": inv_rms,
        "h_pre": torch.sigmoid(alpha[0] * m[:, :n] + bias[:n]) + hc_eps,
        "h_post": 2 * torch.sigmoid(alpha[1] * m[:, n : 2 * n] + bias[n : 2 * n]),
        "h_res": alpha[2] * m[:, 2 * n :] + bias[2 * n :],
    }
