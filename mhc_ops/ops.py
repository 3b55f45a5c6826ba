"""The public ops: mhc_pre, sinkhorn and mhc_post (differentiable, torch.compile-traceable), and mhc_pre's
forward/backward functions.

The path a training step takes, top to bottom:

1. ``mhc_pre(...)`` validates its inputs once (``check_inputs``) and resolves ``backend`` and
   ``stages`` into a ``Route`` (cached: the same arguments give the same object).
2. Eager: ``_MhcPre.apply`` (a ``torch.autograd.Function``) calls the Triton launchers directly,
   ``launch_fwd`` in forward and ``launch_backward_fused`` in backward: no re-validation, no
   dictionary environment, no custom-op dispatch. Under ``torch.compile`` the same route runs inside
   the ``mhc_ops::mhc_pre_fwd`` / ``mhc_pre_bwd`` custom ops, which have fake tensors for tracing.
3. A route with per-stage backends (``stages={"dgamma": "golden"}`` or a ``Pipeline``) runs the
   stages through the composer instead; the golden route runs the golden stages.
"""

from __future__ import annotations

import functools

import torch

from .golden import mhc_post as golden_post
from .golden import mhc_pre as golden_pre
from .golden import sinkhorn as golden_sinkhorn
from .golden.registry import STAGE_NAMES
from .kernels._common import check_inputs
from .kernels.fused_bwd import launch_backward_fused
from .kernels.fwd import launch_fwd
from .kernels.post import check_post_inputs, launch_post_bwd, launch_post_fwd
from .kernels.sinkhorn import (
    MAX_N,
    check_sinkhorn_inputs,
    launch_sinkhorn_bwd,
    launch_sinkhorn_fwd,
)
from .stages import BACKENDS, PLANS, PRE_BACKWARD_STAGES, Pipeline, require_kernel_device

BACKEND_CHOICES = ("auto", "golden", "triton")


class Route:
    """Which implementation runs each stage of every op. ``key`` is its canonical text, the form a
    custom op carries through torch.compile (``Route.from_key``). Everything is computed here, once
    per distinct route (resolve_route caches them), so the hot path only reads attributes."""

    def __init__(self, backends: tuple[tuple[str, str], ...], plan: str):
        self.backends = backends  # (stage name, "golden" | "triton") for every stage
        self.plan = plan  # mhc_pre backward with every stage on Triton: "fused" or "staged"
        self._backend = dict(backends)
        self.key = ";".join([f"plan={plan}", *(f"{s}={b}" for s, b in backends)])
        self.uses_triton = "triton" in self._backend.values()
        chosen = {self._backend[s] for s in PRE_BACKWARD_STAGES}
        # "fused" (the fused Triton kernels), "golden" (the golden stages) or "pipeline" (mixed)
        self.pre_backward = (
            "fused" if chosen == {"triton"} and plan == "fused" else "golden" if chosen == {"golden"} else "pipeline"
        )
        self.pipeline = Pipeline("golden", plan="staged", **self._backend) if self.pre_backward == "pipeline" else None

    def of(self, stage: str) -> str:
        return self._backend[stage]

    @staticmethod
    @functools.cache
    def from_key(key: str) -> Route:
        items = dict(part.split("=") for part in key.split(";"))
        plan = items.pop("plan")
        return _route_cached(tuple(items.items()), plan)

    def __repr__(self) -> str:
        return f"Route({self.key!r})"


@functools.cache
def _route_cached(backends: tuple, plan: str) -> Route:
    return Route(backends, plan)


@functools.cache
def _route(backend: str, stages: tuple | None, on_cuda: bool, plan: str = "fused") -> Route:
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend: expected one of {BACKEND_CHOICES}, got {backend!r}")
    if plan not in PLANS:
        raise ValueError(f"plan: expected one of {PLANS}, got {plan!r}")
    default = ("triton" if on_cuda else "golden") if backend == "auto" else backend
    per_stage = dict(stages or ())
    for name, b in per_stage.items():
        if name not in STAGE_NAMES:
            raise ValueError(f"stages: expected stage names in {STAGE_NAMES}, got {name!r}")
        if b not in BACKENDS:
            raise ValueError(f"stages[{name!r}]: expected a backend in {BACKENDS}, got {b!r}")
    # Under torch.compile the route is built while tracing (Dynamo would trace through a cache anyway).
    make = Route if torch.compiler.is_compiling() else _route_cached
    return make(tuple((s, per_stage.get(s, default)) for s in STAGE_NAMES), plan)


