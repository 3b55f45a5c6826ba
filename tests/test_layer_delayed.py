"""HyperStack with DeepSeek-V4.1's delayed pre: three blocks chaining h_pre, output and every gradient
against the layer golden (golden/layer.py, autograd through it in float64) by the accuracy rule, on each
backend; and the module's errors."""

import pytest
import torch

import mhc_ops
from mhc_ops.golden import judge
from mhc_ops.golden.layer import layer_forward
from mhc_ops.nn import HyperConnection, HyperStack
from tests.helpers import KERNEL_DEVICE, count_launch_decode, random_stack

BACKENDS = ["golden"] + (["triton"] if KERNEL_DEVICE is not None else [])
PARAMS = ("phi", "alpha", "bias")


def _reference(x, layers, dtype):
    """The stack by the layer golden: identity blocks, h_in collapsed with the previous block's h_pre."""
    h_pre = None
    for p in layers:
        x, h_pre = layer_forward(x, *(p[k].to(dtype) for k in PARAMS), delayed=True, h_pre_prev=h_pre,
                                 compute_dtype=dtype)  # fmt: skip
    return x


def _ref_grads(x0, dout, layers, dtype):
    x = x0.detach().to(dtype).requires_grad_()
    ps = [{k: p[k].detach().to(dtype).requires_grad_() for k in PARAMS} for p in layers]
    out = _reference(x, ps, dtype)
    out.backward(dout.to(dtype))
    return out.detach(), {"x": x.grad} | {f"{i}.{k}": p[k].grad for i, p in enumerate(ps) for k in PARAMS}


@pytest.mark.parametrize("n, D", [(4, 16), (3, 7), (1, 5)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_delayed_stack_matches_the_contract(backend, n, D):
    torch.manual_seed(n * 100 + D)
    device = KERNEL_DEVICE if backend == "triton" else "cpu"
    stack = HyperStack(D, n, [None, None, None], delayed=True, backend=backend, init="zero").to(device)
    with torch.no_grad():  # random parameters: away from the init's symmetric point
        for layer in stack.layers:
            layer.phi.normal_(0, 1.0)
            layer.alpha.uniform_(0.5, 1.5)
            layer.bias.normal_(0, 0.5)
    x = torch.randn(5, n, D, device=device)
    dout = torch.randn(5, n, D, device=device)
    xl = x.clone().requires_grad_()
    out = stack(xl)
    out.backward(dout)
    got = {"x": xl.grad} | {f"{i}.{k}": getattr(l, k).grad for i, l in enumerate(stack.layers) for k in PARAMS}
    layers = [{k: getattr(l, k) for k in PARAMS} for l in stack.layers]
    ref64, g64 = _ref_grads(x, dout, layers, torch.float64)
    ref32, g32 = _ref_grads(x, dout, layers, torch.float32)
    verdicts = [judge("x_next", out.detach(), ref64, ref32)] + [judge(k, got[k], g64[k], g32[k]) for k in g64]
    assert out.device == x.device
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))


def test_delayed_module_errors():
    with pytest.raises(ValueError, match="h_pre_prev: expected None"):
        HyperConnection(8, 2)(torch.randn(3, 2, 8), h_pre_prev=torch.rand(3, 2))
    with pytest.raises(ValueError, match="delayed: expected disable=False"):
        HyperConnection(8, 2, delayed=True, disable=True)
    hc = HyperConnection(8, 2, delayed=True)
    with pytest.raises(ValueError, match=r"h_pre_prev: expected shape \[3, 2\]"):
        hc(torch.randn(3, 2, 8), h_pre_prev=torch.rand(3, 4))
    x_next, h_pre = hc(torch.randn(3, 2, 8))
    assert x_next.shape == (3, 2, 8) and h_pre.shape == (3, 2) and h_pre.dtype == torch.float32


@pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
@pytest.mark.parametrize("delayed", [True, False], ids=["delayed", "plain"])
@pytest.mark.parametrize("T, n, launches", [(1, 4, 2), (5, 3, 2), (1, 6, 2), (65, 4, 0), (1, 8, 0)])
def test_an_inference_stack_runs_each_boundary_in_one_launch(monkeypatch, T, n, launches, delayed):
    """Under no_grad, at most 64 tokens and 6 streams (_impl.DECODE_MAX_T, DECODE_MAX_N), an all-Triton stack
    runs post(l) + pre(l+1) + sinkhorn through one launch_decode per boundary (kernels/decode.py; the plain
    pre's collapse a second launch inside it), with the stack's output by the accuracy rule; training (grad
    enabled), more tokens and more streams take the ops."""
    D = 16
    torch.manual_seed(T * 10 + n)
    blocks = [None, torch.nn.Linear(D, D), None]
    stack = random_stack(D, n, blocks, T * 10 + n, delayed=delayed, backend="triton").to(KERNEL_DEVICE)
    calls = count_launch_decode(monkeypatch)
    x = torch.randn(T, n, D, device=KERNEL_DEVICE)
    with torch.no_grad():
        got = stack(x)
    assert len(calls) == launches
    with torch.no_grad(), monkeypatch.context() as m:
        m.setattr(mhc_ops.nn, "_stack_decodes", lambda *a: False)
        ops = stack(x)  # the same stack through the ops
    assert len(calls) == launches
    linear = blocks[1]
    branch = lambda h: h @ linear.weight.t().to(h.dtype) + linear.bias.to(h.dtype)  # noqa: E731
    layers = [{k: getattr(l, k).detach() for k in PARAMS} for l in stack.layers]

    def reference(dtype):
        h, h_pre = x.to(dtype), None
        for i, p in enumerate(layers):
            out = layer_forward(h, *(p[k].to(dtype) for k in PARAMS), None, branch if i == 1 else None,
                                delayed=delayed, h_pre_prev=h_pre, compute_dtype=dtype)  # fmt: skip
            h, h_pre = out if delayed else (out, None)
        return h

    ref64, ref32 = reference(torch.float64), reference(torch.float32)
    verdicts = [judge("x_next (decode)", got, ref64, ref32), judge("x_next (ops)", ops, ref64, ref32)]
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))
    x_train = x.clone().requires_grad_()
    stack(x_train).sum().backward()
    assert len(calls) == launches and x_train.grad is not None


@pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
def test_the_main_jobs_model_decodes_through_the_stack(monkeypatch):
    """mhc_ops.train's GPT runs its blocks with nn.stack_forward: with --hc delayed, on Triton, under no_grad
    and at most 64 tokens, each of its 2·layers - 1 boundaries in one launch; its logits as the ops path's
    (two fp32-grade paths of the same math; each path's accuracy against float64 is the stack test's above)."""
    from mhc_ops.golden import rel_err
    from mhc_ops.train.model import GPT, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(layers=2, dim=16, heads=2, seq=8, n=4, residual="mhc", backend="triton", delayed=True)
    net = GPT(cfg).to(KERNEL_DEVICE).eval()
    calls = count_launch_decode(monkeypatch)
    idx = torch.randint(0, 256, (1, 5), device=KERNEL_DEVICE)
    with torch.no_grad():
        got = net(idx)
        assert len(calls) == 2 * cfg.layers - 1
        monkeypatch.setattr(mhc_ops.nn, "_stack_decodes", lambda *a: False)
        ops = net(idx)
    assert len(calls) == 2 * cfg.layers - 1
    assert torch.isfinite(got).all() and rel_err(got, ops) < 1e-5


@pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
def test_decodes_rule():
    """_impl.decodes: inference only (not under autograd), at most DECODE_MAX_T tokens and DECODE_MAX_N streams,
    every route on Triton; the limits themselves included."""
    from mhc_ops._impl import DECODE_MAX_N, DECODE_MAX_T, decodes, resolve_route

    x = torch.randn(DECODE_MAX_T, DECODE_MAX_N, 8, device=KERNEL_DEVICE)
    triton_route, golden_route = resolve_route("triton", None, x), resolve_route("golden", None, x)
    with torch.no_grad():
        assert decodes(x, [triton_route, triton_route])
        assert decodes(x.view(2, DECODE_MAX_T // 2, DECODE_MAX_N, 8), [triton_route])
        assert not decodes(torch.randn(DECODE_MAX_T + 1, DECODE_MAX_N, 8), [triton_route])
        assert not decodes(torch.randn(1, DECODE_MAX_N + 1, 8), [triton_route])
        assert not decodes(x, [triton_route, golden_route])
        assert not decodes(x[0], [triton_route])  # [n, D]: no token axis
    assert not decodes(x, [triton_route])  # autograd on
