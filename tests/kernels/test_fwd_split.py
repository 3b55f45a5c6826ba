"""The split-K forward (kernels/fwd.py: _fwd_partial_kernel + _fwd_finish_kernel) against the float64
golden by the accuracy rule, against the single kernel, and its determinism, workspace and ``splits``
validation. CPU through the interpreter at tiny shapes (D = 49 with block_d = 16: four chunks per
stream, the last one partial); compiled on a GPU."""

import math

import pytest
import torch

from mhc_ops.diagnose import prefilled_empty
from mhc_ops.golden import build, rel_err, run_golden
from mhc_ops.golden.accuracy import ABS_SLACK, FP32_GOLDEN_FACTOR
from mhc_ops.kernels import fwd
from mhc_ops.kernels._common import o_pad
from tests.cases import EMPTY_CASES, SPLIT_CASES, SPLIT_D
from tests.helpers import KERNEL_DEVICE, assert_stage_accurate, run_triton_stage

pytestmark = [
    pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device"),
    pytest.mark.stage("pre_fwd"),
]
D = SPLIT_D
BLOCK_D = 16  # cdiv(49, 16) = 4 chunks per stream

_LAUNCHES = ("_fwd_kernel", "_fwd_partial_kernel", "_fwd_finish_kernel")


def _id(param) -> str:
    case, launch = param
    return f"{case}-" + "-".join(f"{k}{v}" for k, v in launch.items())


@pytest.fixture(scope="module")
def bundles():
    cache = {}

    def get(case):
        if case not in cache:
            cache[case] = build(case, KERNEL_DEVICE)
        return cache[case]

    return get


@pytest.fixture
def launches(monkeypatch):
    """Records which fwd kernels were launched (and still launches them)."""
    seen = []
    for name in _LAUNCHES:
        kernel = getattr(fwd, name)

        class Spy:
            def __getitem__(self, grid, kernel=kernel, name=name):
                seen.append((name, grid))
                return kernel[grid]

        monkeypatch.setattr(fwd, name, Spy())
    return seen


@pytest.mark.parametrize("param", SPLIT_CASES, ids=_id)
def test_split_on_golden_inputs(param, bundles, launches):
    case, launch = param
    bundle = bundles(case)
    inputs, _ = bundle.stage_view("pre_fwd")
    out = run_triton_stage("pre_fwd", inputs, block_d=BLOCK_D, **launch)
    assert [name for name, _ in launches] == ["_fwd_partial_kernel", "_fwd_finish_kernel"]
    chunks = case.n * math.ceil(D / BLOCK_D)
    assert launches[0][1][1] == min(launch["splits"], chunks)  # clamped to the chunks
    assert_stage_accurate("pre_fwd", bundle, out)


@pytest.mark.parametrize("param", [SPLIT_CASES[0], SPLIT_CASES[1], SPLIT_CASES[4]], ids=_id)
def test_split_matches_single(param, bundles):
    """The split path and the single kernel agree to the accuracy rule's bound on the same inputs."""
    case, launch = param
    inputs, ref64 = bundles(case).stage_view("pre_fwd")
    ref32 = run_golden("pre_fwd", inputs, "fp32")
    split = run_triton_stage("pre_fwd", inputs, block_d=BLOCK_D, **launch)
    single = run_triton_stage("pre_fwd", inputs, block_d=BLOCK_D, block_t=launch["block_t"], splits=1)
    for k in ref64:
        bound = FP32_GOLDEN_FACTOR * rel_err(ref32[k], ref64[k]) + ABS_SLACK
        assert rel_err(split[k], single[k]) <= bound, (k, rel_err(split[k], single[k]), bound)


def test_split_is_deterministic(bundles):
    """The partials are summed in a fixed order: two runs are bitwise identical."""
    case, launch = SPLIT_CASES[10]
    inputs, _ = bundles(case).stage_view("pre_fwd")
    a = run_triton_stage("pre_fwd", inputs, block_d=BLOCK_D, **launch)
    b = run_triton_stage("pre_fwd", inputs, block_d=BLOCK_D, **launch)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nan_filled_workspace_is_never_read_unwritten(bundles, monkeypatch):
    """Every torch.empty (outputs and the one workspace) is NaN-filled: no NaN reaches an output."""
    case, launch = SPLIT_CASES[7]  # two token blocks of 64, the last one partial
    inputs, _ = bundles(case).stage_view("pre_fwd")
    sizes = []
    with prefilled_empty(math.nan):
        filled = torch.empty

        def spy(*args, **kwargs):
            t = filled(*args, **kwargs)
            sizes.append(t.numel())
            return t

        monkeypatch.setattr(torch, "empty", spy)
        out = fwd.mhc_pre_fwd(**inputs, block_d=BLOCK_D, **launch)
        monkeypatch.undo()
    assert launch["splits"] * case.T * (o_pad(case.n) + 1) in sizes  # the workspace came from torch.empty
    for k, v in out.items():
        assert not v.isnan().any(), k


