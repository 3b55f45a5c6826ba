"""Bad input raises TypeError/ValueError naming the argument and the expected value, before any launch."""

import pytest
import torch

import mhc_ops
from mhc_ops._validate import TABLES
from mhc_ops.golden import Case, build
from mhc_ops.golden.registry import OPS, STAGE_IO
from mhc_ops.kernels._common import check_tile_span
from mhc_ops.nn import HyperConnection, expand_streams
from mhc_ops.stages import STAGES, Stage
from tests.helpers import KERNEL_DEVICE

CASE = Case(lead=(2, 3), n=4, D=8, grad_x_post=True)  # O = 24, nD = 32
FWD_ARGS = ("x", "phi", "alpha", "bias", "gamma")
BWD_ARGS = ("x", "phi", "alpha", "dh_in", "dh_post", "dh_res", "inv_rms", "h_mix", "h_pre", "h_post", "gamma")


def _meta(t):
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


# (argument, how it is spoiled, expected exception, text the message must contain)
BAD = [
    ("x", lambda t: t[0, 0], ValueError, r"x: expected shape \[B, S, n, D\] or \[T, n, D\]"),
    ("x", lambda t: t.to(torch.int32), TypeError, "x: expected dtype bfloat16, float16 or float32"),
    ("x", lambda t: t.double(), TypeError, "x: expected dtype"),
    ("phi", lambda t: t[:-1], ValueError, r"phi: expected shape \[24, 32\] \(\[n\*n \+ 2\*n, n\*D\] with n=4, D=8\)"),
    ("phi", lambda t: t[:, :-1], ValueError, r"phi: expected shape \[24, 32\]"),
    ("phi", lambda t: t.to(torch.int64), TypeError, "phi: expected a floating-point tensor"),
    ("phi", _meta, ValueError, "phi: expected a tensor on cpu"),
    ("alpha", lambda t: t[:2], ValueError, r"alpha: expected shape \[3\]"),
    ("alpha", lambda t: t.to(torch.int32), TypeError, "alpha: expected a floating-point tensor"),
    ("bias", lambda t: torch.cat([t, t]), ValueError, r"bias: expected shape \[24\]"),
    ("bias", lambda t: t.bool(), TypeError, "bias: expected a floating-point tensor"),
    ("gamma", lambda t: t.reshape(-1), ValueError, r"gamma: expected shape \[4, 8\]"),
    ("gamma", lambda t: t.to(torch.int16), TypeError, "gamma: expected a floating-point tensor"),
    ("gamma", _meta, ValueError, "gamma: expected a tensor on cpu"),
    ("dh_in", lambda t: t[:, :, :-1], ValueError, r"dh_in: expected shape \[2, 3, 8\]"),
    ("dh_post", lambda t: t[:1], ValueError, r"dh_post: expected shape \[2, 3, 4\]"),
    ("dh_res", lambda t: t.reshape(2, 3, 16), ValueError, r"dh_res: expected shape \[2, 3, 4, 4\]"),
    ("dh_res", lambda t: t.to(torch.int32), TypeError, "dh_res: expected a floating-point tensor"),
    ("inv_rms", lambda t: t[..., None], ValueError, r"inv_rms: expected shape \[2, 3\]"),
    ("h_mix", lambda t: t[..., :-1], ValueError, r"h_mix: expected shape \[2, 3, 24\]"),
    ("h_pre", lambda t: t.reshape(6, 4), ValueError, r"h_pre: expected shape \[2, 3, 4\]"),
    ("h_post", _meta, ValueError, "h_post: expected a tensor on cpu"),
    ("grad_x_post", lambda t: t[..., :-1], ValueError, r"grad_x_post: expected shape \[2, 3, 4, 8\]"),
    ("dh_in", lambda t: t.tolist(), TypeError, "dh_in: expected a torch.Tensor"),
]


@pytest.fixture(scope="module")
def tensors():
    return build(CASE).tensors


