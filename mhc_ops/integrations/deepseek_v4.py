"""mhc-ops under Hugging Face transformers' DeepSeek-V4 (``DeepseekV4ForCausalLM``), Liger-Kernel style::

    from mhc_ops.integrations import apply_to_deepseek_v4
    apply_to_deepseek_v4()        # the classes: every DeepSeek-V4 model, built or loaded, before or after
    apply_to_deepseek_v4(model)   # or only the modules of this model

transformers runs mHC in eager PyTorch (transformers/models/deepseek_v4/modeling_deepseek_v4.py). The
patch replaces three forwards and keeps every parameter (names, shapes, dtypes), so checkpoints load
unchanged and an optimizer built before or after the patch sees the same tensors:

- ``DeepseekV4HyperConnection.forward``: the RMS-normalised projection, the sigmoid pre/post, the
  Sinkhorn loop and the pre collapse, as ``mhc_pre`` + ``sinkhorn``. HF's ``fn``, ``scale``, ``base``
  are mhc_pre's ``phi``, ``alpha``, ``bias`` as they are: the same coefficient layout
  ``[pre (n) | post (n) | comb (n*n, row-major)]``; no gamma. The eps of ``input_norm`` (the config's
  ``rms_norm_eps``; ``eps``, from 5.25 ``variance_epsilon``) is ``norm_eps``; ``hc_eps`` is both
  mhc_pre's ``hc_eps`` and Sinkhorn's ``eps``; ``hc_sinkhorn_iters`` is ``iters``.
- ``DeepseekV4DecoderLayer.forward``: its two inline mixings ``post * out + comb^T @ streams`` are
  ``mhc_post(streams, comb, out, post)`` (``comb^T @`` sums over comb's first index, the input stream,
  as mhc_post's h_res does: no transpose). Each block's pre and post are paired through
  ``mhc_ops.nn.hc_pre`` / ``hc_post``, so the streams' gradient from the post enters the pre backward
  as ``grad_x_post`` instead of a separate add. At decode (inference, at most 64 tokens and 6 streams,
  on Triton) the attention's post, the MLP's pre and its Sinkhorn run as one boundary: one launch
  (``kernels/decode.py``; the collapse in a second where the grid outgrows the GPU's SMs) instead of five;
  so do the MLP's post and the next layer's attention pre (``layer_output``: the model's loop is not
  patched, the layer learns which HC module its output goes to on the first decode call and checks it on
  every later one).
- ``DeepseekV4HyperHead.forward`` (``hyper_head=True``): the final collapse is mhc_pre's pre part
  alone; its ``hc_fn`` [n, nD], ``hc_scale`` [1], ``hc_base`` [n] fill the pre rows of phi / alpha /
  bias, zeros the post and comb rows, whose outputs are dropped.

The math is the same function as HF's (docs/integrations.md derives it). The rounding differs in a
bf16 model only: HF casts post and comb to bf16 and mixes in bf16, mhc_post keeps them fp32 and
rounds once, when it stores the streams.

Only code that was read is patched: the installed transformers must be one of ``SUPPORTED_TRANSFORMERS``
(the release table, ``_versions.py``) and every forward this relies on must have that release's
fingerprint (of the forward's code, blind to comments and layout); anything else raises
``RuntimeError`` naming the version and what differs.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Callable, Iterator

import torch

from mhc_ops import _impl
from mhc_ops._validate import check_inputs, check_post_inputs
from mhc_ops.nn import hc_post, hc_pre
from mhc_ops.ops import boundary_decode, mhc_pre, sinkhorn

from . import _patch

__all__ = ["apply_to_deepseek_v4", "deepseek_v4_patched", "revert_deepseek_v4"]


# ---- the replacement forwards -----------------------------------------------------------------------


class Mix:
    """A block's post waiting for its branch output, as the HC modules return it with mix=True: ``mix(out)`` ->
    the next streams, mhc_post(link, comb, out, post) through ``hc_post`` (the streams' gradient enters the pre's
    backward through link). The next block's HC module takes it whole (``after=(mix, out)``) to run this post
    and its own pre as one boundary at decode."""

    def __init__(self, link: torch.Tensor, comb: torch.Tensor, post: torch.Tensor, backend: str):
        self.link, self.comb, self.post, self.backend = link, comb, post, backend

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        return hc_post(self.link, self.comb, out, self.post, self.link, backend=self.backend)

    def decodes(self) -> bool:
        """Whether this post and the next pre run as one boundary (_impl.decodes: inference, eager or compiled, at
        most 64 tokens and 6 streams, on Triton)."""
        return _impl.decodes(self.link, [_impl.resolve_route(self.backend, None, self.link)])


class _Handoff(threading.local):
    """A decoder layer's last post and the next layer's first pre as one boundary at decode, without the model's
    loop: each layer output at decode is remembered (weakly) with its layer; the HC module next called with that
    very tensor is the layer's successor (_successor), so on later calls the layer runs the successor's pre in
    its own post's launch and leaves the result (ready) for the successor's call, which takes it only when
    called with the tensor the layer returned. Anything between them that makes a new tensor (a hook, another
    loop) costs a wasted pre, never a wrong one."""

    def __init__(self):
        self.produced: tuple[weakref.ref, weakref.ref] | None = None  # (layer, its output streams)
        self.ready: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # HC module -> (streams, collapsed, Mix)


_handoff = _Handoff()
_successor: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # decoder layer -> weakref to its next HC


def layer_output(layer: torch.nn.Module, mix: Mix, out: torch.Tensor) -> torch.Tensor:
    """A decoder layer's last post, mix(out) [B, S, n, D] -> the next streams; at decode (mix.decodes()) with
    the next layer's attention pre in the same boundary once that HC module is known (_Handoff)."""
    if torch.compiler.is_compiling() or not mix.decodes():  # the handoff is eager's: Python state between calls
        return mix(out)
    ref = _successor.get(layer)
    hc = ref() if ref is not None else None
    if hc is None:
        streams = mix(out)
    else:
        streams, collapsed, following = hc(mix.link, mix=True, after=(mix, out))
        _handoff.ready[hc] = (streams, collapsed, following)
    _handoff.produced = (weakref.ref(layer), weakref.ref(streams))
    return streams


