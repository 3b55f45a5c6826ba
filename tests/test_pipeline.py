"""The pipeline composer: each one-stage-on-Triton chain and the all-Triton chain match the golden
chain at every stage boundary (accuracy rule against the float64 chain)."""

import dataclasses

import pytest
import torch

import mhc_ops
from mhc_ops._impl import resolve_route
from mhc_ops.golden import (
    OP_STAGES,
    PRE_STAGE_NAMES,
    STAGE_IO,
    STAGE_NAMES,
    Case,
    judge,
    mhc_pre_backward,
    mhc_pre_forward,
)
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
        pytest.param({"pre_fwd": "triton", "pre_bwd": "triton"}, marks=pytest.mark.stage("pre_bwd"), id="composite-on-triton"),
        pytest.param({"pre_bwd": "golden"}, id="composite-on-golden"),
    ],
)
def test_chain_matches_golden_at_every_boundary(case, backends):
    t = make_inputs(case, KERNEL_DEVICE)
    ref64 = _chain64(t, case)
    golden = Pipeline("golden").run(**t)
    with nan_filled_outputs():
        mixed = Pipeline("golden", **backends).run(**t)
    # The composite on Triton (the fused backward) produces the outputs (and dh_mix), not the parts' intermediates.
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
    with pytest.raises(ValueError, match="'pre_bwd' stands for dh_mix, dx, dparams, dgamma"):
        Pipeline("golden", pre_bwd="triton", dx="golden")
    with pytest.raises(ValueError, match="backend"):
        Pipeline("golden", dx="parts")  # "parts" is a composite's choice only


@pytest.mark.parametrize(
    ("per_stage", "runs"),
    [
        ({}, ("pre_fwd", "dh_mix", "dx", "dparams", "dgamma")),
        ({"pre_bwd": "triton"}, ("pre_fwd", "pre_bwd")),
        ({"pre_bwd": "triton", "dx": "triton"}, ("pre_fwd", "pre_bwd")),
        ({"pre_bwd": "parts", "dx": "triton"}, ("pre_fwd", "dh_mix", "dx", "dparams", "dgamma")),
    ],
)
def test_a_composite_runs_in_place_of_its_parts_when_it_has_a_backend(per_stage, runs):
    pipe = Pipeline("golden", **per_stage)
    assert pipe.stages_of("mhc_pre") == runs
    assert pipe.stages_of("sinkhorn") == ("sinkhorn_fwd", "sinkhorn_bwd")
    assert pipe.stages_of("mhc_post") == ("post_fwd", "post_bwd")


@pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
@pytest.mark.parametrize("op", ["sinkhorn", "mhc_post"])
def test_the_composer_chains_every_op(op):
    """Pipeline.chain runs any op's stages: each stage on Triton in turn, the rest on the golden, every
    output against the float64 golden chain by the accuracy rule."""
    case = Case(lead=(2, 5), n=3, D=9, op=op, seed=11, iters=7)
    named = make_inputs(case, KERNEL_DEVICE) | ({"iters": case.iters, "eps": case.eps} if op == "sinkhorn" else {})
    ref64 = Pipeline("golden").chain(op, **{k: v.double() if isinstance(v, torch.Tensor) else v for k, v in named.items()})
    ref32 = Pipeline("golden").chain(op, **named)
    for stage in OP_STAGES[op]:
        with nan_filled_outputs():
            env = Pipeline("golden", **{stage: "triton"}).chain(op, **named)
        names = [k for s in OP_STAGES[op] for k in STAGE_IO[s]["outputs"]]
        verdicts = [judge(k, env[k], ref64[k], ref32[k]) for k in names]
        assert all(v.ok for v in verdicts), f"{stage} on triton:\n" + "\n".join(map(str, verdicts))


