"""The whole mHC layer: HyperConnection (pre + sinkhorn + post around a block), its functional halves,
the per-stage composer inside autograd, init presets, casts, recompute, and the stream helpers.

Reference: the golden forwards composed in float64 and differentiated by torch.autograd."""

import pytest
import torch

import mhc_ops
from mhc_ops.golden import judge, rel_err
from mhc_ops.nn import HyperConnection, expand_streams, hc_post, hc_pre, reduce_streams
from tests.cases import LAYER_CASES
from tests.helpers import KERNEL_DEVICE, PARAMS, layer_golden64, layer_grads, random_layer

needs_kernels = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")


@needs_kernels
@pytest.mark.parametrize("case", LAYER_CASES, ids=str)
def test_layer_forward_and_gradients_pass_the_accuracy_rule(case):
    n, D, lead, dtype = case.n, case.D, case.lead, case.torch_dtype
    g = torch.Generator().manual_seed(case.seed)
    x = torch.randn(*lead, n, D, generator=g).to(dtype)
    dout = torch.randn(*lead, n, D, generator=g).to(dtype)
    # The model is cast to x's dtype: the branch follows, the mHC parameters stay fp32.
    hc = random_layer(n, D, case.seed, use_gamma=case.gamma).to(dtype)
    ref_out, ref = layer_golden64(hc, x, dout)
    gold_out, gold = layer_grads(
        random_layer(n, D, case.seed, use_gamma=case.gamma, backend="golden").to(dtype), x, dout
    )
    tri = random_layer(n, D, case.seed, use_gamma=case.gamma, backend="triton").to(KERNEL_DEVICE, dtype)
    tri_out, tri_grads = layer_grads(tri, x.to(KERNEL_DEVICE), dout.to(KERNEL_DEVICE))
    verdicts = [judge("x_next", tri_out, ref_out, gold_out)]
    verdicts += [judge(k, tri_grads[k], ref[k], gold[k]) for k in ref]
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))
    assert tri_out.dtype == dtype and tri_grads["x"].dtype == dtype
    assert all(tri_grads[k].dtype == torch.float32 for k in PARAMS if k in tri_grads)


@needs_kernels
def test_post_gradient_of_x_enters_the_pre_backward(monkeypatch):
    """The layer's x gradient is written once, by the pre backward, with post's dx as grad_x_post;
    the result equals the three ops composed (where autograd adds the two dx)."""
    seen = []
    real = mhc_ops._impl.pre_backward

    def spy(route, saved, dh_in, dh_post, dh_res, grad_x_post, hc_eps):
        seen.append(grad_x_post)
        return real(route, saved, dh_in, dh_post, dh_res, grad_x_post, hc_eps)

    monkeypatch.setattr(mhc_ops._impl, "pre_backward", spy)
    case = LAYER_CASES[0]
    x = torch.randn(*case.lead, case.n, case.D).to(case.torch_dtype).to(KERNEL_DEVICE)
    dout = torch.randn_like(x)
    hc = random_layer(case.n, case.D, 5, backend="triton").to(KERNEL_DEVICE)
    _, grads = layer_grads(hc, x, dout)
    assert len(seen) == 1 and seen[0] is not None and seen[0].shape == x.shape
    x_ops = x.detach().clone().requires_grad_()
    h_in, h_post, logits = mhc_ops.mhc_pre(x_ops, hc.phi, hc.alpha, hc.bias, hc.gamma, backend="triton")
    out = mhc_ops.mhc_post(x_ops, mhc_ops.sinkhorn(logits, backend="triton"), hc.branch(h_in), h_post, backend="triton")
    out.backward(dout)
    # both ways of adding post's dx pass the accuracy rule against the float64 layer
    _, ref = layer_golden64(hc.cpu(), x.cpu(), dout.cpu())
    _, gold = layer_grads(random_layer(case.n, case.D, 5, backend="golden"), x.cpu(), dout.cpu())
    verdicts = [judge(f"dx ({how})", g.cpu(), ref["x"], gold["x"]) for how, g in (("link", grads["x"]), ("ops", x_ops.grad))]
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))


