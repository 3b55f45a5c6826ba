"""Each Triton stage, fed its golden fixture inputs, against the float64 golden (accuracy rule).

CPU: through the interpreter at tiny shapes; GPU: compiled, at realistic shapes."""

import pytest
import torch

from mhc_ops.golden import PRE_STAGE_NAMES, build
from tests.cases import ELEMENTWISE_BLOCKS, EMPTY_CASES, GPU_CASES, KERNEL_BLOCKS, KERNEL_CASES
from tests.helpers import HAS_CUDA, KERNEL_DEVICE, assert_stage_accurate, cached_bundle, run_triton_stage, stage_params

pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
STAGE_PARAMS = stage_params(PRE_STAGE_NAMES)
# Stages whose tiles feed tl.dot (block sizes >= 16) and elementwise/reduction stages.
BLOCKS = {"pre_fwd": KERNEL_BLOCKS, "dh_mix": KERNEL_BLOCKS, "dparams": KERNEL_BLOCKS, "dx": ELEMENTWISE_BLOCKS,
          "dgamma": ELEMENTWISE_BLOCKS}  # fmt: skip


@pytest.mark.parametrize("stage", STAGE_PARAMS)
@pytest.mark.parametrize("case", KERNEL_CASES, ids=str)
def test_stage_on_golden_inputs(stage, case):
    bundle = cached_bundle(case, KERNEL_DEVICE)
    if stage not in bundle.stages():
        pytest.skip("no gamma: no dgamma stage")
    inputs, _ = bundle.stage_view(stage)
    assert_stage_accurate(stage, bundle, run_triton_stage(stage, inputs))


@pytest.mark.parametrize("stage", STAGE_PARAMS)
@pytest.mark.parametrize("blocks_index", range(3))
def test_stage_block_sizes(stage, blocks_index):
    """D is looped over in chunks: blocks smaller than a row (and larger ones) give the same answer."""
    block_t, block_d = BLOCKS[stage][blocks_index]
    bundle = cached_bundle(KERNEL_CASES[0], KERNEL_DEVICE)
    inputs, _ = bundle.stage_view(stage)
    assert_stage_accurate(stage, bundle, run_triton_stage(stage, inputs, block_t=block_t, block_d=block_d))


@pytest.mark.parametrize("stage", STAGE_PARAMS)
@pytest.mark.parametrize("case", EMPTY_CASES, ids=str)
def test_zero_tokens(stage, case):
    """No tokens: correctly shaped empty per-token outputs, zero parameter gradients, no launch."""
    bundle = build(case, KERNEL_DEVICE)
    inputs, ref = bundle.stage_view(stage)
    out = run_triton_stage(stage, inputs)
    for k, r in ref.items():
        assert out[k].shape == r.shape, k
        assert torch.equal(out[k].double(), r.to(out[k].device)), k  # empty, or zeros for sums


@pytest.mark.parametrize("stage", stage_params(("dparams", "dgamma")))
def test_reductions_are_deterministic(stage):
    """dbias, dalpha, dphi, dgamma come from per-program partials reduced in a fixed order."""
    bundle = cached_bundle(KERNEL_CASES[3], KERNEL_DEVICE)
    inputs, _ = bundle.stage_view(stage)
    a = run_triton_stage(stage, inputs, block_t=16, splits=3)
    b = run_triton_stage(stage, inputs, block_t=16, splits=3)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in memory with other strides: the last two dims transposed in storage."""
    if t.dim() < 2:
        return t
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


@pytest.mark.parametrize("stage", STAGE_PARAMS)
def test_noncontiguous_inputs(stage):
    """Strided inputs are read in place through their strides (on the GPU the code generated for other
    strides may sum in another order, so the check is the accuracy rule, not bitwise equality)."""
    bundle = cached_bundle(KERNEL_CASES[3], KERNEL_DEVICE)
    inputs, _ = bundle.stage_view(stage)
    strided = {k: _noncontiguous(v) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    assert not strided["x"].is_contiguous()
    assert_stage_accurate(stage, bundle, run_triton_stage(stage, strided))


@pytest.mark.skipif(not HAS_CUDA, reason="realistic shapes need a CUDA device")
@pytest.mark.gpu
@pytest.mark.parametrize("stage", STAGE_PARAMS)
@pytest.mark.parametrize("case", GPU_CASES, ids=str)
def test_stage_on_gpu_at_realistic_shapes(stage, case):
    bundle = cached_bundle(case, "cuda")
    if stage not in bundle.stages():
        pytest.skip("no gamma: no dgamma stage")
    inputs, _ = bundle.stage_view(stage)
    assert_stage_accurate(stage, bundle, run_triton_stage(stage, inputs))
