"""One declaration per op (``OpSpec``) -> its eager autograd Function and its compiled ops.

An op is declared once: its tensor inputs, constants, outputs, what backward saves, and two
implementations, ``forward(route, *inputs, *consts) -> outputs`` and ``backward(route, saved, grads,
consts) -> input grads``, the functions of mhc_ops/_impl.py that every path runs. ``Op(spec)`` builds:

- the eager path: a ``torch.autograd.Function`` that calls the implementations directly (no
  dispatcher, no re-validation);
- the compiled path: ops ``mhc_ops::NAME_fwd`` and ``mhc_ops::NAME_bwd`` with the autograd formula
  registered on the forward, twice: ``traced`` (``torch.library.triton_op``: torch.compile traces
  the body, so Inductor sees and launches our Triton kernels, and none of our Python runs in the
  compiled graph) for the all-Triton route, ``opaque`` (``torch.library.custom_op``, outputs faked
  from the spec) for the golden, the Triton interpreter and the stage composer (``Route.traced``).

Both paths save the same tensors, cast input gradients to their inputs' dtypes, and give None for a
None input (gamma). Ops return tensors only: the backward op returns an empty tensor for such a
gradient, mapped back to None in the formula.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch._library.triton import is_wrap_triton_enabled

from ._impl import Route
from .kernels._launch import op_body

NAMESPACE = "mhc_ops"


@dataclass(frozen=True)
class OpSpec:
    name: str  # the ops are mhc_ops::{name}_fwd and mhc_ops::{name}_bwd (and _opaque twins)
    inputs: tuple[str, ...]  # differentiable tensor inputs, in order
    optional: tuple[str, ...]  # inputs that may be None
    consts: tuple[tuple[str, str], ...]  # (name, schema type "float" | "int"), after the inputs
    outputs: tuple[str, ...]  # forward's outputs; the first `returns` are what the op gives its caller
    returns: int
    saved: tuple[str, ...]  # inputs and outputs that backward reads, in the order it takes them
    forward: Callable  # (route, *inputs, *consts) -> tuple of len(outputs)
    backward: Callable  # (route, saved tuple, grads tuple (None: unused output), consts tuple) -> input grads
    fake: Callable  # (*inputs, *consts) -> empty outputs (the opaque op's shapes)
    grad_like: Callable  # (saved, consts) -> per input: an empty tensor like backward's gradient, or None
    extra_grads: tuple[str, ...] = ()  # optional tensors backward takes after the grads (grad_x_post)


_TYPES = {"float": float, "int": int}


def _signatures(spec: OpSpec) -> tuple[dict, dict]:
    """Parameter name -> annotation of the forward and backward ops (torch.library infers each schema
    from them), the return annotation under "return"."""
    tensor, maybe = torch.Tensor, torch.Tensor | None
    consts = {c: _TYPES[t] for c, t in spec.consts}

    def returns(k: int):
        return tensor if k == 1 else tuple.__class_getitem__((tensor,) * k)

    fwd = {i: (maybe if i in spec.optional else tensor) for i in spec.inputs} | consts | {"route": str}
    bwd = {s: maybe for s in spec.saved} | {f"d_{o}": maybe for o in spec.outputs[: spec.returns]}
    bwd |= {e: maybe for e in spec.extra_grads} | consts | {"route": str}
    return fwd | {"return": returns(len(spec.outputs))}, bwd | {"return": returns(len(spec.inputs))}


def _named(impl: Callable, annotations: dict, name: str) -> Callable:
    """impl(*args) as a function with named, annotated parameters (what torch.library reads)."""
    params = ", ".join(k for k in annotations if k != "return")
    scope = {"impl": impl}
    exec(f"def {name}({params}):\n    return impl({params})", scope)  # noqa: S102  (parameters from the spec)
    fn = scope[name]
    fn.__annotations__ = annotations
    return fn


def _unaliased(outs):
    """An op's outputs may not alias its inputs or each other: views (the golden's, dbias/dalpha of one
    buffer) are copied. One output is returned as a tensor, as its schema says."""
    outs = tuple(o.clone() if o._base is not None else o for o in outs)
    return outs[0] if len(outs) == 1 else outs


def _as_tuple(outs) -> tuple:
    return outs if isinstance(outs, tuple | list) else (outs,)


class Op:
    """The op built from a spec. ``op(route, inputs, consts)`` -> the first ``returns`` outputs (one
    tensor or a tuple), differentiable, eager or compiled as the caller is. ``forward_raw`` and
    ``backward_raw`` are the same two steps without autograd, for a composite autograd Function (the
    layer's halves, mhc_ops/nn.py) that chains several ops under one node."""

    def __init__(self, spec: OpSpec):
        self.spec = spec
        names = (*spec.inputs, *spec.outputs)
        self._saved_idx = tuple(names.index(s) for s in spec.saved)
        self._n_in, self._n_const = len(spec.inputs), len(spec.consts)
        self._n_grads = spec.returns + len(spec.extra_grads)
        self.eager = _eager_function(self)
        self.traced = self._register(f"{spec.name}_fwd", f"{spec.name}_bwd", traced=True)
        self.opaque = self._register(f"{spec.name}_fwd_opaque", f"{spec.name}_bwd_opaque", traced=False)

    def __call__(self, route, inputs: tuple, consts: tuple):
        if torch.compiler.is_compiling():
            fwd, _ = self.traced if route.traced else self.opaque
            outs = _as_tuple(fwd(*inputs, *consts, route.key))
            return outs[0] if self.spec.returns == 1 else tuple(outs[: self.spec.returns])
        return self.eager.apply(route, consts, *inputs)

    def forward_raw(self, route, inputs: tuple, consts: tuple) -> tuple:
        """Every output of the forward (returned and saved-only), not differentiable."""
        if torch.compiler.is_compiling():
            fwd, _ = self.traced if route.traced else self.opaque
            return _as_tuple(fwd(*inputs, *consts, route.key))
        return self.spec.forward(route, *inputs, *consts)

    def backward_raw(self, route, saved: tuple, grads: tuple, consts: tuple, dtypes: tuple) -> tuple:
        """The input gradients, cast to dtypes (an input's dtype; None for an input that was None).
        grads: one per returned output (None: unused), then the spec's extra_grads."""
        grads = (*grads, *([None] * (self._n_grads - len(grads))))
        if torch.compiler.is_compiling():
            _, bwd = self.traced if route.traced else self.opaque
            grads_in = _as_tuple(bwd(*saved, *grads, *consts, route.key))
        else:
            grads_in = self.spec.backward(route, saved, grads, consts)
        return self.cast_grads(grads_in, dtypes)

    def saved_of(self, inputs: tuple, outputs: tuple) -> tuple:
        every = (*inputs, *outputs)
        return tuple(every[i] for i in self._saved_idx)

    @staticmethod
    def cast_grads(grads: tuple, dtypes: tuple) -> tuple:
        """Each input gradient in its input's dtype; None where the input is None (dtype None)."""
        return tuple(
            None if dt is None or g is None else (g if g.dtype == dt else g.to(dt)) for g, dt in zip(grads, dtypes)
        )

    def _register(self, fwd_name: str, bwd_name: str, traced: bool):
        spec, n_const = self.spec, self._n_const
        fwd_sig, bwd_sig = _signatures(spec)
        n_saved = len(spec.saved)

        def fwd_impl(*args):
            *rest, key = args
            route = Route.from_key(key)
            with op_body(traced=traced and _tracing()):
                return _unaliased(spec.forward(route, *rest))

        def bwd_impl(*args):
            *rest, key = args
            route = Route.from_key(key)
            saved, grads = tuple(rest[:n_saved]), tuple(rest[n_saved : len(rest) - n_const])  # + extra_grads
            consts = tuple(rest[len(rest) - n_const :])
            with op_body(traced=traced and _tracing()):
                grads_in = spec.backward(route, saved, grads, consts)
                # an op returns tensors only: an empty one stands for a None gradient
                ref = saved[0]
                return _unaliased(g if g is not None else ref.new_empty(0) for g in grads_in)

        define = torch.library.triton_op if traced else torch.library.custom_op
        fwd = define(f"{NAMESPACE}::{fwd_name}", _named(fwd_impl, fwd_sig, fwd_name), mutates_args=())
        bwd = define(f"{NAMESPACE}::{bwd_name}", _named(bwd_impl, bwd_sig, bwd_name), mutates_args=())
        if not traced:
            fwd.register_fake(lambda *args: _unaliased(spec.fake(*args[:-1])))

            def bwd_fake(*args):
                saved, consts = tuple(args[:n_saved]), tuple(args[len(args) - 1 - n_const : -1])
                ref = saved[0]
                return _unaliased(
                    torch.empty_like(like) if like is not None else ref.new_empty(0)
                    for like in spec.grad_like(saved, consts)
                )

            bwd.register_fake(bwd_fake)

        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*self.saved_of(tuple(inputs[: self._n_in]), _as_tuple(output)))
            ctx.consts = tuple(inputs[self._n_in : self._n_in + n_const])
            ctx.key = inputs[-1]
            ctx.dtypes = tuple(None if t is None else t.dtype for t in inputs[: self._n_in])

        def backward(ctx, *grads):
            extra = [None] * len(spec.extra_grads)
            grads_in = _as_tuple(bwd(*ctx.saved_tensors, *grads[: spec.returns], *extra, *ctx.consts, ctx.key))
            return (*self.cast_grads(grads_in, ctx.dtypes), *([None] * (n_const + 1)))

        fwd.register_autograd(backward, setup_context=setup_context)
        return fwd, bwd


