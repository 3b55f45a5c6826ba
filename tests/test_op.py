"""The public op: mhc_pre under autograd and torch.compile, the forward/backward functions and their
backends, a few training steps, and bad input."""

import pytest
import torch

import mhc_ops
from mhc_ops.golden import Case, judge, mhc_pre_backward, mhc_pre_forward
from mhc_ops.golden.fixtures import make_inputs
from tests.cases import OP_CASES
from tests.helpers import KERNEL_DEVICE

needs_kernels = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
FWD_NAMES = ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre")
BWD_NAMES = ("dx", "dphi", "dalpha", "dbias", "dgamma")


def _f64(t):
    return {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in t.items()}


@needs_kernels
@pytest.mark.parametrize("backend", ["golden", "triton", "auto"])
@pytest.mark.parametrize("case", OP_CASES, ids=str)
def test_forward_and_backward_functions(case, backend):
    t = make_inputs(case, KERNEL_DEVICE)
    fwd = mhc_ops.mhc_pre_forward(t["x"], t["phi"], t["alpha"], t["bias"], t["gamma"], backend=backend)
    fwd64 = mhc_pre_forward(*(_f64(t)[k] for k in ("x", "phi", "alpha", "bias", "gamma")), compute_dtype=torch.float64)
    fwd32 = mhc_pre_forward(t["x"], t["phi"], t["alpha"], t["bias"], t["gamma"])
    verdicts = [judge(k, a, b, c) for k, a, b, c in zip(FWD_NAMES, fwd, fwd64, fwd32)]
    saved = dict(zip(FWD_NAMES, fwd))
    args = (t["x"], t["phi"], t["alpha"], t["dh_in"], t["dh_post"], t["dh_res"], saved["inv_rms"], saved["h_mix"],
            saved["h_pre"], saved["h_post"], t["gamma"])  # fmt: skip
    bwd = mhc_ops.mhc_pre_backward(*args, grad_x_post=t["grad_x_post"], backend=backend)
    bwd64 = mhc_pre_backward(*(a.double() if a is not None else None for a in args), compute_dtype=torch.float64)
    bwd32 = mhc_pre_backward(*args)
    verdicts += [judge(k, a, b, c) for k, a, b, c in zip(BWD_NAMES, bwd, bwd64, bwd32) if b is not None]
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))
    assert (bwd[4] is None) == (t["gamma"] is None)


def _leaves(t):
    return {
        k: t[k].clone().requires_grad_() if t[k] is not None else None for k in ("x", "phi", "alpha", "bias", "gamma")
    }


def _loss(outs, t):
    h_in, h_post, h_res = outs
    return (h_in.float() * t["dh_in"].float()).sum() + (h_post * t["dh_post"]).sum() + (h_res * t["dh_res"]).sum()


@needs_kernels
@pytest.mark.parametrize("case", OP_CASES, ids=str)
def test_mhc_pre_gradients_match_golden_autograd(case):
    t = make_inputs(case, KERNEL_DEVICE)
    grads = {}
    for backend in ("golden", "triton"):
        p = _leaves(t)
        _loss(mhc_ops.mhc_pre(**p, backend=backend), t).backward()
        grads[backend] = {k: v.grad for k, v in p.items() if v is not None}
    # the float64 golden of the same inputs and upstream gradients: the accuracy rule's reference
    up = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in t.items()}
    _, h_post, _, inv_rms, h_mix, h_pre = mhc_pre_forward(up["x"], up["phi"], up["alpha"], up["bias"], up["gamma"],
                                                          compute_dtype=torch.float64)  # fmt: skip
    ref64 = mhc_pre_backward(up["x"], up["phi"], up["alpha"], up["dh_in"], up["dh_post"], up["dh_res"], inv_rms, h_mix,
                             h_pre, h_post, up["gamma"], compute_dtype=torch.float64)  # fmt: skip
    ref64 = dict(zip(("x", "phi", "alpha", "bias", "gamma"), ref64))
    verdicts = [judge(k, grads["triton"][k], ref64[k], g) for k, g in grads["golden"].items()]
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))


@pytest.mark.parametrize("case", OP_CASES, ids=str)
def test_torch_compile_fullgraph_traces_mhc_pre(case):
    t = make_inputs(case)
    compiled = torch.compile(lambda **p: mhc_ops.mhc_pre(**p, backend="golden"), fullgraph=True, backend="eager")
    p_eager, p_comp = _leaves(t), _leaves(t)
    _loss(mhc_ops.mhc_pre(**p_eager, backend="golden"), t).backward()
    _loss(compiled(**p_comp), t).backward()
    for k, v in p_eager.items():
        if v is not None:
            assert torch.equal(v.grad, p_comp[k].grad), k


