"""Tensors derived from weights only (the bf16 split of gamma*phi), computed once per weight version.

``weight_derived`` keeps a value until a weight changes: in place (its version counter moves, as at
every optimizer step), by a new storage (``.data = ...``), or when the weight is freed. An in-place
change through ``.data`` bypasses version counting, as for autograd: call ``clear()`` after it.
Bypassed (computed per call) inside a registered op's body (a compiled graph's allocations can come
from a CUDA-graph pool, docs/bugs/weight-cache-in-graph-pool.md), during a CUDA-graph capture (the
graph must rebuild it, so a replay after an optimizer step sees the new weights) and for
inference-mode tensors (no version counter). A weight seen in a capture is never cached again: replays
change it without moving its version. A weight changed only by replays of a graph that never called
the op is invisible here: call ``clear()`` after such replays, or capture the op too.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from ._launch import in_op_body

_ENTRIES: dict[tuple, tuple] = {}
_CAPTURED: set[int] = set()  # ids of weights seen during a CUDA-graph capture


def _stamp(w: torch.Tensor | None) -> tuple:
    return (None,) if w is None else (w.data_ptr(), w._version, w.shape, w.dtype)


def weight_derived(name: str, fn: Callable[..., torch.Tensor], *weights: torch.Tensor | None) -> torch.Tensor:
    """fn(*weights), cached under (name, the weights' identities) while their versions hold."""
    if in_op_body():
        return fn(*weights)
    key = (name, *(id(w) for w in weights))
    if weights[0].is_cuda and torch.cuda.is_current_stream_capturing():
        _CAPTURED.update(id(w) for w in weights if w is not None)
        _ENTRIES.pop(key, None)
        return fn(*weights)
    if any(w is not None and (w.is_inference() or id(w) in _CAPTURED) for w in weights):
        return fn(*weights)
    stamp = tuple(_stamp(w) for w in weights)
    entry = _ENTRIES.get(key)
    if entry is not None and entry[1] == stamp and all(r() is w for r, w in zip(entry[0], weights)):
        return entry[2]
    value = fn(*weights)
    refs = tuple(
        weakref.ref(w, lambda _, key=key: _ENTRIES.pop(key, None)) if w is not None else _none for w in weights
    )
    _ENTRIES[key] = (refs, stamp, value)
    return value


def _none() -> None:
    return None


def clear() -> None:
    """Forget every cached tensor."""
    _ENTRIES.clear()
    _CAPTURED.clear()
