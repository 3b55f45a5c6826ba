"""The Triton stages post_fwd and post_bwd, fed golden inputs, against the float64 golden (accuracy
rule), plus the properties the contract asks of them.

CPU: through the interpreter at tiny shapes. GPU: the same tests compiled, plus realistic shapes."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mhc_ops.golden import build
from mhc_ops.kernels import post as kp
from mhc_ops.stages import STAGES
from tests.cases import POST_BLOCKS, POST_GPU_CASES, POST_KERNEL_CASES, post_case
from tests.helpers import (
    HAS_CUDA,
    INTERPRETING,
    KERNEL_DEVICE,
    assert_accurate,
    assert_stage_accurate,
    cached_bundle,
    fuzz_settings,
    run_triton_stage,
    stage_params,
)

pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
POST_STAGES = ("post_fwd", "post_bwd")
STAGE_PARAMS = stage_params(POST_STAGES)


@pytest.mark.parametrize("stage", STAGE_PARAMS)
@pytest.mark.parametrize("case", POST_KERNEL_CASES, ids=str)
def test_stage_on_golden_inputs(stage, case):
    bundle = cached_bundle(case, KERNEL_DEVICE)
    inputs, _ = bundle.stage_view(stage)
    assert_stage_accurate(stage, bundle, run_triton_stage(stage, inputs))


@pytest.mark.parametrize("stage", STAGE_PARAMS)
@pytest.mark.parametrize(("block_t", "block_d"), POST_BLOCKS)
def test_block_sizes(stage, block_t, block_d):
    bundle = cached_bundle(POST_KERNEL_CASES[0], KERNEL_DEVICE)
    inputs, _ = bundle.stage_view(stage)
    assert_stage_accurate(stage, bundle, run_triton_stage(stage, inputs, block_t=block_t, block_d=block_d))


class _NotLaunched:
    def __getitem__(self, grid):
        raise AssertionError("a kernel was launched")


@pytest.mark.parametrize("stage", STAGE_PARAMS)
@pytest.mark.parametrize("lead", [(0,), (2, 0)], ids=str)
def test_zero_tokens(stage, lead, monkeypatch):
    """No tokens: empty outputs of the right shapes and dtypes, and no launch."""
    monkeypatch.setattr(kp, "_post_fwd_kernel", _NotLaunched())
    monkeypatch.setattr(kp, "_post_bwd_kernel", _NotLaunched())
    bundle = build(post_case(lead, 3, 5), KERNEL_DEVICE)
    inputs, ref = bundle.stage_view(stage)
    out = run_triton_stage(stage, inputs)
    for k, r in ref.items():
        assert out[k].shape == r.shape and out[k].dtype == bundle.tensors[k].dtype, k


@pytest.mark.parametrize("stage", STAGE_PARAMS)
def test_nan_stays_in_its_token(stage):
    """A NaN in one token's x (and dout) makes that token's outputs NaN and leaves the tokens that share
    its program bitwise as they were."""
    inputs, _ = cached_bundle(post_case((6,), 4, 9, seed=7), KERNEL_DEVICE).stage_view(stage)
    spoiled = dict(inputs)
    for k in ("x", "dout"):
        if k in inputs:
            spoiled[k] = inputs[k].clone()
            spoiled[k][2, 1, 3] = math.nan
    a = run_triton_stage(stage, inputs, block_t=8)
    b = run_triton_stage(stage, spoiled, block_t=8)
    others = [0, 1, 3, 4, 5]
    for k in a:
        assert torch.isfinite(a[k]).all() and b[k][2].isnan().any(), k
        assert torch.equal(a[k][others], b[k][others]), k


@pytest.mark.parametrize("stage", STAGE_PARAMS)
def test_two_runs_are_bitwise_identical(stage):
    inputs, _ = cached_bundle(POST_KERNEL_CASES[3], KERNEL_DEVICE).stage_view(stage)
    a, b = run_triton_stage(stage, inputs, block_d=8), run_triton_stage(stage, inputs, block_d=8)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _transposed_storage(t: torch.Tensor) -> torch.Tensor:
    """The same values with the last two dims transposed in memory."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def _every_other(t: torch.Tensor) -> torch.Tensor:
    """The same values at every other element of a buffer whose other elements are NaN (stride 2)."""
    return torch.stack([t, torch.full_like(t, math.nan)], dim=-1)[..., 0]


