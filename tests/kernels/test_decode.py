"""The decode boundary (kernels/decode.py: post(l), the delayed or plain pre(l+1) and sinkhorn of its h_res
in one launch) against the float64 golden by the accuracy rule: x(l+1) against golden/seam.py, the next
pre's outputs and P against the goldens on the x(l+1) the kernel stored (its inputs, as the rule says).
CPU through the interpreter; the realistic shape and the CUDA-graph replay on a GPU."""

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from mhc_ops.golden import judge
from mhc_ops.golden.fixtures import make_inputs
from mhc_ops.golden.mhc_pre import mhc_pre_delayed_forward, mhc_pre_forward
from mhc_ops.golden.seam import BOUNDARY_OUTPUTS, boundary_forward
from mhc_ops.golden.sinkhorn import sinkhorn_forward
from mhc_ops.kernels import _arrive, decode
from mhc_ops.kernels._launch import op_body
from mhc_ops.kernels.decode import boundary_decode
from tests.cases import SEAM_CASES
from tests.helpers import KERNEL_DEVICE, delayed_inputs, nan_filled_outputs

pytestmark = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
POST = ("x", "h_res", "h_out", "h_post")
PRE = ("h_pre_prev", "phi", "alpha", "bias", "gamma")
DELAYED = pytest.mark.parametrize("delayed", [True, False], ids=["delayed", "plain"])
ITERS = 5


def _inputs(case, delayed: bool, seed_shift: int = 0) -> dict:
    case = dataclasses.replace(case, seed=case.seed + seed_shift)
    pre = delayed_inputs(case, first=not delayed, device=KERNEL_DEVICE)  # h_pre_prev None: the plain pre
    post = make_inputs(dataclasses.replace(case, op="mhc_post"), KERNEL_DEVICE)
    return {k: post[k] for k in POST} | {k: pre[k] for k in PRE}


def _up(v):
    return v.double() if isinstance(v, torch.Tensor) else v


def _next(out, t, case, cd) -> dict:
    """The next pre's outputs and sinkhorn of its h_res on x(l+1) as given, in compute dtype cd."""
    c = _up if cd == torch.float64 else (lambda v: v)
    args = [c(out), *(c(t[k]) for k in ("phi", "alpha", "bias", "gamma"))]
    kw = dict(norm_eps=case.norm_eps, hc_eps=case.hc_eps, compute_dtype=cd)
    if t["h_pre_prev"] is not None:
        h_in, hp, hr, h_pre, inv_rms, h_mix = mhc_pre_delayed_forward(*args, c(t["h_pre_prev"]), **kw)
    else:
        h_in, hp, hr, inv_rms, h_mix, h_pre = mhc_pre_forward(*args, **kw)
    P = sinkhorn_forward(hr, ITERS, 1e-6, compute_dtype=cd)
    return dict(zip(BOUNDARY_OUTPUTS[1:], (h_in, hp, hr, inv_rms, h_mix, h_pre, P)))


def _run(case, t, **launch) -> dict:
    with nan_filled_outputs():
        return boundary_decode(**{k: t[k] for k in (*POST, *PRE)}, iters=ITERS, eps=1e-6, norm_eps=case.norm_eps,
                               hc_eps=case.hc_eps, **launch)  # fmt: skip


def _verdicts(case, t, got) -> list:
    args = [t[k] for k in (*POST, *PRE)]
    kw = dict(iters=ITERS, norm_eps=case.norm_eps, hc_eps=case.hc_eps)
    out64 = boundary_forward(*map(_up, args), compute_dtype=torch.float64, store_dtype=t["x"].dtype, **kw)[0]
    out32 = boundary_forward(*args, **kw)[0]
    verdicts = [judge("out", got["out"], out64, out32)]
    p64, p32 = _next(got["out"], t, case, torch.float64), _next(got["out"], t, case, torch.float32)
    return verdicts + [judge(k, got[k], p64[k], p32[k]) for k in BOUNDARY_OUTPUTS[1:]]


