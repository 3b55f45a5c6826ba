"""The Sinkhorn golden: its hand-written backward against torch.autograd through the float64 golden
forward, gradcheck, the spec's pass order, and the exact (finite-iteration) gradient rather than the
implicit one of the converged limit.

Upstream gradients are random: the output is doubly stochastic, so a sum() loss has a gradient of ~0."""

import pytest
import torch

from mhc_ops.golden import rel_err
from mhc_ops.golden.sinkhorn import STAGE_IO, sinkhorn_backward, sinkhorn_forward, stage_sinkhorn_bwd

F64 = torch.float64
F64_TOL = 1e-10
NS = (1, 2, 3, 4, 6, 8)
ITERS = (1, 2, 20)
FWD = pytest.mark.stage("sinkhorn_fwd")
BWD = pytest.mark.stage("sinkhorn_bwd")


def _logits(lead, n, init, seed, scale=2.0) -> torch.Tensor:
    """fp64 logits: random of spread ``scale``, or near-identity 6*I - 3 plus noise (not converged in 20 iterations)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((*lead, n, n), generator=g, dtype=F64)
    return 6 * torch.eye(n, dtype=F64) - 3 + 0.1 * noise if init == "identity" else scale * noise


def _upstream(lead, n, seed) -> torch.Tensor:
    return torch.randn((*lead, n, n), generator=torch.Generator().manual_seed(seed + 1000), dtype=F64)


def _autograd(L, dP, iters, eps=1e-6) -> torch.Tensor:
    leaf = L.clone().requires_grad_()
    P = sinkhorn_forward(leaf, iters, eps, compute_dtype=F64)
    P.backward(dP)
    return leaf.grad


def _normalise(P, dim, eps=1e-6):
    return P / (P.sum(dim=dim, keepdim=True) + eps)


def _implicit_adjoint(P, G) -> torch.Tensor:
    """The gradient of the converged Sinkhorn limit (eps = 0) at a doubly stochastic P, by the implicit
    function theorem: dL = P * (G - a 1^T - 1 b^T), with (a, b) solving a + P b = rowsum(P*G),
    P^T a + b = colsum(P*G) (singular along (c, -c), which does not change dL: least squares)."""
    n = P.shape[-1]
    eye = torch.eye(n, dtype=P.dtype).expand(P.shape)
    A = torch.cat([torch.cat([eye, P], -1), torch.cat([P.transpose(-1, -2), eye], -1)], -2)  # [.., 2n, 2n]
    PG = P * G
    ab = torch.linalg.lstsq(A, torch.cat([PG.sum(-1), PG.sum(-2)], -1)[..., None]).solution[..., 0]
    return P * (G - ab[..., :n, None] - ab[..., None, n:])


@BWD
@pytest.mark.parametrize("init", ["random", "identity"])
@pytest.mark.parametrize("iters", ITERS)
@pytest.mark.parametrize("n", NS)
def test_backward_matches_autograd(n, iters, init):
    lead = (2, 3) if n % 2 else (5,)
    L, dP = _logits(lead, n, init, seed=10 * n + iters), _upstream(lead, n, seed=n)
    got = sinkhorn_backward(L, dP, iters, compute_dtype=F64)
    want = _autograd(L, dP, iters)
    assert got.shape == L.shape and got.dtype == F64
    if n == 1:  # P is the constant (1 + eps) / (1 + 2 eps) ... : no gradient
        assert torch.equal(got, torch.zeros_like(got)) and want.abs().max() == 0
    else:
        assert rel_err(got, want) < F64_TOL


class _GoldenSinkhorn(torch.autograd.Function):
    """The golden forward with the golden hand-written backward, for gradcheck against finite differences."""

    @staticmethod
    def forward(ctx, logits, iters):
        ctx.save_for_backward(logits)
        ctx.iters = iters
        return sinkhorn_forward(logits, iters, compute_dtype=F64)

    @staticmethod
    def backward(ctx, dP):
        (logits,) = ctx.saved_tensors
        return sinkhorn_backward(logits, dP, ctx.iters, compute_dtype=F64), None


@BWD
@pytest.mark.parametrize(("n", "iters", "init"), [(3, 3, "random"), (2, 2, "identity"), (4, 5, "identity")])
def test_gradcheck(n, iters, init):
    L = _logits((2,), n, init, seed=n).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: _GoldenSinkhorn.apply(x, iters), (L,))


@FWD
@pytest.mark.parametrize("n", (2, 3, 8))
def test_forward_is_the_spec_written_out(n):
    """iters = 1: softmax + eps, then a column pass; each further iteration: a row pass, then a column pass."""
    eps = 1e-6
    L = _logits((4,), n, "random", seed=n)
    P = _normalise(torch.softmax(L, dim=-1) + eps, dim=-2)
    assert rel_err(sinkhorn_forward(L, 1, compute_dtype=F64), P) < 1e-15
    for iters in (2, 3):
        P = _normalise(_normalise(P, dim=-1), dim=-2)
        assert rel_err(sinkhorn_forward(L, iters, compute_dtype=F64), P) < 1e-15


def _column_last_gap(P) -> tuple[float, float]:
    """-> (max |colsum - 1|, max |rowsum - 1|)."""
    return (P.sum(-2) - 1).abs().max().item(), (P.sum(-1) - 1).abs().max().item()


@FWD
@pytest.mark.parametrize("n", (2, 4, 6))
def test_pass_order_column_last(n):
    """The passes run in the spec's order: the last one normalises columns, so the column sums are 1 to
    ~eps while the row sums are not (with iters = 1 far from it). The other order (a row pass after
    the softmax, column/row pairs after that) gives the opposite, and, before convergence, another
    matrix; so does a transposed formulation (column softmax, column pass first): the orientation of
    h_res matters."""
    L = _logits((64,), n, "random", seed=3)
    for iters in (1, 2, 20):
        ours = sinkhorn_forward(L, iters, compute_dtype=F64)
        other = _normalise(torch.softmax(L, dim=-1) + 1e-6, dim=-1)
        for _ in range(iters - 1):
            other = _normalise(_normalise(other, dim=-2), dim=-1)
        col_gap, row_gap = _column_last_gap(ours)
        other_col_gap, other_row_gap = _column_last_gap(other)
        assert col_gap < 1e-4 and row_gap > 1e-3, iters
        assert other_row_gap < 1e-4 and other_col_gap > 1e-3, iters
        if iters < 20:
            transposed = sinkhorn_forward(L.transpose(-1, -2), iters, compute_dtype=F64).transpose(-1, -2)
            assert rel_err(other, ours) > 1e-2 and rel_err(transposed, ours) > 1e-2, iters
    assert _column_last_gap(sinkhorn_forward(L, 1, compute_dtype=F64))[1] > 0.1


@BWD
def test_implicit_adjoint_formula_holds_at_convergence():
    """Sanity of the comparison below: when the iteration has converged (300 iterations, eps = 0,
    logits of spread 1), the exact gradient equals the implicit one."""
    L, G = _logits((6,), 4, "random", seed=5, scale=1.0), _upstream((6,), 4, seed=5)
    P = sinkhorn_forward(L, 300, 0.0, compute_dtype=F64)
    assert rel_err(sinkhorn_backward(L, G, 300, 0.0, compute_dtype=F64), _implicit_adjoint(P, G)) < 1e-8


@BWD
@pytest.mark.parametrize("n", (2, 4, 8))
def test_gradient_is_exact_not_implicit(n):
    """Near-identity logits (6*I - 3: the identity init), iters = 20: the iteration has not converged,
    and the exact gradient of the 20 steps (which autograd agrees with) is far from the implicit /
    fixed-point adjoint evaluated at the same output."""
    L, G = _logits((8,), n, "identity", seed=n), _upstream((8,), n, seed=n)
    exact = sinkhorn_backward(L, G, 20, compute_dtype=F64)
    assert rel_err(exact, _autograd(L, G, 20)) < F64_TOL
    implicit = _implicit_adjoint(sinkhorn_forward(L, 20, compute_dtype=F64), G)
    assert rel_err(implicit, exact) > 0.1


@FWD
@BWD
def test_stage_io_and_dtypes():
    """The stages return the registry's outputs: P in the compute dtype, dlogits in logits' dtype."""
    L = _logits((2, 3), 4, "random", seed=1).to(torch.bfloat16)
    dP = _upstream((2, 3), 4, seed=1).float()
    for name, io in STAGE_IO.items():
        assert io["op"] == "sinkhorn"
        kwargs = {"logits": L, "dP": dP, "iters": 2, "eps": 1e-6}
        out = io["golden"](**{k: kwargs[k] for k in io["inputs"] + io["options"]})
        assert tuple(out) == io["outputs"], name
    assert STAGE_IO["sinkhorn_fwd"]["golden"](logits=L, iters=2)["P"].dtype == torch.float32
    assert STAGE_IO["sinkhorn_bwd"]["golden"](logits=L, dP=dP, iters=2)["dlogits"].dtype == torch.bfloat16
    assert sinkhorn_forward(L.double(), 2, compute_dtype=F64).dtype == F64


@BWD
@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"logits": torch.zeros(3, 2, 3)}, r"logits: expected shape \[\.\.\., n, n\]"),
        ({"logits": torch.zeros(3)}, r"logits: expected shape \[\.\.\., n, n\]"),
        ({"iters": 0}, "iters: expected an int >= 1, got 0"),
        ({"dP": torch.zeros(3, 2, 2)}, r"dP: expected shape \[2, 2, 2\]"),
    ],
)
def test_golden_rejects_bad_input(kwargs, msg):
    args = {"logits": torch.zeros(2, 2, 2), "dP": torch.zeros(2, 2, 2), "iters": 2} | kwargs
    with pytest.raises(ValueError, match=msg):
        stage_sinkhorn_bwd(**args)
