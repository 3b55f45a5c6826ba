"""The composite stage pre_bwd on Triton (the fused backward) against the float64 golden backward
(accuracy rule), on the saved tensors of the golden fixtures: CPU through the interpreter, GPU at
realistic shapes. It is what training runs for dh_mix, dx, dparams and dgamma together: its tests carry
the stage mark pre_bwd, which each of those four names selects (``nox -s test_stage -- dx`` runs them),
and one test checks it against its four parts through the composer."""

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mhc_ops.golden import Case, build, judge, mhc_pre_backward, rel_err
from mhc_ops.kernels import fused_bwd
from mhc_ops.kernels._common import cdiv, o_groups, o_pad
from mhc_ops.kernels.fused_bwd import mhc_pre_backward_fused
from mhc_ops.stages import Pipeline
from tests.cases import EMPTY_CASES, GPU_CASES, GROUPED_CASES, KERNEL_BLOCKS, KERNEL_CASES
from tests.helpers import HAS_CUDA, KERNEL_DEVICE, fuzz_settings, nan_filled_outputs

pytestmark = [
    pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device"),
    pytest.mark.stage("pre_bwd"),
]
ARGS = ("x", "phi", "alpha", "dh_in", "dh_post", "dh_res", "inv_rms", "h_mix", "h_pre", "h_post", "gamma")
OUTPUTS = ("dx", "dphi", "dalpha", "dbias", "dgamma")


def _fused(t, **launch):
    with nan_filled_outputs():
        return mhc_pre_backward_fused(**{k: t[k] for k in ARGS}, grad_x_post=t["grad_x_post"], **launch)


def _verdicts(t, out) -> dict:
    args = [t[k] for k in ARGS]
    up = [a.double() if a is not None else None for a in args]
    gxp = t["grad_x_post"]
    ref64 = mhc_pre_backward(*up, grad_x_post=gxp.double() if gxp is not None else None, compute_dtype=torch.float64)
    ref32 = mhc_pre_backward(*args, grad_x_post=gxp)
    return {k: judge(k, out[k], r64, r32) for k, r64, r32 in zip(OUTPUTS, ref64, ref32) if r64 is not None}


def _assert_accurate(t, out):
    verdicts = _verdicts(t, out).values()
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))
    assert (out["dgamma"] is None) == (t["gamma"] is None)
    assert out["dx"].dtype == t["x"].dtype and out["dx"].shape == t["x"].shape


@pytest.mark.parametrize("case", KERNEL_CASES + GROUPED_CASES, ids=str)
def test_fused_backward(case):
    t = build(case, KERNEL_DEVICE).tensors
    _assert_accurate(t, _fused(t))


BF16_CASES = [c for c in KERNEL_CASES + GROUPED_CASES if c.dtype == "bfloat16"]


@pytest.mark.parametrize("case", BF16_CASES, ids=str)
@pytest.mark.parametrize(("block_t", "block_d", "splits"), [(None, None, None), (16, 16, 3)])
def test_presplit_parts_give_the_same_gradients(case, block_t, block_d, splits):
    """presplit=True (bf16 x): pass A stores dh_mix's three bf16 parts and pass B's products load them.
    presplit=False: pass B splits dh_mix per tile itself, the same parts into the same products. The two
    are bitwise equal through the interpreter, and on a GPU within the rule's bound of each other (the
    compiled products may accumulate in another order); both pass the rule."""
    t = build(case, KERNEL_DEVICE).tensors
    launch = dict(block_t=block_t, block_d=block_d, splits=splits)
    pre, own = _fused(t, presplit=True, **launch), _fused(t, presplit=False, **launch)
    verdicts = _verdicts(t, pre)
    _assert_accurate(t, pre)
    _assert_accurate(t, own)
    for k in verdicts:
        if KERNEL_DEVICE == "cpu":
            assert torch.equal(pre[k], own[k]), k
        else:
            assert rel_err(pre[k], own[k]) <= 2 * verdicts[k].bound, k


@pytest.mark.parametrize(("dtype", "block_t", "expected"), [("bfloat16", 32, True), ("bfloat16", 64, False),
                                                          ("float16", 32, False), ("float32", 16, False)])
