"""The pipeline composer: each one-stage-on-Triton chain and the all-Triton chain match the golden
chain at every stage boundary (accuracy rule against the float64 chain)."""

import dataclasses

import pytest
import torch

from mhc_ops.golden import PRE_STAGE_NAMES, STAGE_IO, STAGE_NAMES, Case, judge, mhc_pre_backward, mhc_pre_forward
from mhc_ops.golden.fixtures import make_inputs
from mhc_ops.stages import STAGES, Pipeline
from tests.cases import CHAIN_CASES
from tests.helpers import KERNEL_DEVICE, nan_filled_outputs

BOUNDARY = [k for s in PRE_STAGE_NAMES for k in STAGE_IO[s]["outputs"]]
PER_STAGE = [pytest.param({s: "triton"}, marks=pytest.mark.stage(s), id=f"{s}-on-triton") for s in PRE_STAGE_NAMES]


def _chain64(t: dict, case: Case) -> dict:
    """Every named tensor of the float64 golden chain on the same inputs (unrounded)."""
    t64 = {k: v.double() if v is not None else None for k, v in t.items()}
    h_in, h_post, h_res, inv_rms, h_mix, h_pre = mhc_pre_forward(
        t64["x"], t64["phi"], t64["alpha"], t64["bias"], t64["gamma"], compute_dtype=torch.float64
    )
    _, inter = mhc_pre_backward(
        t64["x"], t64["phi"], t64["alpha"], t64["dh_in"], t64["dh_post"], t64["dh_res"], inv_rms, h_mix, h_pre,
        h_post, t64["gamma"], grad_x_post=t64["grad_x_post"], compute_dtype=torch.float64, return_intermediates=True,
    )  # fmt: skip
    return inter | dict(h_in=h_in, h_post=h_post, h_res=h_res, inv_rms=inv_rms, h_mix=h_mix, h_pre=h_pre)


@pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
@pytest.mark.parametrize("case", CHAIN_CASES, ids=str)
@pytest.mark.parametrize(
    "backends",
    [
        *PER_STAGE,
        pytest.param({s: "triton" for s in PRE_STAGE_NAMES}, id="all-triton"),
        pytest.param({"fwd": "triton", "plan": "fused"}, id="fused-plan"),
    ],
)
def test_chain_matches_golden_at_every_boundary(case, backends):
    t = make_inputs(case, KERNEL_DEVICE)
    ref64 = _chain64(t, case)
    golden = Pipeline("golden").run(**t)
    with nan_filled_outputs():
        mixed = Pipeline("golden", **backends).run(**t)
    # The fused plan produces the outputs (and dh_mix) but not the staged intermediates.
    names = [k for k in BOUNDARY if k in mixed and not (k == "dgamma" and t["gamma"] is None)]
    verdicts = [judge(k, mixed[k], ref64[k], golden[k]) for k in names]
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))
    if t["gamma"] is None:
        assert mixed["dgamma"] is None


def test_pipeline_rejects_unknown_stage_and_backend():
    with pytest.raises(ValueError, match="stage"):
        Pipeline("golden", dgama="triton")
    with pytest.raises(ValueError, match="backend"):
        Pipeline("cuda")
    with pytest.raises(ValueError, match="plan"):
        Pipeline("triton", plan="fast")


def test_registry_describes_the_five_stages():
    assert PRE_STAGE_NAMES == ("fwd", "dh_mix", "dx", "dparams", "dgamma")
    assert tuple(STAGES) == STAGE_NAMES
    for name, stage in STAGES.items():
        assert stage.inputs == STAGE_IO[name]["inputs"] and stage.outputs == STAGE_IO[name]["outputs"]
        assert callable(stage.golden) and callable(stage.triton)


@pytest.mark.parametrize("plan", ["staged", "fused"])
def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch, plan):
    t = make_inputs(CHAIN_CASES[0])
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    env = Pipeline("golden").forward(**{k: t[k] for k in ("x", "phi", "alpha", "bias", "gamma")})
    with pytest.raises(RuntimeError, match="needs TRITON_INTERPRET=1"):
        Pipeline("triton", plan=plan).backward(env, dh_in=t["dh_in"], dh_post=t["dh_post"], dh_res=t["dh_res"])


def test_a_pipeline_runs_its_own_stage_table_and_leaves_the_registry():
    """table= replaces stages for one Pipeline only (diagnose's mutants): another Pipeline and STAGES
    still see the registry's."""
    t = make_inputs(CHAIN_CASES[0])
    calls = []

    def golden_fwd(**kwargs):
        calls.append(kwargs["x"])
        return STAGES["fwd"].golden(**kwargs)

    registry = dict(STAGES)
    fwd_in = {k: t[k] for k in ("x", "phi", "alpha", "bias", "gamma")}
    mine = Pipeline("golden", table={"fwd": dataclasses.replace(STAGES["fwd"], golden=golden_fwd)})
    out = mine.forward(**fwd_in)
    assert len(calls) == 1 and calls[0] is t["x"]
    assert torch.equal(out["h_in"], Pipeline("golden").forward(**fwd_in)["h_in"]) and len(calls) == 1
    assert STAGES == registry
