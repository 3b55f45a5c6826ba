"""CUDA-graph capture of a training step's op calls (GPU only): a captured forward + backward replays
with new inputs and updated weights and gives the eager results (no host syncs, nothing cached on
the host that a replay would reuse stale: the weight split is rebuilt inside the graph)."""

import pytest
import torch

import mhc_ops
from mhc_ops.nn import HyperConnection
from tests.helpers import HAS_CUDA, INTERPRETING, capture_graph

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA or INTERPRETING, reason="CUDA graphs need a GPU")]


def test_mhc_pre_forward_and_backward_replay_like_eager():
    g = torch.Generator(device="cuda").manual_seed(0)
    T, n, D = 1000, 4, 512
    O = n * n + 2 * n
    x = torch.randn(T, n, D, device="cuda", generator=g).bfloat16().requires_grad_()
    phi = (torch.randn(O, n * D, device="cuda", generator=g) / (n * D) ** 0.5).requires_grad_()
    alpha = torch.tensor([1.1, 0.9, 1.05], device="cuda", requires_grad=True)
    bias = (0.5 * torch.randn(O, device="cuda", generator=g)).requires_grad_()
    gamma = (1 + 0.5 * torch.randn(n, D, device="cuda", generator=g)).requires_grad_()
    ups = (torch.randn(T, D, device="cuda", generator=g).bfloat16(), torch.randn(T, n, device="cuda", generator=g),
           torch.randn(T, n, n, device="cuda", generator=g))  # fmt: skip
    leaves = (x, phi, alpha, bias, gamma)

    def step():
        outs = mhc_ops.mhc_pre(x, phi, alpha, bias, gamma)
        return (*outs, *torch.autograd.grad(outs, leaves, ups))

    graph, static = capture_graph(step)
    for trial in range(2):
        with torch.no_grad():  # new tokens, and an optimizer-like in-place update of the weights
            x.copy_(torch.randn(T, n, D, device="cuda", generator=g))
            phi.mul_(1.01 + trial)
            gamma.add_(0.1)
        graph.replay()
        eager = step()
        for a, b in zip(static, eager):
            assert torch.equal(a, b)


def test_layer_forward_and_backward_replay_like_eager():
    torch.manual_seed(1)
    hc = HyperConnection(256, 4, torch.nn.Linear(256, 256, device="cuda", dtype=torch.bfloat16), use_gamma=True).cuda()
    x = torch.randn(2, 300, 4, 256, device="cuda").bfloat16().requires_grad_()
    dout = torch.randn_like(x)
    leaves = (x, *hc.parameters())

    def step():
        out = hc(x)
        return (out, *torch.autograd.grad(out, leaves, dout))

    graph, static = capture_graph(step)
    with torch.no_grad():
        x.copy_(torch.randn_like(x))
        hc.phi.mul_(1.5)
    graph.replay()
    for a, b in zip(static, step()):
        assert torch.equal(a, b)
