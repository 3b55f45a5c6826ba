"""Golden PyTorch reference of the mHC ops (mhc_ops.golden): the contract every kernel is tested against."""

from .accuracy import judge, rel_err
from .fixtures import Bundle, Case, build, run_golden
from .mhc_pre import (
    mhc_pre_backward,
    mhc_pre_forward,
    stage_dgamma,
    stage_dh_mix,
    stage_dparams,
    stage_dx,
    stage_fwd,
    stage_pre_bwd,
)
from .registry import COMPOSITES, OP_STAGES, OPS, PRE_STAGE_NAMES, STAGE_IO, STAGE_NAMES

__all__ = [
    "COMPOSITES",
    "OPS",
    "OP_STAGES",
    "PRE_STAGE_NAMES",
    "STAGE_IO",
    "STAGE_NAMES",
    "Bundle",
    "Case",
    "build",
    "judge",
    "mhc_pre_backward",
    "mhc_pre_forward",
    "rel_err",
    "run_golden",
    "stage_dgamma",
    "stage_dh_mix",
    "stage_dparams",
    "stage_dx",
    "stage_fwd",
    "stage_pre_bwd",
]
