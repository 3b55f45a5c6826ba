"""Regression: dvecX_mm (and through it dgamma) built from three parts of which the res part missed
the inv_rms factor; invisible to inputs with inv_rms near 1."""

import pytest

from mhc_ops.diagnose import analyse_chain, analyse_stage, format_stage
from mhc_ops.golden import build, stage_dh_mix
from mhc_ops.kernels.dgamma import mhc_pre_dgamma
from mhc_ops.kernels.dh_mix import mhc_pre_dh_mix
from tests.cases import INV_RMS_FAR, RMS_CASES
from tests.helpers import KERNEL_DEVICE

RECORD = "docs/bugs/dgamma-missing-inv-rms.md"
pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")


def dh_mix_res_without_inv_rms(**inputs):
    """Mutant of stage dh_mix (torch re-enactment): dvecX_mm = dh_mix @ phi summed from three parts,
    the pre and post parts scaled by inv_rms, the res part (a_res*dh_res @ phi[2n:]) not."""
    out = stage_dh_mix(**inputs)  # fp32 golden: every output but dvecX_mm stays right
    n = inputs["x"].shape[-2]
    tmp = out["dh_mix_tmp"].reshape(-1, n * n + 2 * n)  # gradient of m, [T, O]
    inv_rms = inputs["inv_rms"].reshape(-1, 1)
    phi = inputs["phi"]
    mm = (tmp[:, : 2 * n] * inv_rms) @ phi[: 2 * n] + tmp[:, 2 * n :] @ phi[2 * n :]
    return out | {"dvecX_mm": mm.reshape(out["dvecX_mm"].shape)}


def _bundle(case):
    bundle = build(case, KERNEL_DEVICE)
    inv_rms = bundle.tensors["inv_rms"]
    far = (inv_rms < 1 / INV_RMS_FAR) | (inv_rms > INV_RMS_FAR)
    assert far.all(), "inputs with inv_rms near 1 cannot show a missing inv_rms factor"
    return bundle


@pytest.mark.stage("dh_mix")
@pytest.mark.stage("dgamma")
@pytest.mark.parametrize("case", RMS_CASES, ids=str)
def test_dvecX_mm_and_dgamma_carry_inv_rms(case):
    bundle = _bundle(case)
    chain = analyse_chain(bundle, {"dh_mix": mhc_pre_dh_mix, "dgamma": mhc_pre_dgamma})
    assert chain["dh_mix"].ok and chain["dgamma"].ok, format_stage(chain["dh_mix"]) + format_stage(chain["dgamma"])
    assert chain["dgamma"]["dgamma"].ratio.kind == "one"


@pytest.mark.stage("dh_mix")
@pytest.mark.stage("dgamma")
@pytest.mark.parametrize("case", RMS_CASES, ids=str)
def test_check_catches_res_part_without_inv_rms(case):
    bundle = _bundle(case)
    chain = analyse_chain(bundle, {"dh_mix": dh_mix_res_without_inv_rms, "dgamma": mhc_pre_dgamma})
    # The signature: dgamma wrong by a ratio that is not constant (a computation error, not a scale) ...
    dgamma = chain["dgamma"]["dgamma"]
    assert not dgamma.ok and dgamma.ratio.kind == "varies", format_stage(chain["dgamma"])
    # ... while the dgamma stage fed the golden dvecX_mm is right, and of dh_mix only dvecX_mm is wrong.
    assert analyse_stage("dgamma", bundle, mhc_pre_dgamma).ok
    assert [o.name for o in chain["dh_mix"].outputs if not o.ok] == ["dvecX_mm"], format_stage(chain["dh_mix"])