def resolve_route(backend: str, stages, t: torch.Tensor, plan: str = "fused") -> Route:
    """backend ("auto": Triton on CUDA tensors, golden on CPU) and stages (None, a dict of per-stage
    backends, or a Pipeline, whose plan then applies) -> the Route; a Triton stage on CPU tensors
    without the interpreter is an error here, before anything runs."""
    if isinstance(stages, Pipeline):
        per_stage, plan = tuple(stages.backends.items()), stages.plan
    elif stages is None:
        per_stage = None
    elif isinstance(stages, dict):
        per_stage = tuple(sorted(stages.items()))
    else:
        raise TypeError(f"stages: expected None, a dict of stage -> backend or a Pipeline, got {type(stages).__name__}")
    resolve = _route.__wrapped__ if torch.compiler.is_compiling() else _route
    route = resolve(backend, per_stage, t.is_cuda, plan)
    if route.uses_triton:
        require_kernel_device("backend 'triton'", t)
    return route


# --- mhc_pre: the implementations a route selects ------------------------------------------------------------


def _pre_forward(route: Route, x, phi, alpha, bias, gamma, norm_eps, hc_eps) -> tuple:
    """-> (h_in, h_post, h_res, inv_rms, h_mix, h_pre)."""
    if route.of("fwd") == "triton":
        return launch_fwd(x, phi, alpha, bias, gamma, norm_eps, hc_eps)
    out = golden_pre.stage_fwd(x=x, phi=phi, alpha=alpha, bias=bias, gamma=gamma, norm_eps=norm_eps, hc_eps=hc_eps)
    return tuple(out[k] for k in ("h_in", "h_post", "h_res", "inv_rms", "h_mix", "h_pre"))


def _pre_backward(route: Route, saved: tuple, dh_in, dh_post, dh_res, grad_x_post, hc_eps) -> tuple:
    """saved = (x, phi, alpha, gamma, inv_rms, h_mix, h_pre, h_post) -> (dx, dphi, dalpha, dbias, dgamma)."""
    x, phi, alpha, gamma, inv_rms, h_mix, h_pre, h_post = saved
    if route.pre_backward == "fused":
        out = launch_backward_fused(
            x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma, grad_x_post, hc_eps
        )
    elif route.pre_backward == "golden":
        return golden_pre.mhc_pre_backward(
            x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma, hc_eps=hc_eps,
            grad_x_post=grad_x_post,
        )  # fmt: skip
    else:
        env = dict(x=x, phi=phi, alpha=alpha, gamma=gamma, inv_rms=inv_rms, h_mix=h_mix, h_pre=h_pre, h_post=h_post)
        out = route.pipeline.backward(
            env, dh_in=dh_in, dh_post=dh_post, dh_res=dh_res, grad_x_post=grad_x_post, hc_eps=hc_eps
        )
    return out["dx"], out["dphi"], out["dalpha"], out["dbias"], out["dgamma"]


def mhc_pre_forward(
    x, phi, alpha, bias, gamma=None, *, norm_eps=1e-6, hc_eps=1e-6, backend="auto", stages=None
) -> tuple:
    """-> (h_in, h_post, h_res, inv_rms, h_mix, h_pre), not differentiable. backend: "auto" (Triton
    on CUDA tensors, golden on CPU), "golden" or "triton" (on CPU tensors through the interpreter,
    TRITON_INTERPRET=1); stages: per-stage backends (a dict or a Pipeline)."""
    check_inputs(x, phi=phi, alpha=alpha, bias=bias, gamma=gamma)
    return _pre_forward(resolve_route(backend, stages, x), x, phi, alpha, bias, gamma, norm_eps, hc_eps)


