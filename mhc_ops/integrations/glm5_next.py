"""mhc-ops under Hugging Face transformers' GLM-5-Next (``Glm5NextForConditionalGeneration``; its text
model ``Glm5NextTextModel`` holds the hyper-connections)::

    from mhc_ops.integrations import apply_to_glm5_next
    apply_to_glm5_next()          # the classes: every GLM-5-Next model, built or loaded, before or after
    apply_to_glm5_next(model)     # or only the modules of this model

GLM-5-Next's text decoder carries DeepSeek-V4's hyper-connections: ``Glm5NextTextHyperConnection`` is
``DeepseekV4HyperConnection``'s code (the same fingerprint in every release read) and its decoder layer
mixes as DeepSeek-V4's does, around other blocks (linear attention or indexed attention, dense MLP or
MoE). The patch replaces two forwards and keeps every parameter:

- ``Glm5NextTextHyperConnection.forward``: DeepSeek-V4's replacement (mhc_pre + sinkhorn; paired with
  the block's mhc_post through ``mhc_ops.nn.hc_pre`` / ``hc_post`` when the patched layer calls it).
- ``Glm5NextTextDecoderLayer.forward``: its two inline mixings ``post * out + comb^T @ streams`` are
  mhc_post (at decode the attention's post and the MLP's pre one boundary, the MLP's post and the next
  layer's pre another, as DeepSeek-V4's); the blocks are called as HF calls them, with the release's cache argument
  (``past_key_values`` up to 5.23, ``cache`` from 5.24), and the layer returns HF's
  ``(streams, topk_indices)``.

``Glm5NextTextHyperHead`` is an unweighted mean over the streams with no parameters: left as it is.
The vision tower has no hyper-connections. Checks as for DeepSeek-V4 (``deepseek_v4.py``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch

from . import _patch
from .deepseek_v4 import hyper_connection_attributes, hyper_connection_forward, layer_output

__all__ = ["apply_to_glm5_next", "glm5_next_patched", "revert_glm5_next"]


def _layer(self, hidden_states: torch.Tensor, attention: dict, linear: dict):
    """The decoder layer with its blocks' keyword arguments: (attention, for the indexed attention;
    linear, for the linear attention). hidden_states [B, S, n, D] -> (the same, topk_indices)."""
    collapsed, mix = self.attn_hc(hidden_states, mix=True)
    h = self.input_layernorm(collapsed)
    topk_indices = None
    if self.block_type == "linear_attention":
        h = self.self_attn(hidden_states=h, **linear)
    else:
        h, _, topk_indices = self.self_attn(hidden_states=h, **attention)
    _, collapsed, mix = self.ffn_hc(hidden_states, mix=True, after=(mix, h))  # one boundary at decode
    return layer_output(self, mix, self.mlp(self.post_attention_layernorm(collapsed))), topk_indices


@_patch.ours
def _decoder_layer_forward_past_key_values(
    self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None, past_key_values=None, use_cache: bool | None = False,
    position_embeddings=None, prev_topk_indices: torch.Tensor | None = None, **kwargs,
):  # fmt: skip
    """Glm5NextTextDecoderLayer.forward up to transformers 5.23 (its signature), on mhc-ops."""
    attention = dict(
        attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
        use_cache=use_cache, position_embeddings=position_embeddings, prev_topk_indices=prev_topk_indices, **kwargs,
    )  # fmt: skip
    linear = dict(cache_params=past_key_values, attention_mask=attention_mask, **kwargs)
    return _layer(self, hidden_states, attention, linear)


@_patch.ours
def _decoder_layer_forward_cache(
    self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None, cache=None, use_cache: bool | None = False,
    position_embeddings=None, prev_topk_indices: torch.Tensor | None = None, **kwargs,
):  # fmt: skip
    """Glm5NextTextDecoderLayer.forward from transformers 5.24 (the cache argument renamed), on mhc-ops."""
    attention = dict(
        attention_mask=attention_mask, position_ids=position_ids, cache=cache, use_cache=use_cache,
        position_embeddings=position_embeddings, prev_topk_indices=prev_topk_indices, **kwargs,
    )  # fmt: skip
    linear = dict(cache=cache, attention_mask=attention_mask, **kwargs)
    return _layer(self, hidden_states, attention, linear)


@functools.cache
def _cache_forward() -> Callable:
    """_decoder_layer_forward_cache under HF's decorator for the old name, as 5.24's forward is: a caller's
    past_key_values= becomes cache= with HF's deprecation warning."""
    from transformers.utils.deprecation import deprecate_kwarg

    return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(_decoder_layer_forward_cache)


def _attributes(row: dict) -> dict[str, tuple[str, ...]]:
    return {
        "Glm5NextTextHyperConnection": hyper_connection_attributes(row["norm_eps"]),
        "Glm5NextTextDecoderLayer": (
            "attn_hc", "ffn_hc", "self_attn", "mlp", "input_layernorm", "post_attention_layernorm", "block_type",
        ),  # fmt: skip
    }


def _forwards(row: dict, backend: str) -> dict[str, Callable]:
    layer = _decoder_layer_forward_past_key_values if row["cache"] == "past_key_values" else _cache_forward()
    return {
        "Glm5NextTextHyperConnection": hyper_connection_forward(row["norm_eps"], backend),
        "Glm5NextTextDecoderLayer": layer,
    }


FAMILY = _patch.Family(
    key="glm5_next",
    label="GLM-5-Next",
    module="transformers.models.glm5_next.modeling_glm5_next",
    entry="apply_to_glm5_next",
    parts={"hyper_connection": ("Glm5NextTextHyperConnection", "Glm5NextTextDecoderLayer")},
    markers=("Glm5NextTextHyperConnection",),
    attributes=_attributes,
    forwards=_forwards,
)


def apply_to_glm5_next(model: torch.nn.Module | None = None, *, backend: str = "auto") -> None:
    """Run GLM-5-Next's hyper-connections on mhc-ops: the HC modules and the decoder layers' mixing.

    model None: patch the transformers classes (every instance, existing or later; patch before
    accelerate's hooks or FSDP2 save a forward). A model (``Glm5NextForConditionalGeneration``,
    ``Glm5NextModel``, ``Glm5NextTextModel`` or anything holding their modules): only its modules.
    backend, the checks, idempotence and the revert: as ``apply_to_deepseek_v4``'s.
    """
    _patch.apply(FAMILY, model, ("hyper_connection",), backend)


def revert_glm5_next(model: torch.nn.Module | None = None) -> None:
    """Undo apply_to_glm5_next: model None restores the classes' forwards; a model, its modules' classes."""
    _patch.revert(FAMILY, model)


@contextlib.contextmanager
def glm5_next_patched(model: torch.nn.Module | None = None, *, backend: str = "auto") -> Iterator[torch.nn.Module | None]:
    """``with glm5_next_patched(model): ...``: apply_to_glm5_next on entry, revert_glm5_next on exit."""
    apply_to_glm5_next(model, backend=backend)
    try:
        yield model
    finally:
        revert_glm5_next(model)