@pytest.mark.parametrize("stage", STAGE_PARAMS)
def test_strided_inputs(stage):
    """Inputs are read in place through their strides: x with a stride-0 stream axis (one stream
    broadcast to all, as a model's first layer sees it), x and dout transposed in memory, h_out a
    strided slice, h_res and h_post transposed in memory."""
    inputs, _ = cached_bundle(post_case((3, 2), 4, 9, seed=8), KERNEL_DEVICE).stage_view(stage)
    common = {
        "h_out": _every_other(inputs["h_out"]),
        "h_res": _transposed_storage(inputs["h_res"]),
        "h_post": _every_other(inputs["h_post"]),
    }
    variants = [{"x": inputs["x"][..., :1, :].expand(inputs["x"].shape)}, {"x": _transposed_storage(inputs["x"])}]
    if "dout" in inputs:
        variants[1]["dout"] = _transposed_storage(inputs["dout"])
    for variant in variants:
        strided = inputs | common | variant
        assert strided["h_out"].stride(-1) == 2 and strided["h_post"].stride(-1) == 2
        assert not strided["x"].is_contiguous()
        assert_accurate(stage, strided, run_triton_stage(stage, strided))


def _meta(t):
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


# (argument, how it is spoiled, expected exception, text the message must contain); x is [2, 3, 4, 5].
BAD = [
    ("h_res", lambda t: t[..., :3, :3], ValueError, r"h_res: expected shape \[2, 3, 4, 4\] .*n=4.*got \[2, 3, 3, 3\]"),
    ("h_res", lambda t: t[..., :3], ValueError, r"h_res: expected a square .*got shape \[2, 3, 4, 3\]"),
    ("h_res", lambda t: t[0], ValueError, r"h_res: expected shape \[2, 3, 4, 4\] .*got \[3, 4, 4\]"),
    ("h_res", lambda t: t.to(torch.int32), TypeError, "h_res: expected a floating-point tensor, got torch.int32"),
    ("h_res", _meta, ValueError, r"h_res: expected a tensor on \S+ \(x's device\), got meta"),
    ("h_out", lambda t: t.float(), TypeError, r"h_out: expected dtype torch.bfloat16 \(x's dtype\), got torch.float32"),
    ("h_out", lambda t: t[..., :4], ValueError, r"h_out: expected shape \[2, 3, 5\] .*D=5.*got \[2, 3, 4\]"),
    ("h_post", lambda t: t[:, :2], ValueError, r"h_post: expected shape \[2, 3, 4\] .*leading dims \[2, 3\].*"),
    ("h_post", _meta, ValueError, r"h_post: expected a tensor on \S+ \(x's device\), got meta"),
    ("h_post", lambda t: t.tolist(), TypeError, "h_post: expected a torch.Tensor, got list"),
    ("dout", lambda t: t.float(), TypeError, r"dout: expected dtype torch.bfloat16 \(x's dtype\), got torch.float32"),
    ("dout", lambda t: t[..., :3, :], ValueError, r"dout: expected shape \[2, 3, 4, 5\] .*got \[2, 3, 3, 5\]"),
    ("dout", lambda t: None, TypeError, "dout: expected a torch.Tensor, got NoneType"),
    ("x", lambda t: t.to(torch.int16), TypeError, "x: expected dtype bfloat16, float16 or float32, got torch.int16"),
    ("x", lambda t: t[0, 0], ValueError, r"x: expected shape \[B, S, n, D\] or \[T, n, D\], got \(4, 5\)"),
    ("block_d", lambda v: 3, ValueError, "block_d: expected a power of two >= 1, got 3"),
    ("block_t", lambda v: 0, ValueError, "block_t: expected a power of two >= 1, got 0"),
]


