"""The mHC layer as a module: ``HyperConnection`` wraps a block, and its functional halves.

Per token, around a block F (``[.., D] -> [.., D]``):

    (h_in, h_post, h_res) = mhc_pre(x, phi, alpha, bias, gamma)
    x_next = mhc_post(x, sinkhorn(h_res), F(h_in), h_post)

``hc_pre`` (mhc_pre + sinkhorn, one autograd node) also returns a ``link``, x itself, that
``hc_post`` reads the streams through: in backward, the gradient mhc_post gives x arrives as the
link's gradient and enters the pre backward as ``grad_x_post``, which adds it while it writes dx.
Autograd would otherwise store two ``[T, n, D]`` gradients and add them in a separate kernel. The same
holds under torch.compile, which traces the node. (The post backward runs first: the pre node's
outputs feed the post node.)

A model expands its embedding into n streams once (``expand_streams``), keeps ``[.., n, D]`` through
every wrapped block and reduces once before the final norm (``reduce_streams``).
"""

from __future__ import annotations

import math

import torch

from . import _impl
from ._validate import check_inputs, check_layer_input, check_sinkhorn_iters, check_triton_sinkhorn_n
from .ops import MHC_PRE, MHC_PRE_DELAYED, SINKHORN, boundary_decode, mhc_post

INITS = ("identity", "zero")


class _HcPre(torch.autograd.Function):
    """mhc_pre (or the delayed pre) then sinkhorn as one autograd node -> (h_in, h_post, h_res =
    sinkhorn(logits), h_pre, x_link); h_pre is differentiable with the delayed pre only (the next
    sublayer collapses with it).

    x_link is x itself (a view). hc_post reads the streams through it, so the gradient mhc_post gives
    x comes back here as x_link's gradient and enters the pre backward as grad_x_post, added while dx
    is written; eager and under torch.compile alike (Dynamo traces this Function, whose steps are the
    ops' forward_raw / backward_raw). With recompute, only x and the parameters are saved; the forward
    kernels run again in backward."""

    @staticmethod
    def forward(ctx, x, phi, alpha, bias, gamma, h_pre_prev, route, norm_eps, hc_eps, iters, eps, recompute, delayed):
        inputs = (x, phi, alpha, bias, gamma, h_pre_prev)
        h_in, h_post, logits, h_pre, inv_rms, h_mix = _pre_forward(route, inputs, (norm_eps, hc_eps), delayed)
        (h_res,) = SINKHORN.forward_raw(route, (logits,), (iters, eps))
        if recompute:
            ctx.save_for_backward(*inputs)
        else:
            ctx.save_for_backward(x, phi, alpha, gamma, h_pre_prev, inv_rms, h_mix, h_pre, h_post, logits)
        ctx.route, ctx.consts, ctx.recompute, ctx.delayed = route, (norm_eps, hc_eps, iters, eps), recompute, delayed
        ctx.dtypes = tuple(None if t is None else t.dtype for t in inputs)
        if not delayed:
            ctx.mark_non_differentiable(h_pre)
        return h_in, h_post, h_res, h_pre, x.view_as(x)

    @staticmethod
    def backward(ctx, dh_in, dh_post, dh_res, dh_pre, dx_link):
        route, (norm_eps, hc_eps, iters, eps) = ctx.route, ctx.consts
        if ctx.recompute:
            x, phi, alpha, bias, gamma, h_pre_prev = ctx.saved_tensors
            inputs = (x, phi, alpha, bias, gamma, h_pre_prev)
            _, h_post, logits, h_pre, inv_rms, h_mix = _pre_forward(route, inputs, (norm_eps, hc_eps), ctx.delayed)
        else:
            x, phi, alpha, gamma, h_pre_prev, inv_rms, h_mix, h_pre, h_post, logits = ctx.saved_tensors
        dlogits = None  # an unused h_res: zero
        if dh_res is not None:
            (dlogits,) = SINKHORN.backward_raw(route, (logits,), (dh_res,), (iters, eps), (logits.dtype,))
        consts = (norm_eps, hc_eps)
        if ctx.delayed:
            saved = (x, phi, alpha, gamma, h_pre_prev, inv_rms, h_mix, h_pre, h_post)
            grads = MHC_PRE_DELAYED.backward_raw(route, saved, (dh_in, dh_post, dlogits, dh_pre, dx_link), consts,
                                                 ctx.dtypes)  # fmt: skip
        else:
            saved = (x, phi, alpha, gamma, inv_rms, h_mix, h_pre, h_post)
            grads = (*MHC_PRE.backward_raw(route, saved, (dh_in, dh_post, dlogits, dx_link), consts, ctx.dtypes[:5]),
                     None)  # fmt: skip
        return *grads, None, None, None, None, None, None, None


