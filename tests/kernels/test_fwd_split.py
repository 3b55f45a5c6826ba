"""The split-K forward (kernels/fwd.py: _fwd_partial_kernel + _fwd_finish_kernel) and the read-once path
(_fwd_once_kernel: the same partials, finished by each token block's last program) against the float64
golden by the accuracy rule, against the single kernel and each other, and their determinism, workspace,
arrival counters and ``splits``/``once`` validation. CPU through the interpreter at tiny shapes (D = 49 with block_d = 16: four chunks per
stream, the last one partial); compiled on a GPU."""

import dataclasses
import math

import pytest
import torch

from mhc_ops.diagnose import prefilled_empty
from mhc_ops.golden import Case, build, judge, rel_err, run_golden
from mhc_ops.golden.accuracy import ABS_SLACK, FP32_GOLDEN_FACTOR
from mhc_ops.golden.fixtures import make_inputs
from mhc_ops.golden.mhc_pre import mhc_pre_forward as golden_forward
from mhc_ops.kernels import _arrive, fwd
from mhc_ops.kernels._common import o_pad
from tests.cases import EMPTY_CASES, SPLIT_CASES, SPLIT_D
from tests.helpers import KERNEL_DEVICE, assert_stage_accurate, capture_graph, run_triton_stage

pytestmark = [
    pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device"),
    pytest.mark.stage("pre_fwd"),
]
D = SPLIT_D
BLOCK_D = 16  # cdiv(49, 16) = 4 chunks per stream

NAMES = ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre")  # launch_fwd's outputs, in order
_LAUNCHES = ("_fwd_kernel", "_fwd_partial_kernel", "_fwd_finish_kernel", "_fwd_once_kernel")


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


@pytest.mark.parametrize("splits", [0, -1, 2.5, "2", True])
def test_bad_splits(splits, bundles, launches):
    inputs, _ = bundles(SPLIT_CASES[3][0]).stage_view("pre_fwd")
    with pytest.raises(ValueError, match="splits"):
        fwd.mhc_pre_fwd(**inputs, splits=splits)
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


def _counters_at_zero() -> bool:
    return not any(c.any() for c in _arrive._COUNTERS.values())


def _ranges(case, launch) -> int:
    """Column ranges per token block of the read-once path: one through the interpreter, which runs
    programs one after another (a wait for a later program would never end)."""
    return 1 if KERNEL_DEVICE == "cpu" else min(launch["splits"], math.ceil(D / BLOCK_D))


@pytest.mark.parametrize("param", SPLIT_CASES, ids=_id)
def test_once_on_golden_inputs(param, bundles, launches):
    """One launch of a persistent grid (2 programs here: each takes several work items); accurate;
    every arrival counter back at 0."""
    case, launch = param
    bundle = bundles(case)
    inputs, _ = bundle.stage_view("pre_fwd")
    out = run_triton_stage("pre_fwd", inputs, block_d=BLOCK_D, once=True, programs=2, **launch)
    items = math.ceil(case.T / launch["block_t"]) * _ranges(case, launch)
    assert launches == [("_fwd_once_kernel", (min(items, 2),))]
    assert_stage_accurate("pre_fwd", bundle, out)
    assert _counters_at_zero()


@pytest.mark.parametrize("param", [SPLIT_CASES[0], SPLIT_CASES[7], SPLIT_CASES[10], SPLIT_CASES[12]], ids=_id)
def test_once_matches_single(param, bundles):
    """The read-once path and the single kernel agree to the accuracy rule's bound on the same inputs."""
    case, launch = param
    inputs, ref64 = bundles(case).stage_view("pre_fwd")
    once = run_triton_stage("pre_fwd", inputs, block_d=BLOCK_D, once=True, **launch)
    single = run_triton_stage("pre_fwd", inputs, block_d=BLOCK_D, block_t=launch["block_t"], splits=1)
    ref32 = run_golden("pre_fwd", inputs, "fp32")
    for k in ref64:
        bound = FP32_GOLDEN_FACTOR * rel_err(ref32[k], ref64[k]) + ABS_SLACK
        assert rel_err(once[k], single[k]) <= bound, (k, rel_err(once[k], single[k]), bound)