def test_a_chain_names_what_is_missing():
    t = make_inputs(CHAIN_CASES[0])
    with pytest.raises(ValueError, match="stage pre_fwd: missing norm_eps, hc_eps"):
        Pipeline("golden").chain("mhc_pre", **{k: t[k] for k in ("x", "phi", "alpha", "bias", "gamma")})
    with pytest.raises(ValueError, match="op: expected one of"):
        Pipeline("golden").chain("mhc_pree")


def test_registry_describes_the_five_stages():
    assert PRE_STAGE_NAMES == ("pre_fwd", "dh_mix", "dx", "dparams", "dgamma")
    assert tuple(STAGES) == STAGE_NAMES
    for name, stage in STAGES.items():
        assert stage.inputs == STAGE_IO[name]["inputs"] and stage.outputs == STAGE_IO[name]["outputs"]
        assert callable(stage.golden) and callable(stage.triton)


@pytest.mark.parametrize("pre_bwd", ["parts", "triton"])
def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch, pre_bwd):
    t = make_inputs(CHAIN_CASES[0])
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    env = Pipeline("golden").forward(**{k: t[k] for k in ("x", "phi", "alpha", "bias", "gamma")})
    with pytest.raises(RuntimeError, match="needs TRITON_INTERPRET=1"):
        Pipeline("triton", pre_bwd=pre_bwd).backward(env, dh_in=t["dh_in"], dh_post=t["dh_post"], dh_res=t["dh_res"])


def test_a_pipeline_runs_its_own_stage_table_and_leaves_the_registry():
    """table= replaces stages for one Pipeline only (diagnose's mutants): another Pipeline and STAGES
    still see the registry's."""
    t = make_inputs(CHAIN_CASES[0])
    calls = []

    def golden_fwd(**kwargs):
        calls.append(kwargs["x"])
        return STAGES["pre_fwd"].golden(**kwargs)

    registry = dict(STAGES)
    fwd_in = {k: t[k] for k in ("x", "phi", "alpha", "bias", "gamma")}
    mine = Pipeline("golden", table={"pre_fwd": dataclasses.replace(STAGES["pre_fwd"], golden=golden_fwd)})
    out = mine.forward(**fwd_in)
    assert len(calls) == 1 and calls[0] is t["x"]
    assert torch.equal(out["h_in"], Pipeline("golden").forward(**fwd_in)["h_in"]) and len(calls) == 1
    assert STAGES == registry


def test_one_switch_chooses_what_runs_the_backward():
    """pre_bwd's backend is the only switch: a part given a backend implies its parts; a composite on a
    backend and a part on another is an error; mhc_pre_backward's plan= is a spelling of the same."""
    x = torch.randn(2, 3, 5)
    assert resolve_route("golden", None, x).pre_backward == "golden"
    assert resolve_route("golden", {"dx": "golden"}, x).pre_backward == "parts"
    assert resolve_route("golden", Pipeline("golden", pre_bwd="golden"), x).pre_backward == "golden"
    with pytest.raises(ValueError, match="'pre_bwd' stands for"):
        resolve_route("golden", {"pre_bwd": "golden", "dgamma": "triton"}, x)
    t = make_inputs(CHAIN_CASES[0])
    saved = Pipeline("golden").forward(**{k: t[k] for k in ("x", "phi", "alpha", "bias", "gamma")})
    args = [saved[k] for k in ("x", "phi", "alpha")] + [t[k] for k in ("dh_in", "dh_post", "dh_res")]
    args += [saved[k] for k in ("inv_rms", "h_mix", "h_pre", "h_post", "gamma")]
    staged = mhc_ops.mhc_pre_backward(*args, backend="golden", plan="staged")
    parts = mhc_ops.mhc_pre_backward(*args, backend="golden", stages={"pre_bwd": "parts"})
    whole = mhc_ops.mhc_pre_backward(*args, backend="golden")
    for a, b, c in zip(staged, parts, whole):
        assert torch.equal(a, b) and torch.equal(a, c)