@DELAYED
@pytest.mark.parametrize("splits", [1, 3], ids=["one-split", "three-splits"])
@pytest.mark.parametrize("case", SEAM_CASES, ids=str)
def test_decode_boundary(case, delayed, splits):
    t = _inputs(case, delayed)
    got = _run(case, t, block_d=16, apply_block_d=16, splits=splits)
    verdicts = _verdicts(case, t, got)
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))
    assert got["out"].dtype == got["h_in"].dtype == t["x"].dtype
    assert got["next_P"].shape == got["next_h_res"].shape == (*case.lead, case.n, case.n)


@pytest.mark.parametrize(("T", "n", "expected"), [(1, 1, 1), (1, 4, 1), (1, 6, 1), (1, 8, 16), (2, 4, 16), (64, 4, 16)])
def test_auto_block_t(T, n, expected):
    """block_t=None: one-token blocks for a single token up to SINGLE_TOKEN_MAX_N streams (measured faster
    there), 16 elsewhere."""
    assert decode.auto_block_t(T, n) == expected


@DELAYED
@pytest.mark.parametrize("block_t", [1, 4])
@pytest.mark.parametrize("case", SEAM_CASES, ids=str)
def test_decode_small_token_blocks(case, delayed, block_t):
    """Token blocks below tl.dot's 16 rows: the projection's products summed on the CUDA cores after the
    column loop (seam.seam_columns), partial blocks (T not a multiple of block_t), every split's partials
    loaded in one round; right by the rule."""
    t = _inputs(case, delayed)
    got = _run(case, t, block_t=block_t, block_d=16, apply_block_d=16, splits=3, unroll=4)
    verdicts = _verdicts(case, t, got)
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))


@pytest.mark.parametrize("block_t", [1, 16])
@pytest.mark.parametrize("case", SEAM_CASES, ids=str)
def test_decode_reduces_the_partials_over_several_rounds(case, block_t):
    """The last program's reduction with fewer partials a step than splits (5 splits, 2 a step: three rounds,
    the last one half past the end): right by the rule."""
    t = _inputs(case, True, seed_shift=5)
    got = _run(case, t, block_t=block_t, block_d=16, splits=5, unroll=2)
    verdicts = _verdicts(case, t, got)
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))


# "wait" spins until the last program arrives: every program resident at once, never in the interpreter
COLLAPSES = [pytest.param(c, marks=pytest.mark.skipif(KERNEL_DEVICE != "cuda", reason="spins: GPU only"))
             if c == "wait" else c for c in decode.COLLAPSES]  # fmt: skip


@pytest.mark.parametrize("collapse", COLLAPSES)
@pytest.mark.parametrize("block_t", [16, 1])
@pytest.mark.parametrize("case", SEAM_CASES, ids=str)
def test_decode_plain_collapse_each_way(case, block_t, collapse):
    """The plain pre's h_in formed by the last program over all D ("last"), by every program over its own
    columns once the last has stored h_pre ("wait"), against _apply_kernel's launch (apply_block_d columns a
    program, the last one past D): right by the rule, and the same tensors as the launch's, bit for bit (no
    FMA contraction in either kernel; each h_in element summed in stream order)."""
    t = _inputs(case, False)
    launch = dict(block_t=block_t, block_d=16, apply_block_d=16, splits=3, unroll=4)
    got = _run(case, t, collapse=collapse, **launch)
    verdicts = _verdicts(case, t, got)
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))
    assert not any(c.any() for c in _arrive._COUNTERS.values())
    launched = _run(case, t, collapse="launch", **launch)
    for k in BOUNDARY_OUTPUTS:
        assert torch.equal(got[k], launched[k]), k


