"""The mhc_post golden: its hand-written backward against torch.autograd through the float64 golden
forward, gradcheck, the direction of h_res (first index = input stream), and the storage dtypes.

Upstream gradients are random (make_inputs draws dout), never a sum() loss."""


import pytest
import torch

from mhc_ops.golden import Case, rel_err
from mhc_ops.golden.fixtures import make_inputs
from mhc_ops.golden.mhc_post import STAGE_IO, mhc_post_backward, mhc_post_forward, stage_post_bwd, stage_post_fwd
from tests.cases import POST_AUTOGRAD_CASES

F64 = torch.float64
F64_TOL = 1e-12
FWD = pytest.mark.stage("post_fwd")
BWD = pytest.mark.stage("post_bwd")
INPUTS = ("x", "h_res", "h_out", "h_post")
GRADS = ("dx", "dh_res", "dh_out", "dh_post")


def _f64_inputs(case: Case) -> dict:
    return {k: v.double() for k, v in make_inputs(case).items()}


@BWD
@pytest.mark.parametrize("case", POST_AUTOGRAD_CASES, ids=str)
def test_backward_matches_autograd(case):
    t = _f64_inputs(case)
    leaves = {k: t[k].clone().requires_grad_() for k in INPUTS}
    mhc_post_forward(*leaves.values(), compute_dtype=F64).backward(t["dout"])
    got = dict(zip(GRADS, mhc_post_backward(*(t[k] for k in INPUTS), t["dout"], compute_dtype=F64)))
    for grad, leaf in zip(GRADS, INPUTS):
        want = leaves[leaf].grad
        assert got[grad].shape == want.shape and got[grad].dtype == F64, grad
        assert rel_err(got[grad], want) < F64_TOL, grad


class _GoldenMhcPost(torch.autograd.Function):
    """The golden forward with the golden manual backward, for gradcheck against finite differences."""

    @staticmethod
    def forward(ctx, x, h_res, h_out, h_post):
        ctx.save_for_backward(x, h_res, h_out, h_post)
        return mhc_post_forward(x, h_res, h_out, h_post, compute_dtype=F64)

    @staticmethod
    def backward(ctx, dout):
        return mhc_post_backward(*ctx.saved_tensors, dout, compute_dtype=F64)


@BWD
@pytest.mark.parametrize(
    "case",
    [
        Case(op="mhc_post", lead=(2,), n=3, D=3, dtype="float32", seed=1),
        Case(op="mhc_post", lead=(1, 2), n=2, D=5, dtype="float32", seed=2),
    ],
    ids=str,
)
def test_gradcheck(case):
    t = _f64_inputs(case)
    assert torch.autograd.gradcheck(_GoldenMhcPost.apply, [t[k].requires_grad_() for k in INPUTS])


def _explicit(t: dict) -> dict:
    """The contract's formulas as plain loops over streams: h_res[i, j], i the input stream."""
    x, h_res, h_out, h_post, dout = (t[k] for k in (*INPUTS, "dout"))
    n = x.shape[-2]
    out = torch.stack(
        [h_post[..., j, None] * h_out + sum(h_res[..., i, j, None] * x[..., i, :] for i in range(n)) for j in range(n)],
        dim=-2,
    )
    dx = torch.stack([sum(h_res[..., i, j, None] * dout[..., j, :] for j in range(n)) for i in range(n)], dim=-2)
    dh_res = torch.stack(
        [torch.stack([(dout[..., j, :] * x[..., i, :]).sum(-1) for j in range(n)], dim=-1) for i in range(n)], dim=-2
    )
    dh_post = torch.stack([(dout[..., j, :] * h_out).sum(-1) for j in range(n)], dim=-1)
    dh_out = sum(h_post[..., j, None] * dout[..., j, :] for j in range(n))
    return {"out": out, "dx": dx, "dh_res": dh_res, "dh_out": dh_out, "dh_post": dh_post}


def _golden(t: dict) -> dict:
    fwd = stage_post_fwd(**{k: t[k] for k in INPUTS}, compute_dtype=F64)
    return fwd | stage_post_bwd(**{k: t[k] for k in (*INPUTS, "dout")}, compute_dtype=F64)


@FWD
@BWD
@pytest.mark.parametrize("lead", [(2, 3), (4,)])
def test_h_res_direction(lead):
    """out[j] = h_post[j]*h_out + sum_i h_res[i, j]*x[i]: the first index of h_res is the input stream.
    h_res is doubly stochastic but far from symmetric, so a golden that read h_res transposed fails here."""
    t = _f64_inputs(Case(op="mhc_post", lead=lead, n=4, D=7, seed=3))
    assert rel_err(t["h_res"].transpose(-1, -2), t["h_res"]) > 0.1  # the check below can see a transpose
    want = _explicit(t)
    got = _golden(t)
    for k, w in want.items():
        assert rel_err(got[k], w) < F64_TOL, k
    # The mutant that reads h_res[j, i]: its outputs, and its gradient with respect to its h_res argument.
    mutant = _golden(t | {"h_res": t["h_res"].transpose(-1, -2)})
    mutant["dh_res"] = mutant["dh_res"].transpose(-1, -2)
    for k in ("out", "dx", "dh_res"):  # every output that h_res's direction enters
        assert rel_err(mutant[k], want[k]) > 1e-3, k


@FWD
@BWD
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_storage_dtypes_and_shapes(dtype):
    """out, dx, dh_out in x's dtype; dh_res and dh_post in the compute dtype; every output of STAGE_IO."""
    case = Case(op="mhc_post", lead=(2, 3), n=3, D=5, dtype=dtype, seed=4)
    t = make_inputs(case)
    fwd = stage_post_fwd(**{k: t[k] for k in STAGE_IO["post_fwd"]["inputs"]})
    bwd = stage_post_bwd(**{k: t[k] for k in STAGE_IO["post_bwd"]["inputs"]})
    assert set(fwd) == set(STAGE_IO["post_fwd"]["outputs"]) and set(bwd) == set(STAGE_IO["post_bwd"]["outputs"])
    x_dtype = case.torch_dtype
    want = {
        "out": ((2, 3, 3, 5), x_dtype),
        "dx": ((2, 3, 3, 5), x_dtype),
        "dh_out": ((2, 3, 5), x_dtype),
        "dh_res": ((2, 3, 3, 3), torch.float32),
        "dh_post": ((2, 3, 3), torch.float32),
    }
    for k, v in (fwd | bwd).items():
        assert (tuple(v.shape), v.dtype) == want[k], k