def _pre_forward(route, inputs, consts, delayed) -> tuple:
    """-> (h_in, h_post, logits, h_pre, inv_rms, h_mix) of mhc_pre or the delayed pre."""
    if delayed:
        return MHC_PRE_DELAYED.forward_raw(route, inputs, consts)
    h_in, h_post, logits, inv_rms, h_mix, h_pre = MHC_PRE.forward_raw(route, inputs[:5], consts)
    return h_in, h_post, logits, h_pre, inv_rms, h_mix


def _hc_pre(x, phi, alpha, bias, gamma, h_pre_prev, delayed, norm_eps, hc_eps, sinkhorn_iters, sinkhorn_eps, backend,
            stages, recompute):  # fmt: skip
    _, n, _ = check_inputs(x, phi=phi, alpha=alpha, bias=bias, gamma=gamma, h_pre_prev=h_pre_prev)
    check_sinkhorn_iters(sinkhorn_iters, sinkhorn_eps)
    if delayed and stages is not None:
        raise ValueError("stages: expected None with the delayed pre (it runs whole on one backend: use backend=)")
    route = _impl.resolve_route(backend, stages, x)
    check_triton_sinkhorn_n(n, _impl.sinkhorn_max_n(route))
    with torch.autocast(x.device.type, enabled=False):
        return _HcPre.apply(x, phi, alpha, bias, gamma, h_pre_prev, route, float(norm_eps), float(hc_eps),
                            int(sinkhorn_iters), float(sinkhorn_eps), bool(recompute), delayed)  # fmt: skip


def hc_pre(x, phi, alpha, bias, gamma=None, *, norm_eps=1e-6, hc_eps=1e-6, sinkhorn_iters=20, sinkhorn_eps=1e-6,
           backend="auto", stages=None, recompute=False):  # fmt: skip
    """-> (h_in, h_post, h_res, link): mhc_pre, then sinkhorn of its h_res logits, as one autograd
    node. link is x (a view): pass it to hc_post of the same block, whose gradient of x then enters
    this node's backward (one dx pass). Arguments as mhc_pre and sinkhorn; recompute: save only x and
    the parameters."""
    h_in, h_post, h_res, _, link = _hc_pre(x, phi, alpha, bias, gamma, None, False, norm_eps, hc_eps, sinkhorn_iters,
                                           sinkhorn_eps, backend, stages, recompute)  # fmt: skip
    return h_in, h_post, h_res, link


def hc_pre_delayed(x, phi, alpha, bias, gamma=None, h_pre_prev=None, *, norm_eps=1e-6, hc_eps=1e-6,
                   sinkhorn_iters=20, sinkhorn_eps=1e-6, backend="auto", recompute=False):  # fmt: skip
    """hc_pre with DeepSeek-V4.1's delayed pre -> (h_in, h_post, h_res, h_pre, link): h_in collapsed
    with the previous sublayer's h_pre_prev (stream 0 when None), h_pre for the next sublayer."""
    return _hc_pre(x, phi, alpha, bias, gamma, h_pre_prev, True, norm_eps, hc_eps, sinkhorn_iters, sinkhorn_eps,
                   backend, None, recompute)  # fmt: skip


def hc_post(x, h_res, h_out, h_post, link=None, *, backend="auto", stages=None):
    """mhc_post(x, h_res, h_out, h_post). link: hc_pre's fourth output for the same block (x itself);
    given, the streams are read through it, so their gradient goes to hc_pre's backward as grad_x_post
    instead of being added to x's separately. backend and stages: hc_pre's."""
    if link is not None and link.shape != x.shape:
        raise ValueError(f"link: expected hc_pre's link for this x, of shape {list(x.shape)}, got {list(link.shape)}")
    with torch.autocast(x.device.type, enabled=False):
        return mhc_post(x if link is None else link, h_res, h_out, h_post, backend=backend, stages=stages)