@needs_kernels
def test_a_stage_swapped_to_the_golden_trains_like_all_triton():
    """A few SGD steps of a two-layer stack with dgamma and sinkhorn_bwd on the golden (through the
    composer, inside autograd) give the all-Triton losses and gradients."""
    n, D = 4, 8
    x = torch.randn(2, 3, n, D, generator=torch.Generator().manual_seed(7)).to(KERNEL_DEVICE)
    target = torch.randn(2, 3, n, D, generator=torch.Generator().manual_seed(8)).to(KERNEL_DEVICE)
    runs = {}
    for name, stages in (("triton", None), ("swapped", {"dgamma": "golden", "sinkhorn_bwd": "golden"})):
        layers = torch.nn.Sequential(*(random_layer(n, D, 10 + i, backend="triton", stages=stages, layer_index=i)
                                       for i in range(2))).to(KERNEL_DEVICE)  # fmt: skip
        opt = torch.optim.SGD(layers.parameters(), lr=0.05)
        losses, grads = [], None
        for _ in range(2):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(layers(x), target)
            loss.backward()
            grads = grads or [p.grad.clone() for p in layers.parameters()]
            opt.step()
            losses.append(loss.item())
        runs[name] = losses, grads
    (l_tri, g_tri), (l_sw, g_sw) = runs["triton"], runs["swapped"]
    assert l_tri[-1] < l_tri[0], "the stack must actually train"
    assert l_sw == pytest.approx(l_tri, rel=1e-5)
    for a, b in zip(g_sw, g_tri):
        assert torch.linalg.vector_norm(a - b) <= 1e-5 * torch.linalg.vector_norm(b) + 1e-7


@needs_kernels
def test_recompute_gives_bitwise_the_same_gradients_and_two_runs_agree():
    case = LAYER_CASES[1]
    x = torch.randn(*case.lead, case.n, case.D).to(case.torch_dtype).to(KERNEL_DEVICE)
    dout = torch.randn_like(x)
    runs = [layer_grads(random_layer(case.n, case.D, 3, backend="triton", recompute=r).to(KERNEL_DEVICE, x.dtype), x, dout)
            for r in (False, True, False)]  # fmt: skip
    for out, grads in runs[1:]:
        assert torch.equal(out, runs[0][0])
        assert all(torch.equal(grads[k], runs[0][1][k]) for k in grads)


def test_parameters_stay_fp32_under_casts_and_autocast():
    hc = random_layer(3, 16, 1).to(torch.bfloat16)
    assert all(getattr(hc, k).dtype == torch.float32 for k in PARAMS)
    assert hc.branch.weight.dtype == torch.bfloat16
    x = torch.randn(2, 5, 3, 16).to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = hc(x)
    out.float().square().sum().backward()
    assert out.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    assert all(getattr(hc, k).grad.dtype == torch.float32 for k in PARAMS)


@pytest.mark.parametrize("n", [1, 3, 4])
def test_identity_init_selects_the_home_stream_and_keeps_the_streams(n):
    D, k = 32, 5
    hc = HyperConnection(D, n, lambda h: 0 * h, layer_index=k, backend="golden")
    x = torch.randn(7, n, D)
    h_in, h_post, h_res, _ = hc_pre(x, hc.phi, hc.alpha, hc.bias, backend="golden")
    # sigmoid(-4) = 0.018 of every other stream leaks into h_in; softmax(6I - 3) puts 0.993 on the diagonal.
    assert rel_err(h_in, x[:, k % n]) < 0.05 + 0.02 * (n - 1)
    assert torch.allclose(h_post, torch.ones_like(h_post), atol=0.05)
    assert torch.allclose(h_res, torch.eye(n).expand_as(h_res), atol=0.02)
    assert rel_err(hc(x), x) < 0.02


def test_zero_init_averages_the_streams():
    n, D = 4, 16
    hc = HyperConnection(D, n, lambda h: 0 * h, init="zero", backend="golden")
    with torch.no_grad():
        hc.phi.zero_()  # m = 0 exactly: h_pre = 0.5, sinkhorn(0) = J/n
    x = torch.randn(5, n, D)
    h_in, h_post, h_res, _ = hc_pre(x, hc.phi, hc.alpha, hc.bias, backend="golden")
    assert torch.allclose(h_in, 0.5 * x.sum(1), atol=1e-5)
    assert torch.allclose(h_res, torch.full_like(h_res, 1 / n), atol=1e-5)
    assert torch.allclose(hc(x), x.mean(1, keepdim=True).expand_as(x), atol=1e-5)


