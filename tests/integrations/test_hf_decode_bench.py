"""benchmarks/hf_decode.py on CPU at its toy size (the GPU run: benchmarks/gpu_session.sh hf-decode): rows, tables,
JSON lines, the patched model's logits as eager's after a prefill and decode steps on a cache. No speed is
checked."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from benchmarks import hf_decode as bench  # noqa: E402
from benchmarks.hf_models import FAMILIES  # noqa: E402

from .families import LOSS_RTOL  # noqa: E402


def test_decode_benchmark_smoke(tmp_path, capsys):
    rows = bench.main(["--toy", "--device", "cpu", "--out", str(tmp_path)])
    assert [(r["family"], r["variant"]) for r in rows] == [(f, v) for f in FAMILIES for v in bench.VARIANTS]
    for row in rows:
        assert "error" not in row and row["ms_per_token"] > 0 and len(row["ms_rounds"]) == 1
        if row["variant"] == "mhc_ops":
            assert row["logits_rel_diff_vs_eager"] <= LOSS_RTOL  # fp32: the same logits
        if row["variant"] == "trivial":
            assert row["logits_rel_diff_vs_eager"] > LOSS_RTOL and row["ms_above_trivial"] == 0  # another model
    (path,) = tmp_path.glob("cpu-*-hf-decode.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows
    out = capsys.readouterr().out
    assert out.count("| mhc_ops |") == 2 and "6-token prompt, 3 decode steps" in out


@pytest.mark.parametrize("argv", [["--models", "llama"], ["--variants", "eager,compiled"], ["--steps", "1"],
                                  ["--rounds", "0"]], ids=["model", "variant", "steps", "rounds"])  # fmt: skip
def test_decode_benchmark_refuses_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--toy", "--device", "cpu", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and argv[0] in err and "Traceback" not in err



def test_decode_benchmark_takes_the_compiled_variants():
    """--variants: any of hf_models' variants (the compiled ones too), the three uncompiled by default."""
    assert bench.parse_args(["--device", "cpu"]).variants == list(bench.VARIANTS)
    assert bench.parse_args(["--variants", "eager,mhc_ops.compile", "--device", "cpu"]).variants == [
        "eager", "mhc_ops.compile"]
