"""The two model families as the integration tests see them: a tiny random model of each (the
benchmark's --toy model), how to patch it, and the loss-and-gradient comparison."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from benchmarks import hf_models
from mhc_ops import integrations

VOCAB, SEQ, BATCH = 64, 16, 2
LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4  # fp32: norm-wise relative, per parameter


@dataclasses.dataclass(frozen=True)
class Case:
    key: str
    modeling: str  # transformers' modeling module
    apply: Callable  # apply_to_<family>(model=None, **options)
    revert: Callable
    patched: Callable  # the context manager
    patched_classes: tuple[str, ...]  # what a full patch replaces
    hc_class: str  # the hyper-connection module
    layer_class: str
    layers: Callable  # model -> its decoder layers

    @property
    def bench(self) -> hf_models.Family:
        return hf_models.FAMILIES[self.key]

    def module(self):
        import importlib

        return importlib.import_module(self.modeling)

    def cls(self, name: str) -> type:
        return getattr(self.module(), name)


CASES = {
    "deepseek_v4": Case(
        "deepseek_v4", "transformers.models.deepseek_v4.modeling_deepseek_v4", integrations.apply_to_deepseek_v4,
        integrations.revert_deepseek_v4, integrations.deepseek_v4_patched,
        ("DeepseekV4HyperConnection", "DeepseekV4DecoderLayer", "DeepseekV4HyperHead"), "DeepseekV4HyperConnection",
        "DeepseekV4DecoderLayer", lambda m: m.model.layers,
    ),
    "glm5_next": Case(
        "glm5_next", "transformers.models.glm5_next.modeling_glm5_next", integrations.apply_to_glm5_next,
        integrations.revert_glm5_next, integrations.glm5_next_patched,
        ("Glm5NextTextHyperConnection", "Glm5NextTextDecoderLayer"), "Glm5NextTextHyperConnection",
        "Glm5NextTextDecoderLayer", lambda m: m.model.language_model.layers,
    ),
}


def case_params():
    """pytest params of the families, each skipped where the installed transformers lacks it."""
    out = []
    for key, case in CASES.items():
        try:
            case.module()
            marks = ()
        except ImportError:
            marks = pytest.mark.skip(reason=f"this transformers has no {case.modeling}")
        out.append(pytest.param(case, id=key, marks=marks))
    return out


def tiny_model(case: Case, device="cpu", seed=0, dtype=torch.float32, experts=4):
    """The benchmark's --toy model of the family (fp32; dtype: cast as from_pretrained would load it;
    experts: routed experts per MoE layer, of which 2 per token).
    HF's init leaves base = 0, scale = 1 and fn ~ N(0, 0.02): comb is then nearly J/n, symmetric, and
    a transposed comb, a swapped scale or a misplaced bias would go unnoticed. Random HC parameters
    (projection of unit variance, bias N(0, 1), a distinct scale per part) make each mapping error show."""
    config = case.bench.config(2, 32, 4, SEQ, VOCAB, experts, True)
    model = hf_models.build_model(case.bench, config, torch.device("cpu"), torch.float32, seed)
    with torch.no_grad():
        for module in model.modules():
            name = type(module).__name__
            if name == case.hc_class:
                fn, scale, base = module.fn, module.scale, module.base
            elif name == "DeepseekV4HyperHead":
                fn, scale, base = module.hc_fn, module.hc_scale, module.hc_base
            else:
                continue
            fn.normal_(0.0, fn.shape[1] ** -0.5)
            scale.uniform_(0.5, 1.5)
            base.normal_()
    return hf_models.cast_as_loaded(model, dtype).to(device)


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


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.double().flatten() for _, g in sorted(grads.items())])


def assert_same(got, ref, loss_rtol=LOSS_RTOL, grad_rtol=GRAD_RTOL):
    (loss, grads), (loss_ref, grads_ref) = got, ref
    assert rel(loss, loss_ref) <= loss_rtol, (loss.item(), loss_ref.item())
    assert grads.keys() == grads_ref.keys()
    errors = {name: rel(grads[name], grads_ref[name]) for name in grads_ref}
    assert all(e <= grad_rtol for e in errors.values()), {k: e for k, e in errors.items() if e > grad_rtol}


def assert_exact(got, ref):
    (loss, grads), (loss_ref, grads_ref) = got, ref
    assert torch.equal(loss, loss_ref) and grads.keys() == grads_ref.keys()
    assert all(torch.equal(grads[k], grads_ref[k]) for k in grads_ref)


def is_patched(module: torch.nn.Module) -> bool:
    return integrations._patch.is_patched_class(type(module))