def expand_streams(h: torch.Tensor, n: int) -> torch.Tensor:
    """[.., D] -> [.., n, D], every stream a copy of h (contiguous)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    return h.unsqueeze(-2).expand(*h.shape[:-1], n, h.shape[-1]).contiguous()


def reduce_streams(x: torch.Tensor) -> torch.Tensor:
    """[.., n, D] -> [.., D]: the sum over streams."""
    return x.sum(dim=-2)


class HyperConnection(torch.nn.Module):
    """A block wrapped by mHC: ``x [.., n, D] -> mhc_post(x, sinkhorn(h_res), branch(h_in), h_post)``.

    dim: D; n: streams; branch: the block, ``[.., D] -> [.., D]`` (None: the identity); extra
    arguments of a call go to it. layer_index: which stream the ``identity`` init reads (index mod n).
    init: "identity" or "zero" (below). recompute: keep only x (and h_out, which h_post's gradient
    needs) and recompute the mHC intermediates in backward. disable: a plain residual
    ``x + branch(x)`` on ``[.., D]``, with no parameters, for A/B runs. stages / backend: as for the ops.
    use_gamma: a learned per-element scale gamma [n, D] inside the projection. delayed: DeepSeek-V4.1's
    delayed pre; the call then takes ``h_pre_prev`` (the previous sublayer's h_pre, None for the
    first) and returns ``(x_next, h_pre)`` (HyperStack chains them).

    Parameters (fp32, kept so when the model is cast to bf16, and used outside autocast):
    phi [n*n + 2n, n*D], alpha [3], bias [n*n + 2n], gamma [n, D] (use_gamma).

    Init presets, with k = layer_index mod n (docs/layer.md):
    - "identity": bias pre +4 on stream k, -4 elsewhere (h_pre ~ one-hot k), bias post 0 (h_post = 1),
      bias res 6*I - 3 (sinkhorn(h_res) ~ I), alpha 0.01, phi ~ N(0, 1/(n*D)). The block starts near
      a pre-norm residual on stream k. PaddleFleet's preset with pre logits +-4 instead of +-3.
    - "zero": zero bias (h_pre = 0.5, h_post = 1, sinkhorn(h_res) = J/n: streams averaged), alpha 0.01,
      phi ~ N(0, 1/(n*D)). Megatron's zero bias and alpha with a normal phi instead of xavier.
    """

    def __init__(self, dim, n, branch=None, *, layer_index=0, sinkhorn_iters=20, init="identity", recompute=False,
                 disable=False, stages=None, backend="auto", use_gamma=False, delayed=False):  # fmt: skip
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim: expected an int >= 1, got {dim!r}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected an int >= 1, got {n!r}")
        if init not in INITS:
            raise ValueError(f"init: expected one of {INITS}, got {init!r}")
        check_sinkhorn_iters(sinkhorn_iters, 1e-6)
        if delayed and (disable or stages is not None):
            raise ValueError("delayed: expected disable=False and stages=None with the delayed pre")
        self.delayed = bool(delayed)
        self.dim, self.n, self.layer_index, self.sinkhorn_iters = dim, n, layer_index, sinkhorn_iters
        self.init, self.recompute, self.disable, self.stages, self.backend = init, recompute, disable, stages, backend
        self.branch = branch
        self.last_h_res: torch.Tensor | None = None  # sinkhorn(h_res) of the last eager forward, detached
        if disable:
            self.register_parameter("phi", None)
            self.register_parameter("alpha", None)
            self.register_parameter("bias", None)
            self.register_parameter("gamma", None)
            return
        O = n * n + 2 * n
        self.phi = torch.nn.Parameter(torch.empty(O, n * dim))
        self.alpha = torch.nn.Parameter(torch.empty(3))
        self.bias = torch.nn.Parameter(torch.empty(O))
        self.gamma = torch.nn.Parameter(torch.empty(n, dim)) if use_gamma else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.disable:
            return
        n, D = self.n, self.dim
        self.phi.normal_(0.0, 1.0 / math.sqrt(n * D))
        self.alpha.fill_(0.01)
        self.bias.zero_()
        if self.init == "identity":
            k = self.layer_index % n
            self.bias[:n] = -4.0
            self.bias[k] = 4.0
            self.bias[2 * n :] = (6.0 * torch.eye(n) - 3.0).reshape(-1)
        if self.gamma is not None:
            self.gamma.fill_(1.0)

    def _apply(self, fn, recurse=True):
        # The branch follows the model's casts; the mHC parameters stay fp32 (their gradients are
        # fp32 reductions over all tokens, and the kernels take them in fp32).
        if recurse:
            for module in self.children():
                module._apply(fn)

        def keep_fp32(t):
            out = fn(t)
            if not out.is_floating_point() or out.dtype == torch.float32:
                return out
            # A cast: apply only its move. Casting back (out.float()) would keep the values rounded
            # to the cast's dtype (docs/bugs/fp32-parameters-rounded-by-casts.md).
            return t.to(device=out.device, dtype=torch.float32)

        return super()._apply(keep_fp32, recurse=False)

    def _branch(self, h, *args, **kwargs):
        return h if self.branch is None else self.branch(h, *args, **kwargs)

    def forward(self, x, *args, h_pre_prev=None, **kwargs):
        if self.disable:
            return x + self._branch(x, *args, **kwargs)
        check_layer_input(x, self.n, self.dim)
        if h_pre_prev is not None and not self.delayed:
            raise ValueError("h_pre_prev: expected None for a HyperConnection without delayed=True")
        h_in, h_post, h_res, h_pre, link = _hc_pre(
            x, self.phi, self.alpha, self.bias, self.gamma, h_pre_prev, self.delayed, 1e-6, 1e-6,
            self.sinkhorn_iters, 1e-6, self.backend, self.stages, self.recompute,
        )  # fmt: skip
        if not torch.compiler.is_compiling():
            self.last_h_res = h_res.detach()
        h_out = self._branch(h_in, *args, **kwargs).to(x.dtype)
        x_next = hc_post(x, h_res, h_out, h_post, link, backend=self.backend, stages=self.stages)
        return (x_next, h_pre) if self.delayed else x_next

    def extra_repr(self) -> str:
        opts = f"dim={self.dim}, n={self.n}, layer_index={self.layer_index}, init={self.init!r}"
        opts += f", sinkhorn_iters={self.sinkhorn_iters}, recompute={self.recompute}, backend={self.backend!r}"
        opts += ", delayed=True" if self.delayed else ""
        return opts + (", disable=True" if self.disable else "") + (f", stages={self.stages!r}" if self.stages else "")


class HyperStack(torch.nn.Module):
    """Blocks wrapped by mHC one after another on the same streams: ``x [.., n, D] -> [.., n, D]``.

    blocks: the branches, in order (``[.., D] -> [.., D]`` modules); each gets a HyperConnection with
    layer_index = its position. With delayed=True (DeepSeek-V4.1) each block's h_in is collapsed with
    the previous block's h_pre (the first block's is stream 0). Other keyword arguments go to every
    HyperConnection. Extra arguments of a call go to every block."""

    def __init__(self, dim, n, blocks, *, delayed=False, **hc_kwargs):
        super().__init__()
        self.delayed = bool(delayed)
        self.layers = torch.nn.ModuleList(
            HyperConnection(dim, n, block, layer_index=i, delayed=delayed, **hc_kwargs) for i, block in enumerate(blocks)
        )

    def forward(self, x, *args, **kwargs):
        return stack_forward(self.layers, x, *args, delayed=self.delayed, **kwargs)


def stack_forward(layers, x, *args, delayed=False, **kwargs):
    """HyperStack's forward over any sequence of HyperConnections on the same streams (a model that keeps
    them in its own ModuleList, as mhc_ops.train's GPT does): ``x [.., n, D] -> [.., n, D]``. delayed: each
    block collapses with the previous block's h_pre (the layers built with delayed=True). At decode
    (_impl.decodes: no autograd, at most DECODE_MAX_T tokens and DECODE_MAX_N streams, every stage on Triton;
    eager or under torch.compile) each boundary, post(l) + pre(l+1) + sinkhorn, runs in one launch
    (ops.boundary_decode; the plain pre's collapse in a second where the grid outgrows the GPU's SMs). Extra
    arguments go to every block."""
    if _stack_decodes(layers, x):
        return _stack_decode(layers, x, delayed, *args, **kwargs)
    h_pre = None
    for layer in layers:
        if delayed:
            x, h_pre = layer(x, *args, h_pre_prev=h_pre, **kwargs)
        else:
            x = layer(x, *args, **kwargs)
    return x


def _stack_decodes(layers, x) -> bool:
    """Two or more mHC blocks (none disabled), and _impl.decodes on x with every block's route."""
    if len(layers) < 2 or any(layer.disable for layer in layers):
        return False
    return _impl.decodes(x, [_impl.resolve_route(layer.backend, layer.stages, x) for layer in layers])