class _TinyMhcModel(torch.nn.Module):
    """Two mHC layers on n residual streams; each layer's branch is a linear map of h_in, written back
    through h_post and a row-softmax of h_res."""

    def __init__(self, n, D, layers=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        O = n * n + 2 * n
        self.phi = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(O, n * D, generator=g) / (n * D) ** 0.5) for _ in range(layers)]
        )
        self.alpha = torch.nn.ParameterList([torch.nn.Parameter(torch.tensor([1.1, 0.9, 1.05])) for _ in range(layers)])
        self.bias = torch.nn.ParameterList(
            [torch.nn.Parameter(0.1 * torch.randn(O, generator=g)) for _ in range(layers)]
        )
        self.gamma = torch.nn.ParameterList(
            [torch.nn.Parameter(1 + 0.1 * torch.randn(n, D, generator=g)) for _ in range(layers)]
        )
        self.branch = torch.nn.ModuleList([torch.nn.Linear(D, D) for _ in range(layers)])
        for lin in self.branch:
            lin.weight.data = torch.randn(D, D, generator=g) / D**0.5
            lin.bias.data.zero_()

    def forward(self, x, backend):
        for phi, alpha, bias, gamma, branch in zip(self.phi, self.alpha, self.bias, self.gamma, self.branch):
            h_in, h_post, h_res = mhc_ops.mhc_pre(x, phi, alpha, bias, gamma, backend=backend)
            mix = torch.softmax(h_res, dim=-1)
            x = torch.einsum("...ij,...id->...jd", mix, x) + h_post[..., None] * branch(h_in)[..., None, :]
        return x


@needs_kernels
def test_training_steps_agree_between_triton_and_golden():
    n, D = 4, 24
    x = torch.randn(2, 8, n, D, generator=torch.Generator().manual_seed(7)).to(KERNEL_DEVICE)
    target = torch.randn(2, 8, n, D, generator=torch.Generator().manual_seed(8)).to(KERNEL_DEVICE)
    runs = {}
    for backend in ("golden", "triton"):
        model = _TinyMhcModel(n, D).to(KERNEL_DEVICE)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        losses, first_grads = [], None
        for _ in range(4):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x, backend), target)
            loss.backward()
            first_grads = first_grads or [p.grad.clone() for p in model.parameters()]
            opt.step()
            losses.append(loss.item())
        runs[backend] = losses, first_grads
    (l_gold, g_gold), (l_tri, g_tri) = runs["golden"], runs["triton"]
    assert l_gold[-1] < l_gold[0], "the model must actually train"
    assert l_tri == pytest.approx(l_gold, rel=1e-5)
    for a, b in zip(g_tri, g_gold):
        assert torch.linalg.vector_norm(a - b) <= 1e-5 * torch.linalg.vector_norm(b) + 1e-7


def test_the_three_ops_compile_once_for_every_token_count():
    """torch.compile(fullgraph=True, dynamic=True) of mhc_pre -> sinkhorn -> mhc_post, forward and
    backward: one graph for T = 5, 7 and 11 (no recompile per token count; token counts equal to n or
    D would be duck-sized into their static value)."""
    from torch._dynamo.testing import CompileCounter

    n, D = 3, 8
    t = make_inputs(Case(lead=(3,), n=n, D=D, dtype="float32", seed=9))
    params = {k: t[k].clone().requires_grad_() for k in ("phi", "alpha", "bias")}

    def layer(x):
        h_in, h_post, h_res = mhc_ops.mhc_pre(x, **params, backend="golden")
        return mhc_ops.mhc_post(x, mhc_ops.sinkhorn(h_res, backend="golden"), h_in, h_post, backend="golden")

    counter = CompileCounter()
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend=counter)
    for T in (5, 7, 11):
        x = torch.randn(T, n, D, requires_grad=True)
        out = compiled(x)
        out.square().sum().backward()
        x_eager = x.detach().clone().requires_grad_()
        ref = layer(x_eager)
        ref.square().sum().backward()
        assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(x.grad, x_eager.grad, atol=1e-5)
    assert counter.frame_count == 1, f"{counter.frame_count} compilations for three token counts"
