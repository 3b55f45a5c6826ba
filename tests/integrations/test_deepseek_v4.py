"""DeepSeek-V4's own parts (the contract both families keep: test_contract.py): the head, and each
part patched alone."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("transformers.models.deepseek_v4", reason="this transformers has no DeepSeek-V4")

from .families import CASES, assert_same, batch, is_patched, loss_and_grads, tiny_model  # noqa: E402

CASE = CASES["deepseek_v4"]


@pytest.mark.parametrize("hyper_head", [True, False])
def test_each_part_alone_matches_eager(hyper_head):
    eager = tiny_model(CASE)
    patched = copy.deepcopy(eager)
    CASE.apply(patched, hyper_connection=not hyper_head, hyper_head=hyper_head)
    ids = batch()
    assert_same(loss_and_grads(patched, ids), loss_and_grads(eager, ids))
    layer, head = patched.model.layers[0], patched.model.hc_head
    assert is_patched(head) == hyper_head
    assert is_patched(layer) == is_patched(layer.attn_hc) != hyper_head


def test_hyper_head_returns_what_hf_returns():
    """The head's hc_fn / hc_scale / hc_base as mhc_pre's pre rows: HF's collapse."""
    model = tiny_model(CASE)
    head = model.model.hc_head
    x = torch.randn(2, 5, 4, 32)
    want = head(x)
    CASE.apply(model, hyper_connection=False)
    torch.testing.assert_close(head(x), want, rtol=1e-5, atol=1e-6)


def test_every_hyper_connection_parameter_gets_its_gradient():
    """4 HC modules (2 layers) and the head, 3 parameters each, all with a non-zero gradient through the
    patch (the head's zero post and comb rows leave x's gradient as HF's)."""
    model = tiny_model(CASE)
    CASE.apply(model)
    _, grads = loss_and_grads(model, batch())
    hc = [name for name in grads if "_hc." in name or "hc_head." in name]
    assert len(hc) == 4 * 3 + 3 and all(grads[name].norm() > 1e-9 for name in hc)