def _stack_decode(layers, x, delayed, *args, **kwargs):
    """stack_forward's result with every boundary through ops.boundary_decode (the first pre and the last post as
    ops; under torch.compile too)."""
    first = layers[0]
    check_layer_input(x, first.n, first.dim)
    h_in, h_post, h_res, h_pre, _ = _hc_pre(x, first.phi, first.alpha, first.bias, first.gamma, None, delayed, 1e-6,
                                            1e-6, first.sinkhorn_iters, 1e-6, first.backend, first.stages, False)  # fmt: skip
    recording = not torch.compiler.is_compiling()  # last_h_res: of the last eager forward, as HyperConnection's
    for layer, nxt in zip(layers, [*layers[1:], None]):
        if recording:
            layer.last_h_res = h_res
        h_out = layer._branch(h_in, *args, **kwargs).to(x.dtype)
        if nxt is None:
            return hc_post(x, h_res, h_out, h_post, backend=layer.backend)
        x, h_in, h_post, h_res, h_pre = boundary_decode(
            x, h_res, h_out, h_post, h_pre if delayed else None, nxt.phi, nxt.alpha, nxt.bias, nxt.gamma,
            nxt.sinkhorn_iters, 1e-6, 1e-6, 1e-6,
        )  # fmt: skip


__all__ = ["HyperConnection", "HyperStack", "expand_streams", "hc_post", "hc_pre", "hc_pre_delayed", "reduce_streams",
           "stack_forward"]