def test_disable_is_a_plain_residual():
    branch = torch.nn.Linear(8, 8)
    hc = HyperConnection(8, 4, branch, disable=True)
    h = torch.randn(3, 8)
    assert torch.equal(hc(h), h + branch(h)) and list(hc.parameters()) == list(branch.parameters())


def test_expand_and_reduce_streams():
    h = torch.randn(2, 3, 5)
    x = expand_streams(h, 4)
    assert x.shape == (2, 3, 4, 5) and x.is_contiguous() and torch.equal(x[:, :, 2], h)
    assert torch.allclose(reduce_streams(x), 4 * h)
    with pytest.raises(ValueError, match="n: expected an int >= 1"):
        expand_streams(h, 0)


@needs_kernels
@pytest.mark.parametrize("lead", [(0,), (1,), (2, 0)])
def test_zero_and_one_token(lead):
    hc = random_layer(3, 5, 2, backend="triton").to(KERNEL_DEVICE)
    x = torch.randn(*lead, 3, 5, device=KERNEL_DEVICE, requires_grad=True)
    out = hc(x)
    out.backward(torch.randn_like(out))
    assert out.shape == x.shape and x.grad.shape == x.shape
    assert torch.isfinite(hc.phi.grad).all() and (hc.phi.grad.abs().sum() > 0) == (x.numel() > 0)


@needs_kernels
def test_nan_in_one_token_stays_in_that_token():
    hc = random_layer(4, 12, 4, backend="triton").to(KERNEL_DEVICE)
    x = torch.randn(6, 4, 12, device=KERNEL_DEVICE)
    x[2, 1, 3] = float("nan")
    out = hc(x)
    assert out[2].isnan().all() and not out[[0, 1, 3, 4, 5]].isnan().any()


def test_functional_halves_without_link_are_the_ops():
    hc = random_layer(3, 8, 6, backend="golden")
    x = torch.randn(4, 3, 8)
    h_in, h_post, h_res, link = hc_pre(x, hc.phi, hc.alpha, hc.bias, hc.gamma, backend="golden")
    with_link = hc_post(x, h_res, h_in, h_post, link)
    without = hc_post(x, h_res, h_in, h_post, backend="golden")
    assert torch.equal(with_link, without)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=0, n=4), "dim: expected an int >= 1"),
        (dict(dim=8, n=0), "n: expected an int >= 1"),
        (dict(dim=8, n=4, init="xavier"), "init: expected one of"),
        (dict(dim=8, n=4, sinkhorn_iters=0), "iters: expected an int >= 1"),
    ],
)
def test_bad_module_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HyperConnection(**kwargs)


def test_unknown_stage_in_stages_is_a_clear_error():
    hc = HyperConnection(8, 2, stages={"dgama": "golden"}, backend="golden")
    with pytest.raises(ValueError, match="stages: expected stage names"):
        hc(torch.randn(3, 2, 8))


def test_module_under_torch_compile_fullgraph_matches_eager():
    hc = random_layer(3, 8, 9, backend="golden")
    x = torch.randn(2, 5, 3, 8)
    eager = hc(x)
    compiled = torch.compile(hc, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(x), eager, rtol=1e-6, atol=1e-6)


def _saved_bytes(layers, x):
    """Bytes of the distinct storages autograd saves for backward in one forward of layers(x)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layers(x)
    return sum(seen.values())


def test_recompute_drops_exactly_the_mhc_intermediates():
    """Per token and layer, recompute=True saves 4*(2n^2 + 3n + 1) bytes fewer: inv_rms, h_mix, h_pre
    and the logits (h_post and sinkhorn(h_res) stay, the post backward needs them; x stays); per layer
    it saves bias (n^2 + 2n floats) in their place, to recompute the forward."""
    T, n, D, L = 12, 3, 8, 3
    x = torch.randn(T, n, D, requires_grad=True)
    saved = {
        r: _saved_bytes(
            torch.nn.Sequential(*(random_layer(n, D, i, backend="golden", recompute=r) for i in range(L))), x
        )
        for r in (False, True)
    }
    assert saved[False] - saved[True] == L * (T * 4 * (2 * n * n + 3 * n + 1) - 4 * (n * n + 2 * n))
