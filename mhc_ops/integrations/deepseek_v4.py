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
  ``[pre (n) | post (n) | comb (n*n, row-major)]``; no gamma. ``input_norm.eps`` (the config's
  ``rms_norm_eps``) is ``norm_eps``; ``hc_eps`` is both mhc_pre's ``hc_eps`` and Sinkhorn's ``eps``;
  ``hc_sinkhorn_iters`` is ``iters``.
- ``DeepseekV4DecoderLayer.forward``: its two inline mixings ``post * out + comb^T @ streams`` are
  ``mhc_post(streams, comb, out, post)`` (``comb^T @`` sums over comb's first index, the input stream,
  as mhc_post's h_res does: no transpose). Each block's pre and post are paired through
  ``mhc_ops.nn.hc_pre`` / ``hc_post``, so the streams' gradient from the post enters the pre backward
  as ``grad_x_post`` instead of a separate add.
- ``DeepseekV4HyperHead.forward`` (``hyper_head=True``): the final collapse is mhc_pre's pre part
  alone; its ``hc_fn`` [n, nD], ``hc_scale`` [1], ``hc_base`` [n] fill the pre rows of phi / alpha /
  bias, zeros the post and comb rows, whose outputs are dropped.

The math is the same function as HF's (docs/integrations.md derives it). The rounding differs in a
bf16 model only: HF casts post and comb to bf16 and mixes in bf16, mhc_post keeps them fp32 and
rounds once, when it stores the streams.

Only code that was read is patched: every class and forward this relies on is checked against the
transformers versions in ``SUPPORTED_TRANSFORMERS`` (by a fingerprint of the forward's code, blind to
comments and layout); anything else raises ``RuntimeError`` naming the version and what differs.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import inspect
import io
import textwrap
import tokenize
import types
from collections.abc import Callable, Iterator

import torch

from mhc_ops.nn import hc_post, hc_pre
from mhc_ops.ops import mhc_pre, sinkhorn

__all__ = ["SUPPORTED_TRANSFORMERS", "apply_to_deepseek_v4", "deepseek_v4_patched", "revert_deepseek_v4"]

# The versions whose modeling_deepseek_v4.py was read and checked against the contract
# (../shared/spec/mhc-math.md); tests pin the newest.
SUPPORTED_TRANSFORMERS = ("5.17.0", "5.23.0")

# For each class whose forward is replaced or relied on: _fingerprint of its forward -> the versions
# that have that code. 5.17.0 writes DeepseekV4HyperConnection.forward differently, with the same math.
_FINGERPRINTS: dict[str, dict[str, tuple[str, ...]]] = {
    "DeepseekV4UnweightedRMSNorm": {"f595e20e6e898ab3": ("5.17.0", "5.23.0")},
    "DeepseekV4HyperConnection": {"aa7decb5288c664b": ("5.23.0",), "6e08ac93a21c134d": ("5.17.0",)},
    "DeepseekV4HyperHead": {"e17ba64bc3c7c81d": ("5.17.0", "5.23.0")},
    "DeepseekV4DecoderLayer": {"2ed292c80fca9361": ("5.17.0", "5.23.0")},
}

# What the replacement forwards read from a module (dotted: an attribute of an attribute).
_ATTRIBUTES = {
    "DeepseekV4HyperConnection": ("fn", "scale", "base", "hc_eps", "hc_sinkhorn_iters", "input_norm.eps"),
    "DeepseekV4HyperHead": ("hc_fn", "hc_scale", "hc_base", "hc_mult", "eps", "input_norm.eps"),
    "DeepseekV4DecoderLayer": ("attn_hc", "ffn_hc", "self_attn", "mlp", "input_layernorm", "post_attention_layernorm"),
}


# ---- the replacement forwards -----------------------------------------------------------------------


def _hyper_connection_forward(self, hidden_streams: torch.Tensor, *, return_link: bool = False):
    """DeepseekV4HyperConnection.forward on mhc-ops.

    hidden_streams [B, S, n, D] (the model's dtype) -> (post [B, S, n] fp32, comb [B, S, n, n] fp32
    doubly stochastic, collapsed [B, S, D] in hidden_streams' dtype), as HF returns them. With
    return_link (the patched decoder layer), also the link that hands this block's mhc_post gradient
    of the streams to the pre backward.
    """
    # fp32 as mhc_pre takes them: a no-op for HF's HC modules (kept fp32); a model cast to bf16 as a
    # whole gets its gradients back through the cast.
    phi, alpha, bias = self.fn.float(), self.scale.float(), self.base.float()
    norm_eps = self.input_norm.eps
    # HF runs the column pass once even for hc_sinkhorn_iters < 1, as sinkhorn(iters=1) does.
    iters = max(self.hc_sinkhorn_iters, 1)
    if return_link:
        collapsed, post, comb, link = hc_pre(
            hidden_streams, phi, alpha, bias, norm_eps=norm_eps, hc_eps=self.hc_eps,
            sinkhorn_iters=iters, sinkhorn_eps=self.hc_eps,
        )  # fmt: skip
        return post, comb, collapsed, link
    collapsed, post, comb_logits = mhc_pre(hidden_streams, phi, alpha, bias, norm_eps=norm_eps, hc_eps=self.hc_eps)
    return post, sinkhorn(comb_logits, iters, self.hc_eps), collapsed


def _decoder_layer_forward(self, hidden_states: torch.Tensor, input_ids: torch.Tensor | None = None, **kwargs):
    """DeepseekV4DecoderLayer.forward with both mixings on mhc_post, each paired with its block's pre.

    hidden_states [B, S, n, D] in the model's dtype, in and out. HF's ``post * out + comb^T @ streams``
    is ``out_streams[k] = post[k] * out + sum_j comb[j, k] * streams[j]``: mhc_post with h_res = comb.
    The HC modules are called as modules, so their hooks (ZeRO-3 gathering, FSDP) still run.
    """
    post, comb, collapsed, link = self.attn_hc(hidden_states, return_link=True)
    attn_output, _ = self.self_attn(self.input_layernorm(collapsed), **kwargs)
    hidden_states = hc_post(hidden_states, comb, attn_output, post, link)

    post, comb, collapsed, link = self.ffn_hc(hidden_states, return_link=True)
    mlp_output = self.mlp(self.post_attention_layernorm(collapsed), input_ids=input_ids)
    return hc_post(hidden_states, comb, mlp_output, post, link)


def _hyper_head_forward(self, x: torch.Tensor) -> torch.Tensor:
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
    h_in, _, _ = mhc_pre(x, phi, alpha, bias, norm_eps=self.input_norm.eps, hc_eps=self.eps)
    return h_in


_HYPER_CONNECTION = {
    "DeepseekV4HyperConnection": _hyper_connection_forward,
    "DeepseekV4DecoderLayer": _decoder_layer_forward,  # its hc_post needs the HC modules' link
}
_HYPER_HEAD = {"DeepseekV4HyperHead": _hyper_head_forward}
_OURS = frozenset((*_HYPER_CONNECTION.values(), *_HYPER_HEAD.values()))

# Class -> its forward before apply_to_deepseek_v4() replaced it (what revert_deepseek_v4() restores).
_ORIGINAL_FORWARDS: dict[type, Callable] = {}


@functools.cache
def _patched_class(cls: type, forward: Callable) -> type:
    """cls with our forward: a subclass of the same name (so isinstance checks, `_no_split_modules` and
    FSDP's wrap-by-class-name still find it), made as transformers makes its classes. That matters for
    the decoder layer: in transformers 5.23 GradientCheckpointingLayer.__init_subclass__ wraps every
    forward for activation checkpointing, and a bare replacement would silently drop the wrapper.
    A model's module gets this class; a class patch takes its forward."""
    attrs = {"forward": forward, "__module__": cls.__module__, "__qualname__": cls.__qualname__, "_mhc_ops_base": cls}
    return type(cls.__name__, (cls,), attrs)


def _is_patched_class(cls: type) -> bool:
    return "_mhc_ops_base" in vars(cls)


# ---- checks -----------------------------------------------------------------------------------------


@functools.cache
def _fingerprint(func: Callable) -> str:
    """The first 16 hex digits of a sha256 of a function's code tokens, with comments, the docstring, line
    breaks and indentation left out: re-wrapping lines keeps it, any other change (even added
    parentheses) does not."""
    source = textwrap.dedent(inspect.getsource(func))
    definition = ast.parse(source).body[0]
    first = definition.body[0]
    docstring = range(first.lineno, first.end_lineno + 1) if ast.get_docstring(definition) is not None else range(0)
    code = (tokenize.NAME, tokenize.OP, tokenize.NUMBER, tokenize.STRING)
    tokens = [
        tok.string
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type in code and tok.start[0] not in docstring
    ]
    return hashlib.sha256(" ".join(tokens).encode()).hexdigest()[:16]


def _version() -> str:
    import transformers

    return transformers.__version__


def _unsupported(what: str) -> RuntimeError:
    return RuntimeError(
        f"mhc_ops.integrations.apply_to_deepseek_v4: transformers {_version()} {what}; the patch was "
        f"checked against transformers {', '.join(SUPPORTED_TRANSFORMERS)} (pip install mhc-ops[transformers] "
        "installs the newest), and patches nothing it has not read"
    )


def _check_forward(cls: type, name: str) -> None:
    """RuntimeError unless cls's forward, before any patch of ours, is the code of a supported version
    (its own or inherited; unwrapped, as inspect reads it, from wrappers such as the checkpointing one)."""
    forward = _ORIGINAL_FORWARDS.get(cls, cls.forward)
    if inspect.unwrap(forward) in _OURS:  # a subclass made after a class patch inherits ours
        return
    try:
        fingerprint = _fingerprint(forward)
    except (OSError, TypeError, SyntaxError) as e:  # no source to read (a compiled or generated forward)
        raise _unsupported(f"has a {cls.__qualname__}.forward whose source cannot be read ({e})") from e
    known = _FINGERPRINTS[name]
    if fingerprint not in known:
        seen = "; ".join(f"{', '.join(v)}: {f}" for f, v in known.items())
        raise _unsupported(
            f"has a {cls.__qualname__}.forward (fingerprint {fingerprint}) unlike {name}.forward of the "
            f"supported versions ({seen}): its math may have changed"
        )


def _modeling() -> types.ModuleType:
    """transformers' modeling_deepseek_v4, once every class and forward this module relies on is checked."""
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError("apply_to_deepseek_v4 needs transformers: pip install mhc-ops[transformers]") from e
    try:
        from transformers.models.deepseek_v4 import modeling_deepseek_v4 as modeling
    except ImportError as e:
        raise _unsupported("has no DeepSeek-V4 (transformers.models.deepseek_v4)") from e
    missing = [name for name in _FINGERPRINTS if not isinstance(getattr(modeling, name, None), type)]
    if missing:
        raise _unsupported(f"has no {', '.join(missing)} in transformers.models.deepseek_v4.modeling_deepseek_v4")
    for name in _FINGERPRINTS:
        _check_forward(getattr(modeling, name), name)
    return modeling


_MISSING = object()


def _check_module(path: str, module: torch.nn.Module, name: str) -> None:
    """RuntimeError if a model's module lacks an attribute the replacement reads, has a forward (its
    class's, a subclass's) unlike the supported versions', or carries a forward of its own (accelerate's
    hooks set one: it calls the forward it saved, which a patch would not reach)."""
    missing = []
    for dotted in _ATTRIBUTES[name]:
        obj = module
        for part in dotted.split("."):
            obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            missing.append(dotted)
    if missing:
        raise _unsupported(f"built a {name} ({path}) without {', '.join(missing)}")
    _check_forward(type(module), name)
    if "forward" in vars(module):
        raise RuntimeError(
            f"apply_to_deepseek_v4(model): {path} has a forward of its own ({vars(module)['forward']!r}, e.g. an "
            "accelerate hook's), which a patch would not reach; call apply_to_deepseek_v4() before the model is "
            "built or loaded instead"
        )


# ---- the public functions ---------------------------------------------------------------------------


def apply_to_deepseek_v4(
    model: torch.nn.Module | None = None, *, hyper_connection: bool = True, hyper_head: bool = True
) -> None:
    """Run DeepSeek-V4's hyper-connections on mhc-ops (Triton on CUDA tensors, the golden PyTorch on CPU).

    model None: patch the transformers classes, so every instance runs on mhc-ops, existing or later
    (wrappers that saved a forward before the patch, such as accelerate's hooks or FSDP2's classes, keep
    the one they saved: patch first). A model (``DeepseekV4ForCausalLM``, ``DeepseekV4Model`` or anything
    holding their modules): patch only its modules, each given a subclass with our forward; other
    models and the classes stay as they are.
    hyper_connection: the HC modules and the decoder layer's mixing, together (the layer hands the HC
    modules' link to hc_post). hyper_head: the final ``DeepseekV4HyperHead``.
    Raises RuntimeError, patching nothing, when the installed transformers differs from the supported
    versions in a class or forward this relies on. Idempotent; ``revert_deepseek_v4`` (with the same
    model argument) undoes it.
    """
    modeling = _modeling()
    chosen = (_HYPER_CONNECTION if hyper_connection else {}) | (_HYPER_HEAD if hyper_head else {})
    if model is None:
        for name, forward in chosen.items():
            cls = getattr(modeling, name)
            _ORIGINAL_FORWARDS.setdefault(cls, cls.forward)
            cls.forward = _patched_class(cls, forward).forward
        return
    hyper_connections = (modeling.DeepseekV4HyperConnection, modeling.DeepseekV4HyperHead)
    if not any(isinstance(module, hyper_connections) for module in model.modules()):
        raise ValueError(f"apply_to_deepseek_v4(model): {type(model).__name__} holds no DeepSeek-V4 hyper-connection")
    targets = [
        (path, module, name)
        for path, module in model.named_modules()
        for name in chosen
        if isinstance(module, getattr(modeling, name)) and not _is_patched_class(type(module))
    ]
    for path, module, name in targets:  # every module checked before any is patched
        _check_module(path, module, name)
    for _, module, name in targets:
        module.__class__ = _patched_class(type(module), chosen[name])


def revert_deepseek_v4(model: torch.nn.Module | None = None) -> None:
    """Undo apply_to_deepseek_v4: model None restores the classes' forwards; a model, its modules'
    classes. Where nothing was patched it does nothing."""
    if model is None:
        for cls, forward in _ORIGINAL_FORWARDS.items():
            cls.forward = forward
        _ORIGINAL_FORWARDS.clear()
        return
    for module in model.modules():
        if _is_patched_class(type(module)):
            module.__class__ = vars(type(module))["_mhc_ops_base"]


@contextlib.contextmanager
def deepseek_v4_patched(
    model: torch.nn.Module | None = None, *, hyper_connection: bool = True, hyper_head: bool = True
) -> Iterator[torch.nn.Module | None]:
    """``with deepseek_v4_patched(model): ...``: apply_to_deepseek_v4 on entry, revert_deepseek_v4 on exit."""
    apply_to_deepseek_v4(model, hyper_connection=hyper_connection, hyper_head=hyper_head)
    try:
        yield model
    finally:
        revert_deepseek_v4(model)
