"""mhc_ops.integrations.apply(model) / revert(model): every supported family found in a model, said
which (return value and log), all checked before anything is patched."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

pytest.importorskip("transformers")

from mhc_ops import integrations  # noqa: E402

from .families import CASES, assert_exact, assert_same, batch, case_params, is_patched, loss_and_grads, tiny_model  # noqa: E402


@pytest.fixture(params=case_params())
def case(request):
    return request.param


class _Records(logging.Handler):
    """The records of one logger (pytest's caplog needs its logging plugin, which a run may disable)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def records():
    logger, handler = logging.getLogger("mhc_ops.integrations"), _Records()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_apply_patches_the_family_it_finds_and_says_so(case, records):
    eager = tiny_model(case)
    model = copy.deepcopy(eager)
    assert integrations.apply(model) == (case.key,)
    patched = sorted({type(m).__name__ for m in model.modules() if is_patched(m)})
    assert patched == sorted(case.patched_classes)
    (record,) = records
    assert case.bench.label in record.getMessage() and all(name in record.getMessage() for name in patched)
    ids = batch()
    ref = loss_and_grads(eager, ids)
    assert_same(loss_and_grads(model, ids), ref)
    assert integrations.revert(model) == (case.key,)
    assert not any(is_patched(m) for m in model.modules())
    assert integrations.revert(model) == ()
    assert_exact(loss_and_grads(model, ids), ref)


class _Both(torch.nn.Module):
    """A model holding both families (as a distillation or an ensemble would)."""

    def __init__(self):
        super().__init__()
        self.deepseek_v4 = tiny_model(CASES["deepseek_v4"])
        self.glm5_next = tiny_model(CASES["glm5_next"])


def test_apply_patches_every_family_in_a_model():
    model = _Both()
    assert integrations.apply(model) == integrations.FAMILIES == ("deepseek_v4", "glm5_next")
    for key in integrations.FAMILIES:
        case = CASES[key]
        names = {type(m).__name__ for m in getattr(model, key).modules() if is_patched(m)}
        assert names == set(case.patched_classes)
    assert integrations.revert(model) == integrations.FAMILIES
    assert not any(is_patched(m) for m in model.modules())


def test_apply_checks_every_family_before_patching_any():
    model = _Both()
    CASES["glm5_next"].layers(model.glm5_next)[0].attn_hc.forward = lambda x: x  # what accelerate's hooks do
    with pytest.raises(RuntimeError, match=r"glm5_next\.model\.language_model\.layers\.0\.attn_hc has a forward of its own"):
        integrations.apply(model)
    assert not any(is_patched(m) for m in model.modules())


def test_apply_refuses_what_it_cannot_patch():
    with pytest.raises(ValueError, match=r"apply\(model\): Linear holds no hyper-connection of a supported family \(DeepSeek-V4: .*GLM-5-Next: "):
        integrations.apply(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"apply\(model\): expected a torch.nn.Module, got str"):
        integrations.apply("model")
    with pytest.raises(TypeError, match=r"revert\(model\): expected a torch.nn.Module, got NoneType"):
        integrations.revert(None)
    with pytest.raises(ValueError, match=r"apply: backend: expected one of 'auto', 'golden', 'triton', got 'gpu'"):
        integrations.apply(torch.nn.Linear(2, 2), backend="gpu")
