"""apply_to_deepseek_v4 on a tiny randomly initialised transformers DeepSeek-V4: the same loss and
gradients as the eager model, the patch confined to what it was asked to patch, a clean revert, and a
clear error for transformers code it has not read. Skips where transformers (an optional extra) is absent."""

from __future__ import annotations

import copy
import json
import re
import sys

import pytest
import torch
from packaging.version import Version

transformers = pytest.importorskip("transformers")
pytest.importorskip(
    "transformers.models.deepseek_v4", reason=f"transformers {transformers.__version__} has no DeepSeek-V4"
)

from transformers import DeepseekV4Config, DeepseekV4ForCausalLM  # noqa: E402
from transformers.models.deepseek_v4 import modeling_deepseek_v4 as modeling  # noqa: E402

from mhc_ops.integrations import apply_to_deepseek_v4, deepseek_v4_patched, revert_deepseek_v4  # noqa: E402
from mhc_ops.integrations import deepseek_v4 as integration  # noqa: E402

VOCAB, SEQ, BATCH = 64, 16, 2
LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4  # fp32: the bounds (norm-wise relative, per parameter)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
PATCHED = ("DeepseekV4HyperConnection", "DeepseekV4DecoderLayer", "DeepseekV4HyperHead")


@pytest.fixture(autouse=True)
def one_thread():
    """Matrices of a few dozen rows: threads only contend (2 s a step instead of 0.1 s on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_class_patch_left():
    """A test that patches the classes reverts them, even when it fails."""
    yield
    revert_deepseek_v4()


def tiny_config(**overrides) -> DeepseekV4Config:
    """2 layers, hidden 32, hc_mult 4: one sliding-window and one compressed-sparse attention, one
    hash-routed and one top-k MoE, so every kind of block sits between the hyper-connections."""
    kwargs = dict(
        vocab_size=VOCAB, hidden_size=32, moe_intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, q_lora_rank=16, num_experts_per_tok=2, n_routed_experts=4,
        n_shared_experts=1, hc_mult=4, sliding_window=8, o_groups=2, o_lora_rank=8, index_n_heads=2,
        index_head_dim=8, index_topk=4, max_position_embeddings=128,
        layer_types=["sliding_attention", "compressed_sparse_attention"], mlp_layer_types=["hash_moe", "moe"],
    )  # fmt: skip
    return DeepseekV4Config(**(kwargs | overrides))


def tiny_model(device="cpu", seed=0, **overrides) -> DeepseekV4ForCausalLM:
    """HF's init leaves base = 0, scale = 1 and fn ~ N(0, 0.02): comb is then nearly J/n, symmetric, and
    a transposed comb, a swapped scale or a misplaced bias would go unnoticed. Random HC parameters
    (projection of unit variance, bias N(0, 1), a distinct scale per part) make each mapping error show;
    a random tid2eid gives the hash-routed gate a real gradient (all-zero routes both slots to expert 0,
    whose normalised weights are then constant)."""
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    model = DeepseekV4ForCausalLM(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, modeling.DeepseekV4HyperConnection):
                fn, scale, base = module.fn, module.scale, module.base
            elif isinstance(module, modeling.DeepseekV4HyperHead):
                fn, scale, base = module.hc_fn, module.hc_scale, module.hc_base
            elif isinstance(module, modeling.DeepseekV4HashRouter):
                E, k = config.n_routed_experts, config.num_experts_per_tok
                module.tid2eid.copy_(torch.stack([torch.randperm(E)[:k] for _ in range(VOCAB)]))
                continue
            else:
                continue
            fn.normal_(0.0, fn.shape[1] ** -0.5)
            scale.uniform_(0.5, 1.5)
            base.normal_()
    return model.to(device)


def batch(device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=g).to(device)


def loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def assert_same(got, ref, loss_rtol=LOSS_RTOL, grad_rtol=GRAD_RTOL):
    (loss, grads), (loss_ref, grads_ref) = got, ref
    assert rel(loss, loss_ref) <= loss_rtol, (loss.item(), loss_ref.item())
    assert grads.keys() == grads_ref.keys()
    errors = {name: rel(grads[name], grads_ref[name]) for name in grads_ref}
    assert all(e <= grad_rtol for e in errors.values()), {k: e for k, e in errors.items() if e > grad_rtol}


def hyper_connection_modules(model):
    return [
        m for m in model.modules() if isinstance(m, modeling.DeepseekV4HyperConnection | modeling.DeepseekV4HyperHead)
    ]


# ---- same numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_patched_model_matches_eager(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    eager = tiny_model(device)
    patched = copy.deepcopy(eager)
    apply_to_deepseek_v4(patched)
    ids = batch(device)
    ref = loss_and_grads(eager, ids)
    got = loss_and_grads(patched, ids)
    assert_same(got, ref)
    # The comparison covers the hyper-connections: every HC parameter has a gradient, and not a zero one.
    hc_names = [name for name in ref[1] if "_hc." in name or "hc_head." in name]
    assert len(hc_names) == 4 * 3 + 3 and all(ref[1][name].norm() > 1e-9 for name in hc_names)


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.double().flatten() for _, g in sorted(grads.items())])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_model_on_triton_is_as_accurate_as_eager():
    """A bf16 model with HF's fp32 modules (as from_pretrained loads one), on the Triton kernels. Against
    the fp32 eager model, the patched model's loss and whole gradient are within 2x (+ a floor far below
    bf16's 4e-3) of eager bf16's error, and each parameter's gradient within 4x (+ 1e-2): the two bf16
    models round differently (HF rounds the mixing coefficients to bf16, mhc_post keeps them fp32), so
    one parameter's error is a noisy sample, while a mapping or dtype error would be O(1)."""
    from benchmarks.hf_deepseek_v4 import cast_as_loaded

    if Version(transformers.__version__) < Version("5.23"):
        pytest.skip("before 5.23, DeepseekV4RMSNorm returns fp32 with its fp32 weight: eager bf16 fails too")
    fp32 = tiny_model("cuda")
    eager = cast_as_loaded(copy.deepcopy(fp32), torch.bfloat16)
    patched = copy.deepcopy(eager)
    apply_to_deepseek_v4(patched)
    ids = batch("cuda")
    loss, grads = loss_and_grads(fp32, ids)
    (loss_e, grads_e), (loss_p, grads_p) = loss_and_grads(eager, ids), loss_and_grads(patched, ids)
    assert rel(loss_p, loss) <= 2 * rel(loss_e, loss) + 1e-4
    assert rel(flat(grads_p), flat(grads)) <= 2 * rel(flat(grads_e), flat(grads)) + 1e-3
    errors = {name: (rel(grads_p[name], g), rel(grads_e[name], g)) for name, g in grads.items()}
    assert all(e_p <= 4 * e_e + 1e-2 for e_p, e_e in errors.values()), errors