def _take_ready(hc: torch.nn.Module, hidden_streams: torch.Tensor) -> tuple | None:
    """(collapsed, Mix) that the previous layer's boundary left for hc when hidden_streams is what it returned;
    else None, having learned hc as that layer's successor when hidden_streams is its output at decode."""
    ready = _handoff.ready.pop(hc, None)
    if ready is not None and ready[0] is hidden_streams:
        return ready[1], ready[2]
    produced, _handoff.produced = _handoff.produced, None
    if produced is not None and produced[1]() is hidden_streams and (layer := produced[0]()) is not None:
        _successor[layer] = weakref.ref(hc)
    return None


@functools.cache
def hyper_connection_forward(norm_eps: str, backend: str) -> Callable:
    """The ``*HyperConnection.forward`` on mhc-ops, for an ``input_norm`` whose eps is the attribute
    norm_eps (DeepSeek-V4's and GLM-5-Next's: the same code in every release read).

    hidden_streams [B, S, n, D] (the model's dtype) -> (post [B, S, n] fp32, comb [B, S, n, n] fp32
    doubly stochastic, collapsed [B, S, D] in hidden_streams' dtype), as HF returns them. With mix
    (the patched decoder layers): (collapsed, mix), a Mix: mix(out [B, S, D]) -> the next streams, this
    block's mhc_post, its gradient of the streams handed to the pre backward. With after=(prev, out) too
    (prev: the previous block's Mix, out: its branch output; hidden_streams: that block's input streams):
    (next streams, collapsed, mix), the previous block's post and this pre; at decode (Mix.decodes) as one
    boundary, post + pre + Sinkhorn and the collapse in one launch (kernels/decode.py), else as
    the two ops. With mix=True alone, at decode, the previous decoder layer may have run this pre already
    (layer_output): its result is taken when hidden_streams is that layer's output.
    """

    @_patch.ours
    def forward(self, hidden_streams: torch.Tensor, *, mix: bool = False, after: tuple | None = None):
        if after is not None and not mix:
            raise ValueError("after: expected mix=True with it (the call returns the next streams and a Mix)")
        # fp32 as mhc_pre takes them: a no-op for HC modules kept fp32; a model cast to bf16 as a whole
        # gets its gradients back through the cast.
        phi, alpha, bias = self.fn.float(), self.scale.float(), self.base.float()
        eps = getattr(self.input_norm, norm_eps)
        # HF runs the column pass once even for hc_sinkhorn_iters < 1, as sinkhorn(iters=1) does.
        iters = max(self.hc_sinkhorn_iters, 1)
        if after is not None:
            prev, out = after
            if prev.decodes():
                check_post_inputs(prev.link, prev.comb, out, prev.post)
                check_inputs(prev.link, phi=phi, alpha=alpha, bias=bias)
                streams, collapsed, post, comb, _ = boundary_decode(
                    prev.link, prev.comb, out, prev.post, None, phi, alpha, bias, None, iters, self.hc_eps, eps,
                    self.hc_eps,
                )  # fmt: skip
                return streams, collapsed, Mix(streams, comb, post, backend)
            hidden_streams = prev(out)
        elif mix and not torch.compiler.is_compiling() and (ready := _take_ready(self, hidden_streams)) is not None:
            return ready
        if mix:
            collapsed, post, comb, link = hc_pre(
                hidden_streams, phi, alpha, bias, norm_eps=eps, hc_eps=self.hc_eps, sinkhorn_iters=iters,
                sinkhorn_eps=self.hc_eps, backend=backend,
            )  # fmt: skip
            m = Mix(link, comb, post, backend)
            return (hidden_streams, collapsed, m) if after is not None else (collapsed, m)
        collapsed, post, comb_logits = mhc_pre(
            hidden_streams, phi, alpha, bias, norm_eps=eps, hc_eps=self.hc_eps, backend=backend
        )
        return post, sinkhorn(comb_logits, iters, self.hc_eps, backend=backend), collapsed

    return forward


