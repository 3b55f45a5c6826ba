"""The layer under torch.compile and CUDA graphs, as training runs it: results judged by the accuracy
rule against the float64 golden of the same weights at every step (a weight split served stale, or
kept from a graph pool, fails it), one compilation for every token count, and on the GPU Inductor
launching our Triton kernels itself (docs/bugs/weight-cache-in-graph-pool.md).

The layers wrap the identity: a bf16 Linear branch is compiled by Inductor differently from eager
(on the H200 its gradients' errors doubled), which is the user's block, not ours."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from mhc_ops.golden import judge
from mhc_ops.nn import HyperConnection
from tests.helpers import (
    HAS_CUDA,
    INTERPRETING,
    KERNEL_DEVICE,
    PARAMS,
    capture_graph,
    count_launch_decode,
    layer_golden64,
    random_layer,
    random_stack,
)

GPU = not INTERPRETING and HAS_CUDA
gpu_only = pytest.mark.skipif(not GPU, reason="CUDA graphs and Inductor's Triton launches need a GPU")
# On the CPU the compiled graphs run through aot_eager (the traced op bodies, no C++ compile); on the
# GPU through Inductor.
COMPILE_BACKEND = "inductor" if GPU else "aot_eager"
BACKENDS = ["golden"] + (["triton"] if KERNEL_DEVICE is not None else [])
DTYPE = torch.bfloat16 if GPU else torch.float32


def _judge_step(hc, x, dout, out, grads) -> None:
    """out and every gradient of one step against the float64 golden of hc's current weights, each
    within the accuracy rule's bound set by the eager step (an uncompiled, uncaptured copy of hc on
    its device and backend): compiled or replayed, the layer must be as accurate as eager."""
    linear = hc.branch is not None
    eager = random_layer(hc.n, hc.dim, 0, use_gamma=hc.gamma is not None, linear=linear, backend=hc.backend)
    eager.load_state_dict(hc.state_dict())
    eager = eager.to(x.device, x.dtype)
    eager_out, eager_grads = _step(eager, eager, x, dout)
    golden = random_layer(hc.n, hc.dim, 0, use_gamma=hc.gamma is not None, linear=linear, backend="golden")
    golden.load_state_dict({k: v.detach().cpu() for k, v in hc.state_dict().items()})
    ref_out, ref = layer_golden64(golden.to(x.dtype), x.cpu(), dout.cpu())
    verdicts = [judge("x_next", out, ref_out, eager_out)]
    verdicts += [judge(k, grads[k], ref[k], eager_grads[k]) for k in ref]
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))


def _step(fn, hc, x, dout, dynamic=False):
    """One training step of fn (hc or its compiled form) -> (out, grads of x and every parameter).
    dynamic: mark the token dim dynamic, as a training loop with varying token counts does."""
    hc.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    if dynamic:
        torch._dynamo.mark_dynamic(x, 0)
    out = fn(x)
    out.backward(dout)
    grads = {"x": x.grad} | ({"weight": hc.branch.weight.grad} if hc.branch is not None else {})
    grads |= {k: getattr(hc, k).grad for k in ("phi", "alpha", "bias", "gamma") if getattr(hc, k) is not None}
    return out.detach().clone(), {k: v.clone() for k, v in grads.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_layer_trains_like_the_golden_with_one_graph_for_every_token_count(backend):
    """fullgraph, dynamic token counts: T = 5, 7, 11 share one compilation; an SGD step between them
    changes the weights the next call must see."""
    n, D = 4, 16
    device = "cuda" if GPU else "cpu"
    hc = random_layer(n, D, 3, linear=False, backend=backend).to(device, DTYPE)
    counter = CompileCounterWithBackend(COMPILE_BACKEND)
    compiled = torch.compile(hc, fullgraph=True, backend=counter)
    opt = torch.optim.SGD(hc.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(4)
    frames = []
    for T in (5, 7, 11):
        x = torch.randn(T, n, D, generator=g).to(device, DTYPE)
        dout = torch.randn(T, n, D, generator=g).to(device, DTYPE)
        out, grads = _step(compiled, hc, x, dout, dynamic=True)
        _judge_step(hc, x, dout, out, grads)
        opt.step()
        frames.append(counter.frame_count)
    assert frames[0] >= 1 and frames[-1] == frames[0], f"frames compiled after each token count: {frames}"


@gpu_only
def test_inductor_launches_the_triton_kernels_itself():
    """The compiled forward and backward call our kernels from Inductor's code, not our ops' Python."""
    from torch._inductor.utils import run_and_get_code

    hc = random_layer(4, 64, 1, backend="triton").to("cuda", torch.bfloat16)
    x = torch.randn(33, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    compiled = torch.compile(hc, fullgraph=True)

    def step():
        compiled(x).sum().backward()

    _, code = run_and_get_code(step)
    text = "\n".join(code)
    for kernel in ("_fwd_partial_kernel", "_sinkhorn_fwd_kernel", "_post_fwd_kernel", "_pass_b_kernel", "_post_bwd_kernel"):
        assert kernel in text, f"{kernel} is not launched by the compiled code"
    assert "torch.ops.mhc_ops" not in text, "an mhc_ops op is still called as an opaque op"


@gpu_only
@pytest.mark.parametrize("T", [1, 1024])
def test_reduce_overhead_training_steps_see_every_weight_update(T):
    """torch.compile(mode="reduce-overhead") over 6 optimizer steps: each replay uses the current
    weights (AdamW moves all of them), and nothing is left in the CUDA-graph pool that the graph does
    not track (the error this test reproduced: 'Detected 1 tensor(s) in the cudagraph pool not tracked
    as outputs')."""
    n, D = 4, 256
    hc = random_layer(n, D, 2, linear=False, backend="triton").to("cuda", torch.bfloat16)
    compiled = torch.compile(hc, mode="reduce-overhead", fullgraph=True)
    opt = torch.optim.AdamW(hc.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(5)
    for _ in range(6):
        x = torch.randn(T, n, D, generator=g).to("cuda", torch.bfloat16)
        dout = torch.randn(T, n, D, generator=g).to("cuda", torch.bfloat16)
        torch.compiler.cudagraph_mark_step_begin()
        out, grads = _step(compiled, hc, x, dout)
        _judge_step(hc, x, dout, out, grads)
        opt.step()


@gpu_only
def test_make_graphed_callables_on_a_stack_replays_like_eager():
    """torch.cuda.make_graphed_callables on a stack of two layers (one call: their graphs share a pool,
    so forwards run in order and backwards in reverse, as captured), then optimizer steps: the graphed
    stack gives eager's outputs and gradients bitwise, on the updated weights."""
    n, D, T = 4, 128, 96
    layers = [random_layer(n, D, s, linear=False, backend="triton").to("cuda", torch.bfloat16) for s in (6, 7)]
    g = torch.Generator().manual_seed(8)
    samples = tuple((torch.randn(T, n, D, generator=g).to("cuda", torch.bfloat16).requires_grad_(),) for _ in layers)
    graphed = torch.cuda.make_graphed_callables(tuple(layers), samples)
    opt = torch.optim.SGD([p for layer in layers for p in layer.parameters()], lr=0.1)
    for _ in range(3):
        x = torch.randn(T, n, D, generator=g).to("cuda", torch.bfloat16)
        dout = torch.randn(T, n, D, generator=g).to("cuda", torch.bfloat16)
        eager = []
        for layer in layers:
            copy = random_layer(n, D, 0, linear=False, backend="triton")
            copy.load_state_dict(layer.state_dict())
            eager.append(copy.to("cuda", torch.bfloat16))
        x_e = x.clone().requires_grad_()
        out_e = eager[1](eager[0](x_e))
        out_e.backward(dout)
        opt.zero_grad(set_to_none=True)
        x_g = x.clone().requires_grad_()
        out_g = graphed[1](graphed[0](x_g))
        out_g.backward(dout)
        assert torch.equal(out_g, out_e) and torch.equal(x_g.grad, x_e.grad)
        for k, (layer, copy) in enumerate(zip(layers, eager)):
            for name in ("phi", "alpha", "bias", "gamma"):
                assert torch.equal(getattr(layer, name).grad, getattr(copy, name).grad), f"layer {k}: d{name}"
        opt.step()


@gpu_only
def test_forward_capture_and_training_capture_share_weights_at_several_shapes():
    """In one process: a forward-only graph at one token count and a training-step graph at another,
    on the same module, replayed around in-place weight updates, give the eager results."""
    n, D = 4, 256
    hc = HyperConnection(D, n, torch.nn.Linear(D, D, device="cuda", dtype=torch.bfloat16), use_gamma=True).cuda()
    g = torch.Generator(device="cuda").manual_seed(9)
    x_fwd = torch.randn(17, n, D, device="cuda", generator=g).bfloat16()
    x_trn = torch.randn(2, 300, n, D, device="cuda", generator=g).bfloat16().requires_grad_()
    dout = torch.randn_like(x_trn)
    leaves = (x_trn, *hc.parameters())

    def forward():
        with torch.no_grad():
            return (hc(x_fwd),)

    def train():
        out = hc(x_trn)
        return (out, *torch.autograd.grad(out, leaves, dout))

    graphs = [capture_graph(forward), capture_graph(train)]
    for trial in range(3):
        with torch.no_grad():
            hc.phi.mul_(1.1 + trial)
            hc.gamma.add_(0.05)
            x_fwd.copy_(torch.randn_like(x_fwd))
        for (graph, static), fn in zip(graphs, (forward, train)):
            graph.replay()
            for a, b in zip(static, fn()):
                assert torch.equal(a, b)


@pytest.mark.skipif(KERNEL_DEVICE is None, reason="the Triton kernels need the interpreter or a GPU")
@pytest.mark.parametrize("delayed", [True, False], ids=["delayed", "plain"])
def test_a_compiled_inference_stack_decodes_like_eager_in_one_graph(monkeypatch, delayed):
    """Under torch.no_grad, torch.compile (fullgraph, token counts marked dynamic) of an all-Triton HyperStack runs
    each boundary between blocks as ops.BOUNDARY_DECODE (the op mhc_ops::boundary_decode, its launches traced by
    Inductor on a GPU; the opaque twin through the interpreter): one launch_decode a boundary, one compilation for
    2 and 3 tokens. Through the interpreter the outputs are the eager decode's bit for bit (the same launches); on a
    GPU Inductor compiles the kernels again, FMA contraction allowed (kernels/_launch.py), so both are judged against
    the float64 golden by the accuracy rule."""
    from mhc_ops.golden.layer import layer_forward

    def golden(x, dtype):
        h, h_pre = x, None  # the streams in x's dtype between layers, as the stack stores them
        for layer in stack.layers:
            p = [None if getattr(layer, k) is None else getattr(layer, k).detach().to(dtype) for k in PARAMS]
            out = layer_forward(h, *p, None, delayed=delayed, h_pre_prev=h_pre, compute_dtype=dtype)
            h, h_pre = out if delayed else (out, None)
        return h

    n, D = 4, 16
    device = "cuda" if GPU else "cpu"
    stack = random_stack(D, n, [None, None, None], 5, delayed=delayed, backend="triton").to(device)
    calls = count_launch_decode(monkeypatch)
    counter = CompileCounterWithBackend(COMPILE_BACKEND)
    compiled = torch.compile(stack, fullgraph=True, backend=counter)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for T in (2, 3):
            x = torch.randn(T, n, D, generator=g).to(device, DTYPE)
            torch._dynamo.mark_dynamic(x, 0)
            calls.clear()
            got = compiled(x)
            if not GPU:  # Inductor's traced launches do not pass through launch_decode's Python at run time
                assert len(calls) == len(stack.layers) - 1
            calls.clear()
            want = stack(x)
            assert len(calls) == len(stack.layers) - 1
            if GPU:
                ref64, ref32 = golden(x, torch.float64), golden(x, torch.float32)
                verdicts = [judge("compiled", got, ref64, ref32), judge("eager", want, ref64, ref32)]
                assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))
            else:
                assert torch.equal(got, want)
    assert counter.frame_count == 1