@pytest.mark.parametrize(("arg", "spoil", "exc", "msg"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_rejected_before_launch(arg, spoil, exc, msg, monkeypatch):
    monkeypatch.setattr(kp, "_post_fwd_kernel", _NotLaunched())
    monkeypatch.setattr(kp, "_post_bwd_kernel", _NotLaunched())
    bundle = cached_bundle(post_case((2, 3), 4, 5, seed=9), KERNEL_DEVICE)
    good = dict(bundle.tensors) | {"block_t": None, "block_d": None}
    bad = good | {arg: spoil(good[arg])}
    stages = ["post_bwd"] if arg == "dout" else POST_STAGES
    for stage in stages:
        kwargs = {k: bad[k] for k in (*STAGES[stage].inputs, "block_t", "block_d")}
        with pytest.raises(exc, match=msg):
            STAGES[stage].triton(**kwargs)
    if not arg.startswith("block") and bad[arg] is not None:  # check_post_inputs reads dout=None as "forward"
        with pytest.raises(exc, match=msg):
            kp.check_post_inputs(*(bad[k] for k in STAGES["post_bwd"].inputs))


@st.composite
def fuzz_cases(draw):
    """Shapes the lists above may miss: any n from 1 to 8, odd D, leading dims with 0 and 1 in them,
    and any block sizes."""
    lead = draw(st.sampled_from([(0,), (1,), (2,), (7,), (1, 1), (1, 5), (3, 2), (2, 0), (0, 3)]))
    case = post_case(
        lead,
        draw(st.integers(1, 8)),
        draw(st.sampled_from([1, 3, 7, 15, 33])),
        draw(st.sampled_from(["bfloat16", "float16", "float32"])),
        seed=draw(st.integers(0, 2**16)),
    )
    blocks = draw(st.sampled_from([(None, None), (4, 16), (2, 64)]))
    return case, blocks


@pytest.mark.stage("post_fwd")
@pytest.mark.stage("post_bwd")
@fuzz_settings(10)
@given(fuzz_cases())
def test_fuzz_shapes(case_blocks):
    case, (block_t, block_d) = case_blocks
    bundle = build(case, KERNEL_DEVICE)
    for stage in POST_STAGES:
        inputs, _ = bundle.stage_view(stage)
        assert_stage_accurate(stage, bundle, run_triton_stage(stage, inputs, block_t=block_t, block_d=block_d))


@pytest.mark.gpu
@pytest.mark.stage("post_fwd")
@pytest.mark.stage("post_bwd")
@pytest.mark.skipif(not HAS_CUDA or INTERPRETING, reason="realistic shapes need a CUDA device")
@pytest.mark.parametrize("case", POST_GPU_CASES, ids=str)
def test_stages_on_gpu_at_realistic_shapes(case):
    bundle = build(case, "cuda")
    for stage in POST_STAGES:
        inputs, _ = bundle.stage_view(stage)
        assert_stage_accurate(stage, bundle, run_triton_stage(stage, inputs))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRETING, reason="needs a GPU with 24 GB free")
def test_tokens_past_two_to_the_31():
    """64-bit offsets: the last tokens start past element 2**31 of x, dout, out and dx. Per-token outputs
    depend on that token alone, so they are checked against the golden on those tokens only."""
    n, D, tail = 4, 7168, 32
    T = 2**31 // (n * D) + 64
    g = torch.Generator(device="cuda").manual_seed(12)
    x, dout = (torch.randn((T, n, D), generator=g, device="cuda").to(torch.bfloat16) for _ in range(2))
    h_out = torch.randn((T, D), generator=g, device="cuda").to(torch.bfloat16)
    h_res = torch.softmax(torch.randn((T, n, n), generator=g, device="cuda"), dim=-1)
    h_post = 2 * torch.sigmoid(torch.randn((T, n), generator=g, device="cuda"))
    assert (T - tail) * n * D > 2**31
    full = {"x": x, "h_res": h_res, "h_out": h_out, "h_post": h_post, "dout": dout}
    last = {k: v[-tail:] for k, v in full.items()}
    for stage in POST_STAGES:
        names = STAGES[stage].inputs
        out = STAGES[stage].run("triton", **{k: full[k] for k in names})
        assert_accurate(stage, {k: last[k] for k in names}, {k: v[-tail:] for k, v in out.items()})
