"""benchmarks/layer_modes.py on CPU (the golden backend, a tiny shape): one row per mode with the
result rows' keys, the CUDA-only modes skipped, every mode checked by the accuracy rule, and a mode
that raises or computes the wrong step recorded in its row while the others still run. Nothing here
is a speed target."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from benchmarks import layer_modes

SHAPE = "8x4x32"


def _raises(layer, device):
    def call(x):
        raise RuntimeError("boom: the mode failed\nsecond line of the message")

    return call


def _wrong(layer, device):
    return lambda x: layer(x) * 1.5  # out and every gradient 1.5x too large


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("layer_modes")
    modes = "eager,compile,reduce-overhead,graph,raises,wrong"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(layer_modes.MODES, "raises", layer_modes.Mode(_raises))
        mp.setitem(layer_modes.MODES, "wrong", layer_modes.Mode(_wrong))
        argv = ["--device", "cpu", "--backend", "golden", "--shapes", SHAPE, "--modes", modes, "--out", str(out)]
        rows = layer_modes.main(argv)
    return rows, out


def test_one_row_per_mode_with_every_key(cpu_run):
    rows, out = cpu_run
    assert [r["mode"] for r in rows] == ["eager", "compile", "reduce-overhead", "graph", "raises", "wrong"]
    for r in rows:
        assert set(r) == set(layer_modes.ROW_KEYS)
        assert (r["op"], r["T"], r["n"], r["D"], r["dtype"]) == ("layer_step", 8, 4, 32, "bfloat16")
        assert r["gpu"] == "cpu" and r["torch"] == torch.__version__ and r["triton"] and r["date"]
        assert r["graph_us"] is None and r["ratio"] is None and r["launches"] is None  # no GPU here
    (path,) = out.iterdir()
    assert path.name == f"cpu-{rows[0]['date']}-layer-modes.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [list(line) for line in lines] == [list(layer_modes.ROW_KEYS)] * len(rows)
    assert [line["status"] for line in lines] == [r["status"] for r in rows]


def test_eager_and_compile_pass_the_rule_and_are_timed(cpu_run):
    rows, _ = cpu_run
    eager, compiled = rows[0], rows[1]
    for r in (eager, compiled):
        assert r["status"] == "ok" and r["ok"] is True and r["reason"] is None, r
        assert r["worst_err"] <= r["worst_bound"]
        assert r["wall_us"] > 0 and r["host_us"] > 0 and r["steps"] == 1
    assert eager["vs_eager_err"] is None and 0 <= compiled["vs_eager_err"] < 0.05


def test_cuda_only_modes_are_skipped_on_cpu(cpu_run):
    rows, _ = cpu_run
    for r in rows[2:4]:
        assert (r["status"], r["ok"], r["reason"], r["wall_us"]) == ("skipped", None, "needs CUDA", None)


def test_a_raising_mode_is_an_error_row_with_the_first_line(cpu_run):
    rows, _ = cpu_run
    r = rows[4]
    assert (r["status"], r["ok"], r["wall_us"]) == ("error", False, None)
    assert r["reason"] == "RuntimeError: boom: the mode failed"


def test_a_wrong_mode_fails_the_rule_and_is_not_timed(cpu_run):
    rows, _ = cpu_run
    r = rows[5]
    assert (r["status"], r["ok"], r["wall_us"]) == ("FAIL", False, None)
    assert "FAIL out" in r["reason"] and "FAIL dx" in r["reason"] and r["worst_err"] > r["worst_bound"]
    assert r["vs_eager_err"] == pytest.approx(0.5, rel=0.05)


def test_the_table_has_a_line_per_row(cpu_run, capsys):
    rows, _ = cpu_run
    table = layer_modes.format_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert "skipped (needs CUDA)" in table[4] and "error (RuntimeError: boom" in table[6]


@pytest.mark.parametrize("argv", [["--modes", "eager,nope"], ["--shapes", "8x4"], ["--steps", "0"]])
def test_bad_arguments_exit_with_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        layer_modes.parse_args(["--device", "cpu", *argv])
    assert e.value.code == 2
    assert "--" in capsys.readouterr().err


def test_kernel_times_sum_each_kernels_events_largest_first():
    """The graph row's kernel_times: every event of a kernel summed by name, the largest total first (its
    kernel_us is their sum, gap_us the step's time outside them)."""
    events = [SimpleNamespace(name=name, device_time=us) for name, us in
              (("_pass_b_kernel", 900.0), ("_fwd_kernel", 600.0), ("_sinkhorn_fwd_kernel", 5.0), ("_pass_b_kernel", 300.0))]  # fmt: skip
    times = layer_modes.kernel_times(events)
    assert times == {"_pass_b_kernel": 1200.0, "_fwd_kernel": 600.0, "_sinkhorn_fwd_kernel": 5.0}
    assert list(times) == ["_pass_b_kernel", "_fwd_kernel", "_sinkhorn_fwd_kernel"]
