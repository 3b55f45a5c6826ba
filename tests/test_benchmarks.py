"""The benchmark module: floor arithmetic by hand, and one CPU run end to end at a tiny shape (Triton
kernels through the interpreter) with mutants injected into the impl table. Nothing here is a speed
target: the CPU run only checks that rows are produced, judged and written."""

from __future__ import annotations

import json

import pytest
import torch

import mhc_ops
from benchmarks import run
from benchmarks.shapes import DEFAULT_SHAPES, SEQ_LEN, Shape, parse_shapes
from mhc_ops import golden
from mhc_ops.golden.fixtures import make_inputs
from tests.helpers import INTERPRETING

REQUIRED_KEYS = {
    "op", "impl", "T", "n", "D", "ms", "floor_ms", "x_floor", "speedup_vs_compile", "gpu",
    "copy_bw_GBps", "bytes", "ok", "worst_err", "extra_mem_frac_x", "status",
}  # fmt: skip


# ---- floors and shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op, n, D, x_bytes, gxp, expected",
    [
        # n=4, D=7168, bf16: x 2*28672 = 57344, h_in 2*7168 = 14336, side 4*(32 + 16 + 1) = 196.
        ("fwd", 4, 7168, 2, False, 57344 + 14336 + 196),
        ("bwd", 4, 7168, 2, False, 2 * 57344 + 14336 + 196),
        ("bwd", 4, 7168, 2, True, 3 * 57344 + 14336 + 196),
        # n=1, D=1, fp32: x 4, h_in 4, side 4*(2 + 4 + 1) = 28.
        ("fwd", 1, 1, 4, False, 4 + 4 + 28),
        ("bwd", 1, 1, 4, False, 8 + 4 + 28),
        # n=6, D=10, fp16: x 120, h_in 20, side 4*(72 + 24 + 1) = 388.
        ("fwd", 6, 10, 2, False, 120 + 20 + 388),
    ],
)
def test_bytes_per_token(op, n, D, x_bytes, gxp, expected):
    assert run.bytes_per_token(op, n, D, x_bytes, grad_x_post=gxp) == expected


def test_op_bytes_and_floor_at_the_target_shape():
    fwd = run.op_bytes("fwd", 16384, 4, 7168, 2)
    bwd = run.op_bytes("bwd", 16384, 4, 7168, 2)
    assert fwd == 16384 * 71876 == 1_177_616_384
    assert bwd == 16384 * 129220 == 2_117_140_480
    # 3000 GB/s = 3e12 bytes/s: 1.1776e9 B -> 0.39254 ms, 2.1171e9 B -> 0.70571 ms.
    assert run.floor_ms(fwd, 3000.0) == pytest.approx(0.392538795, rel=1e-9)
    assert run.floor_ms(bwd, 3000.0) == pytest.approx(0.705713493, rel=1e-9)
    assert run.floor_ms(3_000_000, 3000.0) == pytest.approx(1e-3)


def test_bytes_per_token_rejects_unknown_op():
    with pytest.raises(ValueError, match="op"):
        run.bytes_per_token("post", 4, 8, 2)


@pytest.mark.parametrize(
    "name, tag",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA GeForce RTX 4090", "nvidia-geforce-rtx-4090"),
        ("cpu", "cpu"),
    ],
)
def test_gpu_tag(name, tag):
    assert run.gpu_tag(name) == tag


