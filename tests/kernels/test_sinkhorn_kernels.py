"""The Triton stages sinkhorn_fwd and sinkhorn_bwd, fed golden inputs, against the float64 golden
(accuracy rule), plus the properties the contract asks of them.

CPU: through the interpreter at tiny shapes; it runs a program at a time and each iters = 20 backward
program costs ~2 s there, so those cases pick a block size that puts their tokens in one program.
GPU: the same tests compiled, plus a realistic token count."""

import math

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from mhc_ops.golden import Case, build, run_golden
from mhc_ops.golden.fixtures import make_inputs as fixture_inputs
from mhc_ops.kernels import sinkhorn as ks
from mhc_ops.stages import STAGES
from tests.cases import SINKHORN_KERNEL_CASES, sinkhorn_case
from tests.helpers import (
    HAS_CUDA,
    INTERPRETING,
    KERNEL_DEVICE,
    assert_accurate,
    assert_stage_accurate,
    fuzz_settings,
    nan_filled_outputs,
    run_triton_stage,
    stage_params,
)

pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
SINKHORN_STAGES = ("sinkhorn_fwd", "sinkhorn_bwd")
STAGE_PARAMS = stage_params(SINKHORN_STAGES)
FWD = pytest.mark.stage("sinkhorn_fwd")
BWD = pytest.mark.stage("sinkhorn_bwd")


def _id(case_block) -> str:
    case, block_t = case_block
    return f"{case}-{case.dtype}" + (f"-bt{block_t}" if block_t else "")


def make_inputs(case: Case, device) -> dict:
    """The fixtures' sinkhorn inputs (random logits of spread 2, or near-identity 6*I - 3 plus noise;
    dP random fp32) with the logits stored in case.dtype (the fixtures keep them in fp32)."""
    t = fixture_inputs(case, device)
    return t | {"logits": t["logits"].to(case.torch_dtype)}


def stage_inputs(stage: str, case: Case, tensors: dict) -> dict:
    """The stage's registered inputs from tensors, its options from the case."""
    spec = STAGES[stage]
    return {k: tensors[k] for k in spec.inputs} | {k: getattr(case, k) for k in spec.options}


@pytest.mark.parametrize("stage", STAGE_PARAMS)
@pytest.mark.parametrize("case_block", SINKHORN_KERNEL_CASES, ids=_id)
def test_stage_on_golden_inputs(stage, case_block):
    case, block_t = case_block
    inputs = stage_inputs(stage, case, make_inputs(case, KERNEL_DEVICE))
    assert_accurate(stage, inputs, run_triton_stage(stage, inputs, block_t=block_t))


@pytest.mark.parametrize("stage", STAGE_PARAMS)
def test_stage_on_fixture_bundle(stage):
    """The fixture builder's bundle (fp32 logits), checked by the suite's common helper."""
    bundle = build(sinkhorn_case((2, 3), 4, iters=5, init="identity", seed=9), KERNEL_DEVICE)
    inputs, _ = bundle.stage_view(stage)
    assert_stage_accurate(stage, bundle, run_triton_stage(stage, inputs))


@BWD
def test_backward_checkpoint_segments():
    """Any checkpoint segment length gives bitwise the same gradient (the recomputation runs the same
    passes from the same start), whole segments or a partial last one, and it is the right one."""
    case = sinkhorn_case((3,), 3, iters=5, init="identity", seed=11)
    t = make_inputs(case, KERNEL_DEVICE)
    outs = []
    for seg in (1, 2, 3, 6):  # isqrt(4) = 2 is the default; 3 leaves a partial segment; 6 > iters - 1
        with nan_filled_outputs():
            outs.append(ks.launch_sinkhorn_bwd(t["logits"], t["dP"], case.iters, case.eps, seg=seg))
    assert all(torch.equal(o, outs[0]) for o in outs[1:])
    assert_accurate("sinkhorn_bwd", stage_inputs("sinkhorn_bwd", case, t), {"dlogits": outs[0]})


@BWD
@pytest.mark.parametrize("iters", (3, 12))
def test_backward_at_other_iteration_counts(iters):
    """iters - 1 = 2 (segments of 1) and 11 (segments of 3, 3, 3, 2)."""
    case = sinkhorn_case((2,), 4, iters=iters, seed=12)
    inputs = stage_inputs("sinkhorn_bwd", case, make_inputs(case, KERNEL_DEVICE))
    assert_accurate("sinkhorn_bwd", inputs, run_triton_stage("sinkhorn_bwd", inputs))