def mhc_pre_backward(
    x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma=None, *, hc_eps=1e-6,
    grad_x_post=None, backend="auto", plan="fused", stages=None,
) -> tuple:  # fmt: skip
    """-> (dx, dphi, dalpha, dbias, dgamma); dgamma is None when gamma is None.

    plan: "fused" (the default: two passes over x, no [T, nD] intermediate) or "staged" (the four
    stage kernels); it applies where every backward stage runs on Triton."""
    check_inputs(x, phi=phi, alpha=alpha, dh_in=dh_in, dh_post=dh_post, dh_res=dh_res, inv_rms=inv_rms, h_mix=h_mix,
                 h_pre=h_pre, h_post=h_post, gamma=gamma, grad_x_post=grad_x_post)  # fmt: skip
    route = resolve_route(backend, stages, x, plan)
    saved = (x, phi, alpha, gamma, inv_rms, h_mix, h_pre, h_post)
    return _pre_backward(route, saved, dh_in, dh_post, dh_res, grad_x_post, hc_eps)


def _zero_grads(x, h_post, dh_in, dh_post, dh_res):
    """An output the loss does not use comes back from autograd as None: its gradient is zero."""
    lead, (n, D) = x.shape[:-2], x.shape[-2:]
    dh_in = dh_in if dh_in is not None else x.new_zeros((*lead, D))
    dh_post = dh_post if dh_post is not None else h_post.new_zeros(h_post.shape)
    dh_res = dh_res if dh_res is not None else h_post.new_zeros((*lead, n, n))
    return dh_in, dh_post, dh_res


class _MhcPre(torch.autograd.Function):
    """The eager training path: launchers called directly, inputs validated by mhc_pre already."""

    @staticmethod
    def forward(ctx, x, phi, alpha, bias, gamma, norm_eps, hc_eps, route):
        h_in, h_post, h_res, inv_rms, h_mix, h_pre = _pre_forward(route, x, phi, alpha, bias, gamma, norm_eps, hc_eps)
        ctx.save_for_backward(x, phi, alpha, gamma, inv_rms, h_mix, h_pre, h_post)
        ctx.hc_eps, ctx.route = hc_eps, route
        return h_in, h_post, h_res

    @staticmethod
    def backward(ctx, dh_in, dh_post, dh_res):
        saved = ctx.saved_tensors
        x, phi, alpha, h_post = saved[0], saved[1], saved[2], saved[7]
        dh_in, dh_post, dh_res = _zero_grads(x, h_post, dh_in, dh_post, dh_res)
        dx, dphi, dalpha, dbias, dgamma = _pre_backward(ctx.route, saved, dh_in, dh_post, dh_res, None, ctx.hc_eps)
        return dx, dphi.to(phi.dtype), dalpha.to(alpha.dtype), dbias, dgamma, None, None, None


# --- mhc_pre under torch.compile: custom ops with fake tensors ------------------------------------------------


