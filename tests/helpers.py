"""Shared test machinery: NaN-prefilled outputs, devices, and the stage check by the accuracy rule."""

from __future__ import annotations

import math
import os

import torch

from mhc_ops.diagnose import prefilled_empty
from mhc_ops.golden import judge, run_golden
from mhc_ops.stages import STAGES

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()
# Where the Triton kernels can run in this process: CPU tensors through the interpreter, or the GPU.
KERNEL_DEVICE = "cpu" if INTERPRETING else ("cuda" if HAS_CUDA else None)


def nan_filled_outputs():
    """Every torch.empty of a float dtype returns NaN-filled memory while active, so an output element
    (or a per-program partial) that a kernel forgets to write shows up as NaN."""
    return prefilled_empty(math.nan)


def run_triton_stage(stage: str, inputs: dict, **launch) -> dict:
    with nan_filled_outputs():
        return STAGES[stage].run("triton", **inputs, **launch)


def assert_stage_accurate(stage: str, bundle, out: dict) -> None:
    """Every output of ``stage`` passes the accuracy rule against the fp64 golden on the same inputs."""
    inputs, ref64 = bundle.stage_view(stage)
    ref32 = run_golden(stage, inputs, "fp32")
    verdicts = [judge(k, out[k], ref64[k], ref32[k]) for k in ref64]
    for k in ref64:
        assert out[k].shape == ref64[k].shape, (k, out[k].shape, ref64[k].shape)
        assert out[k].dtype == bundle.tensors[k].dtype, (k, out[k].dtype)
    assert all(v.ok for v in verdicts), f"{stage} on {bundle.case}:\n" + "\n".join(map(str, verdicts))
