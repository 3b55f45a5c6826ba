"""GLM-5-Next's own parts (the contract both families keep: test_contract.py): the head left as it is,
the top-k indices handed from layer to layer, the release's cache argument."""

from __future__ import annotations

import copy
import inspect
from contextlib import nullcontext

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("transformers.models.glm5_next", reason="this transformers has no GLM-5-Next")

from mhc_ops.integrations import _patch, glm5_next  # noqa: E402

from .families import CASES, batch, is_patched, loss_and_grads, tiny_model  # noqa: E402

CASE = CASES["glm5_next"]


def test_head_and_vision_tower_are_left_as_they_are():
    """The head is a parameter-free mean (nothing to patch); the vision tower has no hyper-connections."""
    model = tiny_model(CASE)
    CASE.apply(model)
    assert not is_patched(model.model.language_model.hc_head)
    assert not any(is_patched(m) for m in model.model.visual.modules())
    assert all(is_patched(layer) and is_patched(layer.attn_hc) for layer in CASE.layers(model))


def test_shared_indexer_layer_gets_the_top_k_of_the_layer_before():
    """The toy model's last layer reuses the previous indexed layer's top-k (indexer_types "shared"): the
    patched layers return HF's (streams, topk_indices), or the shared layer would raise."""
    model = tiny_model(CASE)
    assert model.config.text_config.indexer_types[-1] == "shared"
    CASE.apply(model)
    seen = []
    for layer in CASE.layers(model):
        layer.register_forward_hook(lambda module, args, kwargs, out: seen.append(out[1]), with_kwargs=True)
    model(input_ids=batch())
    assert seen[0] is None and isinstance(seen[1], torch.Tensor) and seen[2] is None


def test_layer_takes_the_release_cache_argument():
    """The patched decoder layer's cache argument is the release's (past_key_values up to 5.23, cache from
    5.24), and from 5.24 the old name still works, as HF's deprecate_kwarg makes it."""
    _, row = _patch.modeling(glm5_next.FAMILY)
    layer_cls = CASE.cls(CASE.layer_class)
    assert row["cache"] in inspect.signature(layer_cls.forward).parameters
    model = tiny_model(CASE)
    patched = copy.deepcopy(model)
    CASE.apply(patched)
    assert row["cache"] in inspect.signature(type(CASE.layers(patched)[0]).forward).parameters
    x = torch.randn(2, 16, 4, 32)
    mask = torch.ones(2, 16, dtype=torch.bool)
    for name in {"past_key_values", row["cache"]}:
        old = name != row["cache"]
        with pytest.warns(FutureWarning, match="past_key_values") if old else nullcontext():
            want = CASE.layers(model)[0](x, attention_mask=mask, **{name: None})
        with pytest.warns(FutureWarning, match="past_key_values") if old else nullcontext():
            got = CASE.layers(patched)[0](x, attention_mask=mask, **{name: None})
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)


def test_every_hyper_connection_parameter_gets_its_gradient():
    """6 HC modules (3 layers), 3 parameters each, all with a non-zero gradient through the patch."""
    model = tiny_model(CASE)
    CASE.apply(model)
    _, grads = loss_and_grads(model, batch())
    hc = [name for name in grads if "_hc." in name]
    assert len(hc) == 6 * 3 and all(grads[name].norm() > 1e-9 for name in hc)
