"""Fixture builder: deterministic, realistic, and the committed frozen fixtures still reproduce."""

import pathlib

import pytest
import torch

from mhc_ops.golden import STAGE_IO, Case, build, rel_err, run_golden
from mhc_ops.golden.fixtures import FROZEN_CASES, load, storage_dtype

FROZEN_DIR = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "frozen"
# A stored tensor may differ by one rounding step of its storage dtype across torch versions.
FROZEN_TOL = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2, torch.float16: 1e-3}


def test_builder_is_deterministic_and_seed_sensitive():
    case = Case(lead=(2, 3), n=4, D=7, seed=5)
    a, b = build(case), build(case)
    other = build(Case(lead=(2, 3), n=4, D=7, seed=6))
    for k, v in a.tensors.items():
        if v is not None:
            assert torch.equal(v, b.tensors[k]), k
    assert not torch.equal(a.tensors["x"], other.tensors["x"])


@pytest.mark.parametrize("name", ["dh_in", "dh_post", "dh_res", "grad_x_post", "x"])
def test_inputs_are_random_not_constant(name):
    t = build(Case(lead=(3,), n=3, D=5, grad_x_post=True)).tensors[name].float()
    assert t.std() > 0.3 and (t == 0).float().mean() < 0.05


def test_x_scale_moves_inv_rms_far_from_one():
    small = build(Case(lead=(8,), n=4, D=16, x_scale=8.0)).tensors["inv_rms"]
    large = build(Case(lead=(8,), n=4, D=16, x_scale=0.125)).tensors["inv_rms"]
    assert small.max() < 0.2 and large.min() > 5.0


def test_mixing_logits_are_order_one():
    b = build(Case(lead=(64,), n=4, D=64, x_scale=8.0))
    m = b.tensors["h_mix"] * b.tensors["inv_rms"][:, None]
    assert 0.3 < m.std() < 3.0


@pytest.mark.parametrize("stage", list(STAGE_IO))
def test_stage_view_has_the_stage_names(stage):
    bundle = build(Case(lead=(2, 2), n=3, D=5, grad_x_post=True, op=STAGE_IO[stage]["op"]))
    inputs, expected = bundle.stage_view(stage)
    io = STAGE_IO[stage]
    assert set(inputs) == set(io["inputs"]) | set(io["options"])
    assert set(expected) == set(io["outputs"])
    for k in io["outputs"]:
        stored = bundle.tensors[k]
        assert stored.dtype == storage_dtype(k, torch.bfloat16) and stored.shape == expected[k].shape


def test_no_gamma_has_no_dgamma_stage():
    bundle = build(Case(lead=(3,), n=2, D=3, gamma=False))
    assert "dgamma" not in bundle.stages() and bundle.tensors["dgamma"] is None


@pytest.mark.parametrize("name", sorted(FROZEN_CASES))
def test_frozen_fixture_is_reproduced_by_current_golden(name):
    frozen = load(FROZEN_DIR / f"{name}.pt")
    assert frozen.case == FROZEN_CASES[name]
    for stage in frozen.stages():
        out = run_golden(stage, frozen.stage_inputs(stage), "fp64")
        for k, ref in frozen.reference[stage].items():
            assert rel_err(out[k], ref) < FROZEN_TOL[torch.float64], (stage, k)
            stored = frozen.tensors[k]
            assert rel_err(out[k].to(stored.dtype), stored) <= FROZEN_TOL[stored.dtype], (stage, k)