@pytest.mark.parametrize("case", EMPTY_CASES, ids=str)
def test_split_zero_tokens(case, launches):
    inputs, ref = build(case, KERNEL_DEVICE).stage_view("pre_fwd")
    out = run_triton_stage("pre_fwd", inputs, splits=3)
    assert launches == []
    for k, r in ref.items():
        assert out[k].shape == r.shape, k


@pytest.mark.parametrize("finish_block_d", [0, 8, 48])
def test_bad_finish_block_d(finish_block_d, bundles, launches):
    inputs, _ = bundles(SPLIT_CASES[3][0]).stage_view("pre_fwd")
    with pytest.raises(ValueError, match="finish_block_d"):
        fwd.mhc_pre_fwd(**inputs, splits=2, finish_block_d=finish_block_d)
    assert launches == []


@pytest.mark.parametrize("splits", [0, -1, 2.5, "2", True])
def test_bad_splits(splits, bundles, launches):
    inputs, _ = bundles(SPLIT_CASES[3][0]).stage_view("pre_fwd")
    with pytest.raises(ValueError, match="splits"):
        fwd.mhc_pre_fwd(**inputs, splits=splits)
    assert launches == []


@pytest.mark.parametrize("maxnreg", [16, 300, 128.0, False])
def test_bad_maxnreg(maxnreg, bundles, launches):
    inputs, _ = bundles(SPLIT_CASES[3][0]).stage_view("pre_fwd")
    with pytest.raises(ValueError, match="maxnreg: expected None or an int in 32..255"):
        fwd.mhc_pre_fwd(**inputs, maxnreg=maxnreg)
    assert launches == []


WIDE_CASES = [(c, launch) for c, launch in SPLIT_CASES if c.dtype == "bfloat16"]


@pytest.mark.parametrize("splits", [1, None], ids=["single", "split"])
@pytest.mark.parametrize("param", WIDE_CASES, ids=_id)
def test_wide_product(param, splits, bundles):
    """wide=True: the bf16 projection as one product against the three weight parts side by side (n <= 4),
    single kernel and split path: the rule against the float64 golden; where O_PAD > WIDE_MAX_O_PAD (n = 6, 8)
    it is the three-product kernel's result bit for bit (the option does not apply)."""
    case, launch = param
    bundle = bundles(case)
    inputs, _ = bundle.stage_view("pre_fwd")
    launch = launch | ({"splits": 1} if splits == 1 else {})
    wide = run_triton_stage("pre_fwd", inputs, block_d=BLOCK_D, wide=True, **launch)
    assert_stage_accurate("pre_fwd", bundle, wide)
    if o_pad(case.n) > fwd.WIDE_MAX_O_PAD:
        plain = run_triton_stage("pre_fwd", inputs, block_d=BLOCK_D, **launch)
        assert all(torch.equal(wide[k], plain[k]) for k in plain)


@pytest.mark.parametrize("wide", [1, "yes", None])
def test_bad_wide(wide, bundles, launches):
    inputs, _ = bundles(SPLIT_CASES[0][0]).stage_view("pre_fwd")
    with pytest.raises(ValueError, match="wide: expected True or False"):
        fwd.mhc_pre_fwd(**inputs, wide=wide)
    assert launches == []


def test_auto_is_single_kernel_on_cpu(bundles, launches):
    if KERNEL_DEVICE != "cpu":
        pytest.skip("CPU tensors only")
    inputs, _ = bundles(SPLIT_CASES[0][0]).stage_view("pre_fwd")
    fwd.mhc_pre_fwd(**inputs)
    assert [name for name, _ in launches] == ["_fwd_kernel"]


def test_auto_heuristics():
    """auto_splits and finish_cols at the issue's shapes on a 132-SM GPU (n=4, D=4096, bf16, block_t=64,
    block_d=128: 128 chunks), and their bounds."""
    sms, chunks = 132, 128
    assert [fwd.auto_splits(tb, chunks, sms) for tb in (1, 16, 64, 131, 132, 10**6)] == [64, 16, 4, 2, 1, 1]
    assert fwd.auto_splits(1, 3, sms) == 3  # at most one chunk per split
    assert fwd.auto_splits(1, 1, sms) == 1
    # Finish token blocks of 16 at T = 1, 1024, 4096: one D block per chunk while latency-bound, wider
    # once the grid fills the SMs.
    assert fwd.finish_cols(1, 64, 4, 4096, 2, 128, sms) == 128
    assert fwd.finish_cols(64, 33, 4, 4096, 2, 128, sms) == 512
    assert fwd.finish_cols(256, 8, 4, 4096, 2, 128, sms) == 128 * 11
    for args in ((10**6, 64, 6, 5, 4, 16, 132), (1, 1, 1, 1, 2, 16, 4)):
        cols = fwd.finish_cols(*args)
        assert cols % args[5] == 0 and cols >= args[5]
