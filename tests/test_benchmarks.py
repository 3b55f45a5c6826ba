"""The benchmark module: floor arithmetic by hand, and one CPU run end to end at a tiny shape (Triton
kernels through the interpreter) with mutants injected into the impl table, host rows included.
Nothing here is a speed target: the CPU run only checks that rows are produced, judged and written."""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import subprocess
import sys
import types
from collections import namedtuple

import pytest
import torch

import mhc_ops
from benchmarks import compile_check, fwd_splits, host, host_profile, kernel_breakdown, plots, run, weight_split
from benchmarks.floors import bytes_per_token, floor_ms, op_bytes
from benchmarks.goldens import GOLDEN, OP_ARGS, OP_OUTPUTS, OpFn, judge_outputs, references
from benchmarks.impls import COMPILE_IMPL, COMPILE_OPTIONS, IMPLS, PARTS, PARTS_IMPL, Factory, positional
from benchmarks.report import TABLE_COLUMNS, format_table, gpu_tag
from benchmarks.shapes import DEFAULT_SHAPES, SEQ_LEN, SHAPE_SETS, Shape, parse_shapes
from mhc_ops import golden
from mhc_ops.golden.fixtures import make_inputs
from mhc_ops.kernels import fwd
from tests.helpers import INTERPRETING, KERNEL_DEVICE

REQUIRED_KEYS = {
    "op", "impl", "T", "n", "D", "ms", "floor_ms", "x_floor", "speedup_vs_compile", "gpu",
    "copy_bw_GBps", "bytes", "ok", "worst_err", "extra_mem_frac_x", "status", "parts_ms", "vs_parts",
}  # fmt: skip
HOST_KEYS = {"op", "call", "T", "n", "D", "host_us", "host_sync_us", "gpu_us", "gpu_method", "status", "gpu"}


# ---- floors and shapes ----------------------------------------------------------------------------

# n=4, D=7168, bf16 (s = 2, nD = 28672): the pre floors of docs/perf.md, and the parts of the composites.
PRE_FWD = 57344 + 14336 + 196  # read x, write h_in, side 4*(32 + 16 + 1)
PRE_BWD = 2 * 57344 + 14336 + 196
PRE_BWD_GXP = 3 * 57344 + 14336 + 196
SINKHORN_FWD = 4 * 2 * 16  # read logits, write P: fp32 [4, 4]
SINKHORN_BWD = 4 * 3 * 16  # read logits, dP; write dlogits
POST_FWD = 2 * 57344 + 14336 + 4 * (16 + 4)  # read x, write out; read h_out; read h_res, h_post
POST_BWD = 3 * 57344 + 2 * 14336 + 4 * (32 + 8)  # read dout, x, write dx; read h_out, write dh_out; 4 fp32 sides


@pytest.mark.parametrize(
    "op, n, D, x_bytes, gxp, expected",
    [
        ("fwd", 4, 7168, 2, False, PRE_FWD),
        ("bwd", 4, 7168, 2, False, PRE_BWD),
        ("bwd", 4, 7168, 2, True, PRE_BWD_GXP),
        ("bwd_gxp", 4, 7168, 2, False, PRE_BWD_GXP),
        ("sinkhorn_fwd", 4, 7168, 2, False, 128),
        ("sinkhorn_bwd", 4, 7168, 2, False, 192),
        ("post_fwd", 4, 7168, 2, False, 129104),
        ("post_bwd", 4, 7168, 2, False, 200864),
        ("step", 4, 7168, 2, False, PRE_FWD + PRE_BWD),
        ("layer_fwd", 4, 7168, 2, False, PRE_FWD + SINKHORN_FWD + POST_FWD),
        ("layer_bwd", 4, 7168, 2, False, PRE_BWD_GXP + SINKHORN_BWD + POST_BWD),
        ("layer_step", 4, 7168, 2, False, 201108 + 387620),
        # n=1, D=1, fp32: x 4, h_in 4, side 4*(2 + 4 + 1) = 28; post 2*4 + 4 + 4*2, post bwd 3*4 + 2*4 + 4*4.
        ("fwd", 1, 1, 4, False, 4 + 4 + 28),
        ("bwd", 1, 1, 4, False, 8 + 4 + 28),
        ("post_fwd", 1, 1, 4, False, 20),
        ("post_bwd", 1, 1, 4, False, 36),
        # n=6, D=10, fp16: x 120, h_in 20, side 4*(72 + 24 + 1) = 388; sinkhorn 4*2*36 and 4*3*36 whatever x is.
        ("fwd", 6, 10, 2, False, 120 + 20 + 388),
        ("sinkhorn_fwd", 6, 10, 2, False, 288),
        ("sinkhorn_bwd", 6, 10, 4, False, 432),
    ],
)
def test_bytes_per_token(op, n, D, x_bytes, gxp, expected):
    assert bytes_per_token(op, n, D, x_bytes, grad_x_post=gxp) == expected


def test_op_bytes_and_floor_at_the_target_shape():
    fwd = op_bytes("fwd", 16384, 4, 7168, 2)
    bwd = op_bytes("bwd", 16384, 4, 7168, 2)
    assert fwd == 16384 * 71876 == 1_177_616_384
    assert bwd == 16384 * 129220 == 2_117_140_480
    # 3000 GB/s = 3e12 bytes/s: 1.1776e9 B -> 0.39254 ms, 2.1171e9 B -> 0.70571 ms.
    assert floor_ms(fwd, 3000.0) == pytest.approx(0.392538795, rel=1e-9)
    assert floor_ms(bwd, 3000.0) == pytest.approx(0.705713493, rel=1e-9)
    assert floor_ms(3_000_000, 3000.0) == pytest.approx(1e-3)
    # post at the target: 16384 * 129104 B = 2.115 GB -> 0.70508 ms; the step is the sum of its parts.
    post = op_bytes("post_fwd", 16384, 4, 7168, 2)
    assert post == 2_115_239_936 and floor_ms(post, 3000.0) == pytest.approx(0.705079979, rel=1e-9)
    assert op_bytes("step", 16384, 4, 7168, 2) == fwd + bwd