@pytest.mark.parametrize("hyper_head", [True, False])
def test_each_part_alone_matches_eager(hyper_head):
    eager = tiny_model()
    patched = copy.deepcopy(eager)
    apply_to_deepseek_v4(patched, hyper_connection=not hyper_head, hyper_head=hyper_head)
    ids = batch()
    assert_same(loss_and_grads(patched, ids), loss_and_grads(eager, ids))
    layer, head = patched.model.layers[0], patched.model.hc_head
    assert integration._is_patched_class(type(head)) == hyper_head
    assert (
        integration._is_patched_class(type(layer)) == integration._is_patched_class(type(layer.attn_hc)) != hyper_head
    )


def test_hyper_connection_module_returns_what_hf_returns():
    """The mapping of fn / scale / base at the module itself: post, comb (not transposed) and collapsed."""
    model = tiny_model()
    hc, head = model.model.layers[1].ffn_hc, model.model.hc_head
    x = torch.randn(BATCH, 5, 4, 32)
    post, comb, collapsed = hc(x)
    head_out = head(x)
    assert (comb - comb.transpose(-1, -2)).abs().max() > 0.1  # a transposed comb would fail below
    apply_to_deepseek_v4(model)
    for got, want in zip(hc(x), (post, comb, collapsed)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head(x), head_out, rtol=1e-5, atol=1e-6)


def test_activation_checkpointing_still_recomputes():
    """In transformers 5.23 the checkpointing lives in a wrapper around each layer's forward; the patch
    keeps it: the attention runs again in backward, and the gradients are the eager ones."""
    eager = tiny_model()
    patched = copy.deepcopy(eager)
    patched.train()
    # 5.23 renamed gradient_checkpointing_enable (now deprecated); 5.17 has only the old name.
    enable = getattr(patched, "activation_checkpointing_enable", None) or patched.gradient_checkpointing_enable
    enable()
    apply_to_deepseek_v4(patched)
    calls = []
    patched.model.layers[0].self_attn.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    ids = batch()
    got = loss_and_grads(patched, ids)
    assert len(calls) == 2  # the forward, then the recomputation in backward
    assert_same(got, loss_and_grads(eager, ids))