@pytest.fixture
def no_launch(monkeypatch):
    def launched(*args, **kwargs):
        raise AssertionError("a stage ran before the input was validated")

    monkeypatch.setattr(Stage, "run", launched)


def _spoil(tensors, arg, spoil):
    return dict(tensors) | {arg: spoil(tensors[arg])}


@pytest.mark.parametrize(("arg", "spoil", "exc", "msg"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_public_functions_reject_bad_input_before_launch(tensors, no_launch, arg, spoil, exc, msg):
    t = _spoil(tensors, arg, spoil)
    calls = []
    if arg in FWD_ARGS:
        calls.append(lambda: mhc_ops.mhc_pre_forward(*(t[k] for k in FWD_ARGS), backend="golden"))
        calls.append(lambda: mhc_ops.mhc_pre(*(t[k] for k in FWD_ARGS), backend="golden"))
    if arg in BWD_ARGS or arg == "grad_x_post":
        calls.append(
            lambda: mhc_ops.mhc_pre_backward(*(t[k] for k in BWD_ARGS), grad_x_post=t["grad_x_post"], backend="golden")
        )
    assert calls
    for call in calls:
        with pytest.raises(exc, match=msg):
            call()


@pytest.mark.parametrize(("arg", "spoil", "exc", "msg"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_stage_launchers_reject_bad_input(tensors, arg, spoil, exc, msg):
    t = _spoil(tensors, arg, spoil)
    users = [s for s in STAGES.values() if s.op == "mhc_pre" and arg in s.inputs]
    for stage in users:
        kwargs = {k: t[k] for k in stage.inputs}
        with pytest.raises(exc, match=msg):
            stage.triton(**kwargs)


def test_x_with_other_n_or_D_than_the_parameters_is_named_as_x(tensors):
    """x with 3 streams (or 7 features) against parameters for n = 4, D = 8: the parameters agree,
    so x is the argument named, with the n (or D) they imply."""
    t = tensors
    x3 = t["x"][:, :, :3]
    msg = r"x: expected n=4, as phi \[24, 32\], bias \[24\] and gamma \[4, 8\] imply .*got shape \[2, 3, 3, 8\] with n=3"
    with pytest.raises(ValueError, match=msg):
        mhc_ops.mhc_pre_forward(x3, t["phi"], t["alpha"], t["bias"], t["gamma"])
    with pytest.raises(ValueError, match=r"x: expected n=4, as phi \[24, 32\] and bias \[24\] imply"):
        mhc_ops.mhc_pre(x3, t["phi"], t["alpha"], t["bias"])
    x7 = t["x"][..., :7]
    with pytest.raises(ValueError, match=r"x: expected D=8, as .* got shape \[2, 3, 4, 7\] with D=7"):
        mhc_ops.mhc_pre(x7, t["phi"], t["alpha"], t["bias"], t["gamma"])
    post = build(Case(lead=(2, 3), n=4, D=8, op="mhc_post")).tensors
    with pytest.raises(ValueError, match=r"x: expected n=4, as h_res \[2, 3, 4, 4\] and h_post \[2, 3, 4\] imply"):
        mhc_ops.mhc_post(post["x"][:, :, :3], post["h_res"], post["h_out"], post["h_post"])


def test_one_argument_off_is_still_the_one_named(tensors):
    """phi for n = 3 beside x and bias for n = 4: phi is named, not x."""
    t = tensors
    phi3 = torch.randn(15, 24)
    with pytest.raises(ValueError, match=r"phi: expected shape \[24, 32\] .*n=4, D=8\), got \[15, 24\]"):
        mhc_ops.mhc_pre(t["x"], phi3, t["alpha"], t["bias"])


def test_hyper_connection_given_unexpanded_input_names_its_n_and_D():
    """[B, S, D] into a HyperConnection(dim=D, n=4) would read as S streams: the module says what it
    expected of x and how to get it."""
    D, n = 16, 4
    hc = HyperConnection(D, n)
    h = torch.randn(2, 5, D)
    msg = rf"x: expected shape \[\.\.\., n, D\] = \[\.\.\., {n}, {D}\] .*got \[2, 5, {D}\].*expand_streams\(h, {n}\)"
    with pytest.raises(ValueError, match=msg):
        hc(h)
    assert hc(expand_streams(h, n)).shape == (2, 5, n, D)
    assert HyperConnection(D, n, disable=True)(h).shape == h.shape  # a plain residual on [.., D]


def test_sinkhorn_of_no_streams_names_the_bound_it_has():
    """The golden sinkhorn takes any n >= 1: [2, 0, 0] names that bound, not 'from 1 to None'."""
    with pytest.raises(ValueError, match="logits: expected n >= 1, got n=0") as err:
        mhc_ops.sinkhorn(torch.zeros(2, 0, 0), backend="golden")
    assert "None" not in str(err.value)


def test_triton_on_cpu_without_the_interpreter_says_so_once(tensors, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = [tensors[k] for k in FWD_ARGS]
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1") as err:
        mhc_ops.mhc_pre(*args, backend="triton")
    assert str(err.value).startswith("backend 'triton': ") and str(err.value).count("backend 'triton'") == 1
    with pytest.raises(RuntimeError, match=r"^stages dx, dgamma on 'triton': .*TRITON_INTERPRET=1"):
        mhc_ops.mhc_pre(*args, stages={"dx": "triton", "dgamma": "triton"})


# (op, argument, dtype it is given): the mHC parameters and mhc_post's coefficients are fp32.
FP32_ARGS = [
    ("mhc_pre", "phi", torch.bfloat16),
    ("mhc_pre", "alpha", torch.float64),
    ("mhc_pre", "bias", torch.float16),
    ("mhc_pre", "gamma", torch.bfloat16),
    ("mhc_post", "h_res", torch.float64),
    ("mhc_post", "h_post", torch.bfloat16),
]


@pytest.mark.parametrize(("op", "arg", "dtype"), FP32_ARGS)
def test_fp32_arguments_in_another_float_dtype_are_refused(tensors, op, arg, dtype):
    if op == "mhc_pre":
        t = dict(tensors) | {arg: tensors[arg].to(dtype)}
        call = lambda: mhc_ops.mhc_pre(*(t[k] for k in FWD_ARGS))  # noqa: E731
    else:
        post = build(Case(lead=(2, 3), n=4, D=8, op="mhc_post")).tensors
        t = dict(post) | {arg: post[arg].to(dtype)}
        call = lambda: mhc_ops.mhc_post(t["x"], t["h_res"], t["h_out"], t["h_post"])  # noqa: E731
    with pytest.raises(TypeError, match=rf"{arg}: expected dtype torch.float32, got {dtype}"):
        call()


def test_modules_cast_to_bf16_or_under_autocast_still_pass_fp32_parameters():
    """What the fp32 rule must not break: a HyperConnection cast with .to(bf16) keeps its parameters
    fp32 (nn.py's _apply), and autocast does not touch them."""
    n, D = 4, 8
    hc = HyperConnection(D, n, torch.nn.Linear(D, D), use_gamma=True).to(torch.bfloat16)
    x = torch.randn(3, n, D)
    assert hc(x.bfloat16()).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hc.float()(x).sum().backward()
    assert hc.phi.grad.dtype == torch.float32


@pytest.mark.parametrize("block", [0, 3, 8])
def test_bad_block_sizes(tensors, block):
    with pytest.raises(ValueError, match="block_d: expected a power of two >= 16"):
        STAGES["pre_fwd"].triton(**{k: tensors[k] for k in FWD_ARGS}, block_d=block)


def test_unknown_backend(tensors):
    with pytest.raises(ValueError, match="backend: expected one of"):
        mhc_ops.mhc_pre_forward(*(tensors[k] for k in FWD_ARGS), backend="cuda")


@pytest.mark.parametrize(
    "call, exc, msg",
    [
        (lambda: mhc_ops.sinkhorn(torch.randn(3, 4, 5)), ValueError, r"logits: expected square last two dims"),
        (lambda: mhc_ops.sinkhorn(torch.randn(3, 4, 4), iters=0), ValueError, "iters: expected an int >= 1"),
        (lambda: mhc_ops.sinkhorn(torch.randn(3, 4, 4), eps=-1.0), ValueError, "eps: expected a finite number >= 0"),
        (lambda: mhc_ops.sinkhorn(torch.randn(3, 4, 4), backend="cuda"), ValueError, "backend: expected one of"),
        (
            # on the device the Triton kernels run on here (CPU tensors need the interpreter)
            lambda: mhc_ops.sinkhorn(torch.randn(3, 9, 9, device=KERNEL_DEVICE or "cpu"), backend="triton"),
            ValueError,
            "logits: expected n from 1 to 8",
        ),
        (
            lambda: mhc_ops.mhc_post(torch.randn(2, 4, 8), torch.rand(2, 3, 3), torch.randn(2, 8), torch.rand(2, 4)),
            ValueError,
            "h_res",
        ),
        (
            lambda: mhc_ops.mhc_post(
                torch.randn(2, 4, 8), torch.rand(2, 4, 4), torch.randn(2, 8).double(), torch.rand(2, 4)
            ),
            TypeError,
            "h_out",
        ),
        (
            lambda: mhc_ops.mhc_pre(*(build(CASE).tensors[k] for k in FWD_ARGS), stages={"dgama": "golden"}),
            ValueError,
            "stages: expected stage names",
        ),
    ],
)
def test_new_ops_reject_bad_input(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_sinkhorn_golden_takes_any_n():
    P = mhc_ops.sinkhorn(torch.randn(2, 9, 9), backend="golden")
    assert P.shape == (2, 9, 9) and torch.allclose(P.sum(-2), torch.ones(2, 9), atol=1e-5)


def test_a_token_block_past_int32_offsets_is_refused_by_name():
    """The kernels address a tile's elements by int32 offsets from its first token (tile_offsets): a
    [T, n, D] view whose token stride would overflow them is an error, not a wrong answer. Meta
    tensors: only the strides are read."""
    ok = torch.empty_strided((8, 4, 16), (2**20, 16, 1), device="meta")
    check_tile_span(64, ok)
    huge = torch.empty_strided((8, 4, 16), (2**26, 16, 1), device="meta")  # 64 tokens span 2**32 elements
    with pytest.raises(ValueError, match=r"strides \[67108864, 16, 1\]: expected 64 tokens to span fewer than 2\*\*31"):
        check_tile_span(64, ok, huge)


def test_every_op_and_stage_input_has_a_table_entry():
    """One table per op (mhc_ops/_validate.py) names every tensor its stages take."""
    assert set(TABLES) == set(OPS)
    missing = {s: [k for k in io["inputs"] if k not in TABLES[io["op"]].args] for s, io in STAGE_IO.items()}
    assert not any(missing.values()), missing


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("lead", "n", "D"), [((2, 3), 3, 5), ((4,), 1, 7), ((0,), 6, 2)])
def test_tables_accept_every_stage_input_of_the_golden(op, lead, n, D):
    """Each stage's golden inputs (shapes and storage dtypes as the fixtures make them) pass the table
    of their op, which reads back the case's leading dims, n and D."""
    bundle = build(Case(lead=lead, n=n, D=D, dtype="bfloat16", op=op, grad_x_post=True))
    table = TABLES[op]
    for stage in bundle.stages():
        named = {k: bundle.tensors[k] for k in STAGE_IO[stage]["inputs"] if k != table.anchor}
        got = table.check(bundle.tensors[table.anchor], **named)
        assert got == (lead, n, None if op == "sinkhorn" else D), stage