@_patch.ours
def _decoder_layer_forward(self, hidden_states: torch.Tensor, input_ids: torch.Tensor | None = None, **kwargs):
    """DeepseekV4DecoderLayer.forward with both mixings on mhc_post, each paired with its block's pre; at decode,
    the attention's post and the MLP's pre as one boundary (the HC module's after=), and the MLP's post and the
    next layer's attention pre as another (layer_output).

    hidden_states [B, S, n, D] in the model's dtype, in and out. HF's ``post * out + comb^T @ streams``
    is ``out_streams[k] = post[k] * out + sum_j comb[j, k] * streams[j]``: mhc_post with h_res = comb.
    The HC modules are called as modules, so their hooks (ZeRO-3 gathering, FSDP) still run.
    """
    collapsed, mix = self.attn_hc(hidden_states, mix=True)
    attn_output, _ = self.self_attn(self.input_layernorm(collapsed), **kwargs)
    _, collapsed, mix = self.ffn_hc(hidden_states, mix=True, after=(mix, attn_output))
    return layer_output(self, mix, self.mlp(self.post_attention_layernorm(collapsed), input_ids=input_ids))


@functools.cache
def _hyper_head_forward(norm_eps: str, backend: str) -> Callable:
    @_patch.ours
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """DeepseekV4HyperHead.forward on mhc_pre: x [B, S, n, D] -> [B, S, D] in x's dtype.

        The head is ``sum_i (sigmoid(hc_scale * m[i] + hc_base[i]) + eps) * x[i]`` with m the normalised
        projection by hc_fn: mhc_pre's h_in when hc_fn, hc_scale, hc_base are its pre rows. The post and
        comb rows are zero (n*n + n rows of nD fp32: 1.3 MB at n = 4, D = 4096) and their outputs unused,
        so they get no gradient and add none to x's.
        """
        n = self.hc_mult
        fn = self.hc_fn.float()  # [n, nD]
        zeros = fn.new_zeros(n * n + n)
        phi = torch.cat([fn, fn.new_zeros(n * n + n, fn.shape[1])])  # [n*n + 2n, nD]
        alpha = torch.cat([self.hc_scale.float(), zeros[:2]])  # (hc_scale, 0, 0)
        bias = torch.cat([self.hc_base.float(), zeros])  # [n*n + 2n]
        norm_eps_value = getattr(self.input_norm, norm_eps)
        h_in, _, _ = mhc_pre(x, phi, alpha, bias, norm_eps=norm_eps_value, hc_eps=self.eps, backend=backend)
        return h_in

    return forward


