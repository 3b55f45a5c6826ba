"""benchmarks/hf_models.py on CPU at its toy size (the GPU run: benchmarks/gpu_session.sh hf): rows,
tables, JSON lines, the trivial mix, the compiled variants and a failed one. No speed is checked."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from benchmarks import hf_models as bench  # noqa: E402
from mhc_ops.integrations import deepseek_v4, glm5_next  # noqa: E402

from .families import LOSS_RTOL  # noqa: E402


def no_class_patched() -> bool:
    return not deepseek_v4.FAMILY.originals and not glm5_next.FAMILY.originals  # it patches models only


def test_benchmark_smoke(tmp_path, capsys):
    rows = bench.main(["--toy", "--device", "cpu", "--out", str(tmp_path)])
    assert [(r["model"], r["variant"]) for r in rows] == [(m, v) for m in bench.FAMILIES for v in bench.DEFAULT_VARIANTS]
    for row in rows:
        assert row["error"] is None and row["compile"] is None
        assert row["tokens_per_s"] > 0 and len(row["tokens_per_s_rounds"]) == row["rounds"]
        if row["variant"] == "mhc_ops":
            assert row["loss_rel_diff_vs_eager"] <= LOSS_RTOL  # fp32: the same loss
        if row["variant"] == "trivial":
            assert row["loss_rel_diff_vs_eager"] > LOSS_RTOL and row["ms_above_trivial"] == 0  # another model
    (path,) = tmp_path.glob("cpu-*-hf-models.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["model"], line["variant"]) for line in lines] == [(r["model"], r["variant"]) for r in rows]
    assert set(lines[0]) == set(bench.ROW_KEYS)
    out = capsys.readouterr().out
    assert out.count("| mhc_ops |") == 2 and "DeepSeek-V4 (2 layers" in out and "GLM-5-Next (3 layers" in out
    assert no_class_patched()


def test_trivial_mix_uses_no_hyper_connection_parameter():
    """The trivial variant's model: the same parameters, none of the HC ones reached by the loss, and its
    own classes (the eager model stays HF's)."""
    family = bench.FAMILIES["glm5_next"]
    config = family.config(2, 32, 4, 16, 64, 4, True)
    model = bench.build_model(family, config, torch.device("cpu"), torch.float32, seed=0)
    trivial = bench.variant_model(model, family, "trivial", "layers", "eager", None)
    assert [p for p in trivial.parameters()] == [p for p in model.parameters()]
    ids = torch.randint(0, 64, (1, 16))
    trivial(input_ids=ids, labels=ids).loss.backward()
    hc = [name for name, p in model.named_parameters() if "_hc." in name]
    assert hc and all(p.grad is None for name, p in model.named_parameters() if "_hc." in name)
    assert not any(hasattr(type(m), "_mhc_ops_base") for m in model.modules())


def test_benchmark_compiled_variants(tmp_path, capsys, fresh_dynamo):
    """The .compile variants at the toy size (backend "eager": the benchmark's plumbing, not Inductor):
    each compiles its layers without a graph break, on a twin of the model, and has eager's loss."""
    variants = ["eager", "eager.compile", "mhc_ops.compile"]
    argv = ["--toy", "--device", "cpu", "--out", str(tmp_path), "--compile-backend", "eager", "--models", "deepseek_v4"]
    rows = bench.main([*argv, "--variants", ",".join(variants)])
    assert [r["variant"] for r in rows] == variants
    for row in rows:
        assert row["error"] is None and row["tokens_per_s"] > 0
        assert row["loss_rel_diff_vs_eager"] <= LOSS_RTOL
    for row in rows[1:]:
        assert row["compile"] == "layers" and row["compile_backend"] == "eager" and row["warmup_steps"] >= 2
        assert row["dynamo_graphs"] >= 1 and row["graph_breaks"] == 0  # each variant compiled its own code
    assert "graph_breaks" in capsys.readouterr().out
    assert no_class_patched()


def test_benchmark_records_a_failed_compile(tmp_path, capsys, fresh_dynamo):
    """A variant whose compile fails gets a row with the error and where it broke; the others run."""

    def broken(gm, example_inputs):
        raise NotImplementedError("this backend compiles nothing")

    if "mhc_ops_test_broken" not in torch._dynamo.list_backends(exclude_tags=()):  # once per process
        torch._dynamo.register_backend(broken, name="mhc_ops_test_broken")
    argv = ["--toy", "--device", "cpu", "--out", str(tmp_path), "--compile-backend", "mhc_ops_test_broken"]
    eager, failed = bench.main([*argv, "--variants", "eager,mhc_ops.compile", "--models", "glm5_next"])
    assert eager["error"] is None and eager["tokens_per_s"] > 0
    assert failed["tokens_per_s"] is None and failed["speedup_vs_eager"] is None
    assert failed["error"].startswith("first step: BackendCompilerFailed"), failed["error"]
    assert "this backend compiles nothing" in failed["error"] and "(at " in failed["error"]
    assert "| error |" in capsys.readouterr().out
    (path,) = tmp_path.glob("cpu-*-hf-models.jsonl")
    assert json.loads(path.read_text().splitlines()[1])["error"] == failed["error"]

    def breaks(x):
        torch._dynamo.graph_break()  # the line describe_failure must name
        return x + 1

    with pytest.raises(Exception) as info:
        torch.compile(breaks, backend="eager", fullgraph=True)(torch.ones(2))
    line = breaks.__code__.co_firstlineno + 1
    assert bench.describe_failure(info.value).endswith(f"(at tests/integrations/test_hf_models_bench.py:{line} in breaks)")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variants", "eager,fast"], "--variants: expected a comma-separated subset of eager, "),
        (["--models", "llama"], "--models: expected a comma-separated subset of deepseek_v4, glm5_next"),
        (["--seq", "0"], "--seq: expected an integer >= 1, got 0"),
        (["--device", "tpu"], "--device: expected cuda, cuda:<i> or cpu, got 'tpu'"),
    ],
)
def test_cli_errors_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        bench.parse_args(args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err.splitlines()[-1]