def test_shapes():
    assert len(DEFAULT_SHAPES) == 8 and Shape(16384, 4, 7168) in DEFAULT_SHAPES
    assert Shape(16384, 4, 7168).lead == (16384 // SEQ_LEN, SEQ_LEN)
    assert Shape(32, 4, 64).lead == (1, 32)
    assert parse_shapes("16384x4x7168, tiny") == [Shape(16384, 4, 7168), Shape(32, 4, 64)]
    assert parse_shapes("default") == list(DEFAULT_SHAPES)
    for bad in ("16384x4", "0x4x8", "huge", ""):
        with pytest.raises(ValueError):
            parse_shapes(bad)


# ---- end to end on CPU ----------------------------------------------------------------------------


def _mutant(op: str, wrong: str, factor: float) -> run.Factory:
    """The fp32 golden with one output scaled by `factor`: plausible numbers, wrong beyond the rule."""

    def call(t):
        outs = dict(zip(run.OP_OUTPUTS[op], run.GOLDEN[op](*(t[k] for k in run.OP_ARGS[op]))))
        outs[wrong] = outs[wrong] * factor
        return tuple(outs.values())

    return lambda: call


def _not_implemented() -> run.OpFn:
    def call(t):
        raise NotImplementedError("plan 'future' is not there yet")

    return call


def _broken_factory() -> run.OpFn:
    raise RuntimeError("the factory itself fails")


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    if not INTERPRETING:
        pytest.skip("the CPU run of the Triton impls needs TRITON_INTERPRET=1")
    out = tmp_path_factory.mktemp("bench")
    impls = {op: dict(table) for op, table in run.IMPLS.items()}
    impls["fwd"]["mhc_ops.mutant"] = _mutant("fwd", "h_mix", 1 + 1e-3)
    impls["bwd"]["mhc_ops.mutant"] = _mutant("bwd", "dphi", 1 + 1e-3)
    # The Triton backward as the op runs it today (no plan argument), so a triton bwd row is always timed.
    impls["bwd"]["mhc_ops.default"] = lambda: run.positional(mhc_ops.mhc_pre_backward, "bwd", backend="triton")
    impls["bwd"]["mhc_ops.future"] = _not_implemented
    impls["bwd"]["mhc_ops.broken"] = _broken_factory
    rows = run.main(["--device", "cpu", "--quick", "--shapes", "tiny", "--out", str(out)], impls=impls)
    return rows, out, impls


def _row(rows, op, impl):
    (row,) = [r for r in rows if r["op"] == op and r["impl"] == impl]
    return row


def test_every_impl_gives_one_row_with_the_required_keys(cpu_run):
    rows, _, impls = cpu_run
    assert sorted((r["op"], r["impl"]) for r in rows) == sorted((op, name) for op in impls for name in impls[op])
    for row in rows:
        assert REQUIRED_KEYS <= row.keys(), REQUIRED_KEYS - row.keys()
        assert (row["T"], row["n"], row["D"], row["gpu"]) == (32, 4, 64, "cpu")
        assert row["bytes"] == run.op_bytes(row["op"], 32, 4, 64, 2)
        assert row["copy_bw_GBps"] > 0 and row["floor_ms"] > 0


def test_json_lines_match_the_rows(cpu_run):
    rows, out, _ = cpu_run
    (path,) = out.glob("cpu-*.jsonl")
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(written) == len(rows)
    for row, obj in zip(rows, written):
        assert REQUIRED_KEYS <= obj.keys()
        assert (obj["op"], obj["impl"], obj["status"], obj["ms"]) == (row["op"], row["impl"], row["status"], row["ms"])
    assert {p.name.rsplit("-", 1)[1] for p in out.glob("*.png")} == {"fwd.png", "bwd.png", "speedup.png"}


def test_passing_rows_are_timed_against_the_floor_and_compile(cpu_run):
    rows, _, _ = cpu_run
    for op, impl in [("fwd", "mhc_ops"), ("fwd", "golden.eager"), ("fwd", "golden.compile"),
                     ("bwd", "mhc_ops.default"), ("bwd", "golden.eager"), ("bwd", "golden.compile")]:  # fmt: skip
        row = _row(rows, op, impl)
        assert row["status"] == "ok" and row["ok"] is True, row
        assert row["ms"] > 0
        assert row["x_floor"] == pytest.approx(row["ms"] / row["floor_ms"])
        compiled = _row(rows, op, "golden.compile")["ms"]
        assert row["speedup_vs_compile"] == pytest.approx(compiled / row["ms"])
        assert row["worst_err"] <= row["worst_bound"]
        assert row["extra_mem_frac_x"] is None  # measured on CUDA only


@pytest.mark.parametrize("op, wrong", [("fwd", "h_mix"), ("bwd", "dphi")])
def test_a_wrong_impl_is_a_failure_not_a_speed(cpu_run, op, wrong):
    rows, _, _ = cpu_run
    row = _row(rows, op, "mhc_ops.mutant")
    assert row["status"] == "FAIL" and row["ok"] is False
    assert row["worst_output"] == wrong and row["worst_err"] > row["worst_bound"]
    assert row["ms"] is None and row["x_floor"] is None and row["speedup_vs_compile"] is None
    line = next(line for line in run.format_table(rows).splitlines() if f"| {op} | mhc_ops.mutant |" in line)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[run.TABLE_COLUMNS.index("ms")] == "-"
    assert cells[run.TABLE_COLUMNS.index("accuracy")].startswith(f"FAIL ({wrong} ")


def test_missing_and_broken_impls_are_reported_not_raised(cpu_run):
    rows, _, _ = cpu_run
    future = _row(rows, "bwd", "mhc_ops.future")
    assert future["status"] == "unavailable" and future["ms"] is None and "NotImplementedError" in future["reason"]
    broken = _row(rows, "bwd", "mhc_ops.broken")
    assert broken["status"] == "error" and broken["ok"] is False and broken["ms"] is None
    # The plans of the real table: timed when the op takes `plan`, unavailable until then; never a failure.
    for impl in ("mhc_ops.staged", "mhc_ops.fused"):
        assert _row(rows, "bwd", impl)["status"] in ("ok", "unavailable")


def test_judge_outputs_fails_a_missing_or_misshapen_output():
    case = golden.Case(lead=(2, 3), n=2, D=5, dtype="float32")
    t = make_inputs(case)
    args = {k: t[k] for k in run.OP_ARGS["fwd"]}
    ref64, ref32 = run.references("fwd", args)
    assert all(v.ok for v in run.judge_outputs("fwd", ref32, ref64, ref32))
    short = run.judge_outputs("fwd", ref32[:-1], ref64, ref32)
    assert [v.name for v in short if not v.ok] == ["h_pre"]
    flat = (ref32[0].reshape(-1), *ref32[1:])
    assert [v.name for v in run.judge_outputs("fwd", flat, ref64, ref32) if not v.ok] == ["h_in"]
    nan = (ref32[0], ref32[1] * torch.nan, *ref32[2:])
    assert [v.name for v in run.judge_outputs("fwd", nan, ref64, ref32) if not v.ok] == ["h_post"]
