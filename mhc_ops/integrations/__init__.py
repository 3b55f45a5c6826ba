"""mhc-ops under third-party model code, Liger-Kernel style: one call swaps a model's eager
hyper-connections for the mhc-ops kernels, keeping its parameters (names, shapes, checkpoints).

``apply(model)`` patches every supported family it finds in a model (DeepSeek-V4, GLM-5-Next) and
returns which; ``apply_to_deepseek_v4`` / ``apply_to_glm5_next`` patch one family (the classes too).
Each integration imports its library only when called: ``transformers`` is an optional extra
(``pip install -e ".[transformers]"`` in the clone); the releases read are ``SUPPORTED_TRANSFORMERS``.
"""

from __future__ import annotations

import logging

import torch

from . import _patch, deepseek_v4, glm5_next
from ._versions import SUPPORTED_TRANSFORMERS
from .deepseek_v4 import apply_to_deepseek_v4, deepseek_v4_patched, revert_deepseek_v4
from .glm5_next import apply_to_glm5_next, glm5_next_patched, revert_glm5_next

__all__ = [
    "FAMILIES", "SUPPORTED_TRANSFORMERS", "apply", "apply_to_deepseek_v4", "apply_to_glm5_next",
    "deepseek_v4_patched", "glm5_next_patched", "revert", "revert_deepseek_v4", "revert_glm5_next",
]  # fmt: skip

_log = logging.getLogger(__name__)
_FAMILIES = (deepseek_v4.FAMILY, glm5_next.FAMILY)
FAMILIES = tuple(f.key for f in _FAMILIES)  # what apply() can report


def apply(model: torch.nn.Module, *, backend: str = "auto") -> tuple[str, ...]:
    """Patch every supported hyper-connection family found in model (every part of each: its HC modules,
    decoder layers' mixing, DeepSeek-V4's head), as ``apply_to_<family>(model, backend=backend)``.

    -> the families patched, in FAMILIES' order (e.g. ``("deepseek_v4",)``); each is logged at INFO on
    the ``mhc_ops.integrations`` logger with what was patched. ValueError if model holds none;
    RuntimeError (patching nothing) for a transformers release or code that was not read.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"apply(model): expected a torch.nn.Module, got {type(model).__name__}")
    _patch.check_backend("apply", backend)
    found = [f for f in _FAMILIES if f.holds(model)]
    if not found:
        known = "; ".join(f"{f.label}: {', '.join(f.markers)}" for f in _FAMILIES)
        raise ValueError(f"apply(model): {type(model).__name__} holds no hyper-connection of a supported family ({known})")
    patches = [(family, _patch.plan(family, model, tuple(family.parts), backend)) for family in found]
    for family, patch in patches:  # every family checked before any is patched
        what = ", ".join(f"{count} {name}" for name, count in patch().items())
        _log.info("mhc_ops.integrations.apply: %s on mhc-ops (backend %s): %s", family.label, backend, what)
    return tuple(f.key for f in found)


def revert(model: torch.nn.Module) -> tuple[str, ...]:
    """Undo apply(model) (and any apply_to_<family>(model)): every patched module of model back to its
    transformers class. -> the families whose modules were restored."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"revert(model): expected a torch.nn.Module, got {type(model).__name__}")
    return tuple(f.key for f in _FAMILIES if _patch.revert(f, model))