@FWD
@pytest.mark.parametrize("n", (3, 4, 8))
def test_row_and_column_sums_are_fp32_grade(n):
    """iters = 20 from bf16 logits, P in fp32: row and column sums within 1e-6 of the fp64 golden's,
    and within 1e-5 of 1 where 20 iterations converge (logits of spread 0.5; the column sums always)."""
    for init, factor in (("random", 0.25), ("random", 1.0), ("identity", 1.0)):  # spread 0.5, 2, near-identity
        case = sinkhorn_case((4, 4), n, init=init, seed=n)
        logits = (factor * fixture_inputs(case, KERNEL_DEVICE)["logits"]).to(torch.bfloat16)
        P = run_triton_stage("sinkhorn_fwd", {"logits": logits, "iters": 20}, block_t=16)["P"]
        assert P.dtype == torch.float32
        ref = run_golden("sinkhorn_fwd", {"logits": logits, "iters": 20}, "fp64")["P"]
        for dim in (-1, -2):
            assert (P.double().sum(dim) - ref.sum(dim)).abs().max() < 1e-6, (init, factor, dim)
        assert (P.sum(-2) - 1).abs().max() < 1e-5, (init, factor)
        if factor < 1:
            assert (P.sum(-1) - 1).abs().max() < 1e-5


@FWD
def test_column_pass_is_last():
    """iters = 1: softmax + eps, then one column pass: the column sums are 1, the row sums are not
    (a kernel that ran the passes in the other order would give the opposite)."""
    logits = make_inputs(sinkhorn_case((32,), 4), KERNEL_DEVICE)["logits"]
    P = run_triton_stage("sinkhorn_fwd", {"logits": logits, "iters": 1})["P"]
    assert (P.sum(-2) - 1).abs().max() < 1e-4
    assert (P.sum(-1) - 1).abs().max() > 0.1


@pytest.mark.parametrize("stage", STAGE_PARAMS)
@pytest.mark.parametrize("lead", [(0,), (2, 0)], ids=str)
def test_zero_tokens(stage, lead, monkeypatch):
    """No tokens: empty outputs of the right shape and dtype, and no launch."""
    monkeypatch.setattr(ks, "_sinkhorn_fwd_kernel", _NotLaunched())
    monkeypatch.setattr(ks, "_sinkhorn_bwd_kernel", _NotLaunched())
    case = sinkhorn_case(lead, 4, "bfloat16")
    inputs = stage_inputs(stage, case, make_inputs(case, KERNEL_DEVICE))
    out = run_triton_stage(stage, inputs)
    (name,) = STAGES[stage].outputs
    assert out[name].shape == (*lead, 4, 4)
    assert out[name].dtype == (torch.float32 if name == "P" else torch.bfloat16)


@pytest.mark.parametrize("stage", STAGE_PARAMS)
def test_nan_stays_in_its_token(stage):
    """A NaN in one token's logits (sharing a program with four others) makes that token NaN and
    leaves the other tokens bitwise as they were."""
    case = sinkhorn_case((5,), 4, iters=3, seed=13)
    clean = stage_inputs(stage, case, make_inputs(case, KERNEL_DEVICE))
    spoiled = dict(clean)
    spoiled["logits"] = clean["logits"].clone()
    spoiled["logits"][2, 1, 3] = math.nan
    (name,) = STAGES[stage].outputs
    a = run_triton_stage(stage, clean, block_t=8)[name]
    b = run_triton_stage(stage, spoiled, block_t=8)[name]
    others = [0, 1, 3, 4]
    assert torch.isfinite(a).all() and b[2].isnan().any()
    assert torch.equal(a[others], b[others])


@pytest.mark.parametrize("stage", STAGE_PARAMS)
def test_two_runs_are_bitwise_identical(stage):
    case = sinkhorn_case((2, 20), 4, "bfloat16", iters=5, init="identity", seed=14)
    inputs = stage_inputs(stage, case, make_inputs(case, KERNEL_DEVICE))
    (name,) = STAGES[stage].outputs
    assert torch.equal(run_triton_stage(stage, inputs)[name], run_triton_stage(stage, inputs)[name])


@pytest.mark.parametrize("stage", STAGE_PARAMS)
def test_noncontiguous_inputs(stage):
    """Strided logits and dP give the same result as contiguous ones (the stage copies them)."""
    case = sinkhorn_case((3, 2), 3, iters=2, seed=15)
    inputs = stage_inputs(stage, case, make_inputs(case, KERNEL_DEVICE))
    strided = {k: v.transpose(-1, -2).contiguous().transpose(-1, -2) if isinstance(v, torch.Tensor) else v
               for k, v in inputs.items()}  # fmt: skip
    assert not strided["logits"].is_contiguous()
    (name,) = STAGES[stage].outputs
    assert torch.equal(run_triton_stage(stage, strided)[name], run_triton_stage(stage, inputs)[name])


class _NotLaunched:
    def __getitem__(self, grid):
        raise AssertionError("a kernel was launched")


