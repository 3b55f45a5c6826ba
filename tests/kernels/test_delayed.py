"""The delayed pre (DeepSeek-V4.1) on Triton: the forward (single kernel and split path) and the fused
backward against the float64 golden by the accuracy rule, with a previous sublayer's h_pre_prev and
without (the first sublayer: stream 0). CPU through the interpreter."""

import pytest
import torch

from mhc_ops.golden import judge
from mhc_ops.golden.mhc_pre import mhc_pre_delayed_backward, mhc_pre_delayed_forward
from mhc_ops.kernels.fused_bwd import launch_backward_fused
from mhc_ops.kernels.fwd import launch_fwd
from tests.cases import DELAYED_KERNEL_CASES
from tests.helpers import KERNEL_DEVICE, delayed_inputs, nan_filled_outputs

pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
FWD_OUT = ("h_in", "h_post", "h_res", "h_pre", "inv_rms", "h_mix")
BWD_OUT = ("dx", "dphi", "dalpha", "dbias", "dgamma", "dh_pre_prev")
FIRST = pytest.mark.parametrize("first", [False, True], ids=["h_pre_prev", "first"])


def _up(t):
    return {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in t.items()}


def _golden_fwd(case, t, cd):
    return dict(zip(FWD_OUT, mhc_pre_delayed_forward(
        t["x"], t["phi"], t["alpha"], t["bias"], t["gamma"], t["h_pre_prev"], norm_eps=case.norm_eps,
        hc_eps=case.hc_eps, compute_dtype=cd)))  # fmt: skip


@FIRST
@pytest.mark.parametrize(("splits", "wide"), [(1, False), (3, False), (1, True), (3, True)],
                         ids=["single", "split", "single-wide", "split-wide"])  # fmt: skip
@pytest.mark.parametrize("case", DELAYED_KERNEL_CASES, ids=str)
def test_delayed_forward(case, first, splits, wide):
    t = delayed_inputs(case, first, KERNEL_DEVICE)
    with nan_filled_outputs():
        got = launch_fwd(t["x"], t["phi"], t["alpha"], t["bias"], t["gamma"], case.norm_eps, case.hc_eps,
                         splits=splits, delayed=True, h_pre_prev=t["h_pre_prev"], wide=wide)  # fmt: skip
    # launch_fwd's order is mhc_pre's: (h_in, h_post, h_res, inv_rms, h_mix, h_pre)
    got = dict(zip(("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre"), got))
    ref64, ref32 = _golden_fwd(case, _up(t), torch.float64), _golden_fwd(case, t, torch.float32)
    verdicts = [judge(k, got[k], ref64[k], ref32[k]) for k in FWD_OUT]
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))
    assert got["h_in"].dtype == t["x"].dtype
    if first:
        assert torch.equal(got["h_in"], t["x"][..., 0, :])


# pass B's tile: the default, and 16-column blocks in 3 token ranges (dh_pre_prev summed from several column
# blocks' parts, some rows of a range past T)
PASS_B_TILES = [{}, {"block_t": 16, "block_d": 16, "splits": 3}]


@FIRST
@pytest.mark.parametrize("launch", PASS_B_TILES, ids=["default-tile", "16-column-blocks"])
@pytest.mark.parametrize("case", DELAYED_KERNEL_CASES, ids=str)
def test_delayed_fused_backward(case, first, launch):
    t = delayed_inputs(case, first, KERNEL_DEVICE)
    saved = _golden_fwd(case, t, torch.float32)  # the saved tensors, as stored (fp32)
    args = dict(x=t["x"], phi=t["phi"], alpha=t["alpha"], dh_in=t["dh_in"], dh_post=t["dh_post"],
                dh_res=t["dh_res"], inv_rms=saved["inv_rms"], h_mix=saved["h_mix"], h_pre=saved["h_pre"],
                h_post=saved["h_post"], gamma=t["gamma"])  # fmt: skip
    with nan_filled_outputs():
        got = launch_backward_fused(*args.values(), t["grad_x_post"], case.hc_eps, delayed=True,
                                    h_pre_prev=t["h_pre_prev"], dh_pre=t["dh_pre"], **launch)  # fmt: skip

    def golden(a, cd):
        return dict(zip(BWD_OUT, mhc_pre_delayed_backward(
            a["x"], a["phi"], a["alpha"], a["dh_in"], a["dh_post"], a["dh_res"], a["dh_pre"], a["inv_rms"],
            a["h_mix"], a["h_pre"], a["h_post"], a["gamma"], a["h_pre_prev"], hc_eps=case.hc_eps,
            grad_x_post=a["grad_x_post"], compute_dtype=cd)))  # fmt: skip

    every = args | {k: t[k] for k in ("dh_pre", "h_pre_prev", "grad_x_post")}
    ref64, ref32 = golden(_up(every), torch.float64), golden(every, torch.float32)
    verdicts = [judge(k, got[k], ref64[k], ref32[k]) for k in BWD_OUT if ref64[k] is not None]
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))
    assert (got["dh_pre_prev"] is None) == first and (got["dgamma"] is None) == (t["gamma"] is None)
    assert got["dx"].dtype == t["x"].dtype


@FIRST
def test_delayed_zero_tokens(first):
    case = DELAYED_KERNEL_CASES[0]
    t = delayed_inputs(case, first, KERNEL_DEVICE)
    t = {k: v[:0] if isinstance(v, torch.Tensor) and v.shape[:1] == t["x"].shape[:1] else v for k, v in t.items()}
    out = launch_fwd(t["x"], t["phi"], t["alpha"], t["bias"], t["gamma"], 1e-6, 1e-6, delayed=True,
                     h_pre_prev=t["h_pre_prev"])  # fmt: skip
    assert out[0].shape == (0, *case.lead[1:], case.D)
