"""Regression: the fused backward's pass B computed dvecX_mm for every 16-bit dx as a product of two-part
bf16 splits (~2^-16 relative), fine below a bf16 step but not below an fp16 one: fp16 dx rounded to the
wrong neighbour in about 8 % of its elements, far over the accuracy rule in the sharpened-logit layer
of issue 21."""

import pytest
import torch

from mhc_ops.golden.mhc_post import mhc_post_backward
from mhc_ops.golden.mhc_pre import mhc_pre_backward, mhc_pre_forward, stage_dh_mix, stage_dx
from mhc_ops.golden.sinkhorn import sinkhorn_backward, sinkhorn_forward
from mhc_ops.kernels.fused_bwd import mhc_pre_backward_fused
from tests.helpers import KERNEL_DEVICE, nan_filled_outputs, random_layer

RECORD = "docs/bugs/fused-dx-fp16-split-product.md"
pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
# (T, n, D, sinkhorn iters, seed): issue 21's two layers (fp16 x, alpha and bias x4) at 64 tokens. Judged by the share
# of dx's elements one fp16 step or more off the float64 golden's rounding, not the norm-wise rule: a single step
# between two correct fp32 sums fails the rule where the fp32 golden has none, and which seeds those are depends on
# the machine's fp32 sums (two fixed seeds of 5 and 2 tokens passed on one CPU and failed on another). At 64 tokens the
# shares are stable: about 0.1 % for a correct dx and for the fp32 golden, about 1.5 % for the 16-bit split product.
CASES = [(64, 5, 69, 3, 0), (64, 5, 69, 3, 1), (64, 8, 47, 25, 0), (64, 8, 47, 25, 1)]
OFF_SLACK = 0.002  # share of elements a correct dx may have off beyond twice the fp32 golden's
SAVED = ("inv_rms", "h_mix", "h_pre", "h_post")


def pre_backward_inputs(T, n, D, iters, seed) -> dict:
    """mhc_pre backward's inputs as the layer makes them (fp32 golden chain around a linear branch, fp16
    x, sharpened logits): x, phi, alpha, gamma, the forward's saved tensors, dh_in (fp16), dh_post,
    dh_res and grad_x_post (fp16)."""
    hc = random_layer(n, D, seed, sinkhorn_iters=iters)
    with torch.no_grad():
        hc.alpha.mul_(4)
        hc.bias.mul_(4)
    hc = hc.to(torch.float16)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, n, D, generator=g).half()
    dout = torch.randn(T, n, D, generator=g).half()
    p = {k: getattr(hc, k).detach() for k in ("phi", "alpha", "bias", "gamma")}
    h_in, h_post, h_res, inv_rms, h_mix, h_pre = mhc_pre_forward(x, **p)
    P = sinkhorn_forward(h_res, iters)
    h_out = hc.branch(h_in).detach()
    grad_x_post, dP, dh_out, dh_post = mhc_post_backward(x, P, h_out, h_post, dout)
    with torch.enable_grad():
        leaf = h_in.detach().requires_grad_()
        (dh_in,) = torch.autograd.grad(hc.branch(leaf), leaf, dh_out)
    dh_res = sinkhorn_backward(h_res, dP, iters)
    return dict(x=x, phi=p["phi"], alpha=p["alpha"], gamma=p["gamma"], inv_rms=inv_rms, h_mix=h_mix, h_pre=h_pre,
                h_post=h_post, dh_in=dh_in, dh_post=dh_post, dh_res=dh_res, grad_x_post=grad_x_post)  # fmt: skip


def off_shares(t: dict, dx: torch.Tensor) -> tuple[float, float]:
    """(share of dx's elements that differ from the float64 golden's dx rounded to dx's dtype, the same share of
    the fp32 golden's dx) on t."""
    args = [t[k] for k in ("x", "phi", "alpha", "dh_in", "dh_post", "dh_res", *SAVED, "gamma")]
    ref64 = mhc_pre_backward(*[a.double() if a.dtype == torch.float32 else a for a in args],
                             grad_x_post=t["grad_x_post"], compute_dtype=torch.float64)[0]  # fmt: skip
    ref32 = mhc_pre_backward(*args, grad_x_post=t["grad_x_post"])[0]
    assert dx.dtype == ref64.dtype == ref32.dtype == torch.float16
    return (dx != ref64).double().mean().item(), (ref32 != ref64).double().mean().item()


def off_bound(golden_share: float) -> float:
    return 2 * golden_share + OFF_SLACK


def dx_of_16bit_split(t: dict) -> torch.Tensor:
    """Mutant of pass B (torch re-enactment): dvecX_mm = dh_mix @ phi from two-part bf16 splits of both
    operands, three products hi*hi + hi*lo + lo*hi (split_dot_16bit), then dx as the kernel adds it."""
    keys = ("x", "phi", "alpha", "dh_in", "dh_post", "dh_res", *SAVED, "gamma")
    mix = stage_dh_mix(**{k: t[k] for k in keys})

    def split2(v):
        hi = v.to(torch.bfloat16).float()
        return hi, (v - hi).to(torch.bfloat16).float()

    (a_hi, a_lo), (b_hi, b_lo) = split2(mix["dh_mix"]), split2(t["phi"])
    mm = a_hi @ b_hi + a_hi @ b_lo + a_lo @ b_hi
    return stage_dx(x=t["x"], dvecX_mm=mm, dinv_rms=mix["dinv_rms"], inv_rms=t["inv_rms"], h_pre=t["h_pre"],
                    dh_in=t["dh_in"], gamma=t["gamma"], grad_x_post=t["grad_x_post"])["dx"]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=str)
def test_fp16_dx_is_off_by_a_step_no_more_often_than_the_fp32_golden(case):
    t = pre_backward_inputs(*case)
    on_device = {k: v.to(KERNEL_DEVICE) for k, v in t.items()}
    with nan_filled_outputs():
        dx = mhc_pre_backward_fused(**on_device)["dx"].cpu()
    assert torch.isfinite(dx).all()
    share, golden = off_shares(t, dx)
    assert share <= off_bound(golden), f"dx: {share:.2%} of elements off the fp64 rounding, fp32 golden {golden:.2%}"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_check_catches_the_16bit_split_product(case):
    t = pre_backward_inputs(*case)
    share, golden = off_shares(t, dx_of_16bit_split(t))
    assert share > 2 * off_bound(golden), f"the 16-bit split's dx should fail by far: {share:.2%} (fp32 {golden:.2%})"
