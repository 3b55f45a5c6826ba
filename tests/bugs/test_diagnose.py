"""The diagnose tool (mhc_ops/diagnose.py) points at the stage and the slice a bug is in."""

import math
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

from mhc_ops.diagnose import analyse, analyse_stage, format_stage, main, prefilled_empty
from mhc_ops.golden import Case, build, stage_dx
from mhc_ops.stages import STAGES
from tests.helpers import INTERPRETING, KERNEL_DEVICE

from .test_dgamma_missing_inv_rms import dh_mix_res_without_inv_rms
from .test_dx_grid_one_stream import dx_one_stream_grid

RECORD = "docs/bugs/README.md"
ROOT = str(pathlib.Path(__file__).resolve().parents[2])
# Tiny shapes: the interpreter is slow.
SMALL = ["--device", KERNEL_DEVICE or "cpu", "--lead", "2,4", "--n", "4", "--D", "12"]


def _stream_lines(text: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(0) for m in re.finditer(r"stream (\d+) .*", text)}


@pytest.mark.stage("dx")
def test_one_stream_grid_reported_as_unwritten_streams(capsys):
    assert main(["dx", *SMALL], impls={"dx": dx_one_stream_grid}) == 1
    text = capsys.readouterr().out
    lines = _stream_lines(text)
    assert sorted(lines) == [0, 1, 2, 3]
    assert "ok" in lines[0] and "unwritten 0/96" in lines[0]
    assert all("FAIL" in lines[i] and "unwritten 96/96" in lines[i] for i in (1, 2, 3)), text
    assert "stage dx: FAIL (dx)" in text


@pytest.mark.stage("dh_mix")
@pytest.mark.stage("dgamma")
def test_pipeline_names_dh_mix_for_a_res_part_without_inv_rms(capsys):
    # Fed the golden dvecX_mm, the dgamma stage is right: the fault is upstream ...
    assert main(["dgamma", *SMALL, "--x-scale", "8"]) == 0
    capsys.readouterr()
    # ... and the pipeline names the first stage that breaks the rule, and the output, by a varying ratio.
    assert main(["pipeline", *SMALL, "--x-scale", "8"], impls={"dh_mix": dh_mix_res_without_inv_rms}) == 1
    text = capsys.readouterr().out
    assert "first diverging stage: dh_mix" in text
    assert re.search(r"dh_mix +on triton: dh_mix FAIL \(dvecX_mm\) \| .*dgamma FAIL \(dgamma\)", text), text
    assert re.search(r"FAIL dvecX_mm .*\n(.*\n)*? +ratio kernel/golden .*the ratio varies", text), text
    assert "stage dh_mix: FAIL (dvecX_mm)" in text


def test_our_kernels_pass_every_boundary(capsys):
    assert main(["pipeline", *SMALL, "--grad-x-post"]) == 0
    assert "every boundary passes" in capsys.readouterr().out


def test_golden_backend_passes(capsys):
    assert main(["dparams", *SMALL, "--backend", "golden", "--lead", "5", "--no-gamma"]) == 0
    text = capsys.readouterr().out
    assert all(f"ok   {k}" in text for k in ("dphi", "dalpha", "dbias")) and "stage dparams: PASS" in text


def test_ratio_reads_scale_and_computation_errors():
    ref = torch.randn(4, 3, 5, dtype=torch.float64) + 0.5
    scaled = analyse("dgamma", 1.5 * ref, ref, ref.float(), n=3, D=5)
    assert scaled.ratio.kind == "constant" and scaled.ratio.mean == pytest.approx(1.5)
    assert "scale error" in scaled.ratio.reading
    noisy = analyse("dgamma", ref + torch.randn_like(ref), ref, ref.float(), n=3, D=5)
    assert noisy.ratio.kind == "varies" and "computation error" in noisy.ratio.reading
    assert not scaled.ok and not noisy.ok


@pytest.mark.stage("dx")
def test_unwritten_told_apart_from_computed_nan():
    """An element the implementation never stores counts as unwritten; a NaN it computes does not."""
    bundle = build(Case(lead=(3,), n=2, D=4, seed=7))

    def half_written(**inputs):
        dx = stage_dx(**inputs)["dx"]
        out = torch.empty(dx.shape, dtype=dx.dtype)
        out[:, 0] = dx[:, 0]  # stream 1 never stored
        out[0, 0, 0] = math.nan  # a computed NaN in stream 0
        return {"dx": out}

    dx = analyse_stage("dx", bundle, half_written)["dx"]
    assert dx.nan == 1 + 3 * 4 and dx.unwritten == 3 * 4
    assert [s.unwritten for s in dx.streams] == [0, 12] and [s.nan for s in dx.streams] == [1, 12]


@pytest.mark.skipif(not INTERPRETING, reason="this suite runs compiled: the interpreter's numpy may not be pinned here")
def test_command_line_starts_the_interpreter_itself():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "mhc_ops.diagnose", "dx", "--device", "cpu", "--lead", "3", "--n", "2", "--D", "8"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "stage dx: PASS" in run.stdout


@pytest.mark.stage("dgamma")
def test_output_never_written_at_all():
    bundle = build(Case(lead=(2,), n=2, D=3, seed=8))
    report = analyse_stage("dgamma", bundle, lambda **inputs: {"dgamma": torch.empty(2, 3)})
    dgamma = report["dgamma"]
    assert not dgamma.ok and dgamma.unwritten == dgamma.size == 6 and math.isnan(dgamma.max_abs)
    assert "6 unwritten" in format_stage(report)


@pytest.mark.stage("dh_mix")
def test_diagnose_leaves_torch_empty_and_the_registry_as_they_were(capsys):
    """The NaN fill is a torch function mode and mutants run through a Pipeline's own table: neither
    torch.empty nor STAGES is replaced, during the run or after it."""
    empty, registry = torch.empty, dict(STAGES)
    seen = {}

    def spy(**inputs):
        seen["empty"], seen["dh_mix"] = torch.empty, STAGES["dh_mix"]
        return dh_mix_res_without_inv_rms(**inputs)

    assert main(["pipeline", *SMALL], impls={"dh_mix": spy}) == 1
    capsys.readouterr()
    assert seen == {"empty": empty, "dh_mix": registry["dh_mix"]}
    assert torch.empty is empty and STAGES == registry
    assert all(STAGES[k] is v for k, v in registry.items())


def test_prefilled_empty_fills_without_rebinding_torch_empty():
    empty = torch.empty
    with prefilled_empty(math.nan):
        assert torch.empty is empty
        assert torch.empty(5).isnan().all() and torch.empty(3, dtype=torch.int32).dtype == torch.int32
    assert torch.empty is empty