def hyper_connection_attributes(norm_eps: str) -> tuple[str, ...]:
    """What hyper_connection_forward reads from a module."""
    return ("fn", "scale", "base", "hc_eps", "hc_sinkhorn_iters", f"input_norm.{norm_eps}")


def _attributes(row: dict) -> dict[str, tuple[str, ...]]:
    return {
        "DeepseekV4HyperConnection": hyper_connection_attributes(row["norm_eps"]),
        "DeepseekV4HyperHead": ("hc_fn", "hc_scale", "hc_base", "hc_mult", "eps", f"input_norm.{row['norm_eps']}"),
        "DeepseekV4DecoderLayer": (
            "attn_hc", "ffn_hc", "self_attn", "mlp", "input_layernorm", "post_attention_layernorm",
        ),  # fmt: skip
    }


def _forwards(row: dict, backend: str) -> dict[str, Callable]:
    return {
        "DeepseekV4HyperConnection": hyper_connection_forward(row["norm_eps"], backend),
        "DeepseekV4DecoderLayer": _decoder_layer_forward,  # calls the HC modules with mix=True
        "DeepseekV4HyperHead": _hyper_head_forward(row["norm_eps"], backend),
    }


FAMILY = _patch.Family(
    key="deepseek_v4",
    label="DeepSeek-V4",
    module="transformers.models.deepseek_v4.modeling_deepseek_v4",
    entry="apply_to_deepseek_v4",
    parts={
        "hyper_connection": ("DeepseekV4HyperConnection", "DeepseekV4DecoderLayer"),
        "hyper_head": ("DeepseekV4HyperHead",),
    },
    markers=("DeepseekV4HyperConnection", "DeepseekV4HyperHead"),
    attributes=_attributes,
    forwards=_forwards,
)


# ---- the public functions ---------------------------------------------------------------------------


def apply_to_deepseek_v4(
    model: torch.nn.Module | None = None, *, hyper_connection: bool = True, hyper_head: bool = True,
    backend: str = "auto",
) -> None:  # fmt: skip
    """Run DeepSeek-V4's hyper-connections on mhc-ops (backend "auto": Triton on CUDA tensors, the golden
    PyTorch on CPU; "golden" or "triton" everywhere, the latter on CPU through TRITON_INTERPRET=1).

    model None: patch the transformers classes, so every instance runs on mhc-ops, existing or later
    (wrappers that saved a forward before the patch, such as accelerate's hooks or FSDP2's classes, keep
    the one they saved: patch first). A model (``DeepseekV4ForCausalLM``, ``DeepseekV4Model`` or anything
    holding their modules): patch only its modules, each given a subclass with our forward; other
    models and the classes stay as they are.
    hyper_connection: the HC modules and the decoder layer's mixing, together (the layer takes the HC
    modules' mix). hyper_head: the final ``DeepseekV4HyperHead``.
    Raises RuntimeError, patching nothing, when the installed transformers is not a release that was
    read or differs from it in a class or forward this relies on. Idempotent (a second call with
    another backend switches to it); ``revert_deepseek_v4`` (with the same model argument) undoes it.
    """
    parts = (("hyper_connection",) if hyper_connection else ()) + (("hyper_head",) if hyper_head else ())
    _patch.apply(FAMILY, model, parts, backend)


def revert_deepseek_v4(model: torch.nn.Module | None = None) -> None:
    """Undo apply_to_deepseek_v4: model None restores the classes' forwards; a model, its modules'
    classes. Where nothing was patched it does nothing."""
    _patch.revert(FAMILY, model)


@contextlib.contextmanager
def deepseek_v4_patched(
    model: torch.nn.Module | None = None, *, hyper_connection: bool = True, hyper_head: bool = True,
    backend: str = "auto",
) -> Iterator[torch.nn.Module | None]:  # fmt: skip
    """``with deepseek_v4_patched(model): ...``: apply_to_deepseek_v4 on entry, revert_deepseek_v4 on exit."""
    apply_to_deepseek_v4(model, hyper_connection=hyper_connection, hyper_head=hyper_head, backend=backend)
    try:
        yield model
    finally:
        revert_deepseek_v4(model)