def test_presplit_by_default_on_bf16_and_the_32_row_tile(dtype, block_t, expected, monkeypatch):
    """presplit=None takes pass A's parts for bf16 x on pass B tiles under PRESPLIT_BELOW_BLOCK_T tokens,
    where they measured faster, and never for other dtypes (G's bf16 products need x exact in bf16)."""
    seen = []
    kernel = fused_bwd._pass_a_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append(kwargs["PRESPLIT"])
                return kernel[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(fused_bwd, "_pass_a_kernel", Spy())
    t = build(dataclasses.replace(BF16_CASES[0], dtype=dtype), KERNEL_DEVICE).tensors
    _assert_accurate(t, _fused(t, block_t=block_t, block_d=16))
    assert seen == [expected]


@pytest.mark.parametrize("presplit", [1, "yes"])
def test_bad_presplit(presplit):
    t = build(BF16_CASES[0], KERNEL_DEVICE).tensors
    with pytest.raises(ValueError, match="presplit: expected None, True or False"):
        _fused(t, presplit=presplit)


@pytest.mark.parametrize("maxnreg", [31, 256, 168.0, True, "168"])
def test_bad_maxnreg_is_refused_before_any_launch(maxnreg, monkeypatch):
    t = build(BF16_CASES[0], KERNEL_DEVICE).tensors
    monkeypatch.setattr(fused_bwd, "_pass_a_kernel", None)  # a launch would fail on None[grid]
    with pytest.raises(ValueError, match="maxnreg: expected None or an int in 32..255"):
        _fused(t, maxnreg=maxnreg)


def test_maxnreg_caps_pass_b_alone(monkeypatch):
    """maxnreg is pass B's register cap (the launch option reaches its launch and no other); the gradients are
    those of the uncapped call (the interpreter ignores the option: the GPU tests judge the capped code)."""
    seen = {}
    for name in ("_pass_a_kernel", "_pass_b_kernel", "_finish_kernel"):
        kernel = getattr(fused_bwd, name)

        class Spy:
            def __getitem__(self, grid, name=name, kernel=kernel):
                def launch(*args, **kwargs):
                    seen[name] = kwargs.get("maxnreg")
                    return kernel[grid](*args, **kwargs)

                return launch

        monkeypatch.setattr(fused_bwd, name, Spy())
    t = build(BF16_CASES[0], KERNEL_DEVICE).tensors
    capped = _fused(t, block_t=16, block_d=16, maxnreg=168)
    assert seen == {"_pass_a_kernel": None, "_pass_b_kernel": 168, "_finish_kernel": None}
    plain = _fused(t, block_t=16, block_d=16)
    for k, v in plain.items():
        assert v is None and capped[k] is None or torch.equal(v, capped[k]), k
    _assert_accurate(t, capped)


@pytest.mark.parametrize("case", KERNEL_CASES[:4], ids=str)
def test_the_composite_and_its_four_stages_agree(case):
    """The composer runs pre_bwd whole (the fused kernels) or as its parts (the dh_mix, dx, dparams,
    dgamma kernels) on the same saved tensors: each passes the accuracy rule, and they differ by no
    more than their two bounds (they compute differently: dgamma by sum_o phi*G, split-bf16 dvecX_mm)."""
    t = build(case, KERNEL_DEVICE).tensors
    env = {k: t[k] for k in ("x", "phi", "alpha", "gamma", "inv_rms", "h_mix", "h_pre", "h_post")}
    grads = {k: t[k] for k in ("dh_in", "dh_post", "dh_res", "grad_x_post")}
    composite, parts = Pipeline("triton", pre_bwd="triton"), Pipeline("triton")
    assert composite.stages_of("mhc_pre") == ("pre_fwd", "pre_bwd")
    assert parts.stages_of("mhc_pre") == ("pre_fwd", "dh_mix", "dx", "dparams", "dgamma")
    with nan_filled_outputs():
        staged = parts.backward(env, **grads)
        fused = composite.backward(env, **grads)
    assert "dvecX_mm" in staged and "dvecX_mm" not in fused  # the parts' intermediate; the fused pass keeps none
    v_fused, v_staged = _verdicts(t, fused), _verdicts(t, staged)
    for k in v_fused:
        assert v_fused[k].ok and v_staged[k].ok, f"{k}: fused {v_fused[k]}; staged {v_staged[k]}"
        assert rel_err(fused[k], staged[k]) <= v_fused[k].bound + v_staged[k].bound, k


@pytest.mark.parametrize("n", range(1, 17))
def test_coefficient_groups_cover_every_column_and_narrow_the_padding(n):
    O = n * n + 2 * n
    a, b = o_groups(n)
    assert a >= 16 and a & (a - 1) == 0 and (b == 0 or (b >= 16 and b & (b - 1) == 0))
    assert O <= a + b <= o_pad(n) and (b == 0 or a < O)
    assert o_groups(6) == (32, 16) and o_groups(8) == (64, 16) and o_groups(4) == (32, 0)


def test_pass_b_tile_narrows_where_the_wide_grid_leaves_sms_idle(monkeypatch):
    monkeypatch.setattr(fused_bwd, "sm_count", lambda device: 132)  # an H200
    monkeypatch.setattr(fused_bwd, "token_splits", lambda device, other, blocks, cap: min(blocks, cap))
    cpu = torch.device("cpu")
    for bf16 in (True, False):
        assert fused_bwd.pass_b_tile(32, 4, 7168, 16384, cpu, 64, bf16) == (32, 128)  # 224 columns x 64 splits
        assert fused_bwd.pass_b_tile(32, 4, 4096, 1024, cpu, 1, bf16) == (64, 64)  # 128 programs on 132 SMs
        assert fused_bwd.pass_b_tile(48, 6, 4096, 8192, cpu, 4, bf16) == (32, 128)
        assert fused_bwd.pass_b_tile(80, 8, 2048, 1024, cpu, 1, bf16) == (64, 64)  # 128 programs
    # n = 8: the wide groups take the 32-row tile with pass A's parts of dh_mix only (bf16 x), from one
    # wave on: 8192 x 8 x 2048 has 128 column programs x 2 token splits (g_split_cap)
    assert fused_bwd.pass_b_tile(80, 8, 2048, 8192, cpu, 2, True) == (32, 128)
    assert fused_bwd.pass_b_tile(80, 8, 2048, 8192, cpu, 2, False) == (64, 64)
    assert fused_bwd.pass_b_tile(32, 4, 2048, 8192, cpu, 2, True) == (64, 64)  # 128 x 2 programs: n = 4 keeps 2 per SM


@pytest.mark.parametrize(("block_t", "block_d"), KERNEL_BLOCKS)
@pytest.mark.parametrize("splits", [1, 3])
def test_fused_backward_blocks_and_splits(block_t, block_d, splits):
    t = build(KERNEL_CASES[3], KERNEL_DEVICE).tensors
    _assert_accurate(t, _fused(t, block_t=block_t, block_d=block_d, splits=splits))


def test_fused_backward_is_deterministic():
    t = build(KERNEL_CASES[0], KERNEL_DEVICE).tensors
    a, b = _fused(t, splits=2), _fused(t, splits=2)
    for k in OUTPUTS:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("splits_a", [2, 3, 64])
@pytest.mark.parametrize("case", KERNEL_CASES[:3], ids=str)
def test_pass_a_split_over_column_chunks(case, splits_a):
    """splits_a > 1: each token block's dh_pre summed by several programs over column-chunk ranges, the last
    to arrive adding the parts in split order and finishing the block (64: clamped to the chunks). The
    gradients pass the rule; two calls agree bitwise; the arrival counters are back to 0 after each."""
    from mhc_ops.kernels import _arrive

    t = build(case, KERNEL_DEVICE).tensors
    a = _fused(t, splits_a=splits_a, block_d_a=16)
    _assert_accurate(t, a)
    b = _fused(t, splits_a=splits_a, block_d_a=16)
    for k, v in a.items():
        assert v is None and b[k] is None or torch.equal(v, b[k]), k
    assert all(int(c.count_nonzero()) == 0 for c in _arrive._COUNTERS.values())


@pytest.mark.parametrize(("blocks_a", "chunks", "expected"), [
    (1, 64, 8), (33, 64, 4), (64, 64, 4), (65, 64, 4), (66, 64, 2), (131, 64, 2), (132, 64, 1), (4096, 64, 1), (16, 3, 3),
])  # fmt: skip
def test_auto_splits_a_fills_the_sms_with_the_fewest_splits(blocks_a, chunks, expected, monkeypatch):
    """splits_a="auto" on 132 SMs: the smallest power of two of programs per token block that gives at least
    one program per SM, at most PASS_A_MAX_SPLITS (8) and at most the block's column chunks."""
    monkeypatch.setattr(fused_bwd, "sm_count", lambda device: 132)
    assert fused_bwd.auto_splits_a(blocks_a, chunks, torch.device("cuda")) == expected


@pytest.fixture
def pass_a_grids(monkeypatch):
    """The grids pass A is launched with (and still launched)."""
    grids = []
    kernel = fused_bwd._pass_a_kernel

    class Spy:
        def __getitem__(self, grid):
            grids.append(grid)
            return kernel[grid]

    monkeypatch.setattr(fused_bwd, "_pass_a_kernel", Spy())
    return grids


def test_auto_splits_a_is_the_default_launch(pass_a_grids, monkeypatch):
    """The default launch splits pass A as auto_splits_a says (a grid of 2 token blocks on 4 SMs, the
    interpreter's stand-in count, set here for a GPU too: 2 splits) and gives the gradients of that explicit
    launch, bit for bit."""
    monkeypatch.setattr(fused_bwd, "sm_count", lambda device: 4)
    case = dataclasses.replace(KERNEL_CASES[0], lead=(20,))
    t = build(case, KERNEL_DEVICE).tensors
    chunks = cdiv(case.D, 16)
    expected = fused_bwd.auto_splits_a(2, chunks, t["x"].device)
    a, b = _fused(t, block_d_a=16), _fused(t, block_d_a=16, splits_a=expected)
    assert pass_a_grids[0] == (2, expected) == pass_a_grids[1] and expected == min(2, chunks) > 1
    for k, v in a.items():
        assert v is None and b[k] is None or torch.equal(v, b[k]), k
    _assert_accurate(t, a)


def test_pass_a_split_is_ignored_by_the_delayed_pre(pass_a_grids):
    """The delayed pre's pass A reads no x: splits_a leaves it one program per block."""
    t = build(KERNEL_CASES[0], KERNEL_DEVICE).tensors
    out = _fused(t, splits_a=4, block_d_a=16, delayed=True, dh_pre=torch.randn_like(t["h_pre"]))
    assert pass_a_grids == [(pass_a_grids[0][0], 1)] and not out["dx"].isnan().any()


@pytest.mark.parametrize("case", [KERNEL_CASES[0], KERNEL_CASES[2], GROUPED_CASES[1]], ids=str)
def test_mm_scratch_gives_the_same_bits(case):
    """mm_scratch: pass B's dvecX_mm tile through its program's slot in global memory and back (so dx is formed
    in the loads' layout) is a copy of fp32 values: every gradient bit for bit the plain kernel's, with token
    ranges (slots per (column program, range)) and a partial last token block."""
    t = build(case, KERNEL_DEVICE).tensors
    plain = _fused(t, block_t=16, block_d=16, splits=2)
    scratch = _fused(t, block_t=16, block_d=16, splits=2, mm_scratch=True)
    for k, v in plain.items():
        assert v is None and scratch[k] is None or torch.equal(v, scratch[k]), k
    _assert_accurate(t, scratch)


@pytest.mark.parametrize("case", [KERNEL_CASES[0], KERNEL_CASES[2], GROUPED_CASES[1]], ids=str)
@pytest.mark.parametrize("loop_stages", [None, 1, 2, 3])
def test_loop_stages_give_the_same_bits(case, loop_stages):
    """loop_stages, loop_stages_a (None: the compiler's choice; ints: every load pipelined) change when tiles are
    loaded, not what is computed: in the interpreter every gradient bit for bit the auto choice's, with token
    ranges, a partial last block and several column chunks (compiled: to rounding, the GPU test)."""
    t = build(case, KERNEL_DEVICE).tensors
    plain = _fused(t, block_t=16, block_d=16, splits=2, block_d_a=16)  # loop_stages "auto"
    staged = _fused(t, block_t=16, block_d=16, splits=2, block_d_a=16, loop_stages=loop_stages,
                    loop_stages_a=loop_stages)  # fmt: skip
    for k, v in plain.items():
        assert v is None and staged[k] is None or torch.equal(v, staged[k]), k
    _assert_accurate(t, staged)


@pytest.mark.parametrize(("n", "block_t", "dtype", "delayed", "expected"), [
    (4, 32, torch.bfloat16, False, (3, 3)), (4, 64, torch.bfloat16, False, (2, 3)), (8, 32, torch.float16, False, (2, 3)),
    (4, 32, torch.float32, False, (None, None)), (4, 32, torch.bfloat16, True, (None, None)),
    (6, 32, torch.bfloat16, True, (None, None)), (8, 32, torch.bfloat16, True, (2, None)),
    (8, 32, torch.float32, True, (None, None)),
])  # fmt: skip
def test_auto_loop_stages_rule(n, block_t, dtype, delayed, expected):
    """loop_stages="auto": the measured rule (docs/perf.md, Performance XV and XVI), 16-bit x only."""
    assert fused_bwd.auto_loop_stages(n, block_t, torch.empty(0, dtype=dtype), delayed) == expected


@pytest.mark.parametrize("name", ["loop_stages", "loop_stages_a"])
@pytest.mark.parametrize("value", [0, 5, 2.0, True, "2"])
def test_bad_loop_stages_is_refused(name, value, monkeypatch):
    t = build(BF16_CASES[0], KERNEL_DEVICE).tensors
    monkeypatch.setattr(fused_bwd, "_pass_a_kernel", None)
    with pytest.raises(ValueError, match=f'^{name}: expected None, "auto" or an int in 1..4'):
        _fused(t, **{name: value})


@pytest.mark.parametrize("mm_scratch", [1, None, "yes"])
def test_bad_mm_scratch_is_refused(mm_scratch, monkeypatch):
    t = build(BF16_CASES[0], KERNEL_DEVICE).tensors
    monkeypatch.setattr(fused_bwd, "_pass_a_kernel", None)
    with pytest.raises(ValueError, match="mm_scratch: expected True or False"):
        _fused(t, mm_scratch=mm_scratch)


@pytest.mark.parametrize("splits_a", [0, -2, 1.5, True, None, "AUTO"])
def test_bad_splits_a_is_refused(splits_a, monkeypatch):
    t = build(BF16_CASES[0], KERNEL_DEVICE).tensors
    monkeypatch.setattr(fused_bwd, "_pass_a_kernel", None)
    with pytest.raises(ValueError, match='splits_a: expected a positive int or "auto"'):
        _fused(t, splits_a=splits_a)


@fuzz_settings(6)
@given(
    lead=st.sampled_from([(1,), (5,), (17,), (2, 9), (40,)]), n=st.sampled_from([1, 2, 3, 4, 6, 8]),
    D=st.sampled_from([5, 33, 67]), dtype=st.sampled_from(["float32", "bfloat16", "float16"]),
    tile=st.sampled_from([(16, 16), (16, 32), (32, 16)]), splits=st.sampled_from([None, 1, 2, 3]),
    splits_a=st.sampled_from([1, 2, 3, 5]), block_d_a=st.sampled_from([16, 32]),
    presplit=st.sampled_from([None, False, True]), loop_stages=st.sampled_from([None, 2, 3]),
    loop_stages_a=st.sampled_from([None, 2]), gamma=st.booleans(),
    grad_x_post=st.booleans(), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_fused_backward_fuzz_over_launch_options(lead, n, D, dtype, tile, splits, splits_a, block_d_a, presplit,
                                                 loop_stages, loop_stages_a, gamma, grad_x_post, seed):  # fmt: skip
    """Any mix of the launch options (pass B's tile, token ranges and loop stages, pass A's column split, chunk
    and loop stages, pass A's bf16 parts) on random shapes and dtypes: the rule against the float64 golden."""
    case = Case(lead=lead, n=n, D=D, dtype=dtype, seed=seed, gamma=gamma, grad_x_post=grad_x_post)
    t = build(case, KERNEL_DEVICE).tensors
    out = _fused(t, block_t=tile[0], block_d=tile[1], splits=splits, splits_a=splits_a, block_d_a=block_d_a,
                 presplit=presplit, loop_stages=loop_stages, loop_stages_a=loop_stages_a)  # fmt: skip
    _assert_accurate(t, out)


@pytest.mark.parametrize("case", EMPTY_CASES, ids=str)
def test_fused_backward_zero_tokens(case):
    t = build(case, KERNEL_DEVICE).tensors
    out = _fused(t)
    assert out["dx"].shape == t["x"].shape
    for k in ("dphi", "dalpha", "dbias", "dgamma"):
        assert torch.equal(out[k], torch.zeros_like(out[k])), k


@pytest.mark.skipif(not HAS_CUDA, reason="realistic shapes need a CUDA device")
@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=str)
def test_fused_backward_on_gpu_at_realistic_shapes(case):
    t = build(case, "cuda").tensors
    _assert_accurate(t, _fused(t))


@pytest.mark.skipif(not HAS_CUDA, reason="realistic shapes need a CUDA device")
@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES[:2], ids=str)
def test_mm_scratch_on_gpu_is_accurate_and_repeatable(case):
    """mm_scratch with every pass-B program running at once: a slot shared by two programs, or read before all
    its threads stored (the interpreter runs programs one at a time and cannot show either), would break the
    rule or the bits of a repeat. Not bitwise the plain kernel's: ptxas contracts dx's multiplies and adds
    differently in the two (measured: the GPU suite, 2026-12-05)."""
    t = build(case, "cuda").tensors
    first = _fused(t, block_t=32, block_d=128, mm_scratch=True)
    _assert_accurate(t, first)
    for _ in range(3):
        scratch = _fused(t, block_t=32, block_d=128, mm_scratch=True)
        for k, v in first.items():
            assert v is None and scratch[k] is None or torch.equal(v, scratch[k]), k


