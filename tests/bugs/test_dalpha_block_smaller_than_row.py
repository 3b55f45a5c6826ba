"""Regression: a block over D smaller than the row, so that dh_pre (and with it dalpha_pre) summed
only the first elements of each row; the masked loads read the rest as 0."""

import functools

import pytest

from mhc_ops.diagnose import analyse_chain, analyse_stage, format_stage
from mhc_ops.golden import PRE_STAGE_NAMES, build, stage_dh_mix
from mhc_ops.kernels.dh_mix import mhc_pre_dh_mix
from mhc_ops.kernels.dparams import mhc_pre_dparams
from mhc_ops.stages import STAGES
from tests.cases import HISTORICAL_ROW_BLOCK, ROW_BLOCKS_D, ROW_CASE
from tests.helpers import KERNEL_DEVICE

RECORD = "docs/bugs/dalpha-block-smaller-than-row.md"
pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")


def dh_mix_block_smaller_than_row(**inputs):
    """Mutant of stage dh_mix (torch re-enactment): dh_pre = sum_d dh_in * x[i] over the first
    HISTORICAL_ROW_BLOCK elements of each row only, the masked tail of x read as 0. In the golden
    stage x enters dh_pre alone, so zeroing the tail re-enacts exactly that."""
    x = inputs["x"].clone()
    x[..., HISTORICAL_ROW_BLOCK:] = 0
    return stage_dh_mix(**(inputs | {"x": x}))


@pytest.mark.stage("dh_mix")
@pytest.mark.stage("dparams")
@pytest.mark.parametrize("block_d", ROW_BLOCKS_D)
def test_dalpha_from_rows_wider_than_a_block(block_d):
    assert ROW_CASE.D > block_d or ROW_CASE.D % block_d, "the row must not fit one block exactly"
    chain = analyse_chain(
        build(ROW_CASE, KERNEL_DEVICE),
        {
            "dh_mix": functools.partial(mhc_pre_dh_mix, block_d=block_d),
            "dparams": functools.partial(mhc_pre_dparams, block_d=block_d),
        },
    )
    for stage in ("dh_mix", "dparams"):
        assert chain[stage].ok, format_stage(chain[stage])
    assert all(p.verdict.ok for p in chain["dparams"]["dalpha"].parts), format_stage(chain["dparams"])


@pytest.mark.parametrize("block_d", ROW_BLOCKS_D)
@pytest.mark.parametrize("stage", [pytest.param(s, marks=pytest.mark.stage(s)) for s in PRE_STAGE_NAMES])
def test_every_loop_over_d_covers_the_row(stage, block_d):
    report = analyse_stage(
        stage, build(ROW_CASE, KERNEL_DEVICE), functools.partial(STAGES[stage].triton, block_d=block_d)
    )
    assert report.ok and all(o.nan == 0 for o in report.outputs), format_stage(report)


@pytest.mark.stage("dh_mix")
@pytest.mark.stage("dparams")
def test_check_catches_block_smaller_than_row():
    chain = analyse_chain(
        build(ROW_CASE, KERNEL_DEVICE), {"dh_mix": dh_mix_block_smaller_than_row, "dparams": mhc_pre_dparams}
    )
    assert not chain["dh_mix"]["dh_pre"].ok
    # The signature: dalpha_pre wrong, dalpha_post and dalpha_res right.
    pre, post, res = chain["dparams"]["dalpha"].parts
    assert not pre.verdict.ok and post.verdict.ok and res.verdict.ok, format_stage(chain["dparams"])
