"""The contract every integration keeps, for each model family on a tiny randomly initialised model: the
same loss and every gradient as HF's eager model (golden on CPU, the Triton interpreter, Triton on
CUDA; bf16 as close to fp32 as HF's eager bf16), the patch confined to what it was asked to patch, a
clean revert, and a clear error for code it has not read. Skips where transformers (an optional extra)
is absent."""

from __future__ import annotations

import copy
import inspect
import os
import re
import sys

import pytest
import torch
from packaging.version import Version

transformers = pytest.importorskip("transformers")

from mhc_ops.integrations import _patch  # noqa: E402
from tests.helpers import KERNEL_DEVICE, count_launch_decode  # noqa: E402

from .families import (  # noqa: E402
    LOSS_RTOL,
    assert_exact,
    assert_same,
    batch,
    case_params,
    flat,
    is_patched,
    loss_and_grads,
    rel,
    tiny_model,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
VERSION = re.escape(transformers.__version__)


@pytest.fixture(params=case_params())
def case(request):
    return request.param


def triton_pair(case):
    """(HF's eager tiny model, a copy patched on Triton), on the kernel device."""
    eager = tiny_model(case, KERNEL_DEVICE)
    patched = copy.deepcopy(eager)
    case.apply(patched, backend="triton")
    return eager, patched


def needs(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


def hc_modules(case, model):
    return [m for m in model.modules() if type(m).__name__ in (case.hc_class, "DeepseekV4HyperHead")]


# ---- same numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_patched_model_matches_eager(case, device):
    needs(device)
    eager = tiny_model(case, device)
    patched = copy.deepcopy(eager)
    case.apply(patched)
    ids = batch(device)
    ref = loss_and_grads(eager, ids)
    assert_same(loss_and_grads(patched, ids), ref)
    # The comparison covers the hyper-connections: every HC parameter has a gradient, and not a zero one.
    hc = {id(p) for m in hc_modules(case, eager) for p in m.parameters()}
    hc_params = [name for name, p in eager.named_parameters() if id(p) in hc]
    assert hc_params and all(ref[1][name].norm() > 1e-9 for name in hc_params)


@pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
    reason="the Triton kernels on CPU tensors need the interpreter (tests/conftest.py sets it without CUDA)",
)
def test_patched_model_on_the_triton_interpreter_matches_eager(case):
    """backend="triton": the kernels themselves (through the interpreter) in the model, not the golden."""
    eager = tiny_model(case)
    patched = copy.deepcopy(eager)
    case.apply(patched, backend="triton")
    ids = batch()
    assert_same(loss_and_grads(patched, ids), loss_and_grads(eager, ids))


@pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
def test_decode_runs_each_layers_inner_boundary_in_one_launch(case, monkeypatch):
    """Inference at decode (no autograd, at most 64 tokens) on Triton: each decoder layer's attention post, MLP
    pre and Sinkhorn through one launch_decode (kernels/decode.py), the logits as HF eager's; with autograd
    on (training) or more than 64 tokens, the ops alone."""
    eager, patched = triton_pair(case)
    calls = count_launch_decode(monkeypatch)
    layers = len(case.layers(patched))
    ids = batch(KERNEL_DEVICE)[:, :3]  # 2 x 3 tokens
    with torch.no_grad():
        got, ref = patched(input_ids=ids).logits, eager(input_ids=ids).logits
    assert len(calls) == layers
    assert rel(got, ref) <= LOSS_RTOL
    patched(input_ids=ids).logits.sum().backward()  # training: the ops (and a gradient through them)
    with torch.no_grad():
        long = torch.cat([batch(KERNEL_DEVICE, seed=s) for s in range(3)], dim=1)  # 2 x 48 = 96 tokens
        patched(input_ids=long)
    assert len(calls) == layers


@pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
def test_decode_runs_the_boundary_between_layers_in_one_launch(case, monkeypatch):
    """At decode, from the second call on, each layer's MLP post and the next layer's attention pre are one
    boundary too (the layer learns its successor on the first call): 2 * layers - 1 launch_decode a call, the
    logits as HF eager's. A hook that hands the next layer another tensor (the streams reversed, in both
    models) costs that boundary's pre (the next HC module takes only the tensor the boundary returned), not
    the right answer."""
    eager, patched = triton_pair(case)
    calls = count_launch_decode(monkeypatch)
    layers = case.layers(patched)
    with torch.no_grad():
        for step, seed in enumerate((0, 1)):
            ids = batch(KERNEL_DEVICE, seed=seed)[:, :2]  # 2 x 2 tokens, fresh each call
            calls.clear()
            got, ref = patched(input_ids=ids).logits, eager(input_ids=ids).logits
            assert len(calls) == (len(layers) if step == 0 else 2 * len(layers) - 1)
            assert rel(got, ref) <= LOSS_RTOL

        def reverse_streams(module, args, output):
            return (output[0].flip(-2), *output[1:]) if isinstance(output, tuple) else output.flip(-2)

        for model in (patched, eager):
            case.layers(model)[0].register_forward_hook(reverse_streams)
        ids = batch(KERNEL_DEVICE, seed=2)[:, :2]
        calls.clear()
        got, ref = patched(input_ids=ids).logits, eager(input_ids=ids).logits
    assert len(calls) == 2 * len(layers) - 1 and rel(got, ref) <= LOSS_RTOL


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_model_is_as_accurate_as_eager(case, device):
    """A bf16 model with HF's fp32 parameters (as from_pretrained loads one; golden on CPU, Triton on
    CUDA), against the fp32 eager model: the patched model's loss and whole gradient within 2x (+ a floor
    far below bf16's 4e-3) of eager bf16's error, each parameter's gradient within 4x (+ 0.1). The two
    bf16 models round differently (HF rounds the mixing coefficients to bf16, mhc_post keeps them fp32),
    so one parameter's error is a noisy sample (up to 0.1-0.2 for the ill-conditioned ones, the heads'
    among them), while a mapping or dtype error would be O(1). Two experts per MoE, both routed: with
    more, one token routed elsewhere by rounding moves a whole layer's gradients (seen in either model)."""
    needs(device)
    if case.key == "deepseek_v4" and Version(transformers.__version__) < Version("5.20"):
        pytest.skip("before 5.20, DeepseekV4RMSNorm returns fp32 with its fp32 weight: eager bf16 fails too")
    fp32 = tiny_model(case, device, experts=2)
    eager = tiny_model(case, device, dtype=torch.bfloat16, experts=2)
    patched = copy.deepcopy(eager)
    case.apply(patched)
    ids = batch(device)
    loss, grads = loss_and_grads(fp32, ids)
    (loss_e, grads_e), (loss_p, grads_p) = loss_and_grads(eager, ids), loss_and_grads(patched, ids)
    assert rel(loss_p, loss) <= 2 * rel(loss_e, loss) + 1e-4
    assert rel(flat(grads_p), flat(grads)) <= 2 * rel(flat(grads_e), flat(grads)) + 1e-3
    errors = {name: (rel(grads_p[name], g), rel(grads_e[name], g)) for name, g in grads.items()}
    assert all(e_p <= 4 * e_e + 0.1 for e_p, e_e in errors.values()), errors


def test_hyper_connection_module_returns_what_hf_returns(case):
    """The mapping of fn / scale / base at the module itself: post, comb (not transposed) and collapsed."""
    model = tiny_model(case)
    hc = case.layers(model)[-1].ffn_hc
    x = torch.randn(2, 5, 4, 32)
    post, comb, collapsed = hc(x)
    assert (comb - comb.transpose(-1, -2)).abs().max() > 0.1  # a transposed comb would fail below
    case.apply(model)
    for got, want in zip(hc(x), (post, comb, collapsed)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_patched_forwards_take_hf_arguments(case):
    """Each replacement accepts the arguments of the forward it replaces, in the same order and with
    the same defaults (the HC modules' mix=True, for the patched layers, comes after them)."""
    for name in case.patched_classes:
        cls = case.cls(name)
        hf = list(inspect.signature(cls.forward).parameters.values())
        ours = list(inspect.signature(_forward(case, name)).parameters.values())
        assert [(p.name, p.kind, p.default) for p in ours[: len(hf)]] == [(p.name, p.kind, p.default) for p in hf], name


def _forward(case, name):
    """The replacement forward of the installed release for class name."""
    from mhc_ops.integrations import deepseek_v4, glm5_next

    family = {"deepseek_v4": deepseek_v4.FAMILY, "glm5_next": glm5_next.FAMILY}[case.key]
    _, row = _patch.modeling(family)
    return family.forwards(row, "auto")[name]


def test_activation_checkpointing_still_recomputes(case):
    """Since transformers 5.23 the checkpointing lives in a wrapper around each layer's forward; the
    patch keeps it: the attention runs again in backward, and the gradients are the eager ones."""
    eager = tiny_model(case)
    patched = copy.deepcopy(eager)
    patched.train()
    # 5.23 renamed gradient_checkpointing_enable (now deprecated); 5.17 has only the old name.
    enable = getattr(patched, "activation_checkpointing_enable", None) or patched.gradient_checkpointing_enable
    enable()
    case.apply(patched)
    calls = []
    case.layers(patched)[0].self_attn.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    ids = batch()
    got = loss_and_grads(patched, ids)
    assert len(calls) == 2  # the forward, then the recomputation in backward
    assert_same(got, loss_and_grads(eager, ids))


# ---- under torch.compile ----------------------------------------------------------------------------------


def test_patched_layers_compile_fullgraph_and_match_eager(case, fresh_dynamo):
    """Every patched decoder layer (and DeepSeek-V4's head) under torch.compile(backend="aot_eager",
    fullgraph=True): Dynamo traces them without a graph break (fullgraph raises at the first one), the
    graphs hold mhc-ops' ops, and the loss and every gradient are the eager patched model's and HF's.
    (docs/integrations.md, "Under torch.compile".)"""
    eager = tiny_model(case)
    patched = copy.deepcopy(eager)
    case.apply(patched)
    compiled = copy.deepcopy(patched)
    targets = []

    def backend(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    compile_layers(case, compiled, backend)
    ids = batch()
    ref, ref_patched = loss_and_grads(eager, ids), loss_and_grads(patched, ids)
    for _ in range(2):  # the compiling call, then the compiled code
        try:
            loss, grads = loss_and_grads(compiled, ids)
        except Exception as e:  # noqa: BLE001 (HF's own model may fail too: then not the patch's doing)
            own = copy.deepcopy(eager)
            compile_layers(case, own, "aot_eager")
            try:
                loss_and_grads(own, ids)
            except Exception as hf:  # noqa: BLE001
                pytest.skip(f"transformers {transformers.__version__}'s own model fails so: {str(hf).splitlines()[:2]}")
            raise e
        # AOTAutograd gives a zero gradient, not None, to the parameters used only through top-k indices
        # (the indexers; HF's own model compiled alike): not mhc-ops' doing.
        extra = {name: grads.pop(name) for name in grads.keys() - ref[1].keys()}
        assert all(".indexer." in name and not g.any() for name, g in extra.items()), extra
        assert_same((loss, grads), ref_patched)
        assert_same((loss, grads), ref)
    assert any("mhc_ops" in t for t in targets), sorted(set(targets))


@pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs TRITON_INTERPRET=1 or a CUDA device")
def test_compiled_layers_decode_through_the_boundary_op(case, fresh_dynamo):
    """At decode (no_grad, 6 tokens, Triton), the patched layers under torch.compile(fullgraph=True) run the
    attention post and the MLP pre as the op mhc_ops::boundary_decode (the opaque twin through the
    interpreter), the logits as HF eager's."""
    eager = tiny_model(case, KERNEL_DEVICE)
    compiled = copy.deepcopy(eager)
    case.apply(compiled, backend="triton")
    targets = []

    def backend(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    compile_layers(case, compiled, backend)
    ids = batch(KERNEL_DEVICE)[:, :3]
    with torch.no_grad():
        got, ref = compiled(input_ids=ids).logits, eager(input_ids=ids).logits
    assert rel(got, ref) <= LOSS_RTOL
    assert any("boundary_decode" in t for t in targets), sorted(set(targets))


def compile_layers(case, model, backend) -> None:
    heads = [m for m in model.modules() if type(m).__name__ == "DeepseekV4HyperHead"]
    for module in (*case.layers(model), *heads):
        module.compile(backend=backend, fullgraph=True)


# ---- what is patched, and the revert ------------------------------------------------------------------


def test_model_patch_keeps_parameters_and_touches_nothing_else(case):
    originals = {name: case.cls(name).forward for name in case.patched_classes}
    model, other = tiny_model(case), tiny_model(case)
    params = list(model.named_parameters())
    state_keys = list(model.state_dict())
    case.apply(model)
    assert list(model.named_parameters()) == params  # same names, same tensors
    assert list(model.state_dict()) == state_keys
    patched = {type(m).__name__ for m in model.modules() if is_patched(m)}
    assert patched == set(case.patched_classes)
    assert not any(is_patched(m) for m in other.modules())
    assert {name: case.cls(name).forward for name in case.patched_classes} == originals
    # Names and isinstance stay HF's (the layer's class name is what FSDP's auto-wrap and _no_split_modules use).
    layer = case.layers(model)[0]
    assert type(layer).__name__ == case.layer_class and isinstance(layer, case.cls(case.layer_class))


def test_model_patch_reverts_and_is_idempotent(case):
    eager = tiny_model(case)
    model = copy.deepcopy(eager)
    classes = [type(m) for m in model.modules()]
    ids = batch()
    ref = loss_and_grads(eager, ids)
    case.apply(model)
    case.apply(model)
    patched_classes = [type(m) for m in model.modules()]
    assert_same(loss_and_grads(model, ids), ref)
    case.apply(model, backend="golden")  # another backend: the same modules, other classes
    switched = [type(m) for m in model.modules()]
    assert [c.__name__ for c in switched] == [c.__name__ for c in patched_classes] and switched != patched_classes
    assert_same(loss_and_grads(model, ids), ref)
    case.revert(model)
    assert [type(m) for m in model.modules()] == classes
    assert_exact(loss_and_grads(model, ids), ref)


def test_class_patch_applies_to_every_model_and_reverts(case):
    originals = {name: case.cls(name).forward for name in case.patched_classes}
    before = tiny_model(case)  # built before the patch: patched too
    ids = batch()
    ref = loss_and_grads(before, ids)
    case.apply()
    case.apply()
    assert all(case.cls(name).forward is not originals[name] for name in case.patched_classes)
    assert_same(loss_and_grads(before, ids), ref)
    assert_same(loss_and_grads(tiny_model(case), ids), ref)  # built after
    case.revert()
    assert {name: case.cls(name).forward for name in case.patched_classes} == originals
    assert_exact(loss_and_grads(before, ids), ref)


def test_context_manager(case):
    eager = tiny_model(case)
    model = copy.deepcopy(eager)
    ids = batch()
    with case.patched(model) as patched:
        assert patched is model and is_patched(case.layers(model)[0])
        assert_same(loss_and_grads(model, ids), loss_and_grads(eager, ids))
    assert not any(is_patched(m) for m in model.modules())
    hc = case.cls(case.hc_class)
    original = hc.forward
    with case.patched():
        assert hc.forward is not original
    assert hc.forward is original


# ---- code it has not read ------------------------------------------------------------------------------


def test_changed_forward_is_refused_and_nothing_patched(case, monkeypatch):
    def forward(self, hidden_streams):  # a different computation under the same name
        return hidden_streams

    layer_forward = case.cls(case.layer_class).forward
    monkeypatch.setattr(case.cls(case.hc_class), "forward", forward)
    with pytest.raises(RuntimeError, match=rf"transformers {VERSION} has a {case.hc_class}\.forward .*changed"):
        case.apply()
    assert case.cls(case.layer_class).forward is layer_forward
    with pytest.raises(RuntimeError, match=rf"{case.hc_class}\.forward"):
        case.apply(tiny_model(case))


def test_missing_class_or_module_is_refused(case, monkeypatch):
    with monkeypatch.context() as m:
        m.delattr(case.module(), case.layer_class)
        with pytest.raises(RuntimeError, match=rf"transformers {VERSION} has no {case.layer_class}"):
            case.apply()
    with monkeypatch.context() as m:
        m.setitem(sys.modules, case.modeling.rsplit(".", 1)[0], None)
        m.setitem(sys.modules, case.modeling, None)
        with pytest.raises(RuntimeError, match=rf"transformers {VERSION} has no "):
            case.apply()
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "transformers", None)
        with pytest.raises(ImportError, match=r"pip install -e \"\.\[transformers\]\" in the mhc-ops clone"):
            case.apply()


def test_model_whose_modules_differ_is_refused(case):
    model = tiny_model(case)
    hc = case.layers(model)[1].attn_hc
    del hc.hc_sinkhorn_iters
    path = next(p for p, m in model.named_modules() if m is hc)
    module = rf"{case.hc_class} \({re.escape(path)}\)"
    with pytest.raises(RuntimeError, match=rf"transformers {VERSION} built a {module} without hc_sinkhorn_iters"):
        case.apply(model)
    assert not any(is_patched(m) for m in model.modules())  # checked before any patch

    class Custom(case.cls(case.hc_class)):
        def forward(self, x):
            return x.sum(dim=2)

    model = tiny_model(case)
    case.layers(model)[0].ffn_hc.__class__ = Custom
    with pytest.raises(RuntimeError, match=r"Custom\.forward"):
        case.apply(model)

    model = tiny_model(case)
    case.layers(model)[0].ffn_hc.forward = lambda x: x  # what accelerate's hooks do
    with pytest.raises(RuntimeError, match=r"layers\.0\.ffn_hc has a forward of its own"):
        case.apply(model)
    with pytest.raises(ValueError, match="holds no .* hyper-connection"):
        case.apply(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"\(model\): expected a torch.nn.Module or None"):
        case.apply("model")
    with pytest.raises(ValueError, match=r"backend: expected one of 'auto', 'golden', 'triton', got 'cuda'"):
        case.apply(model, backend="cuda")