def _meta(t):
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


# (argument, how it is spoiled, expected exception, text the message must contain)
BAD = [
    ("logits", lambda t: t[..., :-1], ValueError, r"logits: expected square last two dims .*got \[2, 3, 4, 3\]"),
    ("logits", lambda t: t[0, 0], ValueError, r"logits: expected shape \[T, n, n\] or \[B, S, n, n\], got \[4, 4\]"),
    ("logits", lambda t: torch.zeros(2, 9, 9), ValueError, "logits: expected n from 1 to 8 .*got n=9"),
    ("logits", lambda t: torch.zeros(2, 0, 0), ValueError, "logits: expected n from 1 to 8 .*got n=0"),
    ("logits", lambda t: t.to(torch.int32), TypeError, "logits: expected dtype bfloat16, float16 or .*int32"),
    ("logits", lambda t: t.double(), TypeError, "logits: expected dtype bfloat16, .*, got .*float64"),
    ("logits", lambda t: t.tolist(), TypeError, "logits: expected a torch.Tensor, got list"),
    ("dP", lambda t: t[:1], ValueError, r"dP: expected shape \[2, 3, 4, 4\] \(logits' shape\), got \[1, 3, 4, 4\]"),
    ("dP", _meta, ValueError, "dP: expected a tensor on .* \\(logits' device\\), got meta"),
    ("dP", lambda t: t.to(torch.int64), TypeError, "dP: expected dtype bfloat16, float16 or float32"),
    ("dP", lambda t: None, TypeError, "dP: expected a torch.Tensor, got NoneType"),
    ("iters", lambda v: 0, ValueError, "iters: expected an int >= 1, got 0"),
    ("iters", lambda v: 2.5, TypeError, r"iters: expected an int >= 1, got 2.5 \(float\)"),
    ("iters", lambda v: True, TypeError, "iters: expected an int >= 1, got True"),
    ("eps", lambda v: -1e-6, ValueError, "eps: expected a finite number >= 0, got -1e-06"),
    ("eps", lambda v: math.nan, ValueError, "eps: expected a finite number >= 0, got nan"),
    ("eps", lambda v: "1e-6", TypeError, "eps: expected a number >= 0, got '1e-6'"),
    ("block_t", lambda v: 3, ValueError, "block_t: expected a power of two >= 1, got 3"),
]


