"""Regression: the res part of dbias added once per trip of a nested loop instead of once per
program, and as a_res*dh_res instead of dh_res. Many programs feed each parameter gradient."""

import functools

import pytest
import torch

from mhc_ops.diagnose import analyse_stage, format_stage
from mhc_ops.golden import build, stage_dparams
from mhc_ops.kernels.dgamma import mhc_pre_dgamma
from mhc_ops.kernels.dparams import mhc_pre_dparams
from tests.cases import ACCUM_BLOCK_T, ACCUM_CASE, ACCUM_SPLITS, HISTORICAL_RES_BLOCK
from tests.helpers import KERNEL_DEVICE

RECORD = "docs/bugs/dbias-repeated-accumulation.md"
pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")


def dparams_repeated_accumulation(*, x, dh_mix, inv_rms, **inputs):
    """Mutant of stage dparams (torch re-enactment of the historical kernel 1): one program per token
    adds the res part of dbias inside the loop over (i, j) blocks of the n x n matrix, once per trip,
    and adds the scaled gradient a_res*dh_res (dh_mix's res part before inv_rms) instead of dh_res."""
    out = stage_dparams(x=x, dh_mix=dh_mix, inv_rms=inv_rms, **inputs)  # fp32 golden for the rest
    n = x.shape[-2]
    scaled = dh_mix.reshape(-1, n * n + 2 * n)[:, 2 * n :] / inv_rms.reshape(-1, 1)  # a_res*dh_res, [T, n*n]
    res = scaled.new_zeros(n * n)
    for token in scaled:  # one program per token
        for _i in range(0, n, HISTORICAL_RES_BLOCK):
            for _j in range(0, n, HISTORICAL_RES_BLOCK):
                res += token
    return out | {"dbias": torch.cat([out["dbias"][: 2 * n], res])}


@pytest.mark.stage("dparams")
@pytest.mark.parametrize("splits", ACCUM_SPLITS)
def test_dparams_adds_each_program_once(splits):
    impl = functools.partial(mhc_pre_dparams, block_t=ACCUM_BLOCK_T, block_d=16, splits=splits)
    report = analyse_stage("dparams", build(ACCUM_CASE, KERNEL_DEVICE), impl)
    assert report.ok and all(o.nan == 0 for o in report.outputs), format_stage(report)
    assert all(p.verdict.ok for o in report.outputs for p in o.parts), format_stage(report)


@pytest.mark.stage("dgamma")
@pytest.mark.parametrize("splits", ACCUM_SPLITS)
def test_dgamma_adds_each_program_once(splits):
    impl = functools.partial(mhc_pre_dgamma, block_t=ACCUM_BLOCK_T, block_d=16, splits=splits)
    report = analyse_stage("dgamma", build(ACCUM_CASE, KERNEL_DEVICE), impl)
    assert report.ok and report["dgamma"].nan == 0, format_stage(report)


@pytest.mark.stage("dparams")
def test_check_catches_repeated_accumulation():
    bundle = build(ACCUM_CASE, KERNEL_DEVICE)
    report = analyse_stage("dparams", bundle, dparams_repeated_accumulation)
    dbias = report["dbias"]
    # The signature: dbias_res wrong, dbias_pre and dbias_post right ...
    pre, post, res = dbias.parts
    assert not dbias.ok and pre.verdict.ok and post.verdict.ok and not res.verdict.ok, format_stage(report)
    # ... by a constant factor, trips * a_res: a scale error.
    n = ACCUM_CASE.n
    trips = len(range(0, n, HISTORICAL_RES_BLOCK)) ** 2
    assert res.ratio.kind == "constant", format_stage(report)
    assert res.ratio.mean == pytest.approx(trips * bundle.tensors["alpha"][2].item(), rel=1e-4)