# docs/perf.md's byte tables, at its target shape (T = 16384, n = 4, D = 7168, bf16 x, 3.0 TB/s): row label
# -> (op, grad_x_post). Its figures are the floor function's, not a second count.
PERF_DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "perf.md"
PERF_PER_TOKEN = {"pre forward": ("fwd", False), "pre backward": ("bwd", False),
                  "pre backward with grad_x_post": ("bwd", True)}  # fmt: skip
PERF_TOTALS = {"forward": ("fwd", False), "backward": ("bwd", False), "backward with grad_x_post": ("bwd", True)}


def _doc_row(text: str, label: str) -> list[str]:
    (row,) = [line for line in text.splitlines() if line.startswith(f"| {label} |")]
    return [cell.strip() for cell in row.strip("|").split("|")]


def _number(cell: str) -> int:
    return int(re.match(r"[*]*([\d ]+)", cell.split("=")[-1].strip()).group(1).replace(" ", ""))


def test_docs_perf_floors_are_the_floor_function():
    text = PERF_DOC.read_text().split("\n## Bytes")[1].split("\n## ")[0]  # its Bytes section
    for label, (op, gxp) in PERF_PER_TOKEN.items():
        assert _number(_doc_row(text, label)[2]) == bytes_per_token(op, 4, 7168, 2, grad_x_post=gxp), label
    for label, (op, gxp) in PERF_TOTALS.items():
        _, total, floor = _doc_row(text, label)
        nbytes = op_bytes(op, 16384, 4, 7168, 2, grad_x_post=gxp)
        assert _number(total) == nbytes, label
        assert floor.strip("*").removesuffix(" ms") == f"{floor_ms(nbytes, 3000.0):.3f}", label


def test_bytes_per_token_rejects_unknown_op():
    with pytest.raises(ValueError, match="op"):
        bytes_per_token("post", 4, 8, 2)


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
    assert gpu_tag(name) == tag