@FWD
@BWD
@pytest.mark.parametrize(("arg", "spoil", "exc", "msg"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_rejected_before_launch(arg, spoil, exc, msg, monkeypatch):
    monkeypatch.setattr(ks, "_sinkhorn_fwd_kernel", _NotLaunched())
    monkeypatch.setattr(ks, "_sinkhorn_bwd_kernel", _NotLaunched())
    case = sinkhorn_case((2, 3), 4, iters=2)
    good = make_inputs(case, KERNEL_DEVICE) | {"iters": 2, "eps": 1e-6, "block_t": None}
    bad = good | {arg: spoil(good[arg])}
    stages = ["sinkhorn_bwd"] if arg == "dP" else SINKHORN_STAGES
    for stage in stages:
        spec = STAGES[stage]
        kwargs = {k: bad[k] for k in (*spec.inputs, *spec.options, "block_t")}
        with pytest.raises(exc, match=msg):
            spec.triton(**kwargs)
    if arg != "block_t" and bad["dP"] is not None:
        with pytest.raises(exc, match=msg):
            ks.check_sinkhorn_inputs(bad["logits"], bad["dP"], iters=bad["iters"], eps=bad["eps"])


@st.composite
def fuzz_cases(draw):
    """Shapes the suite's lists may miss: any n from 1 to 8, leading dims with 0 and 1 in them."""
    n = draw(st.integers(1, 8))
    lead = draw(st.sampled_from([(0,), (1,), (2,), (7,), (1, 1), (1, 5), (3, 2), (2, 0), (0, 3)]))
    case = sinkhorn_case(
        lead,
        n,
        draw(st.sampled_from(["bfloat16", "float16", "float32"])),
        iters=draw(st.sampled_from([1, 2, 3, 5])),
        init=draw(st.sampled_from(["random", "identity"])),
        seed=draw(st.integers(0, 2**16)),
    )
    return case, draw(st.sampled_from([None, 2, 16]))


@pytest.mark.parametrize("stage", STAGE_PARAMS)
@fuzz_settings(10, HealthCheck.function_scoped_fixture)
@given(case_block=fuzz_cases())
def test_fuzzed_shapes(stage, case_block):
    case, block_t = case_block
    inputs = stage_inputs(stage, case, make_inputs(case, KERNEL_DEVICE))
    assert_accurate(stage, inputs, run_triton_stage(stage, inputs, block_t=block_t))


@pytest.mark.skipif(not HAS_CUDA, reason="realistic shapes need a CUDA device")
@pytest.mark.gpu
@pytest.mark.parametrize("stage", STAGE_PARAMS)
@pytest.mark.parametrize("init", ["random", "identity"])
def test_stage_on_gpu_at_realistic_shapes(stage, init):
    case = sinkhorn_case((16384,), 4, "bfloat16", init=init, seed=21)
    inputs = stage_inputs(stage, case, make_inputs(case, "cuda"))
    assert_accurate(stage, inputs, run_triton_stage(stage, inputs))


@pytest.mark.skipif(not HAS_CUDA or INTERPRETING, reason="compiled kernels need a GPU")
@pytest.mark.gpu
def test_token_and_iteration_counts_do_not_recompile():
    """T, iters (and the backward's segment length) are runtime arguments: one compilation per n."""
    kernels = (ks._sinkhorn_fwd_kernel, ks._sinkhorn_bwd_kernel)
    sizes = []
    for T, iters in ((1, 20), (37, 1), (64, 2), (1000, 7), (4096, 20)):
        t = make_inputs(sinkhorn_case((T,), 4, iters=iters, seed=T), "cuda")
        ks.sinkhorn_fwd(logits=t["logits"], iters=iters)
        ks.sinkhorn_bwd(logits=t["logits"], dP=t["dP"], iters=iters)
        torch.cuda.synchronize()
        sizes.append(sum(len(cache[0]) for k in kernels for cache in k.device_caches.values()))
    assert sizes[0] > 0 and len(set(sizes)) == 1, sizes


@triton.jit
def _reciprocals_kernel(d_ptr, fast_ptr, exact_ptr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    d = tl.load(d_ptr + offs)
    tl.store(fast_ptr + offs, ks.reciprocal(d, 0.0, True))
    tl.store(exact_ptr + offs, tl.math.div_rn(1.0, d))


@pytest.mark.skipif(KERNEL_DEVICE != "cuda", reason="the PTX reciprocal: GPU only (the interpreter divides)")
def test_reciprocal_is_div_rn_bitwise():
    """reciprocal() on the GPU (MUFU.RCP and two FMA corrections, kernels/sinkhorn.py) gives div_rn's bits
    over its stated range [2**-126, 2**126]: 2**20 log-uniform draws, every power of two from 2**-126 to
    2**125 and both its neighbours (the rounding's hardest cases: mantissas of all ones and of one ulp past 1)."""
    g = torch.Generator().manual_seed(11)
    draws = torch.exp2(torch.empty(1 << 20, dtype=torch.float64).uniform_(-126, 126, generator=g)).float()
    pow2 = torch.exp2(torch.arange(-126, 126, dtype=torch.float64)).float()
    near = torch.cat([torch.nextafter(pow2, torch.zeros_like(pow2)), torch.nextafter(pow2, torch.full_like(pow2, 3e38))])
    d = torch.cat([draws, pow2, near.clamp(2.0**-126, 2.0**126)]).cuda()
    block = 1024
    d = torch.cat([d, torch.ones(-d.numel() % block, device="cuda")])
    fast, exact = torch.full_like(d, math.nan), torch.full_like(d, math.nan)
    _reciprocals_kernel[(d.numel() // block,)](d, fast, exact, BLOCK=block)
    mismatch = (fast.view(torch.int32) != exact.view(torch.int32)).nonzero()
    assert mismatch.numel() == 0, f"{mismatch.numel()} of {d.numel()} differ, e.g. d = {d[mismatch[:4, 0]].tolist()}"


@triton.jit
def _live_tokens_kernel(out_ptr, t0, T, BLOCK_T: tl.constexpr, TILE_T: tl.constexpr):
    live = ks.live_tokens(t0, T, BLOCK_T, TILE_T)  # [TILE_T, 1, 1]
    tl.store(out_ptr + tl.arange(0, TILE_T)[:, None, None], live.to(tl.int32))


@pytest.mark.parametrize(("t0", "T", "block_t", "tile_t", "live"),
                         [(0, 1, 1, 8, 1), (16, 19, 16, 32, 3), (0, 40, 16, 32, 16), (5, 5, 1, 4, 0)])  # fmt: skip
def test_live_tokens_are_the_blocks_stored_tokens(t0, T, block_t, tile_t, live):
    """sinkhorn.live_tokens (the timeline marks' mask): the tile's first `live` tokens, those of the block below T."""
    out = torch.full((tile_t,), -1, dtype=torch.int32, device=KERNEL_DEVICE)
    _live_tokens_kernel[(1,)](out, t0, T, BLOCK_T=block_t, TILE_T=tile_t)
    assert out.tolist() == [1] * live + [0] * (tile_t - live)