class ForwardOp:
    """An inference-only op (no autograd) declared once: ``fn(*args)`` -> a tuple of new tensors, ``fake(*args)``
    -> empty tensors of their shapes, annotations: parameter name -> type (and "return"), as torch.library reads
    them. ``op(traced, *args)``: eager, fn itself; under torch.compile the op ``mhc_ops::NAME`` (a triton_op that
    Inductor traces, for traced: every stage on compiled Triton) or ``mhc_ops::NAME_opaque`` (a custom_op faked by
    fake: the interpreter), as Op's compiled paths."""

    def __init__(self, name: str, fn: Callable, fake: Callable, annotations: dict):
        self.fn = fn

        def body(traced):
            def impl(*args):
                with op_body(traced=traced and _tracing()):
                    return _unaliased(fn(*args))

            return impl

        self.traced = torch.library.triton_op(f"{NAMESPACE}::{name}", _named(body(True), annotations, name),
                                              mutates_args=())  # fmt: skip
        self.opaque = torch.library.custom_op(f"{NAMESPACE}::{name}_opaque", _named(body(False), annotations, name),
                                              mutates_args=())  # fmt: skip
        self.opaque.register_fake(lambda *args: _unaliased(fake(*args)))

    def __call__(self, traced: bool, *args) -> tuple:
        if torch.compiler.is_compiling():
            return tuple(self.traced(*args) if traced else self.opaque(*args))
        return self.fn(*args)


def _tracing() -> bool:
    """Inside a triton_op body: True when torch.compile traces it (wrap_triton records launches), False
    when the dispatcher runs it on real tensors (triton_op then turns wrap_triton off)."""
    return is_wrap_triton_enabled()


def _eager_function(op: Op) -> type:
    spec = op.spec

    class Eager(torch.autograd.Function):
        @staticmethod
        def forward(ctx, route, consts, *inputs):
            outs = spec.forward(route, *inputs, *consts)
            ctx.save_for_backward(*op.saved_of(inputs, outs))
            ctx.route, ctx.consts = route, consts
            ctx.dtypes = tuple(None if t is None else t.dtype for t in inputs)
            return outs[0] if spec.returns == 1 else outs[: spec.returns]

        @staticmethod
        def backward(ctx, *grads):
            grads = (*grads, *([None] * len(spec.extra_grads)))
            grads_in = spec.backward(ctx.route, ctx.saved_tensors, grads, ctx.consts)
            return None, None, *op.cast_grads(grads_in, ctx.dtypes)

    Eager.__name__ = Eager.__qualname__ = f"{spec.name}_eager"
    return Eager