def test_shapes():
    assert (
        len(DEFAULT_SHAPES) == 9 and Shape(16384, 4, 7168) in DEFAULT_SHAPES and Shape(1024, 4, 4096) in DEFAULT_SHAPES
    )
    assert Shape(16384, 4, 7168).lead == (16384 // SEQ_LEN, SEQ_LEN)
    assert Shape(32, 4, 64).lead == (1, 32)
    assert Shape(1, 4, 4096).lead == (1, 1)
    assert parse_shapes("16384x4x7168, tiny") == [Shape(16384, 4, 7168), Shape(32, 4, 64)]
    assert parse_shapes("default") == list(DEFAULT_SHAPES)
    assert parse_shapes("host") == [Shape(1, 4, 4096), Shape(4096, 4, 4096)] == list(SHAPE_SETS["host"])
    for bad in ("16384x4", "0x4x8", "huge", ""):
        with pytest.raises(ValueError):
            parse_shapes(bad)


def _timed(op, impl, ms, T=8, n=4, D=16):
    return {"op": op, "impl": impl, "T": T, "n": n, "D": D, "ms": ms}


def test_parts_are_the_sum_of_the_separately_timed_rows():
    # Sinkhorn ran once for (T=8, n=4), at D=32: it counts for the layer at D=16 too.
    rows = [_timed("fwd", "mhc_ops", 1.0), _timed("bwd", "mhc_ops.fused", 2.0), _timed("bwd", "mhc_ops.staged", 9.0),
            _timed("bwd_gxp", "mhc_ops.fused", 3.0), _timed("sinkhorn_fwd", "mhc_ops", 0.25, D=32),
            _timed("sinkhorn_bwd", "mhc_ops", 0.5, D=32), _timed("post_fwd", "mhc_ops", 1.5),
            _timed("post_bwd", "mhc_ops", 2.5), _timed("step", "mhc_ops", 4.5), _timed("step", "golden.compile", 5.0),
            _timed("layer_fwd", "mhc_ops", 2.75), _timed("layer_bwd", "mhc_ops", 6.0),
            _timed("layer_step", "mhc_ops", None)]  # fmt: skip
    run.add_parts(rows)
    by = {(r["op"], r["impl"]): r for r in rows}
    assert by["step", "mhc_ops"]["parts_ms"] == 1.0 + 2.0 and by["step", "mhc_ops"]["vs_parts"] == 1.5
    assert by["layer_fwd", "mhc_ops"]["parts_ms"] == 1.0 + 0.25 + 1.5 and by["layer_fwd", "mhc_ops"]["vs_parts"] == 1.0
    assert by["layer_bwd", "mhc_ops"]["parts_ms"] == 3.0 + 0.5 + 2.5 and by["layer_bwd", "mhc_ops"]["vs_parts"] == 1.0
    assert "parts_ms" not in by["step", "golden.compile"]  # only PARTS_IMPL rows are compared with their parts
    assert "parts_ms" not in by["layer_step", "mhc_ops"]  # not timed (e.g. failed): nothing to compare
    del rows[0]  # a part missing: no comparison
    for row in rows:
        row.pop("parts_ms", None)
    run.add_parts(rows)
    assert "parts_ms" not in by["step", "mhc_ops"] and by["layer_bwd", "mhc_ops"]["parts_ms"] == 6.0


def test_sinkhorn_runs_once_per_token_count_and_streams():
    impls = {op: {"golden.eager": IMPLS[op]["golden.eager"]} for op in ("sinkhorn_fwd", "post_fwd")}
    env = run.run_env(torch.device("cpu"), quick=True)
    written = []
    rows = run.run([Shape(8, 2, 4), Shape(8, 2, 6)], tuple(impls), impls, env, sink=written.append)
    assert [(r["op"], r["D"]) for r in rows] == [("sinkhorn_fwd", 4), ("post_fwd", 4), ("post_fwd", 6)]
    assert all(r["status"] == "ok" for r in rows)
    assert written == [rows[:2], rows[2:]]  # each shape's rows as soon as they are complete
    assert run.run([Shape(8, 2, 4)], tuple(impls), impls, env, time_budget_s=0.0) == []  # spent: nothing starts


def test_host_bwd_and_step_do_not_accumulate_gradients():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    training = host.Training(lambda: (w * w,), (w,), (torch.ones(2),))
    for variant in ("bwd", "step"):
        call = host.make_call(training, variant)
        call()
        call()
        assert torch.equal(w.grad, 2 * w.detach()), variant


@pytest.mark.skipif(KERNEL_DEVICE is None, reason="the Triton kernels need the interpreter or a GPU")
def test_host_profile_tables_every_call_and_profiles_it(capsys):
    assert host_profile.main(["--ops", "sinkhorn", "--shape", "1x2x8", "--top", "3", "--device", KERNEL_DEVICE]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| sinkhorn.")]
    assert [r.split(" | ")[0] for r in rows] == ["| sinkhorn.fwd_nograd", "| sinkhorn.fwd", "| sinkhorn.bwd",
                                                 "| sinkhorn.step"]  # fmt: skip
    assert out.count("## cProfile of sinkhorn.") == 4


@pytest.mark.skipif(KERNEL_DEVICE is None, reason="the Triton kernels need the interpreter or a GPU")
def test_fwd_splits_times_every_split_count_that_passes_the_rule(capsys):
    assert fwd_splits.main(["--shapes", "3x2x40", "--splits", "1,3", "--device", KERNEL_DEVICE, "--quick"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| 3x2x40")]
    assert [r[1].split(" ")[0] for r in rows] == ["1", "3", "auto"]
    assert all(r[-1] == "ok |" and float(r[2]) > 0 for r in rows)


@pytest.mark.skipif(KERNEL_DEVICE is None, reason="the Triton kernels need the interpreter or a GPU")
def test_kernel_breakdown_sweeps_the_post_kernels_tiles(capsys):
    argv = ["--shapes", "3x3x40", "--ops", "post_bwd", "--sweep", "--grid", "block_t=1,2;block_d=16", "--quick"]
    assert kernel_breakdown.main([*argv, "--device", KERNEL_DEVICE]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| 3x3x40")]
    assert [(r[1], r[2]) for r in rows] == [
        ("post_bwd", "default"), ("post_bwd", "block_t=1, block_d=16"), ("post_bwd", "block_t=2, block_d=16")
    ]
    assert all(r[-1] == "ok |" and float(r[3]) > 0 for r in rows)


@pytest.mark.skipif(KERNEL_DEVICE is None, reason="the Triton kernels need the interpreter or a GPU")
def test_kernel_breakdown_rows_every_op_and_checks_the_rule(capsys, monkeypatch):
    monkeypatch.setattr(kernel_breakdown, "SWEEP", {"fwd": {"splits": (1, 2)}, "bwd": {"block_t": (16,)}})
    argv = ["--shapes", "3x2x40", "--sweep", "--quick", "--device", KERNEL_DEVICE]
    assert kernel_breakdown.main(argv) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| 3x2x40")]
    assert [(r[1], r[2]) for r in rows] == [
        ("fwd", "default"), ("fwd", "splits=1"), ("fwd", "splits=2"), ("bwd", "default"), ("bwd", "block_t=16")
    ]
    assert all(r[-1] == "ok |" and float(r[3]) > 0 for r in rows)


def test_kernel_breakdown_grid_names_the_options_to_sweep():
    assert kernel_breakdown.parse_grid("block_t=16,32;splits=None,2") == {"block_t": (16, 32), "splits": (None, 2)}
    assert kernel_breakdown.parse_grid("presplit=False,True") == {"presplit": (False, True)}
    assert kernel_breakdown.configs("bwd", True, {"block_t": (16, 32)}) == [{}, {"block_t": 16}, {"block_t": 32}]
    with pytest.raises(ValueError, match="name=v1"):
        kernel_breakdown.parse_grid("block_t")


def test_weight_split_rows_both_builders_and_leaves_the_op_as_it_was(capsys):
    assert weight_split.main(["--shapes", "2x2x40", "--quick", "--device", KERNEL_DEVICE]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| 2x2x40")]
    assert [r[1] for r in rows] == ["triton", "torch"]
    assert all(float(r[4]) > 0 and float(r[5].rstrip(" |")) > 0 for r in rows)
    assert fwd.split_weights is weight_split.BUILDERS["triton"]


def test_weight_split_and_host_profile_reject_bad_shapes(capsys):
    for main, argv in ((weight_split.main, ["--shapes", "4x4"]), (host_profile.main, ["--shape", "1x4x64,2x4x64"])):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--device", "cpu"])
        assert exit_.value.code == 2 and "--shape" in capsys.readouterr().err


def test_kernel_breakdown_rejects_an_unknown_op(capsys):
    with pytest.raises(SystemExit) as exit_:
        kernel_breakdown.main(["--ops", "post", "--device", "cpu"])
    assert exit_.value.code == 2 and "--ops" in capsys.readouterr().err


def test_host_profile_without_launches_times_our_python_alone(capsys):
    """--no-launch: every call of the layer and the yardstick op on CPU tensors, its launches counted and none
    run (on any machine: no interpreter, no GPU), each row over ref's; the launch counts are the training
    path's (the weight split cached after the first call). The stack of STACK_BLOCKS layers at two tokens
    under no_grad decodes: the first pre and Sinkhorn, two launches a boundary between blocks (the decode
    kernel, the plain pre's collapse), the last post; with autograd, each layer's three."""
    argv = ["--no-launch", "--ops", "ref,layer,stack", "--shape", "2x4x64", "--calls", "3", "--top", "1"]
    assert host_profile.main(argv) == 0
    out = capsys.readouterr().out
    rows = {r[0]: r[1:] for r in (line.strip("| ").split(" | ") for line in out.splitlines()) if r[0][:4] in ("ref.", "laye", "stac")}
    calls = ("fwd_nograd", "fwd", "bwd", "step")
    assert list(rows) == [f"{op}.{c}" for op in ("ref", "layer", "stack") for c in calls], out
    blocks = host.STACK_BLOCKS
    decode = 2 + 2 * (blocks - 1) + 1
    assert [int(rows[k][0]) for k in rows] == [0, 0, 0, 0, 3, 3, 5, 8, decode, 3 * blocks, 5 * blocks, 8 * blocks], out
    assert all(float(us) > 0 and float(over) > 0 for us, over in (v[1:] for v in rows.values())), out
    assert out.count("## cProfile of ") == 12


def test_host_profile_rejects_an_unknown_op(capsys):
    with pytest.raises(SystemExit) as exit_:
        host_profile.main(["--ops", "nope", "--device", "cpu"])
    assert exit_.value.code == 2 and "--ops" in capsys.readouterr().err


# ---- end to end on CPU ----------------------------------------------------------------------------


def _mutant(op: str, wrong: str, factor: float, calls: dict) -> Factory:
    """The fp32 golden with one output scaled by `factor`: plausible numbers, wrong beyond the rule.
    calls[op] counts its calls: a failing row is never timed, so it is called once."""

    def call(t):
        calls[op] = calls.get(op, 0) + 1
        outs = dict(zip(OP_OUTPUTS[op], GOLDEN[op](*(t[k] for k in OP_ARGS[op]))))
        outs[wrong] = outs[wrong] * factor
        return tuple(outs.values())

    return lambda _args: call


def _not_implemented(_args) -> OpFn:
    def call(t):
        raise NotImplementedError("plan 'future' is not there yet")

    return call


def _broken_factory(_args) -> OpFn:
    raise RuntimeError("the factory itself fails")


def _broken_setup(shape, device) -> host.Training:
    raise RuntimeError("this op's setup fails")


# (op, the output made wrong, by what factor): fp32-grade outputs by 1e-3; the layer's gradients are
# held only to bf16 grade (h_in, dh_out and post's dx are rounded to x's dtype on the way), so by 1e-2.
MUTANTS = [
    ("fwd", "h_mix", 1 + 1e-3),
    ("bwd", "dphi", 1 + 1e-3),
    ("sinkhorn_bwd", "dlogits", 1 + 1e-3),
    ("post_bwd", "dh_res", 1 + 1e-3),
    ("step", "dalpha", 1 + 1e-3),
    ("layer_bwd", "dalpha", 1 + 1e-2),
]
HOST_ROWS_AT = Shape(1, 4, 64)
# The fixture's run draws every figure, each from one op's rows: all the panels would take about ten
# more seconds on two cores.
PLOTTED_OPS = ("fwd", "bwd_gxp", "sinkhorn_bwd", "post_fwd", "step", "layer_step", "host")


def _plot_fewer_panels(write_plots):
    return lambda rows, out, stem: write_plots([r for r in rows if r["op"] in PLOTTED_OPS], out, stem)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    if not INTERPRETING:
        pytest.skip("the CPU run of the Triton impls needs TRITON_INTERPRET=1")
    out = tmp_path_factory.mktemp("bench")
    impls = {op: dict(table) for op, table in IMPLS.items()}
    calls = {}
    for op, wrong, factor in MUTANTS:
        impls[op]["mhc_ops.mutant"] = _mutant(op, wrong, factor, calls)
    # The Triton backward as the op runs it today (no plan argument), so a triton bwd row is always timed.
    impls["bwd"]["mhc_ops.default"] = lambda _: positional(mhc_ops.mhc_pre_backward, "bwd", backend="triton")
    impls["bwd"]["mhc_ops.future"] = _not_implemented
    impls["bwd"]["mhc_ops.broken"] = _broken_factory
    impls["layer_bwd"]["mhc_ops.broken"] = _broken_factory
    host_ops = dict(host.OPS) | {"broken": _broken_setup}
    argv = ["--device", "cpu", "--quick", "--shapes", "tiny", "--host", HOST_ROWS_AT.label, "--out", str(out)]
    # The compile baselines are captured by dynamo (fullgraph: a graph break is still an error) and run
    # eagerly: inductor's C++ compiler would take minutes on two cores.
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(COMPILE_OPTIONS, "backend", "eager")
        mp.setattr(plots, "write_plots", _plot_fewer_panels(plots.write_plots))
        rows = run.main(argv, impls=impls, host_ops=host_ops)
    device_rows = [r for r in rows if r["op"] != "host"]
    host_rows = [r for r in rows if r["op"] == "host"]
    return device_rows, host_rows, out, impls, calls


def _row(rows, op, impl):
    (row,) = [r for r in rows if r["op"] == op and r["impl"] == impl]
    return row


def test_every_impl_gives_one_row_with_the_required_keys(cpu_run):
    rows, _, _, impls, _ = cpu_run
    assert sorted((r["op"], r["impl"]) for r in rows) == sorted((op, name) for op in impls for name in impls[op])
    for row in rows:
        assert REQUIRED_KEYS <= row.keys(), REQUIRED_KEYS - row.keys()
        assert (row["T"], row["n"], row["D"], row["gpu"]) == (32, 4, 64, "cpu")
        assert row["bytes"] == op_bytes(row["op"], 32, 4, 64, 2)
        assert row["copy_bw_GBps"] > 0 and row["floor_ms"] > 0


def test_json_lines_match_the_rows(cpu_run):
    rows, host_rows, out, _, _ = cpu_run
    (path,) = out.glob("cpu-*.jsonl")
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(written) == len(rows) + len(host_rows)
    for row, obj in zip(host_rows + rows, written):  # the host rows are measured and written first
        assert REQUIRED_KEYS | HOST_KEYS <= obj.keys()
        assert (obj["op"], obj["impl"], obj["status"], obj["ms"]) == (row["op"], row["impl"], row["status"], row["ms"])
        assert (obj["call"], obj["host_us"]) == (row["call"], row["host_us"])
    figures = {p.name.rsplit("-", 1)[1] for p in out.glob("*.png")}
    assert figures == {f"{name}.png" for name in plots.FLOOR_FIGURES} | {"speedup.png", "host.png"}


# Every row of the real table: each op's Triton impls, the golden and its compiled baseline.
REAL_ROWS = [(op, impl) for op, table in IMPLS.items() for impl in table if impl not in ("mhc_ops.staged",)]


@pytest.mark.parametrize("op, impl", REAL_ROWS + [("bwd", "mhc_ops.default")])
def test_passing_rows_are_timed_against_the_floor_and_compile(cpu_run, op, impl):
    rows, _, _, _, _ = cpu_run
    row = _row(rows, op, impl)
    assert row["status"] == "ok" and row["ok"] is True, row
    assert row["ms"] > 0
    assert row["x_floor"] == pytest.approx(row["ms"] / row["floor_ms"])
    if COMPILE_IMPL in IMPLS[op]:
        compiled = _row(rows, op, COMPILE_IMPL)["ms"]
        assert row["speedup_vs_compile"] == pytest.approx(compiled / row["ms"])
    else:
        assert row["speedup_vs_compile"] is None
    assert row["worst_err"] <= row["worst_bound"]
    assert row["extra_mem_frac_x"] is None  # measured on CUDA only


@pytest.mark.parametrize("op", PARTS)
def test_composite_rows_are_compared_with_their_parts(cpu_run, op):
    rows, _, _, _, _ = cpu_run
    row = _row(rows, op, PARTS_IMPL)
    parts = sum(_row(rows, part, impl)["ms"] for part, impl in PARTS[op])
    assert row["parts_ms"] == pytest.approx(parts) and row["vs_parts"] == pytest.approx(row["ms"] / parts)
    line = next(line for line in format_table(rows).splitlines() if f"| {op} | {PARTS_IMPL} |" in line)
    assert line.split("|")[1 + TABLE_COLUMNS.index("vs_parts")].strip() == format(row["vs_parts"], ".3g")


@pytest.mark.parametrize("op, wrong", [m[:2] for m in MUTANTS])
def test_a_wrong_impl_is_a_failure_not_a_speed(cpu_run, op, wrong):
    rows, _, _, _, calls = cpu_run
    row = _row(rows, op, "mhc_ops.mutant")
    assert row["status"] == "FAIL" and row["ok"] is False
    assert row["worst_output"] == wrong and row["worst_err"] > row["worst_bound"]
    assert row["ms"] is None and row["x_floor"] is None and row["speedup_vs_compile"] is None
    assert calls[op] == 1  # judged on its first call, never timed
    line = next(line for line in format_table(rows).splitlines() if f"| {op} | mhc_ops.mutant |" in line)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[TABLE_COLUMNS.index("ms")] == "-"
    assert cells[TABLE_COLUMNS.index("accuracy")].startswith(f"FAIL ({wrong} ")


def test_missing_and_broken_impls_are_reported_not_raised(cpu_run):
    rows, _, _, _, _ = cpu_run
    future = _row(rows, "bwd", "mhc_ops.future")
    assert future["status"] == "unavailable" and future["ms"] is None and "NotImplementedError" in future["reason"]
    for op in ("bwd", "layer_bwd"):
        broken = _row(rows, op, "mhc_ops.broken")
        assert broken["status"] == "error" and broken["ok"] is False and broken["ms"] is None
        assert "the factory itself fails" in broken["reason"]
    # The plans of the real table: timed when the op takes `plan`, unavailable until then; never a failure.
    for impl in ("mhc_ops.staged", "mhc_ops.fused"):
        assert _row(rows, "bwd", impl)["status"] in ("ok", "unavailable")


def test_host_rows_for_every_call_of_every_op(cpu_run):
    _, host_rows, _, _, _ = cpu_run
    calls = [f"{op}.{variant}" for op in (*host.OPS, "broken") for variant in host.VARIANTS]
    assert [r["call"] for r in host_rows] == calls
    for row in host_rows:
        assert HOST_KEYS <= row.keys()
        assert (row["T"], row["n"], row["D"], row["gpu"], row["impl"]) == (1, 4, 64, "cpu", "mhc_ops")
        if row["call"].startswith("broken."):
            assert row["status"] == "error" and row["host_us"] is None and "setup fails" in row["reason"]
            continue
        assert row["status"] == "ok", row
        assert 0 < row["host_us"] <= row["host_sync_us"]
        assert row["gpu_us"] is None and row["target"] is None  # no GPU here: no GPU time, no target
        ref = next(r for r in host_rows if r["call"] == "ref." + row["call"].split(".")[1])
        assert row["host_over_ref"] == pytest.approx(row["host_us"] / ref["host_us"])
    table = host.format_table(host_rows)
    assert all(f"| {call} | 1 |" in table for call in calls)


def test_judge_outputs_fails_a_missing_or_misshapen_output():
    case = golden.Case(lead=(2, 3), n=2, D=5, dtype="float32")
    t = make_inputs(case)
    args = {k: t[k] for k in OP_ARGS["fwd"]}
    ref64, ref32 = references("fwd", args)
    assert all(v.ok for v in judge_outputs("fwd", ref32, ref64, ref32))
    short = judge_outputs("fwd", ref32[:-1], ref64, ref32)
    assert [v.name for v in short if not v.ok] == ["h_pre"]
    flat = (ref32[0].reshape(-1), *ref32[1:])
    assert [v.name for v in judge_outputs("fwd", flat, ref64, ref32) if not v.ok] == ["h_in"]
    nan = (ref32[0], ref32[1] * torch.nan, *ref32[2:])
    assert [v.name for v in judge_outputs("fwd", nan, ref64, ref32) if not v.ok] == ["h_post"]


def test_compile_check_rejects_a_bad_only_pattern(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(SystemExit) as e:
        compile_check.main(["--only", "("])
    assert e.value.code == 2 and "--only: expected a regular expression" in capsys.readouterr().err


def test_compile_check_refuses_the_interpreter(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(SystemExit) as e:
        compile_check.main([])
    assert e.value.code == 2 and "TRITON_INTERPRET=1" in capsys.readouterr().err


def test_compile_check_spec_specialises_as_triton_does():
    """A recorded launch -> what triton.compile takes, as Triton's launcher specialises it: tensors by
    dtype (16-byte aligned: divisibility), ints by range, an int equal to 1 a constexpr, ints divisible by
    16 with divisibility unless do_not_specialize, floats as fp32, bools as u1, None and constexpr
    parameters as constexprs; launch options apart."""
    P = namedtuple("P", "name is_constexpr default do_not_specialize do_not_specialize_on_alignment")
    names = ("x_ptr", "w_ptr", "T", "big", "one", "D", "eps", "flag", "opt")
    params = [P(n, False, None, n == "T", n == "T") for n in names] + [P("BLOCK", True, 16, False, False)]
    jit = types.SimpleNamespace(params=params, fn=types.SimpleNamespace(__module__="m", __name__="_k"))
    x = torch.empty(8, dtype=torch.bfloat16)
    args = (x, torch.empty(8, dtype=torch.float32)[1:], 32, 2**33, 1, 48, 1e-6, True, None)
    name, sig, constexprs, attrs, options = compile_check.spec(jit, args, {"BLOCK": 64, "num_warps": 4,
                                                                          "num_stages": None, "maxnreg": 168})  # fmt: skip
    assert name == "m:_k"
    assert sig == {"x_ptr": "*bf16", "w_ptr": "*fp32", "T": "i32", "big": "i64", "one": "constexpr", "D": "i32",
                   "eps": "fp32", "flag": "u1", "opt": "constexpr", "BLOCK": "constexpr"}  # fmt: skip
    assert constexprs == {"one": 1, "opt": None, "BLOCK": 64} and options == {"num_warps": 4, "maxnreg": 168}
    # x (aligned), big and D divisible by 16; w off by 4 bytes; T (32) not specialised
    assert attrs == {(0,): [["tt.divisibility", 16]], (3,): [["tt.divisibility", 16]], (5,): [["tt.divisibility", 16]]}


@pytest.mark.skipif(KERNEL_DEVICE != "cpu", reason="CPU tensors")
def test_compile_check_records_launches_and_runs_none():
    """Inside recording() a stage's launches are recorded, not run (its outputs keep torch.empty's NaN
    fill), and the patches are gone after it."""
    from mhc_ops.diagnose import prefilled_empty
    from mhc_ops.golden import Case, build
    from mhc_ops.kernels import _launch
    from mhc_ops.stages import STAGES

    inputs = build(Case(lead=(5,), n=4, D=24, seed=1, op="mhc_post"), "cpu").stage_inputs("post_fwd")
    getitem = _launch.LaunchedKernel.__getitem__
    with compile_check.recording() as records, prefilled_empty(math.nan):
        out = STAGES["post_fwd"].run("triton", **inputs)
    assert [r[0].fn.__name__ for r in records] == ["_post_fwd_kernel"]
    assert out["out"].isnan().all()
    assert _launch.LaunchedKernel.__getitem__ is getitem


def test_compile_check_reports_the_root_of_a_chain():
    try:
        try:
            raise TypeError("Return type mismatch: <[32, 64]> and <[64, 32]>")
        except TypeError as inner:
            raise RuntimeError("at 4:9:\n    return tl.load(...)") from inner
    except RuntimeError as outer:
        assert compile_check._innermost(outer) == (
            "at 4:9: TypeError: Return type mismatch: <[32, 64]> and <[64, 32]>"
        )


def test_kernel_info_describes_the_last_compiled_specialisation():
    """kernel_breakdown.kernel_info (its rows and the delayed benchmark's seam rows; GPU-only there):
    registers / spilled registers / shared KB, and wgmma where the products compiled to it."""

    def compiled(regs, ttgir):
        return types.SimpleNamespace(n_regs=regs, n_spills=3, metadata=types.SimpleNamespace(shared=2048),
                                     asm={"ttgir": ttgir})  # fmt: skip

    kernel = types.SimpleNamespace(_compiled={})
    assert kernel_breakdown.kernel_info(kernel) is None
    kernel._compiled["a"] = compiled(128, "tt.dot")
    assert kernel_breakdown.kernel_info(kernel) == "128/3/2"
    kernel._compiled["b"] = compiled(255, "ttng.warp_group_dot")
    assert kernel_breakdown.kernel_info(kernel) == "255/3/2/wgmma"


def test_decode_timeline_phases_from_marks():
    """phases() on marks built from known times: 3 launches (the third is the one reported), 4 programs
    at 2 GHz, program 2 arriving last; every column comes back as built (a median of an even count is
    torch's lower middle)."""
    from benchmarks import decode_timeline as dt

    slots = dt.TIMELINE_SLOTS.value
    marks = torch.zeros(3, 4, slots, dtype=torch.int64)
    for launch in range(3):
        base = 100_000 * launch
        for p in range(4):
            start = base + 100 * p  # ns
            ns = {"start": start, "columns": start + 4000 + 10 * p, "partials stored": start + 4200,
                  "arrived": start + 5000 + 100 * p}  # fmt: skip
            arrived = [0, 1, 3, 2][p]
            if arrived == 3:  # the last program: reduce 1.5 µs, coefficients 0.5, logits 0.2, sinkhorn 4
                ns |= {"reduced": ns["arrived"] + 1500, "coefficients": ns["arrived"] + 2000,
                       "logits loaded": ns["arrived"] + 2200, "sinkhorn": ns["arrived"] + 6200,
                       "end": ns["arrived"] + 6300}  # fmt: skip
            for name, t in ns.items():
                k = dt.TIMELINE_MARKS.index(name)
                marks[launch, p, 2 * k] = t
                marks[launch, p, 2 * k + 1] = 2 * (t - start) + 7 * p  # cycles from a per-SM origin
            marks[launch, p, slots - 1] = arrived
    got = dt.phases(marks)
    end = 200 + 5200 + 6300  # the last program's start, arrival and phases
    want = {"total": (end - 0) / 1e3, "gap": (200_000 - (100_000 + end)) / 1e3, "columns": 4.01, "columns_max": 4.03,
            "last_arrives": 5.6, "atomic": 0.8 + 0.2, "reduce": 1.5, "coefficients": 0.5, "sinkhorn": 4.0}  # fmt: skip
    assert got == pytest.approx(want, rel=1e-9)


def test_decode_timeline_grid_and_cpu_refusal():
    from benchmarks import decode_timeline as dt

    assert dt.parse_grid("block_d=32,64;num_warps=8") == [{"block_d": 32, "num_warps": 8}, {"block_d": 64, "num_warps": 8}]
    assert dt.parse_grid("") == [{}]
    assert dt.parse_grid("sink_order=tokens-first,token-major;unroll=64") == [
        {"sink_order": "tokens-first", "unroll": 64}, {"sink_order": "token-major", "unroll": 64}]
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            dt.main(["--shapes", "1x4x64"])
        assert e.value.code == 2


@pytest.mark.parametrize("argv", [["--iters", "1,x"], ["--iters", "0"], ["--launches", "2"]],
                         ids=["iters-not-int", "iters-0", "launches-2"])  # fmt: skip
def test_decode_timeline_refuses_bad_arguments(argv, capsys):
    """The timeline names the bad argument and exits 2 before anything runs (on any machine)."""
    from benchmarks import decode_timeline as dt

    with pytest.raises(SystemExit) as e:
        dt.main(["--shapes", "1x4x64", *argv])
    assert e.value.code == 2
    assert argv[0] in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--n", "4,x"], ["--n", "9"], ["--reps", "2"]], ids=["not-int", "n-9", "reps-2"])
def test_sinkhorn_chain_refuses_bad_arguments(argv, capsys):
    """The chain probe names the bad argument and exits 2 before anything runs (and exits 2 on a machine
    without a GPU: its marks are PTX timers)."""
    from benchmarks import sinkhorn_chain

    with pytest.raises(SystemExit) as e:
        sinkhorn_chain.main(argv)
    assert e.value.code == 2
    assert argv[0] in capsys.readouterr().err



SASS_MIX = """
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from benchmarks.compile_check import sass_mix

@triton.jit
def with_dot(p, q):
    a = tl.load(p + tl.arange(0, 16)[:, None] * 16 + tl.arange(0, 16)[None, :])
    tl.store(q + tl.arange(0, 16)[:, None] * 16 + tl.arange(0, 16)[None, :], tl.dot(a, a))

@triton.jit
def with_rcp(p, q):
    a = tl.load(p + tl.arange(0, 128))
    tl.store(q + tl.arange(0, 128), 1.0 / tl.sum(a, axis=0) + a)

for k in (with_dot, with_rcp):
    c = triton.compile(ASTSource(k, {"p": "*fp32", "q": "*fp32"}, {}), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": 4})
    print(k.fn.__name__, sass_mix(c.asm["cubin"], 90))
"""


def test_compile_check_sass_mix_counts_the_compiled_code(tmp_path):
    """--sass's instruction mix of two kernels compiled for sm_90: a tl.dot's tensor-core products, and a
    reduction over 4 warps' shuffles and barriers, each where it should be and absent where not."""
    path = tmp_path / "sass_mix.py"
    path.write_text(SASS_MIX)
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, str(path)], env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    mixes = {}
    for line in out.stdout.splitlines():
        name, _, mix = line.partition(" ")
        mixes[name] = {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", mix.partition(":")[2])}
        assert int(mix.split()[0]) >= sum(mixes[name].values()), line  # the classes are a subset of the total
    assert mixes["with_dot"]["mma"] > 0 and mixes["with_rcp"]["mma"] == 0, out.stdout
    assert mixes["with_rcp"]["shfl"] > 0 and mixes["with_rcp"]["bar"] > 0 and mixes["with_dot"]["shfl"] == 0, out.stdout
    assert mixes["with_rcp"]["local"] == mixes["with_dot"]["local"] == 0, out.stdout


SASS_TWO_LOOPS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   FADD R2, R2, R3 ;
.L_x_1:
        /*0020*/                   MUFU.RCP R4, R2 ;
        /*0030*/                   SHFL.BFLY PT, R5, R4, 0x1, 0x1f ;
        /*0040*/              @P0 BRA `(.L_x_1) ;
        /*0050*/                   FFMA R2, R4, R5, R2 ;
        /*0060*/              @!P1 BRA `(.L_x_0) ;
        /*0070*/                   BRA `(.L_x_2) ;
.L_x_2:
        /*0080*/                   EXIT ;
.L_x_3:
        /*0090*/                   BRA `(.L_x_3);
"""


def test_compile_check_sass_loops_counts_one_iteration():
    """--loops: each branch back to a label is a loop from that label to the branch (the inner one first); a
    forward branch is none, nor the end's branch to itself; each loop's mix counts its own instructions, the
    branch included."""
    loops = compile_check.sass_loops(SASS_TWO_LOOPS)
    assert [line.partition(":")[0] for line in loops] == [".L_x_1", ".L_x_0"]
    inner, outer = (dict(re.findall(r"(\w+) (\d+)", line.partition(": ")[2].partition(":")[2])) for line in loops)
    assert loops[0].split(": ")[1] == "3 instructions" and loops[1].split(": ")[1] == "6 instructions"
    assert (inner["mufu"], inner["shfl"], inner["fp32"]) == ("1", "1", "0")
    assert (outer["mufu"], outer["shfl"], outer["fp32"]) == ("1", "1", "2")


def test_compile_check_shapes_compiles_the_default_launches_at_those_shapes(tmp_path):
    """--shapes: the training and decode paths' default launches at the shapes given (nothing runs), each
    specialisation led by the first shape and op that launched it; decode only up to DECODE_MAX_T tokens."""
    from benchmarks.shapes import Shape

    labels = [label for label, _ in compile_check.default_launches([Shape(3, 4, 64), Shape(100, 2, 32)])]
    assert labels == ["3x4x64 fwd", "3x4x64 delayed fwd", "3x4x64 bwd", "3x4x64 delayed bwd", "3x4x64 post",
                      "3x4x64 sinkhorn", "3x4x64 decode delayed", "3x4x64 decode", "100x2x32 fwd",
                      "100x2x32 delayed fwd", "100x2x32 bwd", "100x2x32 delayed bwd", "100x2x32 post",
                      "100x2x32 sinkhorn"]  # fmt: skip
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(root)}
    argv = ["-m", "benchmarks.compile_check", "--shapes", "3x4x64,100x2x32", "--only", "_post_fwd_kernel",
            "--registers", "--jobs", "1"]  # fmt: skip
    out = subprocess.run([sys.executable, *argv], env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("ok  ")]
    assert [line.split("]")[0] for line in lines] == ["ok  [3x4x64 post", "ok  [100x2x32 post"], out.stdout
    assert all("_post_fwd_kernel" in line and "registers" in line for line in lines), out.stdout


def test_weight_parts_three_parts_are_the_weights_and_pass_the_rule():
    """weight_parts' k-part sums: three bf16 parts give (gamma*phi) exactly (the kernel's split is exact),
    two drop at most 2^-16 of each weight; with three every output passes the rule on the tool's cases."""
    from benchmarks import weight_parts

    g = torch.Generator().manual_seed(0)
    phi, gamma = torch.randn(24, 512, generator=g) / 45, 1 + 0.5 * torch.randn(4, 128, generator=g)
    w = phi * gamma.reshape(1, -1)
    assert torch.equal(weight_parts.parts_sum(phi, gamma, 3), w)
    two = weight_parts.parts_sum(phi, gamma, 2)
    assert not torch.equal(two, w) and ((two - w).abs() <= w.abs() * 2.0**-16).all()
    worst = weight_parts.worst_ratios(tokens=4, seeds=1)
    assert all(ratio <= 1 for (parts, _), (ratio, *_) in worst.items() if parts == 3), worst


def test_plot_decode_draws_every_row_and_the_status_of_untimed_ones(tmp_path):
    """benchmarks/decode.py's figure: a bar per timed row (chain_us), a FAIL row's status in its slot."""
    rows = [{"shape": "1x4x4096", "row": "ops_delayed", "status": "ok", "chain_us": 22.0, "device": "GPU"},
            {"shape": "1x4x4096", "row": "decode_delayed", "status": "ok", "chain_us": 7.8, "device": "GPU"},
            {"shape": "8x4x4096", "row": "ops_delayed", "status": "ok", "chain_us": 22.5, "device": "GPU"},
            {"shape": "8x4x4096", "row": "decode_delayed", "status": "FAIL", "device": "GPU"}]  # fmt: skip
    path = plots.plot_decode(rows, tmp_path / "decode.png", target_us=8.0)
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
