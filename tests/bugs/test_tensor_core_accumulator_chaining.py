"""Regression: split bf16 products chained a large running sum (h_mix, G) through the tensor cores'
accumulator, which does not round like an fp32 add; invisible to the interpreter, which adds in fp32."""

import pytest
import torch
import triton
import triton.language as tl

from mhc_ops.golden import build, judge, run_golden
from mhc_ops.kernels._common import bf16_dot, interpreting, o_pad, split_bf16_host
from tests.cases import (
    CHAIN_BLOCK_K,
    CHAIN_BLOCK_T,
    CHAIN_DPARAMS_CASE,
    CHAIN_DPARAMS_LAUNCH,
    CHAIN_FWD_CASE,
    CHAIN_FWD_LAUNCH,
    CHAIN_GPU_CASE,
)
from tests.helpers import HAS_CUDA, INTERPRETING, KERNEL_DEVICE, assert_stage_accurate, run_triton_stage

RECORD = "docs/bugs/tensor-core-accumulator-chaining.md"
pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
ON_GPU_ONLY = pytest.mark.skipif(
    INTERPRETING or not HAS_CUDA,
    reason="the interpreter adds dot products in numpy fp32, so it cannot show the tensor cores' rounding",
)


@triton.jit(do_not_specialize=["T"])
def _h_mix_kernel(
    x_ptr,
    w_ptr,
    h_mix_ptr,
    T,
    nD,
    O,
    CHAINED: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    O_PAD: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """h_mix [T, O] = x [T, nD] (bf16) @ w, w given as three bf16 parts [3, nD, O_PAD] of (gamma*phi)^T.
    CHAINED (the mutant, the first bf16 forward): the running h_mix is the accumulator of every split
    product of every chunk. Otherwise (kernels/fwd.py::mix_tile) each chunk's three products start
    from zero and the chunk is added to h_mix in fp32."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_mask = rows < T
    cols = tl.arange(0, O_PAD)
    h_mix = tl.zeros([BLOCK_T, O_PAD], dtype=tl.float32)
    for k0 in range(0, nD, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < nD
        xt = tl.load(x_ptr + rows[:, None] * nD + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        if CHAINED:
            acc = h_mix
        else:
            acc = tl.zeros([BLOCK_T, O_PAD], dtype=tl.float32)
        for p in tl.static_range(2, -1, -1):  # lo, mid, hi
            w = tl.load(w_ptr + p * nD * O_PAD + k[:, None] * O_PAD + cols[None, :], mask=k_mask[:, None], other=0.0)
            acc = bf16_dot(xt, w, acc, INTERPRET)
        if CHAINED:
            h_mix = acc
        else:
            h_mix += acc
    tl.store(h_mix_ptr + rows[:, None] * O + cols[None, :], h_mix, mask=row_mask[:, None] & (cols < O)[None, :])


def _h_mix(x, phi, gamma, chained: bool) -> torch.Tensor:
    """h_mix of the fwd stage by _h_mix_kernel, chained (the mutant) or not; w split as kernels/fwd.py does."""
    n, D = x.shape[-2:]
    O = n * n + 2 * n
    xt = x.reshape(-1, n * D).contiguous()
    T = xt.shape[0]
    wg = phi.float() * gamma.reshape(1, -1).float()
    w = split_bf16_host(torch.nn.functional.pad(wg.t(), (0, o_pad(n) - O)).contiguous())
    h_mix = torch.full((T, O), float("nan"), device=x.device)
    _h_mix_kernel[(triton.cdiv(T, CHAIN_BLOCK_T),)](
        xt, w, h_mix, T, n * D, O,
        CHAINED=chained, BLOCK_T=CHAIN_BLOCK_T, BLOCK_K=CHAIN_BLOCK_K, O_PAD=o_pad(n), INTERPRET=interpreting(),
    )  # fmt: skip
    return h_mix.reshape(*x.shape[:-2], O)


def _h_mix_verdicts(bundle):
    """(chained, fresh) verdicts of the accuracy rule on h_mix against the fp64 golden of the pre_fwd stage."""
    inputs, ref64 = bundle.stage_view("pre_fwd")
    ref32 = run_golden("pre_fwd", inputs, "fp32")
    return [
        judge("h_mix", _h_mix(inputs["x"], inputs["phi"], inputs["gamma"], chained), ref64["h_mix"], ref32["h_mix"])
        for chained in (True, False)
    ]


def _chain_param(stage, case, launch, *marks):
    blocks = "-".join(f"{k}{v}" for k, v in launch.items()) or "default-blocks"
    return pytest.param(stage, case, launch, marks=[pytest.mark.stage(stage), *marks], id=f"{stage}-{case}-{blocks}")


@pytest.mark.parametrize(
    ("stage", "case", "launch"),
    [
        _chain_param("pre_fwd", CHAIN_FWD_CASE, CHAIN_FWD_LAUNCH),
        _chain_param("dparams", CHAIN_DPARAMS_CASE, CHAIN_DPARAMS_LAUNCH),
        _chain_param("pre_fwd", CHAIN_GPU_CASE, {}, pytest.mark.gpu, ON_GPU_ONLY),
        _chain_param("dparams", CHAIN_GPU_CASE, {}, pytest.mark.gpu, ON_GPU_ONLY),
    ],
)
def test_split_products_keep_fp32_grade_over_many_chunks(stage, case, launch):
    bundle = build(case, KERNEL_DEVICE)
    inputs, _ = bundle.stage_view(stage)
    assert_stage_accurate(stage, bundle, run_triton_stage(stage, inputs, **launch))


@pytest.mark.stage("pre_fwd")
@pytest.mark.skipif(not INTERPRETING, reason="shows what the interpreter sees; compiled kernels are tested below")
def test_interpreter_cannot_see_chained_accumulator():
    chained, fresh = _h_mix_verdicts(build(CHAIN_FWD_CASE, KERNEL_DEVICE))
    assert chained.ok and fresh.ok, f"{chained}\n{fresh}"


@pytest.mark.stage("pre_fwd")
@pytest.mark.gpu
@ON_GPU_ONLY
def test_check_catches_chained_accumulator():
    chained, fresh = _h_mix_verdicts(build(CHAIN_GPU_CASE, "cuda"))
    # The signature: the same products with fresh accumulators pass; chained, h_mix is off by many
    # times the bound (8.9e-5 against 3.1e-6 on the H100), an error no reordering of fp32 adds makes.
    assert fresh.ok, str(fresh)
    assert not chained.ok and chained.err > 4 * chained.bound, str(chained)
