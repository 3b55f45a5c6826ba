"""Golden PyTorch reference of mhc_pre (mhc_ops.golden): the contract every kernel is tested against."""

from .accuracy import judge, rel_err
from .fixtures import Bundle, Case, build, run_golden
from .mhc_pre import (
    STAGE_IO,
    STAGE_NAMES,
    mhc_pre_backward,
    mhc_pre_forward,
    stage_dgamma,
    stage_dh_mix,
    stage_dparams,
    stage_dx,
    stage_fwd,
)

__all__ = [
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
]