def test_auto_collapse(monkeypatch):
    """collapse=None: "wait" where the grid fits the SMs at one program each, on a GPU; "launch" past them,
    always under the interpreter, and wherever MHC_OPS_DECODE_WAIT=0 turned waiting off."""
    device = torch.device(KERNEL_DEVICE)
    sms = decode.sm_count(device)
    assert decode.auto_collapse(1, device) == decode.auto_collapse(sms, device) == (
        "wait" if KERNEL_DEVICE == "cuda" else "launch")  # fmt: skip
    assert decode.auto_collapse(sms + 1, device) == "launch"
    monkeypatch.setattr(decode, "WAIT_ALLOWED", False)  # MHC_OPS_DECODE_WAIT=0
    assert decode.auto_collapse(1, device) == "launch"


def test_decode_wait_turned_off_by_the_environment():
    """MHC_OPS_DECODE_WAIT=0, read when kernels/decode.py is imported, turns WAIT_ALLOWED off (1 or unset: on)."""
    code = "from mhc_ops.kernels import decode; print(decode.WAIT_ALLOWED)"
    for value, expected in (("0", "False"), ("1", "True")):
        env = {**os.environ, "MHC_OPS_DECODE_WAIT": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected, out.stderr


def test_decode_collapse_is_refused_where_it_cannot_run():
    """collapse= names the argument and what it expects: an unknown value anywhere; "wait" where the grid's
    programs (200 one-token blocks x 2 splits) exceed the SMs, or under the interpreter."""
    case = dataclasses.replace(SEAM_CASES[2], lead=(200,))
    t = _inputs(case, False)
    with pytest.raises(ValueError, match="collapse: expected one of launch, last, wait or None, got 'spin'"):
        _run(case, t, collapse="spin")
    with pytest.raises(ValueError, match='collapse: "wait" needs at least 400 SMs'):
        _run(case, t, collapse="wait", block_t=1, block_d=16, splits=2)


SINKHORN_TILES = {"tokens-last": {"sink_order": "tokens-last"}, "tokens-first": {"sink_order": "tokens-first"},
                  "token-major": {"sink_order": "token-major"}, "own-launch": {"sinkhorn_launch": True}}  # fmt: skip


@pytest.mark.parametrize("sinkhorn", SINKHORN_TILES.values(), ids=SINKHORN_TILES.keys())
@pytest.mark.parametrize("case", SEAM_CASES, ids=str)
def test_decode_sinkhorn_tiles(case, sinkhorn):
    """Every Sinkhorn tile of the last program (one matrix a thread with the tokens last or first: the one the
    installed Triton lays so is the default to n = 4; token-major), whichever n, and Sinkhorn in a launch of its
    own: each right by the rule (their sums may round in different orders on a GPU)."""
    t = _inputs(case, True)
    got = _run(case, t, block_d=16, splits=2, **sinkhorn)
    verdicts = _verdicts(case, t, got)
    assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))


def test_decode_rejects_an_unknown_sink_order():
    t = _inputs(SEAM_CASES[0], True)
    with pytest.raises(ValueError, match="sink_order: expected one of token-major, tokens-last, tokens-first"):
        _run(SEAM_CASES[0], t, sink_order="tokens")


@DELAYED
def test_decode_twice_resets_the_counters(delayed):
    """Two launches in a row (what CUDA-graph replays do), fresh inputs each: both right, every arrival
    counter back at 0 after each, and a repeat on the same inputs bitwise the same (deterministic)."""
    case = SEAM_CASES[3]  # 19 tokens: two token blocks of 16
    firsts = []
    for shift in (0, 1):
        t = _inputs(case, delayed, seed_shift=shift)
        got = _run(case, t, block_d=16, apply_block_d=16, splits=2)
        verdicts = _verdicts(case, t, got)
        assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))
        assert not any(c.any() for c in _arrive._COUNTERS.values())
        firsts.append((t, got))
    t, got = firsts[0]
    again = _run(case, t, block_d=16, apply_block_d=16, splits=2)
    assert all(torch.equal(got[k], again[k]) for k in BOUNDARY_OUTPUTS)