def test_once_twice_fresh_inputs_and_a_repeat(bundles):
    """Launches in a row (what CUDA-graph replays do): fresh inputs each time are right, the counters are
    back at 0 after each, and the same inputs again give bitwise the same outputs."""
    case, launch = SPLIT_CASES[10]  # 70 tokens: five token blocks of 16, seven ranges each
    first = None
    for seed in (case.seed, case.seed + 1000):
        bundle = bundles(dataclasses.replace(case, seed=seed))
        inputs, _ = bundle.stage_view("pre_fwd")
        out = run_triton_stage("pre_fwd", inputs, block_d=BLOCK_D, once=True, **launch)
        assert_stage_accurate("pre_fwd", bundle, out)
        assert _counters_at_zero()
        first = first or (inputs, out)
    again = run_triton_stage("pre_fwd", first[0], block_d=BLOCK_D, once=True, **launch)
    for k in again:
        assert torch.equal(first[1][k], again[k]), k


def test_once_nan_filled_workspace_is_never_read_unwritten(bundles):
    case, launch = SPLIT_CASES[7]  # two token blocks of 64, the last one partial
    inputs, _ = bundles(case).stage_view("pre_fwd")
    with prefilled_empty(math.nan):
        out = fwd.mhc_pre_fwd(**inputs, block_d=BLOCK_D, once=True, **launch)
    for k, v in out.items():
        assert not v.isnan().any(), k


@pytest.mark.parametrize("case", EMPTY_CASES, ids=str)
def test_once_zero_tokens(case, launches):
    inputs, ref = build(case, KERNEL_DEVICE).stage_view("pre_fwd")
    out = run_triton_stage("pre_fwd", inputs, once=True)
    assert launches == []
    for k, r in ref.items():
        assert out[k].shape == r.shape, k


@pytest.mark.parametrize("once", [1, "yes", 0.0])
def test_bad_once(once, bundles, launches):
    inputs, _ = bundles(SPLIT_CASES[3][0]).stage_view("pre_fwd")
    with pytest.raises(ValueError, match="once: expected None, True or False"):
        fwd.mhc_pre_fwd(**inputs, once=once)
    assert launches == []


def test_once_refuses_the_delayed_pre(bundles, launches):
    inputs, _ = bundles(SPLIT_CASES[3][0]).stage_view("pre_fwd")
    x, phi, alpha, bias = (inputs[k] for k in ("x", "phi", "alpha", "bias"))
    with pytest.raises(ValueError, match="once: expected None or False with delayed=True"):
        fwd.launch_fwd(x, phi, alpha, bias, None, 1e-6, 1e-6, delayed=True, once=True)
    assert launches == []


def test_once_splits():
    """once_splits on a 132-SM GPU: enough ranges that the blocks in flight fit ONCE_L2_BYTES, within
    [1, min(chunks, MAX_SPLITS)]."""
    sms, mib = 132, 2**20
    block = 64 * 4 * 7168 * 2  # 64 tokens x 4 streams x 7168 bf16 columns
    s = fwd.once_splits(block, 224, sms)
    assert fwd.ONCE_RESIDENT_PER_SM * sms * block / s <= fwd.ONCE_L2_BYTES < fwd.ONCE_RESIDENT_PER_SM * sms * block / (s - 1)
    assert fwd.once_splits(mib // 1024, 224, sms) == 1
    assert fwd.once_splits(10**9, 224, sms) == fwd.MAX_SPLITS
    assert fwd.once_splits(10**9, 3, sms) == 3


@pytest.mark.skipif(KERNEL_DEVICE != "cuda", reason="a realistic shape and concurrent programs: GPU only")
@pytest.mark.parametrize("splits", [None, 7, 64])
def test_once_realistic_shape_in_a_graph(splits):
    """9000 x 4 x 4096 bf16 (auto takes the read-once path there on an H100/H200): programs of many blocks
    run concurrently. A CUDA graph replayed on three fresh inputs, each judged against the float64
    golden, the counters at 0 after each, and a replay on the same inputs bitwise the same."""
    case = Case(lead=(9000,), n=4, D=4096, dtype="bfloat16", seed=77)
    t = make_inputs(case, "cuda")
    args = [t[k] for k in ("x", "phi", "alpha", "bias", "gamma")]
    graph, outs = capture_graph(lambda: fwd.launch_fwd(*args, 1e-6, 1e-6, once=True, splits=splits))
    results = []
    for seed in (1, 2, 3, 1):
        fresh = make_inputs(dataclasses.replace(case, seed=seed), "cuda")
        args[0].copy_(fresh["x"])
        graph.replay()
        torch.cuda.synchronize()
        assert _counters_at_zero()
        ref64 = golden_forward(*(a.double() for a in args), compute_dtype=torch.float64)
        ref32 = golden_forward(*args)
        verdicts = [judge(k, o, r64, r32) for k, o, r64, r32 in zip(NAMES, outs, ref64, ref32)]
        assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))
        results.append([o.clone() for o in outs])
    assert all(torch.equal(a, b) for a, b in zip(results[0], results[-1]))  # seed 1 twice: deterministic