@pytest.mark.skipif(not HAS_CUDA, reason="realistic shapes need a CUDA device")
@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES[:2] + GPU_CASES[-2:], ids=str)
@pytest.mark.parametrize("loop_stages", [None, 2, 3])
def test_loop_stages_on_gpu_are_accurate_and_repeatable(case, loop_stages):
    """Pass B's and pass A's loops pipelined with all their loads, compiled (cp.async into shared memory, read
    back in each use's layout; the interpreter ignores stages), at pass B's default tile and a 64-token one: a
    tile read before its copy landed, or a stage overwritten while still read, would break the rule or the
    bits of a repeat. Not bitwise the unpipelined kernels': ptxas contracts multiplies and adds differently
    in different code (measured: the GPU suite, 2026-12-05)."""
    t = build(case, "cuda").tensors
    for tile in (None, (64, 64)):
        kw = dict(block_t=tile[0], block_d=tile[1]) if tile else {}
        staged = _fused(t, loop_stages=loop_stages, loop_stages_a=loop_stages, **kw)
        _assert_accurate(t, staged)
        for _ in range(3):
            again = _fused(t, loop_stages=loop_stages, loop_stages_a=loop_stages, **kw)
            for k, v in staged.items():
                assert v is None and again[k] is None or torch.equal(v, again[k]), (k, tile)


@pytest.mark.skipif(not HAS_CUDA, reason="realistic shapes need a CUDA device")
@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES[:2] + GPU_CASES[-2:], ids=str)
def test_pass_a_split_on_gpu_is_accurate_and_deterministic(case):
    """The split pass A on the GPU, where its programs arrive in any order: accurate, and bitwise the same
    over repeated calls (the parts are added in split order whatever the order of arrival)."""
    t = build(case, "cuda").tensors
    a = _fused(t, splits_a=4)
    _assert_accurate(t, a)
    for _ in range(3):
        b = _fused(t, splits_a=4)
        for k, v in a.items():
            assert v is None and b[k] is None or torch.equal(v, b[k]), k