@torch.library.custom_op("mhc_ops::mhc_pre_fwd", mutates_args=())
def _pre_fwd_op(
    x: torch.Tensor,
    phi: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor,
    gamma: torch.Tensor | None,
    norm_eps: float,
    hc_eps: float,
    route: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    outs = _pre_forward(Route.from_key(route), x, phi, alpha, bias, gamma, norm_eps, hc_eps)
    # A custom op's outputs may not alias its inputs or each other: the golden's views are copied.
    return tuple(o.clone() if o._base is not None else o for o in outs)


@_pre_fwd_op.register_fake
def _(x, phi, alpha, bias, gamma, norm_eps, hc_eps, route):
    lead, (n, D) = x.shape[:-2], x.shape[-2:]
    f32 = {"dtype": torch.float32, "device": x.device}
    return (x.new_empty((*lead, D)), x.new_empty((*lead, n), **f32), x.new_empty((*lead, n, n), **f32),
            x.new_empty(lead, **f32), x.new_empty((*lead, n * n + 2 * n), **f32), x.new_empty((*lead, n), **f32))  # fmt: skip


@torch.library.custom_op("mhc_ops::mhc_pre_bwd", mutates_args=())
def _pre_bwd_op(
    x: torch.Tensor,
    phi: torch.Tensor,
    alpha: torch.Tensor,
    dh_in: torch.Tensor,
    dh_post: torch.Tensor,
    dh_res: torch.Tensor,
    inv_rms: torch.Tensor,
    h_mix: torch.Tensor,
    h_pre: torch.Tensor,
    h_post: torch.Tensor,
    gamma: torch.Tensor | None,
    hc_eps: float,
    route: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    saved = (x, phi, alpha, gamma, inv_rms, h_mix, h_pre, h_post)
    dx, dphi, dalpha, dbias, dgamma = _pre_backward(Route.from_key(route), saved, dh_in, dh_post, dh_res, None, hc_eps)
    # A custom op returns tensors only: no gamma gives an empty dgamma, mapped back to None below.
    dgamma = dgamma if dgamma is not None else x.new_empty(0, dtype=torch.float32)
    return tuple(o.clone() if o._base is not None else o for o in (dx, dphi, dalpha, dbias, dgamma))


@_pre_bwd_op.register_fake
def _(x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma, hc_eps, route):
    f32 = {"dtype": torch.float32}
    dgamma = x.new_empty(gamma.shape, **f32) if gamma is not None else x.new_empty(0, **f32)
    return x.new_empty(x.shape), x.new_empty(phi.shape, **f32), x.new_empty(3, **f32), x.new_empty(phi.shape[0], **f32), dgamma  # fmt: skip


def _pre_setup_context(ctx, inputs, output):
    x, phi, alpha, bias, gamma, norm_eps, hc_eps, route = inputs
    h_in, h_post, h_res, inv_rms, h_mix, h_pre = output
    ctx.save_for_backward(x, phi, alpha, gamma, inv_rms, h_mix, h_pre, h_post)
    ctx.hc_eps, ctx.route = hc_eps, route


def _pre_op_backward(ctx, dh_in, dh_post, dh_res, _d_inv_rms, _d_h_mix, _d_h_pre):
    x, phi, alpha, gamma, inv_rms, h_mix, h_pre, h_post = ctx.saved_tensors
    dh_in, dh_post, dh_res = _zero_grads(x, h_post, dh_in, dh_post, dh_res)
    dx, dphi, dalpha, dbias, dgamma = _pre_bwd_op(
        x, phi, alpha, dh_in, dh_post, dh_res, inv_rms, h_mix, h_pre, h_post, gamma, ctx.hc_eps, ctx.route
    )
    dgamma = dgamma if gamma is not None else None
    return dx, dphi.to(phi.dtype), dalpha.to(alpha.dtype), dbias, dgamma, None, None, None


_pre_fwd_op.register_autograd(_pre_op_backward, setup_context=_pre_setup_context)


def mhc_pre(x, phi, alpha, bias, gamma=None, *, norm_eps=1e-6, hc_eps=1e-6, backend="auto", stages=None):
    """-> (h_in, h_post, h_res), differentiable in x, phi, alpha, bias and gamma.

    x: [B, S, n, D] or [T, n, D] (bf16, fp16, fp32); phi [n*n + 2n, n*D], alpha [3], bias [n*n + 2n],
    gamma [n, D] or None, fp32. h_in in x's dtype, h_post [.., n] and h_res [.., n, n] (logits) fp32.
    backend: "auto" | "golden" | "triton"; stages: per-stage backends through the composer (a dict
    such as {"dgamma": "golden"} or a Pipeline)."""
    check_inputs(x, phi=phi, alpha=alpha, bias=bias, gamma=gamma)
    route = resolve_route(backend, stages, x)
    if torch.compiler.is_compiling():
        h_in, h_post, h_res, *_ = _pre_fwd_op(x, phi, alpha, bias, gamma, float(norm_eps), float(hc_eps), route.key)
        return h_in, h_post, h_res
    return _MhcPre.apply(x, phi, alpha, bias, gamma, float(norm_eps), float(hc_eps), route)


def sinkhorn_max_n(route: Route) -> int | None:
    """The largest n the route's sinkhorn stages take: the kernel's MAX_N, or any n on the golden."""
    return MAX_N if "triton" in (route.of("sinkhorn_fwd"), route.of("sinkhorn_bwd")) else None


# --- sinkhorn ------------------------------------------------------------------------------------------------


def _sinkhorn_forward(route: Route, logits, iters, eps) -> torch.Tensor:
    """-> P [.., n, n] fp32."""
    if route.of("sinkhorn_fwd") == "triton":
        P = torch.empty(logits.shape, device=logits.device, dtype=torch.float32)
        launch_sinkhorn_fwd(logits.contiguous(), P, iters, eps)
        return P
    return golden_sinkhorn.stage_sinkhorn_fwd(logits=logits, iters=iters, eps=eps)["P"].float()


def _sinkhorn_backward(route: Route, logits, dP, iters, eps) -> torch.Tensor:
    """-> dlogits in logits' dtype."""
    if route.of("sinkhorn_bwd") == "triton":
        dlogits = torch.empty_like(logits, memory_format=torch.contiguous_format)
        launch_sinkhorn_bwd(logits.contiguous(), dP.contiguous(), dlogits, iters, eps)
        return dlogits
    return golden_sinkhorn.stage_sinkhorn_bwd(logits=logits, dP=dP, iters=iters, eps=eps)["dlogits"].to(logits.dtype)


class _Sinkhorn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, iters, eps, route):
        ctx.save_for_backward(logits)
        ctx.iters, ctx.eps, ctx.route = iters, eps, route
        return _sinkhorn_forward(route, logits, iters, eps)

    @staticmethod
    def backward(ctx, dP):
        (logits,) = ctx.saved_tensors
        return _sinkhorn_backward(ctx.route, logits, dP, ctx.iters, ctx.eps), None, None, None


@torch.library.custom_op("mhc_ops::sinkhorn_fwd", mutates_args=())
def _sinkhorn_fwd_op(logits: torch.Tensor, iters: int, eps: float, route: str) -> torch.Tensor:
    P = _sinkhorn_forward(Route.from_key(route), logits, iters, eps)
    return P.clone() if P._base is not None or P is logits else P


@_sinkhorn_fwd_op.register_fake
def _(logits, iters, eps, route):
    return logits.new_empty(logits.shape, dtype=torch.float32)


@torch.library.custom_op("mhc_ops::sinkhorn_bwd", mutates_args=())
def _sinkhorn_bwd_op(logits: torch.Tensor, dP: torch.Tensor, iters: int, eps: float, route: str) -> torch.Tensor:
    dlogits = _sinkhorn_backward(Route.from_key(route), logits, dP, iters, eps)
    return dlogits.clone() if dlogits._base is not None else dlogits


@_sinkhorn_bwd_op.register_fake
def _(logits, dP, iters, eps, route):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _sinkhorn_setup_context(ctx, inputs, output):
    logits, iters, eps, route = inputs
    ctx.save_for_backward(logits)
    ctx.iters, ctx.eps, ctx.route = iters, eps, route


def _sinkhorn_op_backward(ctx, dP):
    (logits,) = ctx.saved_tensors
    return _sinkhorn_bwd_op(logits, dP, ctx.iters, ctx.eps, ctx.route), None, None, None


_sinkhorn_fwd_op.register_autograd(_sinkhorn_op_backward, setup_context=_sinkhorn_setup_context)


def sinkhorn(logits, iters=20, eps=1e-6, *, backend="auto", stages=None):
    """DeepSeek's Sinkhorn-Knopp projection of per-token logits [.., n, n] onto (nearly) doubly
    stochastic matrices: row softmax + eps, a column pass, then iters - 1 row/column passes.
    -> P [.., n, n] fp32, differentiable (the exact gradient of the finite iteration)."""
    route = resolve_route(backend, stages, logits)
    check_sinkhorn_inputs(logits, iters=iters, eps=eps, max_n=sinkhorn_max_n(route))
    if torch.compiler.is_compiling():
        return _sinkhorn_fwd_op(logits, int(iters), float(eps), route.key)
    return _Sinkhorn.apply(logits, int(iters), float(eps), route)


# --- mhc_post ------------------------------------------------------------------------------------------------


def _post_forward(route: Route, x, h_res, h_out, h_post) -> torch.Tensor:
    """-> out [.., n, D] in x's dtype."""
    if route.of("post_fwd") == "triton":
        out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
        launch_post_fwd(x, h_res.contiguous(), h_out, h_post.contiguous(), out)
        return out
    return golden_post.stage_post_fwd(x=x, h_res=h_res, h_out=h_out, h_post=h_post)["out"]


def _post_backward(route: Route, x, h_res, h_out, h_post, dout) -> tuple:
    """-> (dx, dh_res, dh_out, dh_post): dx and dh_out in x's dtype, dh_res and dh_post fp32."""
    if route.of("post_bwd") == "triton":
        dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
        dh_res = torch.empty(h_res.shape, device=x.device, dtype=torch.float32)
        dh_out = torch.empty(h_out.shape, device=x.device, dtype=h_out.dtype)
        dh_post = torch.empty(h_post.shape, device=x.device, dtype=torch.float32)
        launch_post_bwd(x, h_res.contiguous(), h_out, h_post.contiguous(), dout, dx, dh_res, dh_out, dh_post)
        return dx, dh_res, dh_out, dh_post
    out = golden_post.stage_post_bwd(x=x, h_res=h_res, h_out=h_out, h_post=h_post, dout=dout)
    return out["dx"], out["dh_res"].float(), out["dh_out"], out["dh_post"].float()


class _MhcPost(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h_res, h_out, h_post, route):
        ctx.save_for_backward(x, h_res, h_out, h_post)
        ctx.route = route
        return _post_forward(route, x, h_res, h_out, h_post)

    @staticmethod
    def backward(ctx, dout):
        x, h_res, h_out, h_post = ctx.saved_tensors
        dx, dh_res, dh_out, dh_post = _post_backward(ctx.route, x, h_res, h_out, h_post, dout)
        return dx, dh_res.to(h_res.dtype), dh_out, dh_post.to(h_post.dtype), None


@torch.library.custom_op("mhc_ops::post_fwd", mutates_args=())
def _post_fwd_op(
    x: torch.Tensor, h_res: torch.Tensor, h_out: torch.Tensor, h_post: torch.Tensor, route: str
) -> torch.Tensor:
    out = _post_forward(Route.from_key(route), x, h_res, h_out, h_post)
    return out.clone() if out._base is not None else out


@_post_fwd_op.register_fake
def _(x, h_res, h_out, h_post, route):
    return x.new_empty(x.shape)


@torch.library.custom_op("mhc_ops::post_bwd", mutates_args=())
def _post_bwd_op(
    x: torch.Tensor, h_res: torch.Tensor, h_out: torch.Tensor, h_post: torch.Tensor, dout: torch.Tensor, route: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    outs = _post_backward(Route.from_key(route), x, h_res, h_out, h_post, dout)
    return tuple(o.clone() if o._base is not None else o for o in outs)


@_post_bwd_op.register_fake
def _(x, h_res, h_out, h_post, dout, route):
    f32 = {"dtype": torch.float32}
    return x.new_empty(x.shape), x.new_empty(h_res.shape, **f32), h_out.new_empty(h_out.shape), x.new_empty(h_post.shape, **f32)  # fmt: skip


def _post_setup_context(ctx, inputs, output):
    x, h_res, h_out, h_post, route = inputs
    ctx.save_for_backward(x, h_res, h_out, h_post)
    ctx.route = route


def _post_op_backward(ctx, dout):
    x, h_res, h_out, h_post = ctx.saved_tensors
    dx, dh_res, dh_out, dh_post = _post_bwd_op(x, h_res, h_out, h_post, dout, ctx.route)
    return dx, dh_res.to(h_res.dtype), dh_out, dh_post.to(h_post.dtype), None


_post_fwd_op.register_autograd(_post_op_backward, setup_context=_post_setup_context)


def mhc_post(x, h_res, h_out, h_post, *, backend="auto", stages=None):
    """out[.., j, :] = h_post[j]*h_out + sum_i h_res[i, j]*x[i]: the block's output written back into the
    streams (the first index of h_res is the input stream). x [.., n, D] (bf16, fp16, fp32), h_res
    [.., n, n] (after sinkhorn) and h_post [.., n] fp32, h_out [.., D] in x's dtype -> out in x's
    dtype, differentiable in all four."""
    check_post_inputs(x, h_res, h_out, h_post)
    route = resolve_route(backend, stages, x)
    if torch.compiler.is_compiling():
        return _post_fwd_op(x, h_res, h_out, h_post, route.key)
    return _MhcPost.apply(x, h_res, h_out, h_post, route)
