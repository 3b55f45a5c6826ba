"""Regression: Triton 3.6's interpreter converts fp32 -> bf16 by truncation; kernels store bf16
through kernels/_common.py::round_to, which rounds to nearest even on the bits."""

import pytest
import torch
import triton
import triton.language as tl

from mhc_ops.kernels._common import round_to
from tests.cases import ROUNDING_SEED, ROUNDING_VALUES
from tests.helpers import INTERPRETING, KERNEL_DEVICE

RECORD = "docs/bugs/interpreter-bf16-truncation.md"
pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")


@triton.jit
def _store_bf16_kernel(x_ptr, y_ptr, N, CAST: tl.constexpr, BLOCK: tl.constexpr):
    """y[i] = x[i] (fp32) stored as bf16, through round_to or through one of the two plain casts."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    v = tl.load(x_ptr + offs, mask=mask)
    if CAST == "round_to":
        y = round_to(v, tl.bfloat16)
    elif CAST == "rtne":
        y = v.to(tl.bfloat16, fp_downcast_rounding="rtne")
    else:
        y = v.to(tl.bfloat16)
    tl.store(y_ptr + offs, y, mask=mask)


def _store_bf16(x: torch.Tensor, cast: str) -> torch.Tensor:
    y = torch.full(x.shape, float("nan"), dtype=torch.bfloat16, device=x.device)
    _store_bf16_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), CAST=cast, BLOCK=1024)
    return y


def _fp32_values() -> torch.Tensor:
    """Random finite fp32 values over every exponent (the largest finite value included) and, for
    random upper halves, the exact ties (low half 0x8000, on even and odd bf16 mantissas) and the
    values one step either side of them. Under the interpreter without subnormals: its fp32 -> bf16
    cast mangles them whatever the rounding (the record says more)."""
    g = torch.Generator().manual_seed(ROUNDING_SEED)
    bits = torch.randint(-(2**31), 2**31, (ROUNDING_VALUES,), generator=g, dtype=torch.int64)
    upper = bits & ~0xFFFF
    near_ties = torch.cat([upper | 0x8000, upper | 0x7FFF, upper | 0x8001])
    edges = torch.tensor([0x7F7FFFFF, 0x00800000, 0x80000000, 0x3F7FFFFF, 0x7F800000, 0x00000001])
    v = torch.cat([bits, near_ties, edges]).to(torch.int32).view(torch.float32)
    v = v[~v.isnan()]
    if INTERPRETING:
        v = v[(v == 0) | (v.abs() >= torch.finfo(torch.float32).tiny)]
    ties = v.view(torch.int32) & 0x1FFFF
    assert (ties == 0x8000).any() and (ties == 0x18000).any(), "ties on even and on odd mantissas"
    return v.to(KERNEL_DEVICE)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16).cpu()


@pytest.mark.stage("pre_fwd")
@pytest.mark.stage("dx")
def test_round_to_matches_torch_bit_for_bit():
    x = _fp32_values()
    assert torch.equal(_bits(_store_bf16(x, "round_to")), _bits(x.to(torch.bfloat16)))


@pytest.mark.stage("pre_fwd")
@pytest.mark.stage("dx")
@pytest.mark.skipif(
    not INTERPRETING, reason="compiled kernels round to nearest even; the truncation is the interpreter's"
)
@pytest.mark.parametrize("cast", ["plain", "rtne"])
def test_check_catches_plain_cast_under_interpreter(cast):
    x = _fp32_values()
    y, ref = _store_bf16(x, cast), x.to(torch.bfloat16)
    wrong = _bits(y) != _bits(ref)
    assert wrong.any()
    # The signature: every value that differs lies one bf16 step closer to zero than the rounded one.
    assert (y.float().abs().cpu()[wrong] < ref.float().abs().cpu()[wrong]).all()


@pytest.mark.stage("pre_fwd")
@pytest.mark.stage("dx")
def test_round_to_keeps_nan_a_nan():
    """A NaN with a full mantissa (0x7FFFFFFF, what GPU arithmetic produces) once wrapped to -0.0."""
    x = torch.tensor([0x7FFFFFFF, -1, 0x7FC00000], dtype=torch.int32).view(torch.float32).to(KERNEL_DEVICE)
    assert _store_bf16(x, "round_to").isnan().all()