# ---- under torch.compile ----------------------------------------------------------------------------------


@pytest.fixture
def fresh_dynamo():
    """Compiled code of one test neither reused nor counted by another."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_patched_layers_compile_fullgraph_and_match_eager(fresh_dynamo):
    """Every patched decoder layer and the patched head under torch.compile(backend="aot_eager",
    fullgraph=True): Dynamo traces them without a graph break (fullgraph raises at the first one), the
    graphs hold mhc-ops' ops, and the loss and every gradient are the eager patched model's and HF's.
    (docs/integrations.md, "Under torch.compile".)"""
    eager = tiny_model()
    patched = copy.deepcopy(eager)
    apply_to_deepseek_v4(patched)
    compiled = copy.deepcopy(patched)
    targets = []

    def backend(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    for module in (*compiled.model.layers, compiled.model.hc_head):
        module.compile(backend=backend, fullgraph=True)
    ids = batch()
    ref, ref_patched = loss_and_grads(eager, ids), loss_and_grads(patched, ids)
    for _ in range(2):  # the compiling call, then the compiled code
        loss, grads = loss_and_grads(compiled, ids)
        # AOTAutograd gives a zero gradient, not None, to the parameters used only through top-k indices
        # (the compressed attention's indexer; HF's own model compiled alike): not mhc-ops' doing.
        extra = {name: grads.pop(name) for name in grads.keys() - ref[1].keys()}
        assert extra and all(".indexer." in name and not g.any() for name, g in extra.items()), extra
        assert_same((loss, grads), ref_patched)
        assert_same((loss, grads), ref)
    assert len(targets) > 0 and any("mhc_ops" in t for t in targets), sorted(set(targets))


# ---- what is patched, and the revert ------------------------------------------------------------------


def test_model_patch_keeps_parameters_and_touches_nothing_else():
    originals = {name: getattr(modeling, name).forward for name in PATCHED}
    model, other = tiny_model(), tiny_model()
    params = [(name, p) for name, p in model.named_parameters()]
    state_keys = list(model.state_dict())
    apply_to_deepseek_v4(model)
    assert [(name, p) for name, p in model.named_parameters()] == params  # same names, same tensors
    assert list(model.state_dict()) == state_keys
    assert all(integration._is_patched_class(type(m)) for m in hyper_connection_modules(model))
    assert not any(integration._is_patched_class(type(m)) for m in hyper_connection_modules(other))
    assert {name: getattr(modeling, name).forward for name in PATCHED} == originals
    assert not integration._ORIGINAL_FORWARDS
    # Names and isinstance stay HF's (the layer's class name is what FSDP's auto-wrap and _no_split_modules use).
    layer = model.model.layers[0]
    assert type(layer).__name__ == "DeepseekV4DecoderLayer" and isinstance(layer, modeling.DeepseekV4DecoderLayer)


def test_model_patch_reverts_and_is_idempotent():
    eager = tiny_model()
    model = copy.deepcopy(eager)
    classes = [type(m) for m in model.modules()]
    ids = batch()
    ref = loss_and_grads(eager, ids)
    apply_to_deepseek_v4(model)
    apply_to_deepseek_v4(model)
    assert_same(loss_and_grads(model, ids), ref)
    revert_deepseek_v4(model)
    assert [type(m) for m in model.modules()] == classes
    loss, grads = loss_and_grads(model, ids)
    assert torch.equal(loss, ref[0]) and all(torch.equal(grads[k], ref[1][k]) for k in ref[1])


def test_class_patch_applies_to_every_model_and_reverts():
    originals = {name: getattr(modeling, name).forward for name in PATCHED}
    before = tiny_model()  # built before the patch: patched too
    ids = batch()
    ref = loss_and_grads(before, ids)
    apply_to_deepseek_v4()
    apply_to_deepseek_v4()
    for name in PATCHED:
        assert getattr(modeling, name).forward is not originals[name]
    assert_same(loss_and_grads(before, ids), ref)
    assert_same(loss_and_grads(tiny_model(), ids), ref)  # built after
    revert_deepseek_v4()
    assert {name: getattr(modeling, name).forward for name in PATCHED} == originals
    loss, grads = loss_and_grads(before, ids)
    assert torch.equal(loss, ref[0]) and all(torch.equal(grads[k], ref[1][k]) for k in ref[1])


def test_context_manager():
    eager = tiny_model()
    model = copy.deepcopy(eager)
    ids = batch()
    with deepseek_v4_patched(model) as patched:
        assert patched is model and integration._is_patched_class(type(model.model.hc_head))
        assert_same(loss_and_grads(model, ids), loss_and_grads(eager, ids))
    assert not any(integration._is_patched_class(type(m)) for m in model.modules())
    with deepseek_v4_patched():
        assert modeling.DeepseekV4HyperHead.forward is not integration._ORIGINAL_FORWARDS[modeling.DeepseekV4HyperHead]
    assert not integration._ORIGINAL_FORWARDS


# ---- code it has not read ------------------------------------------------------------------------------

VERSION = re.escape(transformers.__version__)


def test_changed_forward_is_refused_and_nothing_patched(monkeypatch):
    def forward(self, hidden_streams):  # a different computation under the same name
        return hidden_streams

    head_forward = modeling.DeepseekV4HyperHead.forward
    monkeypatch.setattr(modeling.DeepseekV4HyperConnection, "forward", forward)
    with pytest.raises(
        RuntimeError, match=rf"transformers {VERSION} has a DeepseekV4HyperConnection\.forward .*changed"
    ):
        apply_to_deepseek_v4()
    assert modeling.DeepseekV4HyperHead.forward is head_forward
    with pytest.raises(RuntimeError, match="DeepseekV4HyperConnection.forward"):
        apply_to_deepseek_v4(tiny_model())


def test_missing_class_or_module_is_refused(monkeypatch):
    with monkeypatch.context() as m:
        m.delattr(modeling, "DeepseekV4HyperHead")
        with pytest.raises(RuntimeError, match=rf"transformers {VERSION} has no DeepseekV4HyperHead"):
            apply_to_deepseek_v4()
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "transformers.models.deepseek_v4", None)
        with pytest.raises(RuntimeError, match=rf"transformers {VERSION} has no DeepSeek-V4"):
            apply_to_deepseek_v4()
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "transformers", None)
        with pytest.raises(ImportError, match=r"mhc-ops\[transformers\]"):
            apply_to_deepseek_v4()


def test_model_whose_modules_differ_is_refused():
    model = tiny_model()
    del model.model.layers[1].attn_hc.hc_sinkhorn_iters
    module = r"DeepseekV4HyperConnection \(model\.layers\.1\.attn_hc\)"
    with pytest.raises(RuntimeError, match=rf"transformers {VERSION} built a {module} without hc_sinkhorn_iters"):
        apply_to_deepseek_v4(model)
    assert not any(integration._is_patched_class(type(m)) for m in model.modules())  # checked before any patch

    class Custom(modeling.DeepseekV4HyperHead):
        def forward(self, x):
            return x.sum(dim=2)

    model = tiny_model()
    model.model.hc_head.__class__ = Custom
    with pytest.raises(RuntimeError, match=r"Custom\.forward"):
        apply_to_deepseek_v4(model)

    model = tiny_model()
    model.model.hc_head.forward = lambda x: x.sum(dim=2)  # what accelerate's hooks do
    with pytest.raises(RuntimeError, match=r"model\.hc_head has a forward of its own"):
        apply_to_deepseek_v4(model)
    with pytest.raises(ValueError, match="no DeepSeek-V4 hyper-connection"):
        apply_to_deepseek_v4(torch.nn.Linear(2, 2))


class _Plain:
    def forward(self, x):
        return torch.add(x * 2, 1)


# fmt: off
class _Reformatted:
    def forward(self,
                x):
        """A docstring."""
        # a comment
        return torch.add(x * 2,
                         1)
# fmt: on


class _Changed:
    def forward(self, x):
        return torch.add(x * 2, -1)


def test_fingerprint_ignores_layout_comments_and_docstring():
    fingerprint = integration._fingerprint
    assert fingerprint(_Plain.forward) == fingerprint(_Reformatted.forward) != fingerprint(_Changed.forward)


# ---- the benchmark --------------------------------------------------------------------------------------


def test_benchmark_smoke(tmp_path, capsys):
    """benchmarks/hf_deepseek_v4.py end to end on CPU at its toy size: rows, table, JSON lines. No speed."""
    pytest.importorskip("matplotlib")  # imported by benchmarks.run, whose gpu_tag names the results file
    from benchmarks import hf_deepseek_v4 as bench

    rows = bench.main(["--toy", "--device", "cpu", "--out", str(tmp_path)])
    assert [r["variant"] for r in rows] == list(bench.DEFAULT_VARIANTS)
    for row in rows:
        assert row["tokens_per_s"] > 0 and len(row["tokens_per_s_rounds"]) == row["rounds"]
        assert row["loss_rel_diff_vs_eager"] <= LOSS_RTOL  # fp32: the same loss
        assert row["error"] is None and row["compile"] is None
    (path,) = tmp_path.glob("cpu-*-hf-deepseek-v4.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["variant"] for line in lines] == list(bench.DEFAULT_VARIANTS) and set(lines[0]) == set(bench.ROW_KEYS)
    assert "| mhc_ops |" in capsys.readouterr().out
    assert not integration._ORIGINAL_FORWARDS  # it patches its model, never the classes


def test_benchmark_compiled_variants(tmp_path, capsys, fresh_dynamo):
    """The .compile variants at the toy size (backend "eager": the benchmark's plumbing, not Inductor):
    each compiles its layers without a graph break, on a twin of the model (its patch does not reach the
    eager variants' model), and has eager's loss."""
    pytest.importorskip("matplotlib")
    from benchmarks import hf_deepseek_v4 as bench

    variants = ["eager", "eager.compile", "mhc_ops.compile"]
    argv = ["--toy", "--device", "cpu", "--out", str(tmp_path), "--compile-backend", "eager"]
    rows = bench.main([*argv, "--variants", ",".join(variants)])
    assert [r["variant"] for r in rows] == variants
    for row in rows:
        assert row["error"] is None and row["tokens_per_s"] > 0
        assert row["loss_rel_diff_vs_eager"] <= LOSS_RTOL
    for row in rows[1:]:
        assert row["compile"] == "layers" and row["compile_backend"] == "eager" and row["warmup_steps"] >= 2
        assert row["dynamo_graphs"] >= 1 and row["graph_breaks"] == 0  # each variant compiled its own code
    assert "graph_breaks" in capsys.readouterr().out
    assert not integration._ORIGINAL_FORWARDS


def test_benchmark_records_a_failed_compile(tmp_path, capsys, fresh_dynamo):
    """A variant whose compile fails gets a row with the error and where it broke; the others run."""
    pytest.importorskip("matplotlib")
    from benchmarks import hf_deepseek_v4 as bench

    def broken(gm, example_inputs):
        raise NotImplementedError("this backend compiles nothing")

    if "mhc_ops_test_broken" not in torch._dynamo.list_backends(exclude_tags=()):  # once per process
        torch._dynamo.register_backend(broken, name="mhc_ops_test_broken")
    argv = ["--toy", "--device", "cpu", "--out", str(tmp_path), "--compile-backend", "mhc_ops_test_broken"]
    eager, failed = bench.main([*argv, "--variants", "eager,mhc_ops.compile"])
    assert eager["error"] is None and eager["tokens_per_s"] > 0
    assert failed["tokens_per_s"] is None and failed["speedup_vs_eager"] is None
    assert failed["error"].startswith("first step: BackendCompilerFailed"), failed["error"]
    assert "this backend compiles nothing" in failed["error"] and "(at " in failed["error"]
    assert "| error |" in capsys.readouterr().out
    (path,) = tmp_path.glob("cpu-*-hf-deepseek-v4.jsonl")
    assert json.loads(path.read_text().splitlines()[1])["error"] == failed["error"]

    def breaks(x):
        torch._dynamo.graph_break()  # the line describe_failure must name
        return x + 1

    with pytest.raises(Exception) as info:
        torch.compile(breaks, backend="eager", fullgraph=True)(torch.ones(2))
    line = breaks.__code__.co_firstlineno + 1
    assert bench.describe_failure(info.value).endswith(f"(at tests/integrations/test_deepseek_v4.py:{line} in breaks)")
