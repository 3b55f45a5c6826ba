"""Regression: the per-program partials of dalpha, dbias and dphi reduced by an fp32 running sum, whose
error grows with the number of partials (one per token block) until dalpha failed the accuracy rule."""

import pytest
import torch

from mhc_ops.golden import build, judge
from mhc_ops.golden.accuracy import Verdict
from mhc_ops.kernels._reduce import sum_partials
from tests.cases import (
    PARTIALS_C,
    PARTIALS_COLS,
    PARTIALS_DPARAMS_BLOCK_T,
    PARTIALS_DPARAMS_CASE,
    PARTIALS_GROWTH,
    PARTIALS_ROWS,
    PARTIALS_SEED,
)
from tests.helpers import KERNEL_DEVICE, assert_stage_accurate, nan_filled_outputs, run_triton_stage

RECORD = "docs/bugs/partials-fp32-running-sum.md"
pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")


def running_sum_fp32(ws: torch.Tensor) -> torch.Tensor:
    """Mutant of kernels/_reduce.py::sum_partials (torch re-enactment of the first reduce): one fp32
    accumulator per column, the partials added one after the other in their fixed order."""
    acc = torch.zeros(ws.shape[1], dtype=torch.float32)
    for row in ws:
        acc = acc + row
    return acc


def _partials(P: int) -> torch.Tensor:
    """[P, PARTIALS_COLS] fp32 partials on the CPU: standard normal values plus +c in half the rows of
    each column and -c in the other half, at random rows, so they cancel to a sum of ~sqrt(P)."""
    g = torch.Generator().manual_seed(PARTIALS_SEED)
    ws = torch.randn(P, PARTIALS_COLS, generator=g)
    sign = torch.where(torch.rand(P // 2, PARTIALS_COLS, generator=g) < 0.5, 1.0, -1.0)
    return ws + PARTIALS_C * torch.cat([sign, -sign])[torch.randperm(P, generator=g)]


def _verdict(ws: torch.Tensor, out: torch.Tensor) -> Verdict:
    """The accuracy rule for a sum over the partials axis: against the fp64 sum, with torch's fp32 sum
    as the fp32 golden (the golden's dbias and dalpha are such sums)."""
    return judge("sum", out.cpu(), ws.double().sum(0), ws.sum(0))


@pytest.mark.stage("dparams")
@pytest.mark.parametrize("P", PARTIALS_ROWS)
def test_many_partials_reduce_to_fp32_grade(P):
    ws = _partials(P)
    with nan_filled_outputs():
        out = torch.empty(PARTIALS_COLS, device=KERNEL_DEVICE)
    sum_partials(ws.to(KERNEL_DEVICE), out)
    verdict = _verdict(ws, out)
    assert verdict.ok, str(verdict)


@pytest.mark.stage("dparams")
def test_check_catches_fp32_running_sum():
    small, large = (_verdict(_partials(P), running_sum_fp32(_partials(P))) for P in PARTIALS_ROWS)
    # The signature: right over few partials, wrong over many, the error growing with their number.
    assert small.ok and not large.ok, f"{small}\n{large}"
    assert large.err > PARTIALS_GROWTH * small.err, f"{small}\n{large}"


@pytest.mark.stage("dparams")
def test_dalpha_and_dbias_over_many_token_blocks():
    bundle = build(PARTIALS_DPARAMS_CASE, KERNEL_DEVICE)
    inputs, _ = bundle.stage_view("dparams")
    out = run_triton_stage("dparams", inputs, block_t=PARTIALS_DPARAMS_BLOCK_T)
    assert_stage_accurate("dparams", bundle, out)