@DELAYED
def test_decode_zero_tokens(delayed):
    case = SEAM_CASES[2]
    t = _inputs(case, delayed)
    t = {k: v[:0] if k in (*POST, "h_pre_prev") and v is not None else v for k, v in t.items()}
    got = boundary_decode(**{k: t[k] for k in (*POST, *PRE)})
    assert got["out"].shape == t["x"].shape and got["h_in"].shape == (0, case.D) and got["next_P"].shape == (0, 3, 3)


def test_decode_rejects_bad_iters():
    t = _inputs(SEAM_CASES[1], True)
    with pytest.raises(ValueError, match="iters"):
        boundary_decode(**{k: t[k] for k in (*POST, *PRE)}, iters=0)


@pytest.mark.skipif(KERNEL_DEVICE != "cuda", reason="a realistic shape in a CUDA graph: GPU only")
@DELAYED
@pytest.mark.parametrize("T", [1, 64])
def test_decode_graph_replays_realistic_shape(delayed, T):
    """D = 4096, n = 4, bf16, the default tiles: captured once, replayed on new inputs copied in; every
    replay judged by the rule (the counters reset in the kernel, no memset in the graph)."""
    case = dataclasses.replace(SEAM_CASES[0], lead=(T,), D=4096, seed=7)
    t = _inputs(case, delayed)
    static = {k: v.clone() if v is not None else None for k, v in t.items()}

    def call():
        return boundary_decode(**{k: static[k] for k in (*POST, *PRE)}, iters=ITERS, eps=1e-6)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            got = call()
    torch.cuda.current_stream().wait_stream(stream)
    for shift in (1, 2, 3):
        fresh = _inputs(case, delayed, seed_shift=shift)
        for k, v in fresh.items():
            if v is not None:
                static[k].copy_(v)
        graph.replay()
        torch.cuda.synchronize()
        verdicts = _verdicts(case, fresh, got)
        assert all(v.ok for v in verdicts), "\n".join(map(str, verdicts))


def test_arrival_counters_per_stream_and_fresh_in_an_op_body():
    """One cached buffer per (device, stream), all 0; grown when a launch needs more blocks (the old one
    kept alive for graphs that hold it); inside a registered op's body a fresh zeroed tensor."""
    device = torch.device(KERNEL_DEVICE or "cpu")
    a = _arrive.arrival_counters(device, 3)
    assert a.dtype == torch.int32 and a.numel() >= 3 and not a.any()
    assert _arrive.arrival_counters(device, 3) is a
    grown = _arrive.arrival_counters(device, a.numel() + 1)
    assert grown is not a and grown.numel() > a.numel() and a in _arrive._RETIRED
    with op_body(traced=False):
        fresh = _arrive.arrival_counters(device, 5)
    assert fresh is not grown and fresh.numel() == 5 and not fresh.any()
    if device.type == "cuda":
        with torch.cuda.stream(torch.cuda.Stream()):
            other = _arrive.arrival_counters(device, 3)
        assert other is not grown and not other.any()
    flags = _arrive.signal_flags(device, 3)  # collapse "wait"'s: a buffer of their own, any value
    assert flags.dtype == torch.int32 and flags.numel() >= 3 and _arrive.signal_flags(device, 3) is flags
    assert flags.data_ptr() != _arrive.arrival_counters(device, 3).data_ptr()


def test_decode_timeline_is_refused_where_it_cannot_run():
    """timeline= (the kernel's PTX timers) names the argument and what it needs: too small a buffer
    anywhere, and any buffer under the interpreter, which runs no PTX."""
    t = _inputs(SEAM_CASES[1], True)
    with pytest.raises(ValueError, match="timeline: expected an int64 tensor"):
        _run(SEAM_CASES[1], t, timeline=torch.zeros(1, dtype=torch.int64, device=KERNEL_DEVICE))
