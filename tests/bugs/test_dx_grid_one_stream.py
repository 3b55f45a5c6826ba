"""Regression: a dx grid that covered only stream 0 of n, hidden by a zero-initialised output."""

import functools
from unittest import mock

import pytest

from mhc_ops.diagnose import analyse_stage, format_stage
from mhc_ops.golden import build
from mhc_ops.kernels import dx as dx_module
from mhc_ops.kernels.dx import mhc_pre_dx
from tests.cases import DX_BLOCKS, DX_CASES
from tests.helpers import KERNEL_DEVICE

RECORD = "docs/bugs/dx-grid-one-stream.md"
pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")


class _OneStreamGrid:
    """A launch of the dx kernel whose stream axis is sized 1: cdiv(n, BLOCK_SIZE_N) of the
    historical launcher, with BLOCK_SIZE_N >= n."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        return self.kernel[(grid[0], 1)]


def dx_one_stream_grid(**inputs):
    """Mutant of stage dx: this project's launcher and kernel, launched on the historical grid."""
    with mock.patch.object(dx_module, "_dx_kernel", _OneStreamGrid(dx_module._dx_kernel)):
        return mhc_pre_dx(**inputs)


@pytest.mark.stage("dx")
@pytest.mark.parametrize("block_t, block_d", DX_BLOCKS)
@pytest.mark.parametrize("case", DX_CASES, ids=str)
def test_dx_writes_every_stream(case, block_t, block_d):
    report = analyse_stage(
        "dx", build(case, KERNEL_DEVICE), functools.partial(mhc_pre_dx, block_t=block_t, block_d=block_d)
    )
    dx = report["dx"]
    assert dx.ok and dx.nan == 0, format_stage(report)
    assert len(dx.streams) == case.n
    assert all(s.verdict.ok and s.unwritten == 0 for s in dx.streams), format_stage(report)


@pytest.mark.stage("dx")
@pytest.mark.parametrize("case", DX_CASES, ids=str)
def test_check_catches_one_stream_grid(case):
    report = analyse_stage("dx", build(case, KERNEL_DEVICE), dx_one_stream_grid)
    dx = report["dx"]
    assert not dx.ok
    # The signature: stream 0 right, every element of streams 1..n-1 never written (still NaN).
    first, *rest = dx.streams
    assert first.verdict.ok and first.unwritten == 0, format_stage(report)
    assert rest and all(s.unwritten == s.size for s in rest), format_stage(report)
    assert dx.unwritten == dx.size * (case.n - 1) // case.n
